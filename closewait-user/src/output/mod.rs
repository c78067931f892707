//! Outputs: everything the user reads on stdout. Each reads the enriched
//! reports and the read model ([`crate::model`]); none reaches into the
//! tracker. Adding one is a new file and one line in [`for_cli`].

pub mod format;
pub mod json;
pub mod metrics;
pub mod sanitize;
pub mod schema;
pub mod text;
pub mod top;

#[cfg(test)]
mod tests;

use std::{
    io::{self, Write},
    time::Duration,
};

use crate::{
    model::{Enriched, Group, Model},
    probe::Drops,
};

/// What the `start` line says.
pub struct StartInfo<'a> {
    pub attach: &'a str,
    /// Creation-stack mode: auto, on, off.
    pub stacks: &'a str,
    pub threshold: Duration,
    pub existing: u64,
    pub netns_scanned: usize,
}

/// A consumer of the stream.
pub trait Output {
    /// Once, when the probe is attached and the start-up scan is done.
    fn start(&mut self, info: &StartInfo, now_ns: u64) -> io::Result<()>;
    /// One report, in order. (Views of the present, which read the model
    /// at each tick, leave this and the next three as they are.)
    fn event(&mut self, _e: &Enriched) -> io::Result<()> {
        Ok(())
    }
    /// A group of stuck sockets appeared, grew past a power of two, or
    /// changed cause.
    fn group(&mut self, _g: &Group, _now_ns: u64) -> io::Result<()> {
        Ok(())
    }
    /// Events the kernel could not deliver since the last call.
    fn lost(&mut self, _delta: &Drops, _now_ns: u64) -> io::Result<()> {
        Ok(())
    }
    /// At the end of the run.
    fn summary(&mut self, model: &Model, ran: Duration, now_ns: u64) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// After every turn of the event loop (about every 10 ms), with the
    /// model as it is now: a live view redraws from it here. True: the
    /// user asked to quit.
    fn tick(&mut self, _model: &Model, _now_ns: u64) -> io::Result<bool> {
        Ok(false)
    }
    /// A view of the present, not a record: at exit the agent does not
    /// wait for lookups still running.
    fn is_live(&self) -> bool {
        false
    }
}

/// Several outputs fed the same stream (the stdout stream and metrics).
pub struct Tee(pub Vec<Box<dyn Output>>);

impl Output for Tee {
    fn start(&mut self, info: &StartInfo, now_ns: u64) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|o| o.start(info, now_ns))
    }

    fn event(&mut self, e: &Enriched) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|o| o.event(e))
    }

    fn group(&mut self, g: &Group, now_ns: u64) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|o| o.group(g, now_ns))
    }

    fn lost(&mut self, delta: &Drops, now_ns: u64) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|o| o.lost(delta, now_ns))
    }

    fn summary(&mut self, model: &Model, ran: Duration, now_ns: u64) -> io::Result<()> {
        self.0
            .iter_mut()
            .try_for_each(|o| o.summary(model, ran, now_ns))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|o| o.flush())
    }

    fn tick(&mut self, model: &Model, now_ns: u64) -> io::Result<bool> {
        let mut quit = false;
        for o in &mut self.0 {
            quit |= o.tick(model, now_ns)?;
        }
        Ok(quit)
    }

    fn is_live(&self) -> bool {
        self.0.iter().all(|o| o.is_live())
    }
}

/// The stdout output the flags ask for.
pub fn for_cli<W: Write + 'static>(
    json: bool,
    out: W,
    clock: format::WallClock,
) -> Box<dyn Output> {
    if json {
        Box::new(json::Json::new(out, clock))
    } else {
        Box::new(text::Text::new(out, clock))
    }
}
