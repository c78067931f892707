//! Starting what runs during a step: a tracer pinned to the tracer CPU (closewait-trace or a
//! peer), and churn in the run's network namespace pinned to the load CPU.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use closewait_host::command::{find_program, probe};
use serde_json::Value;

use super::{
    measure::{bpf_progs, cpu_seconds},
    plan::{Config, LOAD_CPU, PEER_SETTLE, TRACER_CPU},
    process::{number, pause, Lines, Proc, POLL, STOP_TIMEOUT},
    run::Bench,
};

const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const PARK_TIMEOUT: Duration = Duration::from_secs(300);

/// Transitions into or out of CLOSE_WAIT (8) of TCP (6) sockets; field names from
/// /sys/kernel/tracing/events/sock/inet_sock_set_state/format.
const BPFTRACE_PROGRAM: &str = "tracepoint:sock:inet_sock_set_state \
    /args->protocol == 6 && (args->oldstate == 8 || args->newstate == 8)/ \
    { printf(\"%d %d %d %d\\n\", args->sport, args->dport, args->oldstate, args->newstate); }";

/// closewait-trace lines kept by default (the rest is read and dropped).
pub(super) const START_SUMMARY: &[&str] = &["start", "summary"];

impl Bench {
    /// Starts `config`'s tracer pinned to the tracer CPU and waits until it is attached:
    /// closewait-trace's start line; for a peer, a BPF program among its file descriptors,
    /// then [`PEER_SETTLE`].
    pub(super) fn start_tracer(
        &mut self,
        config: Config,
        extra: &[&str],
        keep: &'static [&'static str],
    ) -> Result<Tracer> {
        let (program, args) = self.tracer_argv(config)?;
        let mut command = Command::new("taskset");
        command
            .args(["-c", TRACER_CPU])
            .arg(program)
            .args(args)
            .args(extra)
            .stdin(Stdio::null());
        let is_closewait = !config.is_peer();
        command.stdout(if is_closewait {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let spawned = Instant::now();
        let mut proc = Proc::spawn(command, config.name(), self.log_file(config.name()))?;
        let (lines, start) = if is_closewait {
            let lines = Lines::spawn(proc.take_stdout()?, keep);
            let start = lines.wait_for("start", ATTACH_TIMEOUT);
            let start = start.map_err(|err| proc.failed(err))?;
            if config == Config::Closewait {
                self.trace_start.get_or_insert_with(|| start.clone());
            }
            (Some(lines), Some(start))
        } else {
            wait_for_bpf_program(&mut proc)?;
            pause(PEER_SETTLE)?;
            if let Some(status) = proc.child.try_wait()? {
                return Err(proc.failed(anyhow!("exited ({status})")));
            }
            (None, None)
        };
        Ok(Tracer {
            lines,
            start,
            ready_after: spawned.elapsed(),
            spawned,
            proc,
        })
    }

    fn tracer_argv(&self, config: Config) -> Result<(PathBuf, Vec<&'static str>)> {
        let peer = |config: Config| {
            self.peers
                .get(&config)
                .cloned()
                .with_context(|| format!("{} is not installed", config.name()))
        };
        Ok(match config {
            Config::NoTracer => bail!("no tracer to start"),
            Config::Empty => (self.trace.clone(), vec!["--json", "--attach", "empty"]),
            Config::Closewait => (self.trace.clone(), vec!["--json"]),
            Config::ClosewaitNoStacks => (self.trace.clone(), vec!["--json", "--stacks", "off"]),
            Config::ClosewaitStacks => (self.trace.clone(), vec!["--json", "--stacks", "on"]),
            Config::ClosewaitEofReads => (
                self.trace.clone(),
                vec!["--json", "--stacks", "on", "--arm-eof-reads"],
            ),
            Config::ClosewaitNoAccept => (
                self.trace.clone(),
                vec![
                    "--json",
                    "--stacks",
                    "on",
                    "--without",
                    "syscall-tracepoints",
                ],
            ),
            Config::Tcpstates => (peer(config)?, vec![]),
            Config::Bpftrace => (peer(config)?, vec!["-e", BPFTRACE_PROGRAM]),
        })
    }

    /// `ip netns exec <ns> churn --tune-netns --cpu <load cpu> <args>`.
    fn churn_command(&self, args: &[String]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.netns])
            .arg(&self.churn)
            .args(["--tune-netns", "--cpu", LOAD_CPU])
            .args(args);
        command
    }

    /// Runs churn to its end; its result line (the last JSON line with a `mode`).
    pub(super) fn run_churn(&self, args: &[String], timeout: Duration) -> Result<Value> {
        let mut command = self.churn_command(args);
        command.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut proc = Proc::spawn(command, "churn", self.log_file("churn"))?;
        let lines = Lines::spawn(proc.take_stdout()?, &[]);
        let status = proc.wait(timeout)?;
        proc.check(status)?;
        let result = lines
            .rest()?
            .into_iter()
            .rev()
            .find(|v| v.get("mode").is_some());
        result.with_context(|| format!("{} printed no result line", proc.what))
    }

    /// Starts `churn --park count` on server port `port`.
    pub(super) fn spawn_park(&self, count: u32, port: u16) -> Result<Park> {
        let args = [
            "--port".to_owned(),
            port.to_string(),
            "--park".to_owned(),
            count.to_string(),
        ];
        let mut command = self.churn_command(&args);
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        let log = self.log_file(&format!("park-{port}"));
        let mut proc = Proc::spawn(command, &format!("churn --park {count}"), log)?;
        let lines = Lines::spawn(proc.take_stdout()?, &["park"]);
        Ok(Park { proc, lines })
    }

    /// A new file for a child's stderr: `<out_dir>/logs/<seq>-<name>.stderr`.
    fn log_file(&self, name: &str) -> PathBuf {
        let seq = self.log_seq.fetch_add(1, Ordering::Relaxed);
        let dir = self.out_dir.join("logs");
        dir.join(format!("{seq:03}-{name}.stderr"))
    }
}

