//! The steps of a run, in order, and what each one measures.

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::AtomicU32,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use closewait_host::command::find_program;
use serde_json::Value;

use crate::scrape::{free_port, http_get, Metrics};

use super::{
    launch::{find_tcpstates, Tracer, PARK_TIMEOUT, START_SUMMARY},
    measure::{bpf_progs, match_dwell, status_kib, BpfStats, Dwell, ProgStats},
    plan::{
        rotated, split, Config, Plan, CPU_TEST_RATE, DRAIN, DWELL_PORT, HOLD, RSS_DRAIN,
        RSS_FIRST_PORT, STARTUP_PORT,
    },
    process::{check_interrupted, number, pause, read_json_lines, summary_of},
};

/// What runs next to the recv-heavy load.
pub(super) const RECV_CONFIGS: [Config; 4] = [
    Config::NoTracer,
    Config::Closewait,
    Config::ClosewaitStacks,
    Config::ClosewaitEofReads,
];

/// What the start-up step reads of closewait-trace's output.
const STARTUP_KEEP: &[&str] = &["start", "existing", "summary"];

/// One run: its sizes, the binaries it starts, where its files go, and the peers it found.
pub(super) struct Bench {
    pub(super) plan: Plan,
    pub(super) trace: PathBuf,
    pub(super) churn: PathBuf,
    pub(super) netns: String,
    pub(super) out_dir: PathBuf,
    pub(super) peers: BTreeMap<Config, PathBuf>,
    /// Peers that could not be used, with the reason.
    pub(super) unavailable: BTreeMap<Config, String>,
    /// closewait-trace's start line (version, attach mode), from its first default-mode run.
    pub(super) trace_start: Option<Value>,
    pub(super) log_seq: AtomicU32,
}

/// One load run next to one configuration.
pub(super) struct Sample {
    pub(super) rate: f64,
    pub(super) connections: f64,
    pub(super) errors: f64,
    pub(super) wall_s: f64,
    /// The tracer's CPU time (user + system) during the load.
    pub(super) cpu_s: Option<f64>,
    /// The tracer's BPF programs at the end of the load.
    pub(super) progs: Vec<ProgStats>,
    /// closewait-trace's summary line.
    pub(super) summary: Option<Value>,
}

pub(super) struct Round {
    pub(super) order: Vec<Config>,
    pub(super) samples: BTreeMap<Config, Sample>,
}

pub(super) struct Startup {
    pub(super) parked: u64,
    pub(super) runs: Vec<StartRun>,
}

/// One start of closewait-trace with sockets parked in CLOSE_WAIT.
pub(super) struct StartRun {
    /// Evidence and diagnosis gathered (the default), or not (the hidden
    /// `--no-evidence`: the baseline).
    pub(super) evidence: bool,
    /// Spawn to the start line, in seconds.
    pub(super) start_s: f64,
    /// The start line's `existing`.
    pub(super) existing: u64,
    /// Spawn to the last `existing` report, in seconds.
    pub(super) reported_s: f64,
    /// `existing` reports that carried a diagnosis.
    pub(super) diagnosed: u64,
}

pub(super) struct Rss {
    pub(super) parked: u64,
    /// Tracked (in the table), before the threshold: [`RSS_DRAIN`] after parking.
    pub(super) hwm_kib: u64,
    pub(super) rss_kib: u64,
    /// Every socket flagged stuck and reported: owners, evidence, diagnosis, groups.
    pub(super) hwm_stuck_kib: u64,
    pub(super) rss_stuck_kib: u64,
    pub(super) in_close_wait: u64,
    pub(super) lost: u64,
}

/// Each step's result, or why it failed.
pub(super) struct Results {
    pub(super) throughput: Result<Vec<Round>>,
    pub(super) bpf_cost: Result<Vec<Round>>,
    pub(super) cpu: Result<Vec<Sample>>,
    pub(super) dwell: Result<Dwell>,
    pub(super) startup: Result<Startup>,
    pub(super) rss: Result<Rss>,
    pub(super) recv: Result<Vec<Round>>,
}

