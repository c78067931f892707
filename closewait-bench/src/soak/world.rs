//! What runs during a soak: leakers (`churn --park`) in network namespaces of their own, the
//! load (`churn`), closewait-trace with its stream folded into a [`Ledger`] on a thread, and
//! the truth read from /proc.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    thread,
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use procfs::{
    net::TcpState,
    process::{FDTarget, Process},
};
use serde_json::Value;

use super::ledger::Ledger;
use crate::harness::process::{Lines, Proc, STOP_TIMEOUT};
use crate::scrape::{http_get, Metrics};

/// How long a leaker may take to park its sockets.
const PARK_TIMEOUT: Duration = Duration::from_secs(120);
/// How long closewait-trace may take to attach and scan.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// `churn --park N` in a network namespace: one leaking process.
pub struct Leaker {
    pub proc: Proc,
    pub netns: String,
    lines: Lines,
    /// Its sockets in CLOSE_WAIT (inodes), read from /proc once parked.
    pub sockets: BTreeSet<u64>,
}

impl Leaker {
    /// Starts `churn --park count` on `port` in `netns`; [`Leaker::ready`] waits for it.
    pub fn spawn(churn: &Path, netns: &str, port: u16, count: u64, log: PathBuf) -> Result<Self> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", netns])
            .arg(churn)
            .args(["--port", &port.to_string(), "--park", &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let what = format!("leaker {netns}:{port}");
        let mut proc = Proc::spawn(command, &what, log)?;
        let lines = Lines::spawn(proc.take_stdout()?, &["park"]);
        Ok(Self {
            proc,
            netns: netns.to_owned(),
            lines,
            sockets: BTreeSet::new(),
        })
    }

    /// Waits until its sockets are parked and reads which they are.
    pub fn ready(&mut self, count: u64) -> Result<()> {
        let ready = self.lines.wait_for("park", PARK_TIMEOUT);
        ready.map_err(|err| self.proc.failed(err))?;
        self.sockets = close_wait_sockets_of(self.proc.pid())
            .with_context(|| format!("sockets of {}", self.proc.what))?;
        ensure!(
            self.sockets.len() as u64 == count,
            "{} parked {count} sockets but /proc shows {} of its own in CLOSE_WAIT",
            self.proc.what,
            self.sockets.len()
        );
        Ok(())
    }

    /// Reads its sockets again: those that left CLOSE_WAIT since (the kernel closes a few:
    /// an orphaned client in FIN_WAIT2 that times out after `tcp_fin_timeout` may answer
    /// with a reset) are taken out of [`Leaker::sockets`] and returned.
    pub fn refresh(&mut self) -> Result<BTreeSet<u64>> {
        let now = close_wait_sockets_of(self.proc.pid())
            .with_context(|| format!("sockets of {}", self.proc.what))?;
        let left = self.sockets.difference(&now).copied().collect();
        self.sockets.retain(|s| now.contains(s));
        Ok(left)
    }

    /// kill -9, and waits for the kernel to have closed its sockets (the process is reaped).
    pub fn kill(&mut self) -> Result<()> {
        self.proc.signal(libc::SIGKILL)?;
        self.proc.wait(STOP_TIMEOUT)?;
        Ok(())
    }

    /// Closes its stdin, which makes it close its sockets and exit.
    pub fn release(&mut self) -> Result<()> {
        drop(self.proc.child.stdin.take());
        let status = self.proc.wait(STOP_TIMEOUT)?;
        self.proc.check(status)
    }
}

/// The inodes of `pid`'s sockets that are in CLOSE_WAIT, from its fds and its namespace's
/// TCP tables.
fn close_wait_sockets_of(pid: u32) -> Result<BTreeSet<u64>> {
    let process = Process::new(pid as i32)?;
    let mut fds = BTreeSet::new();
    for fd in process.fd()? {
        if let FDTarget::Socket(inode) = fd?.target {
            fds.insert(inode);
        }
    }
    let mut tables = process.tcp()?;
    tables.extend(process.tcp6()?);
    Ok(tables
        .into_iter()
        .filter(|e| e.state == TcpState::CloseWait && fds.contains(&e.inode))
        .map(|e| e.inode)
        .collect())
}

/// Sockets in CLOSE_WAIT in every network namespace with a process in it, and in the named
/// ones (`/run/netns`), which may have none: what a complete tracer holds in its table.
pub fn close_wait_everywhere(named: &[PathBuf]) -> Result<u64> {
    let mut seen = BTreeSet::new();
    let mut count = 0;
    let mut add = |tables: procfs::ProcResult<Vec<procfs::net::TcpNetEntry>>| {
        let n = tables.map_or(0, |t| {
            t.iter().filter(|e| e.state == TcpState::CloseWait).count()
        });
        count += n as u64;
    };
    for process in procfs::process::all_processes()?.flatten() {
        let Ok(ns) = process.namespaces() else {
            continue;
        };
        let Some(net) = ns.0.get(std::ffi::OsStr::new("net")) else {
            continue;
        };
        if seen.insert(net.identifier) {
            add(process.tcp());
            add(process.tcp6());
        }
    }
    for path in named {
        let inode = closewait_host::netns::inode(path)?;
        if seen.insert(inode) {
            let table = |file: &str| {
                let path = format!("/proc/thread-self/net/{file}");
                let si = procfs::current_system_info();
                <procfs::net::TcpNetEntries as procfs::FromReadSI>::from_file(path, si).map(|t| t.0)
            };
            let (v4, v6) = closewait_host::netns::run_in(path, || (table("tcp"), table("tcp6")))?;
            add(v4);
            add(v6);
        }
    }
    Ok(count)
}

/// closewait-trace, its JSON stream folded into a ledger on a thread.
pub struct Tracer {
    pub proc: Proc,
    ledger: Arc<Mutex<Ledger>>,
    reader: Option<thread::JoinHandle<()>>,
    pub metrics: SocketAddr,
}

impl Tracer {
    pub fn start(
        trace: &Path,
        metrics: SocketAddr,
        extra: &[String],
        log: PathBuf,
    ) -> Result<Self> {
        let mut command = Command::new(trace);
        command
            .args(["--json", "--metrics", &metrics.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut proc = Proc::spawn(command, "closewait-trace", log)?;
        let out = proc.take_stdout()?;
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let folded = Arc::clone(&ledger);
        let reader = thread::spawn(move || {
            for line in BufReader::with_capacity(1 << 20, out).lines() {
                let Ok(line) = line else { break };
                folded
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(&line);
            }
        });
        let mut tracer = Self {
            proc,
            ledger,
            reader: Some(reader),
            metrics,
        };
        tracer.wait_for_start()?;
        Ok(tracer)
    }

    fn wait_for_start(&mut self) -> Result<()> {
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        while self.ledger().start.is_none() {
            if let Some(status) = self.proc.child.try_wait()? {
                return Err(self
                    .proc
                    .failed(anyhow::anyhow!("exited ({status}) before its start line")));
            }
            if std::time::Instant::now() >= deadline {
                return Err(self
                    .proc
                    .failed(anyhow::anyhow!("no start line in {START_TIMEOUT:?}")));
            }
            crate::harness::process::pause(crate::harness::process::POLL)?;
        }
        Ok(())
    }

    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails if it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.proc.child.try_wait()? {
            return Err(self
                .proc
                .failed(anyhow::anyhow!("exited during the soak ({status})")));
        }
        Ok(())
    }

    /// Stops it with SIGINT and waits for the rest of its stream (the summary).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.proc.signal(libc::SIGINT)?;
        let status = self.proc.wait(STOP_TIMEOUT)?;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Ok(status)
    }

    /// One scrape of its metrics endpoint.
    pub fn scrape(&self) -> Result<Metrics> {
        let text = http_get(self.metrics, "/metrics").context("scrape the metrics endpoint")?;
        Ok(Metrics::parse(&text))
    }
}

/// The load: `churn --duration D --tune-netns` in its own namespace; its result line.
pub struct Load {
    proc: Proc,
    lines: Lines,
}

impl Load {
    pub fn spawn(churn: &Path, netns: &str, duration: Duration, log: PathBuf) -> Result<Self> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", netns])
            .arg(churn)
            .args([
                "--tune-netns",
                "--duration",
                &format!("{}ms", duration.as_millis()),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut proc = Proc::spawn(command, "churn (load)", log)?;
        let lines = Lines::spawn(proc.take_stdout()?, &["churn"]);
        Ok(Self { proc, lines })
    }

    /// Waits for its end; its result line.
    pub fn finish(mut self, timeout: Duration) -> Result<Value> {
        let status = self.proc.wait(timeout)?;
        self.proc.check(status)?;
        let result = self.lines.wait_for("churn", STOP_TIMEOUT);
        result.map_err(|err| self.proc.failed(err))
    }
}
