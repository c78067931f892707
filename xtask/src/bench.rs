//! `cargo xtask bench`: what closewait-trace costs and how accurate it is, next to an empty
//! program on the same hook and two peer tracers (libbpf-tools' `tcpstates`, `bpftrace`).
//!
//! Orchestration only. The load is `churn` (closewait-bench) on loopback inside a network
//! namespace made for the run, pinned to CPU 1; every tracer is pinned to CPU 0. The numbers
//! come from churn's and the tracers' JSON lines and from /proc. Throughput is measured in
//! interleaved rounds and reported as ratios to the no-tracer rate of the same round, because
//! these machines are noisy. The method is described in docs/benchmarks.md.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    env,
    fmt::Write as _,
    fs::{self, File},
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use serde_json::Value;

use crate::{cmd, setup};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Interleaved rounds of each measurement
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of load in each measurement
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Quick run of every step with tiny sizes (1 round of 1 s); checks only that each step
    /// produced numbers, never timings
    #[arg(long, conflicts_with_all = ["rounds", "seconds"])]
    smoke: bool,
}

/// Tracers run here; the load generator runs on the other CPU.
const TRACER_CPU: &str = "0";
const LOAD_CPU: &str = "1";
/// Server ports of the fixed-port steps (any port is free in our own network namespace).
const DWELL_PORT: u16 = 47000;
const STARTUP_PORT: u16 = 47100;
const RSS_FIRST_PORT: u16 = 47200;
/// The connection rate at which the agent's CPU use is measured.
const CPU_TEST_RATE: u32 = 20_000;
/// How long each socket of the dwell-accuracy run stays in CLOSE_WAIT.
const HOLD: &str = "50ms";
/// Peers print no "ready" line: after their program shows up, this long for the attach.
const PEER_SETTLE: Duration = Duration::from_secs(1);
/// Time for an agent to drain its ring buffer after the load stops.
const DRAIN: Duration = Duration::from_millis(500);
const RSS_DRAIN: Duration = Duration::from_secs(2);
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const PARK_TIMEOUT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(20);
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// Transitions into or out of CLOSE_WAIT (8) of TCP (6) sockets; field names from
/// /sys/kernel/tracing/events/sock/inet_sock_set_state/format.
const BPFTRACE_PROGRAM: &str = "tracepoint:sock:inet_sock_set_state \
    /args->protocol == 6 && (args->oldstate == 8 || args->newstate == 8)/ \
    { printf(\"%d %d %d %d\\n\", args->sport, args->dport, args->oldstate, args->newstate); }";
/// closewait-trace lines kept by default (the rest is read and dropped).
const START_SUMMARY: &[&str] = &["start", "summary"];

