//! Child processes and their output: a guard that kills and reaps, JSON lines read on a thread,
//! and interrupts (Ctrl-C) that end the run at the next wait, so that every guard cleans up.

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use closewait_host::command::display;
use serde_json::Value;

pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(20);
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// A child process, killed and reaped if still running when dropped (also on errors).
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) what: String,
    /// Where its stderr goes.
    log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(mut command: Command, what: &str, log: PathBuf) -> Result<Self> {
        check_interrupted()?;
        let stderr =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        command.stderr(stderr);
        let child = command
            .spawn()
            .with_context(|| format!("failed to start: {}", display(&command)))?;
        Ok(Self {
            child,
            what: what.to_owned(),
            log,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn take_stdout(&mut self) -> Result<impl Read + Send + 'static> {
        self.child.stdout.take().context("stdout is not a pipe")
    }

    /// Sends `signal` unless the process has exited (and so may have been reaped).
    pub(crate) fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.pid()).context("pid out of range")?;
        // SAFETY: kill(2) only sends a signal; `pid` is our unreaped child.
        if unsafe { libc::kill(pid, signal) } != 0 {
            let err = std::io::Error::last_os_error();
            return Err(err).with_context(|| format!("cannot signal {}", self.what));
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit.
    pub(crate) fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(self.failed(anyhow!("still running after {timeout:?}")));
            }
            pause(POLL)?;
        }
    }

    /// Fails unless `status` is a success.
    pub(crate) fn check(&self, status: ExitStatus) -> Result<()> {
        if status.success() {
            return Ok(());
        }
        Err(self.failed(anyhow!("exited with {status}")))
    }

    /// `err` about this process, with the end of its stderr.
    pub(crate) fn failed(&self, err: anyhow::Error) -> anyhow::Error {
        let stderr = fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
        let log = self.log.display();
        if tail.is_empty() {
            err.context(format!("{} (stderr: {log}, empty)", self.what))
        } else {
            err.context(format!("{} (stderr: {log}: {tail})", self.what))
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A child's JSON stdout lines, read on a thread so that the child never blocks on a full
/// pipe. Lines that are not JSON objects, or whose kind is not kept, are dropped.
pub(crate) struct Lines {
    rx: mpsc::Receiver<Value>,
}

impl Lines {
    /// Keeps the lines whose `event` or `mode` is in `keep` (all if it is empty).
    pub(crate) fn spawn(out: impl Read + Send + 'static, keep: &'static [&'static str]) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            // Cheap test first: an agent may print 100k lines we do not keep.
            let quoted: Vec<String> = keep.iter().map(|k| format!("\"{k}\"")).collect();
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if !quoted.is_empty() && !quoted.iter().any(|q| line.contains(q.as_str())) {
                    continue;
                }
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if keep.is_empty() || keep.contains(&kind(&value)) {
                    // Keep reading even if nobody listens any more.
                    let _ = tx.send(value);
                }
            }
        });
        Self { rx }
    }

    /// The first line of kind `wanted`; earlier lines are dropped.
    pub(crate) fn wait_for(&self, wanted: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupted()?;
            match self.rx.recv_timeout(POLL) {
                Ok(value) if kind(&value) == wanted => return Ok(value),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(RecvTimeoutError::Timeout) => {
                    bail!("no `{wanted}` line within {timeout:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("output ended without a `{wanted}` line")
                }
            }
        }
    }

    /// The next `n` lines of kind `wanted`; lines of other kinds are dropped.
    pub(crate) fn take(&self, wanted: &str, n: usize, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        let mut values = Vec::with_capacity(n);
        while values.len() < n {
            check_interrupted()?;
            match self.rx.recv_timeout(POLL) {
                Ok(value) if kind(&value) == wanted => values.push(value),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{} of {n} `{wanted}` lines within {timeout:?}",
                        values.len()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "output ended after {} of {n} `{wanted}` lines",
                        values.len()
                    )
                }
            }
        }
        Ok(values)
    }

    /// The remaining lines, once the child has exited: up to the end of its output.
    pub(crate) fn rest(self) -> Result<Vec<Value>> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut values = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(value) => values.push(value),
                Err(RecvTimeoutError::Disconnected) => return Ok(values),
                Err(RecvTimeoutError::Timeout) => {
                    bail!("output still open {STOP_TIMEOUT:?} after the process exited")
                }
            }
        }
    }
}

/// A JSON line's kind: its `event` (closewait-trace) or `mode` (churn).
pub(crate) fn kind(value: &Value) -> &str {
    let field = |key| value.get(key).and_then(Value::as_str);
    field("event").or_else(|| field("mode")).unwrap_or("")
}

pub(crate) fn number(value: &Value, key: &str) -> Result<f64> {
    value
        .get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("no number `{key}` in {value}"))
}

pub(crate) fn summary_of(events: &[Value]) -> Result<&Value> {
    let summary = events.iter().rev().find(|v| kind(v) == "summary");
    summary.context("closewait-trace printed no summary line")
}

pub(crate) fn read_json_lines(path: &Path) -> Result<Vec<Value>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let lines = text.lines().filter(|l| !l.trim().is_empty());
    lines
        .map(|l| {
            serde_json::from_str(l).with_context(|| format!("{}: bad line {l}", path.display()))
        })
        .collect()
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// On Ctrl-C or SIGTERM, stop at the next wait instead of dying, so that the guards
/// (network namespace, bpf_stats_enabled, child processes) clean up. Children get the
/// default disposition back at exec.
pub(crate) fn catch_interrupts() {
    let handler = on_interrupt as extern "C" fn(libc::c_int);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

pub(crate) fn check_interrupted() -> Result<()> {
    ensure!(!INTERRUPTED.load(Ordering::SeqCst), "interrupted");
    Ok(())
}

/// Sleeps for `duration`, failing early if interrupted.
pub(crate) fn pause(duration: Duration) -> Result<()> {
    let deadline = Instant::now() + duration;
    loop {
        check_interrupted()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(POLL));
    }
}
