//! `--json`: one [`schema::Event`] per line.

use std::{
    io::{self, Write},
    time::Duration,
};

use closewait_common::tcp_state;

use super::{
    format::{ms, WallClock},
    schema::{self, ContextFields, Dwell, Event, SocketFields},
    Output, StartInfo,
};
use crate::{
    model::{Enriched, Group, Model},
    probe::Drops,
    tracking::Report,
};

pub struct Json<W: Write> {
    out: W,
    clock: WallClock,
}

impl<W: Write> Json<W> {
    pub fn new(out: W, clock: WallClock) -> Json<W> {
        Json { out, clock }
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }

    fn line(&mut self, event: &Event) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, event)?;
        self.out.write_all(b"\n")
    }
}

/// The JSON event of one report.
pub fn event_of(e: &Enriched, clock: &WallClock) -> Event {
    let ctx = e.ctx.as_deref();
    let socket = SocketFields::new(e.report.socket(), ctx);
    let context = ctx.map(ContextFields::new);
    match &e.report {
        Report::Existing {
            dwell_ns, stuck, ..
        } => Event::Existing(schema::Existing {
            ts: clock.rfc3339(e.at_ns),
            socket,
            dwell: Dwell::new(*dwell_ns, crate::tracking::Bound::AtLeast),
            stuck: *stuck,
            context,
        }),
        Report::Enter { from, ts_ns, .. } => Event::Enter(schema::Enter {
            ts: clock.rfc3339(*ts_ns),
            socket,
            old_state: tcp_state::name(*from).to_string(),
            context,
        }),
        Report::Stuck {
            dwell_ns, bound, ..
        } => Event::Stuck(schema::Stuck {
            ts: clock.rfc3339(e.at_ns),
            socket,
            dwell: Dwell::new(*dwell_ns, *bound),
            context,
        }),
        Report::Close {
            dwell_ns,
            to,
            ts_ns,
            bound,
            ..
        } => Event::Close(schema::Close {
            ts: clock.rfc3339(*ts_ns),
            socket,
            dwell: Dwell::new(*dwell_ns, *bound),
            new_state: to.map(|s| tcp_state::name(s).to_string()),
            context,
        }),
    }
}

/// The summary event, from the read model.
pub fn summary_of(model: &Model, ran: Duration, now_ns: u64, clock: &WallClock) -> Event {
    let counts = model.counts();
    let t = &counts.totals;
    let drops = model.drops();
    let still = model.still_stuck(now_ns);
    Event::Summary(schema::Summary {
        ts: clock.rfc3339(now_ns),
        duration_ms: ran.as_millis() as u64,
        entered: t.entered,
        existing: t.existing,
        closed: t.closed,
        stuck: t.stuck,
        still_stuck: still.len(),
        in_close_wait: counts.in_close_wait,
        lost: drops.events_lost(),
        lost_by_reason: schema::LostByReason {
            ringbuf_full: drops.ringbuf_full,
            recursion: drops.recursion_misses,
            read_failed: drops.read_failed,
        },
        recovered_enters: t.recovered_enters,
        recovered_exits: t.recovered_exits,
        stacks_missed: drops.stacks_missed(),
        stacks_over_budget: drops.over_budget,
        dwell_ms: counts.dwell.map(|p| schema::Percentiles {
            p50: ms(p.p50_ns),
            p90: ms(p.p90_ns),
            p99: ms(p.p99_ns),
            max: ms(p.max_ns),
            count: p.count,
        }),
        stuck_groups: model
            .groups(now_ns)
            .iter()
            .map(schema::Group::new)
            .collect(),
        still_stuck_sockets: still
            .iter()
            .map(|s| schema::StillStuck {
                socket: SocketFields::new(s.socket, s.ctx),
                dwell: Dwell::new(s.dwell_ns, s.bound),
                context: s.ctx.map(ContextFields::new),
            })
            .collect(),
    })
}

impl<W: Write> Output for Json<W> {
    fn start(&mut self, info: &StartInfo, now_ns: u64) -> io::Result<()> {
        let event = Event::Start(schema::Start {
            ts: self.clock.rfc3339(now_ns),
            version: env!("CARGO_PKG_VERSION").to_string(),
            attach: info.attach.to_string(),
            stacks: info.stacks.to_string(),
            threshold_ms: info.threshold.as_millis() as u64,
            existing: info.existing,
            netns_scanned: info.netns_scanned,
        });
        self.line(&event)
    }

    fn event(&mut self, e: &Enriched) -> io::Result<()> {
        let event = event_of(e, &self.clock);
        self.line(&event)
    }

    fn group(&mut self, g: &Group, now_ns: u64) -> io::Result<()> {
        let event = Event::Group(schema::GroupEvent {
            ts: self.clock.rfc3339(now_ns),
            group: schema::Group::new(g),
        });
        self.line(&event)
    }

    fn lost(&mut self, delta: &Drops, now_ns: u64) -> io::Result<()> {
        for (reason, count) in delta.by_reason() {
            if count > 0 {
                let event = Event::Lost(schema::Lost {
                    ts: self.clock.rfc3339(now_ns),
                    count,
                    reason: reason.to_string(),
                });
                self.line(&event)?;
            }
        }
        Ok(())
    }

    fn summary(&mut self, model: &Model, ran: Duration, now_ns: u64) -> io::Result<()> {
        let event = summary_of(model, ran, now_ns, &self.clock);
        self.line(&event)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