pub fn bench(args: &BenchArgs) -> Result<()> {
    ensure!(
        cmd::is_root(),
        "the benchmarks need root (BPF, network namespaces): run `sudo -E cargo xtask bench`"
    );
    catch_interrupts();
    setup::setup()?;
    let peer_setup = setup::setup_bench().err().map(|err| format!("{err:#}"));
    if let Some(err) = &peer_setup {
        eprintln!("bench: peers may be unavailable: {err}");
    }
    mount_tracefs();
    let (trace, churn) = build()?;
    let out_dir = target_dir().join("bench");
    let logs = out_dir.join("logs");
    let _ = fs::remove_dir_all(&logs);
    fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    remove_stale_netns();
    let netns = Netns::create(format!("cwt-bench-{}", std::process::id()))?;

    let plan = Plan::new(args);
    let mut bench = Bench::new(plan, trace, churn, &netns.name, out_dir.clone(), peer_setup);
    let results = bench.run_all();
    let report = render(&bench, &results, &command_line());
    print!("{report}");
    let path = out_dir.join("report.md");
    fs::write(&path, &report).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("bench: report written to {}", path.display());

    let problems = results.problems(&bench.plan, &bench.unavailable);
    if !problems.is_empty() {
        bail!("some steps produced no data:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

/// Sizes of one run.
struct Plan {
    smoke: bool,
    rounds: usize,
    seconds: u64,
    hold_count: u32,
    startup_park: u32,
    rss_park: u32,
    rss_processes: u32,
}

impl Plan {
    fn new(args: &BenchArgs) -> Self {
        if args.smoke {
            return Self {
                smoke: true,
                rounds: 1,
                seconds: 1,
                hold_count: 20,
                startup_park: 200,
                rss_park: 2000,
                rss_processes: 2,
            };
        }
        Self {
            smoke: false,
            rounds: args.rounds.max(1),
            seconds: args.seconds.max(1),
            hold_count: 500,
            startup_park: 10_000,
            rss_park: 100_000,
            rss_processes: 6,
        }
    }

    fn load(&self) -> String {
        format!("{}s", self.seconds)
    }
}

/// What runs next to the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Config {
    NoTracer,
    Empty,
    Closewait,
    /// closewait-trace with creation stacks recorded from the start.
    ClosewaitStacks,
    Tcpstates,
    Bpftrace,
}

impl Config {
    const ALL: [Config; 6] = [
        Config::NoTracer,
        Config::Empty,
        Config::Closewait,
        Config::ClosewaitStacks,
        Config::Tcpstates,
        Config::Bpftrace,
    ];
    const TRACERS: [Config; 5] = [
        Config::Empty,
        Config::Closewait,
        Config::ClosewaitStacks,
        Config::Tcpstates,
        Config::Bpftrace,
    ];

    fn name(self) -> &'static str {
        match self {
            Config::NoTracer => "none",
            Config::Empty => "empty",
            Config::Closewait => "closewait",
            Config::ClosewaitStacks => "closewait-stacks",
            Config::Tcpstates => "tcpstates",
            Config::Bpftrace => "bpftrace",
        }
    }

    fn is_peer(self) -> bool {
        matches!(self, Config::Tcpstates | Config::Bpftrace)
    }
}

/// `configs` rotated left by `round`, so that each configuration takes every place in turn.
fn rotated(configs: &[Config], round: usize) -> Vec<Config> {
    let mut order = configs.to_vec();
    order.rotate_left(round % configs.len().max(1));
    order
}

// ---------------------------------------------------------------------------------------------
// The steps

struct Bench {
    plan: Plan,
    trace: PathBuf,
    churn: PathBuf,
    netns: String,
    out_dir: PathBuf,
    peers: BTreeMap<Config, PathBuf>,
    /// Peers that could not be used, with the reason.
    unavailable: BTreeMap<Config, String>,
    /// closewait-trace's start line (version, attach mode), from its first default-mode run.
    trace_start: Option<Value>,
    log_seq: AtomicU32,
}

/// One load run next to one configuration.
struct Sample {
    rate: f64,
    connections: f64,
    errors: f64,
    wall_s: f64,
    /// The tracer's CPU time (user + system) during the load.
    cpu_s: Option<f64>,
    /// The tracer's BPF programs at the end of the load.
    progs: Vec<ProgStats>,
    /// closewait-trace's summary line.
    summary: Option<Value>,
}

struct Round {
    order: Vec<Config>,
    samples: BTreeMap<Config, Sample>,
}

struct Dwell {
    truth: usize,
    closes: usize,
    /// |measured - true| of each matched socket, in ns.
    errors_ns: Vec<f64>,
}

struct Startup {
    parked: u64,
    /// Spawn to start line, in seconds, and the start line's `existing`.
    runs: Vec<(f64, u64)>,
}

struct Rss {
    parked: u64,
    hwm_kib: u64,
    rss_kib: u64,
    in_close_wait: u64,
    lost: u64,
}

/// Each step's result, or why it failed.
struct Results {
    throughput: Result<Vec<Round>>,
    bpf_cost: Result<Vec<Round>>,
    cpu: Result<Vec<Sample>>,
    dwell: Result<Dwell>,
    startup: Result<Startup>,
    rss: Result<Rss>,
}

impl Bench {
    fn new(
        plan: Plan,
        trace: PathBuf,
        churn: PathBuf,
        netns: &str,
        out_dir: PathBuf,
        peer_setup: Option<String>,
    ) -> Self {
        let mut peers = BTreeMap::new();
        let mut unavailable = BTreeMap::new();
        let not_installed = |what: &str| match &peer_setup {
            Some(err) => format!("{what} not installed ({err})"),
            None => format!("{what} not installed"),
        };
        for (config, found) in [
            (Config::Tcpstates, find_tcpstates()),
            (Config::Bpftrace, cmd::find_program("bpftrace")),
        ] {
            match found {
                Some(path) => {
                    peers.insert(config, path);
                }
                None => {
                    unavailable.insert(config, not_installed(config.name()));
                }
            }
        }
        Self {
            plan,
            trace,
            churn,
            netns: netns.to_owned(),
            out_dir,
            peers,
            unavailable,
            trace_start: None,
            log_seq: AtomicU32::new(0),
        }
    }

    /// Runs every step, even after one fails, so one run shows all problems (after an
    /// interrupt, the remaining steps fail at once).
    fn run_all(&mut self) -> Results {
        let throughput = self.throughput();
        let bpf_cost = self.bpf_cost();
        let cpu = self.cpu_at_rate();
        let dwell = self.dwell();
        let startup = self.startup();
        let rss = self.rss();
        Results {
            throughput,
            bpf_cost,
            cpu,
            dwell,
            startup,
            rss,
        }
    }

    /// Step 2: the rate of churn at full speed next to each configuration.
    fn throughput(&mut self) -> Result<Vec<Round>> {
        let load = ["--duration".to_owned(), self.plan.load()];
        self.rounds("throughput", &Config::ALL, &load)
    }

    /// Step 3: the same with kernel BPF statistics on, for the programs' run time.
    fn bpf_cost(&mut self) -> Result<Vec<Round>> {
        let _stats = BpfStats::enable()?;
        let load = ["--duration".to_owned(), self.plan.load()];
        self.rounds("bpf cost", &Config::TRACERS, &load)
    }

    /// `plan.rounds` rounds of `configs`, in an order rotated each round.
    fn rounds(&mut self, step: &str, configs: &[Config], load: &[String]) -> Result<Vec<Round>> {
        let mut rounds = Vec::new();
        for round in 0..self.plan.rounds {
            let order = rotated(configs, round);
            let mut samples = BTreeMap::new();
            for &config in &order {
                eprintln!(
                    "==> {step}, round {}/{}: {}",
                    round + 1,
                    self.plan.rounds,
                    config.name()
                );
                if let Some(sample) = self.measure(config, load)? {
                    samples.insert(config, sample);
                }
            }
            rounds.push(Round { order, samples });
        }
        Ok(rounds)
    }

    /// Step 4: closewait-trace's CPU use at a fixed connection rate.
    fn cpu_at_rate(&mut self) -> Result<Vec<Sample>> {
        let load = [
            "--duration".to_owned(),
            self.plan.load(),
            "--rate".to_owned(),
            CPU_TEST_RATE.to_string(),
        ];
        let mut samples = Vec::new();
        for round in 0..self.plan.rounds {
            eprintln!("==> agent CPU at {CPU_TEST_RATE}/s, round {}", round + 1);
            let sample = self.measure(Config::Closewait, &load)?;
            samples.push(sample.context("closewait-trace did not run")?);
        }
        Ok(samples)
    }

    /// Step 5: closewait-trace's dwell times against churn's ground truth.
    fn dwell(&mut self) -> Result<Dwell> {
        eprintln!(
            "==> dwell accuracy: {} sockets held {HOLD}",
            self.plan.hold_count
        );
        let port = DWELL_PORT.to_string();
        let filter = ["--all", "--port", port.as_str()];
        let tracer =
            self.start_tracer(Config::Closewait, &filter, &["start", "close", "summary"])?;
        let truth_file = self.out_dir.join("dwell-truth.jsonl");
        let _ = fs::remove_file(&truth_file);
        let hold = [
            "--port".to_owned(),
            port.clone(),
            "--hold".to_owned(),
            HOLD.to_owned(),
            "--count".to_owned(),
            self.plan.hold_count.to_string(),
            "--truth".to_owned(),
            truth_file.display().to_string(),
        ];
        self.run_churn(&hold, PARK_TIMEOUT)?;
        pause(DRAIN)?;
        let events = tracer.stop()?;
        let truth = read_json_lines(&truth_file)?;
        Ok(match_dwell(&truth, &events))
    }

    /// Step 6: time from spawning closewait-trace to its start line, with sockets already
    /// parked in CLOSE_WAIT.
    fn startup(&mut self) -> Result<Startup> {
        let count = self.plan.startup_park;
        eprintln!("==> start-up with {count} sockets in CLOSE_WAIT");
        let mut park = self.spawn_park(count, STARTUP_PORT)?;
        let parked = park.wait_ready()?;
        let mut runs = Vec::new();
        for _ in 0..self.plan.rounds {
            let tracer = self.start_tracer(Config::Closewait, &[], START_SUMMARY)?;
            let existing = tracer.start_field("existing")?;
            runs.push((tracer.ready_after.as_secs_f64(), existing as u64));
            tracer.stop()?;
        }
        park.release()?;
        Ok(Startup { parked, runs })
    }

    /// Step 7: closewait-trace's memory with many sockets in CLOSE_WAIT.
    fn rss(&mut self) -> Result<Rss> {
        let (total, processes) = (self.plan.rss_park, self.plan.rss_processes);
        eprintln!("==> memory with {total} sockets in CLOSE_WAIT ({processes} churn processes)");
        let tracer = self.start_tracer(Config::Closewait, &[], START_SUMMARY)?;
        let mut parks = Vec::new();
        for (i, count) in split(total, processes).into_iter().enumerate() {
            let port = u16::try_from(i)
                .ok()
                .and_then(|i| RSS_FIRST_PORT.checked_add(i))
                .context("too many park processes")?;
            parks.push(self.spawn_park(count, port)?);
        }
        let mut parked = 0;
        for park in &mut parks {
            parked += park.wait_ready()?;
        }
        pause(RSS_DRAIN)?;
        let pid = tracer.proc.pid();
        let hwm_kib = status_kib(pid, "VmHWM")?;
        let rss_kib = status_kib(pid, "VmRSS")?;
        let events = tracer.stop()?;
        let summary = summary_of(&events)?;
        for park in parks {
            park.release()?;
        }
        Ok(Rss {
            parked,
            hwm_kib,
            rss_kib,
            in_close_wait: number(summary, "in_close_wait")? as u64,
            lost: number(summary, "lost")? as u64,
        })
    }

    /// Runs churn with `load` next to `config`; `None` if `config` is an unavailable peer.
    fn measure(&mut self, config: Config, load: &[String]) -> Result<Option<Sample>> {
        if self.unavailable.contains_key(&config) {
            return Ok(None);
        }
        let tracer = match config {
            Config::NoTracer => None,
            _ => match self.start_tracer(config, &[], START_SUMMARY) {
                Ok(tracer) => Some(tracer),
                Err(err) if config.is_peer() => {
                    check_interrupted()?;
                    let reason = format!("failed to attach: {err:#}");
                    eprintln!("bench: {} unavailable: {reason}", config.name());
                    self.unavailable.insert(config, reason);
                    return Ok(None);
                }
                Err(err) => return Err(err),
            },
        };
        let cpu_before = tracer.as_ref().map(Tracer::cpu_seconds).transpose()?;
        let started = Instant::now();
        let result = self.run_churn(load, PARK_TIMEOUT)?;
        let wall_s = started.elapsed().as_secs_f64();
        let mut sample = Sample {
            rate: number(&result, "rate")?,
            connections: number(&result, "connections")?,
            errors: number(&result, "errors")?,
            wall_s,
            cpu_s: None,
            progs: Vec::new(),
            summary: None,
        };
        if let (Some(tracer), Some(before)) = (tracer, cpu_before) {
            sample.cpu_s = Some(tracer.cpu_seconds()? - before);
            sample.progs = bpf_progs(tracer.proc.pid())?;
            let is_closewait = tracer.lines.is_some();
            let events = tracer.stop()?;
            if is_closewait {
                sample.summary = Some(summary_of(&events)?.clone());
            }
        }
        Ok(Some(sample))
    }

    /// Starts `config`'s tracer pinned to the tracer CPU and waits until it is attached:
    /// closewait-trace's start line; for a peer, a BPF program among its file descriptors,
    /// then [`PEER_SETTLE`].
    fn start_tracer(
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
            Config::ClosewaitStacks => (self.trace.clone(), vec!["--json", "--stacks", "on"]),
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
    fn run_churn(&self, args: &[String], timeout: Duration) -> Result<Value> {
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
    fn spawn_park(&self, count: u32, port: u16) -> Result<Park> {
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

    /// A new file for a child's stderr: target/bench/logs/<seq>-<name>.stderr.
    fn log_file(&self, name: &str) -> PathBuf {
        let seq = self.log_seq.fetch_add(1, Ordering::Relaxed);
        let dir = self.out_dir.join("logs");
        dir.join(format!("{seq:03}-{name}.stderr"))
    }
}

/// Splits `total` into `parts` nearly equal counts.
fn split(total: u32, parts: u32) -> Vec<u32> {
    let parts = parts.max(1);
    (0..parts)
        .map(|i| total / parts + u32::from(i < total % parts))
        .collect()
}

/// Pairs closewait-trace's `close` events with churn's truth lines by (lport, rport); a tuple
/// that occurs more than once is paired in order.
fn match_dwell(truth: &[Value], events: &[Value]) -> Dwell {
    let tuple = |v: &Value| Some((v.get("lport")?.as_u64()?, v.get("rport")?.as_u64()?));
    let mut measured: HashMap<_, VecDeque<f64>> = HashMap::new();
    let closes = events.iter().filter(|v| kind(v) == "close");
    let mut close_count = 0;
    for close in closes {
        if let (Some(t), Some(ms)) = (tuple(close), close.get("dwell_ms").and_then(Value::as_f64)) {
            measured.entry(t).or_default().push_back(ms);
            close_count += 1;
        }
    }
    let mut dwell = Dwell {
        truth: 0,
        closes: close_count,
        errors_ns: Vec::new(),
    };
    for line in truth {
        let (Some(t), Some(ns)) = (tuple(line), line.get("dwell_ns").and_then(Value::as_f64))
        else {
            continue;
        };
        dwell.truth += 1;
        if let Some(ms) = measured.get_mut(&t).and_then(VecDeque::pop_front) {
            dwell.errors_ns.push((ms * 1e6 - ns).abs());
        }
    }
    dwell
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process, killed and reaped if still running when dropped (also on errors).
struct Proc {
    child: Child,
    what: String,
    /// Where its stderr goes.
    log: PathBuf,
}

impl Proc {
    fn spawn(mut command: Command, what: &str, log: PathBuf) -> Result<Self> {
        check_interrupted()?;
        let stderr =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        command.stderr(stderr);
        let child = command
            .spawn()
            .with_context(|| format!("failed to start: {}", cmd::display(&command)))?;
        Ok(Self {
            child,
            what: what.to_owned(),
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn take_stdout(&mut self) -> Result<impl Read + Send + 'static> {
        self.child.stdout.take().context("stdout is not a pipe")
    }

    /// Sends `signal` unless the process has exited (and so may have been reaped).
    fn signal(&mut self, signal: libc::c_int) -> Result<()> {
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
    fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
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
    fn check(&self, status: ExitStatus) -> Result<()> {
        if status.success() {
            return Ok(());
        }
        Err(self.failed(anyhow!("exited with {status}")))
    }

    /// `err` about this process, with the end of its stderr.
    fn failed(&self, err: anyhow::Error) -> anyhow::Error {
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

/// A running tracer.
struct Tracer {
    /// closewait-trace's JSON lines (`None` for peers, whose stdout is /dev/null).
    lines: Option<Lines>,
    start: Option<Value>,
    /// From spawn until attached.
    ready_after: Duration,
    proc: Proc,
}

impl Tracer {
    fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(self.proc.pid()).with_context(|| format!("CPU time of {}", self.proc.what))
    }

    fn start_field(&self, key: &str) -> Result<f64> {
        number(self.start.as_ref().context("no start line")?, key)
    }

    /// Stops it with SIGINT; the JSON lines it printed after its start line.
    fn stop(mut self) -> Result<Vec<Value>> {
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
struct Park {
    proc: Proc,
    lines: Lines,
}

impl Park {
    /// Waits for the ready line; how many sockets are parked.
    fn wait_ready(&mut self) -> Result<u64> {
        let ready = self.lines.wait_for("park", PARK_TIMEOUT);
        let ready = ready.map_err(|err| self.proc.failed(err))?;
        Ok(number(&ready, "parked")? as u64)
    }

    /// Closes its stdin, which releases the sockets, and waits for it to exit.
    fn release(mut self) -> Result<()> {
        drop(self.proc.child.stdin.take());
        let status = self.proc.wait(STOP_TIMEOUT)?;
        self.proc.check(status)
    }
}

/// A child's JSON stdout lines, read on a thread so that the child never blocks on a full
/// pipe. Lines that are not JSON objects, or whose kind is not kept, are dropped.
struct Lines {
    rx: mpsc::Receiver<Value>,
}

impl Lines {
    /// Keeps the lines whose `event` or `mode` is in `keep` (all if it is empty).
    fn spawn(out: impl Read + Send + 'static, keep: &'static [&'static str]) -> Self {
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
    fn wait_for(&self, wanted: &str, timeout: Duration) -> Result<Value> {
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

    /// The remaining lines, once the child has exited: up to the end of its output.
    fn rest(self) -> Result<Vec<Value>> {
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
fn kind(value: &Value) -> &str {
    let field = |key| value.get(key).and_then(Value::as_str);
    field("event").or_else(|| field("mode")).unwrap_or("")
}

fn number(value: &Value, key: &str) -> Result<f64> {
    value
        .get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("no number `{key}` in {value}"))
}

fn summary_of(events: &[Value]) -> Result<&Value> {
    let summary = events.iter().rev().find(|v| kind(v) == "summary");
    summary.context("closewait-trace printed no summary line")
}

fn read_json_lines(path: &Path) -> Result<Vec<Value>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let lines = text.lines().filter(|l| !l.trim().is_empty());
    lines
        .map(|l| {
            serde_json::from_str(l).with_context(|| format!("{}: bad line {l}", path.display()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// /proc

/// A BPF program's kernel statistics (run_time_ns and run_cnt count only while
/// kernel.bpf_stats_enabled is 1).
#[derive(Clone, Copy, Debug)]
struct ProgStats {
    id: u64,
    run_time_ns: u64,
    run_cnt: u64,
}

/// The BPF programs `pid` holds, from /proc/PID/fdinfo (one entry per program id: a program
/// may be open through several descriptors).
fn bpf_progs(pid: u32) -> Result<Vec<ProgStats>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let entries = fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))?;
    let mut progs = BTreeMap::new();
    for entry in entries {
        // A descriptor may close while we read: skip it.
        let Ok(text) = entry.and_then(|e| fs::read_to_string(e.path())) else {
            continue;
        };
        if let Some(prog) = parse_prog_fdinfo(&text) {
            progs.insert(prog.id, prog);
        }
    }
    Ok(progs.into_values().collect())
}

/// A BPF program descriptor's fdinfo has `prog_id` and `run_cnt` (a link's has no `run_cnt`).
fn parse_prog_fdinfo(text: &str) -> Option<ProgStats> {
    let field = |key: &str| {
        let value = text
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))?;
        value.trim().parse().ok()
    };
    Some(ProgStats {
        id: field("prog_id")?,
        run_time_ns: field("run_time_ns")?,
        run_cnt: field("run_cnt")?,
    })
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

/// User + system CPU time of process `pid` (all its threads), in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // Fields after the command name (which may hold spaces) start at field 3; utime and
    // stime are fields 14 and 15, in clock ticks.
    let (_, rest) = stat.rsplit_once(')').context("unexpected /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |field: usize| -> Result<u64> {
        let text = fields.get(field - 3).context("short /proc/PID/stat")?;
        text.parse()
            .with_context(|| format!("bad /proc/PID/stat field {field}"))
    };
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(per_second > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok((ticks(14)? + ticks(15)?) as f64 / per_second as f64)
}

/// A `kB` line of /proc/PID/status, such as VmHWM.
fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .with_context(|| format!("no {key} in {path}"))?;
    let kib = value.trim().trim_end_matches("kB").trim();
    kib.parse().with_context(|| format!("bad {key} in {path}"))
}

// ---------------------------------------------------------------------------------------------
// Environment

/// Builds closewait-trace and churn (release); their paths.
fn build() -> Result<(PathBuf, PathBuf)> {
    let mut cargo = cmd::cargo();
    // aya-build compiles the eBPF crate with `-Z build-std=core`; this allows it on stable.
    cargo.env("RUSTC_BOOTSTRAP", "1").args([
        "build",
        "--release",
        "-p",
        "closewait-user",
        "-p",
        "closewait-bench",
    ]);
    cmd::run_echoed(&mut cargo)?;
    let release = target_dir().join("release");
    Ok((release.join("closewait-trace"), release.join("churn")))
}

/// Cargo's target directory, as build.rs finds it: `CARGO_TARGET_DIR` (relative to the
/// workspace root) or `target`.
fn target_dir() -> PathBuf {
    let dir = env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
    cmd::workspace_root().join(dir)
}

/// The peers use classic tracepoints, which need tracefs (closewait-trace does not).
fn mount_tracefs() {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        return;
    }
    let mut mount = Command::new("mount");
    mount.args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]);
    if let Err(err) = cmd::run_echoed(&mut mount) {
        eprintln!("bench: peers may fail to attach: {err:#}");
    }
}

/// libbpf-tools' tcpstates: on PATH, or wherever the Debian package put it.
fn find_tcpstates() -> Option<PathBuf> {
    cmd::find_program("tcpstates").or_else(|| {
        let files = cmd::probe(Command::new("dpkg").args(["-L", "libbpf-tools"]))?;
        files
            .lines()
            .map(PathBuf::from)
            .find(|p| p.file_name().is_some_and(|n| n == "tcpstates") && p.is_file())
    })
}

/// A network namespace of our own, deleted when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: String) -> Result<Self> {
        cmd::run_echoed(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Self { name };
        cmd::run(Command::new("ip").args(["-n", &netns.name, "link", "set", "lo", "up"]))?;
        Ok(netns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let mut delete = Command::new("ip");
        delete.args(["netns", "delete", &self.name]);
        if let Err(err) = cmd::run_echoed(&mut delete) {
            eprintln!("bench: warning: {err:#}");
        }
    }
}

/// Deletes namespaces left by earlier runs that were killed (their process is gone).
fn remove_stale_netns() {
    let Some(list) = cmd::probe(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix("cwt-bench-") else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            drop(Netns {
                name: name.to_owned(),
            });
        }
    }
}

/// kernel.bpf_stats_enabled set to 1, restored when dropped.
struct BpfStats {
    old: String,
}

impl BpfStats {
    fn enable() -> Result<Self> {
        let old =
            fs::read_to_string(BPF_STATS).with_context(|| format!("cannot read {BPF_STATS}"))?;
        fs::write(BPF_STATS, "1").with_context(|| format!("cannot write {BPF_STATS}"))?;
        Ok(Self { old })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(err) = fs::write(BPF_STATS, self.old.trim()) {
            eprintln!("bench: warning: cannot restore {BPF_STATS}: {err}");
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// On Ctrl-C or SIGTERM, stop at the next wait instead of dying, so that the guards
/// (network namespace, bpf_stats_enabled, child processes) clean up. Children get the
/// default disposition back at exec.
fn catch_interrupts() {
    let handler = on_interrupt as extern "C" fn(libc::c_int);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

fn check_interrupted() -> Result<()> {
    ensure!(!INTERRUPTED.load(Ordering::SeqCst), "interrupted");
    Ok(())
}

/// Sleeps for `duration`, failing early if interrupted.
fn pause(duration: Duration) -> Result<()> {
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

/// The command as the user typed it.
fn command_line() -> String {
    let args: Vec<String> = env::args().skip(1).collect();
    format!("cargo xtask {}", args.join(" "))
}

// ---------------------------------------------------------------------------------------------
// Checks and report

impl Results {
    /// Steps that failed or produced no numbers (never timings).
    fn problems(&self, plan: &Plan, unavailable: &BTreeMap<Config, String>) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |step: &str, result: Result<()>| {
            if let Err(err) = result {
                problems.push(format!("{step}: {err:#}"));
            }
        };
        let wanted = |configs: &[Config]| -> Vec<Config> {
            let available = |c: &&Config| !unavailable.contains_key(c);
            configs.iter().filter(available).copied().collect()
        };
        check(
            "throughput",
            check_rounds(&self.throughput, &wanted(&Config::ALL), false),
        );
        check(
            "bpf cost",
            check_rounds(&self.bpf_cost, &wanted(&Config::TRACERS), true),
        );
        check("agent CPU", check_cpu(&self.cpu));
        check("dwell accuracy", check_dwell(&self.dwell));
        check("start-up", check_startup(&self.startup, plan));
        check("memory", check_rss(&self.rss, plan));
        problems
    }
}

fn check_rounds(rounds: &Result<Vec<Round>>, configs: &[Config], bpf_runs: bool) -> Result<()> {
    let rounds = rounds.as_ref().map_err(|e| anyhow!("{e:#}"))?;
    ensure!(!rounds.is_empty(), "no rounds");
    for (i, round) in rounds.iter().enumerate() {
        for config in configs {
            let name = config.name();
            let sample = round.samples.get(config);
            let sample = sample.with_context(|| format!("round {}: no {name} sample", i + 1))?;
            ensure!(sample.rate > 0.0, "round {}: {name}: zero rate", i + 1);
            let runs = total_runs(sample);
            ensure!(
                !bpf_runs || runs > 0,
                "round {}: {name}: no BPF runs",
                i + 1
            );
        }
    }
    Ok(())
}

fn check_cpu(samples: &Result<Vec<Sample>>) -> Result<()> {
    let samples = samples.as_ref().map_err(|e| anyhow!("{e:#}"))?;
    ensure!(!samples.is_empty(), "no runs");
    for sample in samples {
        ensure!(sample.rate > 0.0, "zero rate");
        ensure!(sample.cpu_s.is_some(), "no CPU time");
    }
    Ok(())
}

fn check_dwell(dwell: &Result<Dwell>) -> Result<()> {
    let dwell = dwell.as_ref().map_err(|e| anyhow!("{e:#}"))?;
    ensure!(dwell.truth > 0, "churn wrote no truth lines");
    ensure!(
        !dwell.errors_ns.is_empty(),
        "no close event matched a truth line"
    );
    Ok(())
}

fn check_startup(startup: &Result<Startup>, plan: &Plan) -> Result<()> {
    let startup = startup.as_ref().map_err(|e| anyhow!("{e:#}"))?;
    let wanted = u64::from(plan.startup_park);
    ensure!(
        startup.parked >= wanted,
        "churn parked {} sockets",
        startup.parked
    );
    ensure!(!startup.runs.is_empty(), "no start line");
    for &(_, existing) in &startup.runs {
        ensure!(
            existing >= wanted,
            "start line: existing {existing} < {wanted}"
        );
    }
    Ok(())
}

fn check_rss(rss: &Result<Rss>, plan: &Plan) -> Result<()> {
    let rss = rss.as_ref().map_err(|e| anyhow!("{e:#}"))?;
    let wanted = u64::from(plan.rss_park);
    ensure!(rss.parked >= wanted, "churn parked {} sockets", rss.parked);
    ensure!(rss.hwm_kib > 0, "no VmHWM");
    ensure!(rss.in_close_wait > 0, "summary: in_close_wait 0");
    Ok(())
}

/// Median, min and max.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// "median (min–max)" with `f` for each number.
    fn show(&self, f: impl Fn(f64) -> String) -> String {
        format!("{} ({}–{})", f(self.median), f(self.min), f(self.max))
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted.get(rank.clamp(1, n.max(1)) - 1).copied()
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn int(x: f64) -> String {
    format!("{x:.0}")
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Ratios of `config`'s rate to the no-tracer rate of the same round.
fn ratios(rounds: &[Round], config: Config) -> Vec<f64> {
    let ratio = |r: &Round| {
        let base = r.samples.get(&Config::NoTracer)?.rate;
        Some(r.samples.get(&config)?.rate / base)
    };
    rounds.iter().filter_map(ratio).collect()
}

fn samples(rounds: &[Round], config: Config) -> impl Iterator<Item = &Sample> {
    rounds.iter().filter_map(move |r| r.samples.get(&config))
}

fn summary_number(sample: &Sample, key: &str) -> Option<f64> {
    sample.summary.as_ref()?.get(key)?.as_f64()
}

/// Agent CPU milliseconds per 10,000 connections.
fn cpu_per_10k(sample: &Sample) -> Option<f64> {
    Some(sample.cpu_s? * 1e3 / (sample.connections / 10_000.0))
}

/// Total run time / total runs of the sample's BPF programs, in ns.
fn ns_per_run(sample: &Sample) -> Option<f64> {
    let runs = total_runs(sample);
    let ns: u64 = sample.progs.iter().map(|p| p.run_time_ns).sum();
    (runs > 0).then(|| ns as f64 / runs as f64)
}

fn render(bench: &Bench, results: &Results, command: &str) -> String {
    let mut out = String::new();
    render_header(&mut out, bench, command);
    render_section(
        &mut out,
        "Throughput",
        &results.throughput,
        |out, rounds| render_throughput(out, rounds, &bench.unavailable),
    );
    render_section(
        &mut out,
        "BPF program cost",
        &results.bpf_cost,
        |out, rounds| render_bpf_cost(out, rounds, &bench.unavailable),
    );
    let cpu_title = format!("Agent CPU at {CPU_TEST_RATE} connections/s");
    render_section(&mut out, &cpu_title, &results.cpu, |out, s| {
        render_cpu(out, s)
    });
    render_section(&mut out, "Dwell accuracy", &results.dwell, render_dwell);
    render_section(&mut out, "Start-up", &results.startup, render_startup);
    render_section(&mut out, "Memory", &results.rss, render_rss);
    if bench.plan.smoke {
        out.push_str("## Budget\n\nSmoke run (tiny sizes): no budget comparison.\n");
    } else {
        render_budget(&mut out, results);
    }
    out
}

fn render_section<T>(
    out: &mut String,
    title: &str,
    result: &Result<T>,
    body: impl FnOnce(&mut String, &T),
) {
    let _ = writeln!(out, "## {title}\n");
    match result {
        Ok(value) => body(out, value),
        Err(err) => {
            let _ = writeln!(out, "**failed**: {err:#}");
        }
    }
    out.push('\n');
}

fn render_header(out: &mut String, bench: &Bench, command: &str) {
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("model name"))?;
            Some(line.split_once(':')?.1.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let date = cmd::probe(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
    let start = bench.trace_start.as_ref();
    let field = |key| start.and_then(|s| s.get(key)?.as_str()).unwrap_or("?");
    let plan = &bench.plan;
    let _ = writeln!(out, "# closewait-trace benchmarks\n");
    let _ = writeln!(out, "- command: `{command}`");
    let _ = writeln!(out, "- date: {}", date.unwrap_or_default().trim());
    let _ = writeln!(
        out,
        "- machine: Linux {} ({cpus} CPUs, {cpu_model})",
        kernel.trim()
    );
    let _ = writeln!(
        out,
        "- closewait-trace {} (attach: {}, source {}); peers: {}",
        field("version"),
        field("attach"),
        source_revision(),
        peer_versions(bench)
    );
    let _ = writeln!(
        out,
        "- {} round(s) of {} s of load; churn on CPU {LOAD_CPU} in network namespace \
         `{}`, tracers on CPU {TRACER_CPU}",
        plan.rounds, plan.seconds, bench.netns
    );
    let _ = writeln!(
        out,
        "- logs (stderr of every process): {}\n",
        bench.out_dir.join("logs").display()
    );
}

/// The commit the binaries were built from, and whether the tree had changes.
fn source_revision() -> String {
    let git = |args: &[&str]| {
        let mut git = Command::new("git");
        git.current_dir(cmd::workspace_root()).args(args);
        cmd::probe(&mut git)
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.trim().is_empty());
    let changes = if dirty { " + uncommitted changes" } else { "" };
    format!("{}{changes}", head.trim())
}

fn peer_versions(bench: &Bench) -> String {
    let version = |package: &str| {
        let query = Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", package])
            .output();
        query
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let describe = |config: Config, package: &str| match bench.peers.get(&config) {
        Some(path) => format!(
            "{} ({package} {})",
            path.display(),
            version(package).unwrap_or_else(|| "?".into())
        ),
        None => format!("{} not installed", config.name()),
    };
    format!(
        "{}, {}",
        describe(Config::Tcpstates, "libbpf-tools"),
        describe(Config::Bpftrace, "bpftrace")
    )
}

fn render_throughput(out: &mut String, rounds: &[Round], unavailable: &BTreeMap<Config, String>) {
    out.push_str(
        "Churn at full speed next to each configuration; rate relative to `none` (no tracer) \
         in the same round.\n\n\
         | config | rate / none: median (min–max) | median rate (conn/s) | lost events | \
         events seen / connections | agent CPU ms per 10k conn |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for config in Config::ALL {
        if let Some(reason) = unavailable.get(&config) {
            let _ = writeln!(out, "| {} | unavailable: {reason} | | | | |", config.name());
            continue;
        }
        let dash = || "—".to_owned();
        let show = |values: Vec<f64>, f: fn(f64) -> String| {
            Spread::of(values).map_or_else(dash, |s| s.show(f))
        };
        let ratio = show(ratios(rounds, config), pct);
        let rate = Spread::of(samples(rounds, config).map(|s| s.rate))
            .map_or_else(dash, |s| int(s.median));
        let closewait = matches!(
            config,
            Config::Empty | Config::Closewait | Config::ClosewaitStacks
        );
        let lost = samples(rounds, config).filter_map(|s| summary_number(s, "lost"));
        let lost = if closewait { int(lost.sum()) } else { dash() };
        let seen = samples(rounds, config)
            .filter_map(|s| Some(summary_number(s, "entered")? / s.connections))
            .collect();
        let seen = if matches!(config, Config::Closewait | Config::ClosewaitStacks) {
            show(seen, |x| format!("{x:.3}"))
        } else {
            dash()
        };
        let cpu = show(
            samples(rounds, config).filter_map(cpu_per_10k).collect(),
            |x| format!("{x:.1}"),
        );
        let name = config.name();
        let _ = writeln!(
            out,
            "| {name} | {ratio} | {rate} | {lost} | {seen} | {cpu} |"
        );
    }
    out.push_str("\nRates per round (conn/s), in the order run:\n\n| round | order |");
    for config in Config::ALL {
        let _ = write!(out, " {} |", config.name());
    }
    out.push_str("\n| --- | --- |");
    out.push_str(&" --- |".repeat(Config::ALL.len()));
    out.push('\n');
    for (i, round) in rounds.iter().enumerate() {
        let order: Vec<&str> = round.order.iter().map(|c| c.name()).collect();
        let _ = write!(out, "| {} | {} |", i + 1, order.join(", "));
        for config in Config::ALL {
            let rate = round
                .samples
                .get(&config)
                .map_or("—".into(), |s| int(s.rate));
            let _ = write!(out, " {rate} |");
        }
        out.push('\n');
    }
    let errors: f64 = rounds
        .iter()
        .flat_map(|r| r.samples.values())
        .map(|s| s.errors)
        .sum();
    let _ = writeln!(out, "\nchurn errors over all runs: {errors:.0}");
}

fn render_bpf_cost(out: &mut String, rounds: &[Round], unavailable: &BTreeMap<Config, String>) {
    out.push_str(
        "Separate rounds with kernel.bpf_stats_enabled=1: run_time_ns and run_cnt of the BPF \
         programs the tracer holds (/proc/PID/fdinfo), per connection of churn.\n\n\
         | tracer | ns per run: median (min–max) | runs per connection | BPF ns per \
         connection | programs, last round (id: ns/run × runs/conn) |\n\
         | --- | --- | --- | --- | --- |\n",
    );
    for config in Config::TRACERS {
        let name = config.name();
        if let Some(reason) = unavailable.get(&config) {
            let _ = writeln!(out, "| {name} | unavailable: {reason} | | | |");
            continue;
        }
        let median = |f: fn(&Sample) -> Option<f64>, show: fn(f64) -> String| {
            let spread = Spread::of(samples(rounds, config).filter_map(f));
            spread.map_or("—".into(), |s| show(s.median))
        };
        let ns = Spread::of(samples(rounds, config).filter_map(ns_per_run));
        let ns = ns.map_or("—".into(), |s| s.show(int));
        let runs = median(
            |s| Some(total_runs(s) as f64 / s.connections),
            |x| format!("{x:.2}"),
        );
        let per_conn = median(
            |s| Some(s.progs.iter().map(|p| p.run_time_ns).sum::<u64>() as f64 / s.connections),
            int,
        );
        let progs = samples(rounds, config).last().map_or("—".into(), |s| {
            let prog = |p: &ProgStats| {
                let ns = p.run_time_ns as f64 / p.run_cnt.max(1) as f64;
                format!(
                    "{}: {ns:.0} × {:.2}",
                    p.id,
                    p.run_cnt as f64 / s.connections
                )
            };
            s.progs.iter().map(prog).collect::<Vec<_>>().join(", ")
        });
        let _ = writeln!(out, "| {name} | {ns} | {runs} | {per_conn} | {progs} |");
    }
}

fn total_runs(sample: &Sample) -> u64 {
    sample.progs.iter().map(|p| p.run_cnt).sum()
}

fn render_cpu(out: &mut String, samples: &[Sample]) {
    out.push_str(
        "closewait-trace (default mode) during churn `--rate` runs; CPU = agent user+system \
         time / wall time.\n\n\
         | run | achieved rate (conn/s) | agent CPU s | wall s | CPU % of one core |\n\
         | --- | --- | --- | --- | --- |\n",
    );
    for (i, s) in samples.iter().enumerate() {
        let cpu = s.cpu_s.unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "| {} | {} | {cpu:.2} | {:.2} | {:.2}% |",
            i + 1,
            int(s.rate),
            s.wall_s,
            cpu / s.wall_s * 100.0
        );
    }
    if let Some(spread) = Spread::of(samples.iter().filter_map(cpu_percent)) {
        let _ = writeln!(
            out,
            "\nCPU % of one core: {}",
            spread.show(|x| format!("{x:.2}%"))
        );
    }
}

fn cpu_percent(sample: &Sample) -> Option<f64> {
    Some(sample.cpu_s? / sample.wall_s * 100.0)
}

fn render_dwell(out: &mut String, dwell: &Dwell) {
    let mut errors = dwell.errors_ns.clone();
    errors.sort_by(f64::total_cmp);
    let us = |p: f64| percentile(&errors, p).map_or("—".into(), |ns| format!("{:.1}", ns / 1e3));
    let _ = writeln!(
        out,
        "`churn --hold {HOLD}` ground truth against closewait-trace `--all --port {DWELL_PORT}` \
         close events, matched by (lport, rport); error = |dwell_ms × 10⁶ − dwell_ns|.\n\n\
         | truth lines | close events | matched | error p50 (µs) | p99 (µs) | max (µs) |\n\
         | --- | --- | --- | --- | --- | --- |\n\
         | {} | {} | {} | {} | {} | {} |",
        dwell.truth,
        dwell.closes,
        errors.len(),
        us(50.0),
        us(99.0),
        us(100.0)
    );
}

fn render_startup(out: &mut String, startup: &Startup) {
    let times = Spread::of(startup.runs.iter().map(|r| r.0));
    let times = times.map_or("—".into(), |s| s.show(|x| format!("{:.0} ms", x * 1e3)));
    let existing: Vec<String> = startup.runs.iter().map(|r| r.1.to_string()).collect();
    let _ = writeln!(
        out,
        "closewait-trace spawned (pinned) with sockets parked in CLOSE_WAIT, timed to its \
         start line ({} runs).\n\n\
         | parked | start.existing | spawn → start line: median (min–max) |\n\
         | --- | --- | --- |\n| {} | {} | {times} |",
        startup.runs.len(),
        startup.parked,
        existing.join(", ")
    );
}

fn render_rss(out: &mut String, rss: &Rss) {
    let _ = writeln!(
        out,
        "closewait-trace (default mode) while churn parks sockets in CLOSE_WAIT; \
         /proc/PID/status {}s after all are parked.\n\n\
         | parked | summary in_close_wait | lost | VmHWM | VmRSS |\n\
         | --- | --- | --- | --- | --- |\n| {} | {} | {} | {} | {} |",
        RSS_DRAIN.as_secs(),
        rss.parked,
        rss.in_close_wait,
        rss.lost,
        mib(rss.hwm_kib),
        mib(rss.rss_kib)
    );
}

/// A budget row's verdict: `None` when met, else by how much it is missed.
type Missed = Option<String>;

fn missed_by(excess: f64, show: impl Fn(f64) -> String) -> Missed {
    (excess > 0.0).then(|| show(excess))
}

fn render_budget(out: &mut String, results: &Results) {
    out.push_str(
        "## Budget\n\nInformational (noisy machine): nothing here fails the run.\n\n\
         | item | budget | measured | verdict |\n| --- | --- | --- | --- |\n",
    );
    let mut row = |item: &str, budget: &str, measured: Option<(String, Missed)>| {
        let (measured, verdict) = match measured {
            Some((text, None)) => (text, "met".to_owned()),
            Some((text, Some(by))) => (text, format!("**missed by {by}**")),
            None => ("no data".into(), String::new()),
        };
        let _ = writeln!(out, "| {item} | {budget} | {measured} | {verdict} |");
    };
    let pp = |x: f64| format!("{:.2} pp", x * 100.0);
    let rounds = results.throughput.as_ref().ok();
    let ratio = |c| rounds.and_then(|r| Spread::of(ratios(r, c)));
    let closewait = ratio(Config::Closewait).map(|s| {
        let text = s.show(|x| format!("{:.2}%", x * 100.0));
        (text, missed_by(0.97 - s.median, pp))
    });
    row("closewait rate / none (median)", ">= 97%", closewait);
    let overlap = ratio(Config::Closewait)
        .zip(ratio(Config::Empty))
        .map(|(c, e)| {
            let text = format!("closewait {}, empty {}", c.show(pct), e.show(pct));
            (text, missed_by(c.min.max(e.min) - c.max.min(e.max), pp))
        });
    row("closewait vs empty", "ranges overlap", overlap);
    let lost = rounds.map(|r| {
        let lost: f64 = samples(r, Config::Closewait)
            .filter_map(|s| summary_number(s, "lost"))
            .sum();
        (int(lost), missed_by(lost, int))
    });
    row("lost events at max churn", "0", lost);
    let p99 = results.dwell.as_ref().ok().and_then(|d| {
        let mut errors = d.errors_ns.clone();
        errors.sort_by(f64::total_cmp);
        percentile(&errors, 99.0)
    });
    let ms = |ns: f64| format!("{:.3} ms", ns / 1e6);
    let p99 = p99.map(|ns| (ms(ns), missed_by(ns - 1e6, ms)));
    row("dwell error p99", "<= 1 ms", p99);
    let cpu = results.cpu.as_ref().ok();
    let cpu = cpu.and_then(|s| Spread::of(s.iter().filter_map(cpu_percent)));
    let percent = |x: f64| format!("{x:.2}%");
    let cpu = cpu.map(|s| (s.show(percent), missed_by(s.median - 5.0, percent)));
    row("agent CPU at 20k conn/s (median)", "<= 5% of a core", cpu);
    let rss = results.rss.as_ref().ok();
    let rss = rss.map(|r| {
        let text = format!("{} VmHWM", mib(r.hwm_kib));
        let excess = r.hwm_kib as f64 - 64.0 * 1024.0;
        (
            text,
            missed_by(excess, |kib| format!("{:.1} MiB", kib / 1024.0)),
        )
    });
    row("memory, 100k sockets", "<= 64 MiB", rss);
    let start = results.startup.as_ref().ok();
    let start = start.and_then(|s| Spread::of(s.runs.iter().map(|r| r.0)));
    let msec = |x: f64| format!("{:.0} ms", x * 1e3);
    let start = start.map(|s| (s.show(msec), missed_by(s.max - 1.0, msec)));
    row("start with 10k existing (max)", "<= 1 s", start);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_and_split() {
        // A full turn plus one: the second configuration leads, the first
        // comes last.
        let n = Config::ALL.len();
        let order = rotated(&Config::ALL, n + 1);
        assert_eq!(order[0], Config::ALL[1]);
        assert_eq!(order[n - 1], Config::NoTracer);
        assert_eq!(rotated(&Config::ALL, n), Config::ALL.to_vec());
        assert_eq!(split(100_000, 6).iter().sum::<u32>(), 100_000);
        assert_eq!(split(2000, 2), vec![1000, 1000]);
    }

    #[test]
    fn fdinfo_of_programs_only() {
        let prog = "prog_type:\t26\nprog_id:\t345\nrun_time_ns:\t900\nrun_cnt:\t3\n";
        let link = "link_type:\traw_tracepoint\nprog_id:\t345\n";
        let stats = parse_prog_fdinfo(prog).expect("a program");
        assert_eq!((stats.id, stats.run_time_ns, stats.run_cnt), (345, 900, 3));
        assert!(parse_prog_fdinfo(link).is_none());
    }

    #[test]
    fn dwell_matching() {
        let truth: Vec<Value> = [
            r#"{"lport":5000,"rport":47000,"dwell_ns":50000000}"#,
            r#"{"lport":5001,"rport":47000,"dwell_ns":51000000}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
        let events: Vec<Value> = [
            r#"{"event":"close","lport":5000,"rport":47000,"dwell_ms":50.002}"#,
            r#"{"event":"close","lport":6000,"rport":47000,"dwell_ms":1.0}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
        let dwell = match_dwell(&truth, &events);
        assert_eq!(
            (dwell.truth, dwell.closes, dwell.errors_ns.len()),
            (2, 2, 1)
        );
        assert!((dwell.errors_ns[0] - 2000.0).abs() < 1.0);
    }

    #[test]
    fn spread_and_percentile() {
        let s = Spread::of([3.0, 1.0, 2.0, 10.0]).expect("values");
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 99.0), Some(99.0));
        assert_eq!(percentile(&sorted, 50.0), Some(50.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