impl Bench {
    pub(super) fn new(
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
            (Config::Bpftrace, find_program("bpftrace")),
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
    pub(super) fn run_all(&mut self) -> Results {
        let throughput = self.throughput();
        let bpf_cost = self.bpf_cost();
        let cpu = self.cpu_at_rate();
        let dwell = self.dwell();
        let startup = self.startup();
        let rss = self.rss();
        let recv = self.recv_heavy();
        Results {
            throughput,
            bpf_cost,
            cpu,
            dwell,
            startup,
            rss,
            recv,
        }
    }

    /// Step 1: the rate of churn at full speed next to each configuration.
    fn throughput(&mut self) -> Result<Vec<Round>> {
        let load = ["--duration".to_owned(), self.plan.load()];
        self.rounds("throughput", &Config::ALL, &load)
    }

    /// Step 2: the same with kernel BPF statistics on, for the programs' run time.
    fn bpf_cost(&mut self) -> Result<Vec<Round>> {
        let _stats = BpfStats::enable()?;
        let load = ["--duration".to_owned(), self.plan.load()];
        self.rounds("bpf cost", &Config::TRACERS, &load)
    }

    /// Step 7: a recv-heavy load (one recv() per 64-byte message) next to
    /// closewait-trace by default, with stacks on, and with the EOF-read
    /// recorder on `sock:sock_recv_length` armed: what it costs every read.
    fn recv_heavy(&mut self) -> Result<Vec<Round>> {
        let load = ["--recv".to_owned(), self.plan.load()];
        self.rounds("recv-heavy", &RECV_CONFIGS, &load)
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

    /// Step 3: closewait-trace's CPU use at a fixed connection rate.
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

    /// Step 4: closewait-trace's dwell times against churn's ground truth.
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

    /// Step 5: time from spawning closewait-trace to its start line and to its last
    /// `existing` report, with sockets already parked in CLOSE_WAIT; with evidence and
    /// without (the baseline), alternating.
    fn startup(&mut self) -> Result<Startup> {
        let count = self.plan.startup_park;
        eprintln!("==> start-up with {count} sockets in CLOSE_WAIT");
        let mut park = self.spawn_park(count, STARTUP_PORT)?;
        let parked = park.wait_ready()?;
        let mut runs = Vec::new();
        for round in 0..self.plan.rounds {
            for i in 0..2 {
                let evidence = (round + i) % 2 == 0;
                let extra: &[&str] = if evidence { &[] } else { &["--no-evidence"] };
                let tracer = self.start_tracer(Config::Closewait, extra, STARTUP_KEEP)?;
                let existing = tracer.start_field("existing")? as u64;
                let n = usize::try_from(existing)?;
                let (reports, reported_after) = tracer.take("existing", n, PARK_TIMEOUT)?;
                let diagnosed = reports
                    .iter()
                    .filter(|r| r.get("diagnosis").is_some_and(|d| !d.is_null()))
                    .count();
                runs.push(StartRun {
                    evidence,
                    start_s: tracer.ready_after.as_secs_f64(),
                    existing,
                    reported_s: reported_after.as_secs_f64(),
                    diagnosed: diagnosed as u64,
                });
                tracer.stop()?;
            }
        }
        park.release()?;
        Ok(Startup { parked, runs })
    }

    /// Step 6: closewait-trace's memory with many sockets in CLOSE_WAIT: tracked (seen
    /// entering, under a threshold they do not reach), then reported (found at start and
    /// past the threshold: owners, evidence, diagnosis, groups).
    fn rss(&mut self) -> Result<Rss> {
        let (total, processes) = (self.plan.rss_park, self.plan.rss_processes);
        eprintln!("==> memory with {total} sockets in CLOSE_WAIT ({processes} churn processes)");
        let tracer = self.start_tracer(Config::Closewait, &["--threshold", "1h"], START_SUMMARY)?;
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
        let (in_close_wait, lost) = (number(summary, "in_close_wait")?, number(summary, "lost")?);

        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let flag = metrics.to_string();
        let tracer = self.start_tracer(Config::Closewait, &["--metrics", &flag], START_SUMMARY)?;
        let deadline = Instant::now() + PARK_TIMEOUT;
        while Metrics::parse(&http_get(metrics, "/metrics")?).stuck < parked as f64 {
            ensure!(
                Instant::now() < deadline,
                "not all {parked} sockets flagged stuck"
            );
            pause(Duration::from_millis(200))?;
        }
        let pid = tracer.proc.pid();
        let hwm_stuck_kib = status_kib(pid, "VmHWM")?;
        let rss_stuck_kib = status_kib(pid, "VmRSS")?;
        tracer.stop()?;
        for park in parks {
            park.release()?;
        }
        Ok(Rss {
            parked,
            hwm_kib,
            rss_kib,
            hwm_stuck_kib,
            rss_stuck_kib,
            in_close_wait: in_close_wait as u64,
            lost: lost as u64,
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
}