/// A running tracer.
pub(super) struct Tracer {
    /// closewait-trace's JSON lines (`None` for peers, whose stdout is /dev/null).
    pub(super) lines: Option<Lines>,
    start: Option<Value>,
    /// From spawn until attached.
    pub(super) ready_after: Duration,
    spawned: Instant,
    pub(super) proc: Proc,
}

impl Tracer {
    pub(super) fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(self.proc.pid()).with_context(|| format!("CPU time of {}", self.proc.what))
    }

    pub(super) fn start_field(&self, key: &str) -> Result<f64> {
        number(self.start.as_ref().context("no start line")?, key)
    }

    /// The next `n` lines of kind `wanted`, and the time from spawn to the
    /// last of them.
    pub(super) fn take(
        &self,
        wanted: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<(Vec<Value>, Duration)> {
        let lines = self.lines.as_ref().context("a peer prints no lines")?;
        let values = lines.take(wanted, n, timeout);
        let values = values.map_err(|err| self.proc.failed(err))?;
        Ok((values, self.spawned.elapsed()))
    }

    /// Stops it with SIGINT; the JSON lines it printed after its start line.
    pub(super) fn stop(mut self) -> Result<Vec<Value>> {
        self.proc.signal(libc::SIGINT)?;
        let status = self.proc.wait(STOP_TIMEOUT)?;
        self.proc.check(status)?;
        let lines = self.lines.take();
        let events = lines.map(Lines::rest).transpose();
        Ok(events
            .map_err(|err| self.proc.failed(err))?
            .unwrap_or_default())
    }
}

/// `churn --park N`, holding its sockets until its stdin closes.
pub(super) struct Park {
    proc: Proc,
    lines: Lines,
}

impl Park {
    /// Waits for the ready line; how many sockets are parked.
    pub(super) fn wait_ready(&mut self) -> Result<u64> {
        let ready = self.lines.wait_for("park", PARK_TIMEOUT);
        let ready = ready.map_err(|err| self.proc.failed(err))?;
        Ok(number(&ready, "parked")? as u64)
    }

    /// Closes its stdin, which releases the sockets, and waits for it to exit.
    pub(super) fn release(mut self) -> Result<()> {
        drop(self.proc.child.stdin.take());
        let status = self.proc.wait(STOP_TIMEOUT)?;
        self.proc.check(status)
    }
}

/// Waits until the process holds a BPF program (failing if it exits first).
fn wait_for_bpf_program(proc: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    loop {
        if let Some(status) = proc.child.try_wait()? {
            return Err(proc.failed(anyhow!("exited ({status}) before loading a program")));
        }
        if bpf_progs(proc.pid()).is_ok_and(|progs| !progs.is_empty()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(proc.failed(anyhow!("no BPF program after {ATTACH_TIMEOUT:?}")));
        }
        pause(POLL)?;
    }
}

/// libbpf-tools' tcpstates: on PATH, or wherever the Debian package put it.
pub(super) fn find_tcpstates() -> Option<PathBuf> {
    find_program("tcpstates").or_else(|| {
        let files = probe(Command::new("dpkg").args(["-L", "libbpf-tools"]))?;
        files
            .lines()
            .map(PathBuf::from)
            .find(|p| p.file_name().is_some_and(|n| n == "tcpstates") && p.is_file())
    })
}
