//! The soak (`cargo xtask soak`, binary `closewait-soak`): closewait-trace left running with
//! 100,000 sockets stuck across 10 processes in 5 network namespaces and full-speed churn;
//! in the middle the owners of 30,000 are killed with SIGKILL and new leakers start, and
//! later the tracer is stopped (SIGSTOP) at full churn so that its ring buffer stays full.
//! Every line of its stream is audited against the truth read from /proc: every socket the
//! kernel closed reported closed, every stuck one reported, nothing twice, nothing false; and
//! its memory, CPU and lost events are measured. Fails when any of that breaks.

mod ledger;
mod report;
mod world;

use std::{
    collections::BTreeSet,
    env, fs,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use closewait_host::{duration, netns, privileges::is_root};

use crate::harness::{
    built,
    measure::{cpu_seconds, status_kib},
    process::{catch_interrupts, check_interrupted, pause},
};
use crate::scrape::free_port;
pub use ledger::{Audit, Ledger};
use report::{Figures, Sample};
use world::{close_wait_everywhere, Leaker, Load, Tracer};

/// Prefix of the network namespaces the soak creates (`cwt-soak-<pid>-<n>`).
const NETNS_PREFIX: &str = "cwt-soak-";
/// The first leaker's listening port; the next ones count up.
const FIRST_PORT: u16 = 20000;
/// How long the stream may take to catch up with a change (a kill, new leakers, a resume).
const CONVERGE: Duration = Duration::from_secs(120);
/// Start-up ends this long into the churn, when every socket found at start
/// is flagged stuck and the first periodic scans (every 10 s) have run under
/// churn; memory is measured from then on. It comes before the kill at 30%:
/// the shortest soak is a minute.
const WARMUP: Duration = Duration::from_secs(15);
/// How often the timeline is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// End-of-run memory may exceed the start-up high-water mark by this fraction and this
/// much more, for the caches that fill as the run goes on (symbols of the leakers' code);
/// a per-connection leak at full churn exceeds it within a minute.
const HWM_GROWTH: f64 = 0.10;
const HWM_SLACK_KIB: u64 = 16 * 1024;

#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// How long the churn runs, with everything else happening within it
    #[arg(long, value_name = "DUR", default_value = "10m", value_parser = duration::parse)]
    pub duration: Duration,
    /// Sockets kept stuck in CLOSE_WAIT at all times
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub sockets: u64,
    /// Processes holding them (equal shares)
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub processes: u64,
    /// Network namespaces the processes are spread over
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub namespaces: u64,
    /// Sockets whose owners are killed (SIGKILL) at 30% of the run, and replaced
    #[arg(long, value_name = "N", default_value_t = 30_000)]
    pub kill: u64,
    /// At 60% of the run, stop the tracer (SIGSTOP) this long at full churn, so its ring
    /// buffer is full, while one more owner is killed and replaced
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = duration::parse)]
    pub ring_full: Duration,
}

impl SoakArgs {
    /// The same flags, for `cargo xtask soak` to pass on.
    pub fn to_args(&self) -> Vec<String> {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        vec![
            "--duration".into(),
            ms(self.duration),
            "--sockets".into(),
            self.sockets.to_string(),
            "--processes".into(),
            self.processes.to_string(),
            "--namespaces".into(),
            self.namespaces.to_string(),
            "--kill".into(),
            self.kill.to_string(),
            "--ring-full".into(),
            ms(self.ring_full),
        ]
    }

    fn check(&self) -> Result<u64> {
        ensure!(
            self.processes > 0 && self.namespaces > 0,
            "--processes and --namespaces must be at least 1"
        );
        ensure!(
            self.sockets.is_multiple_of(self.processes),
            "--sockets {} is not a multiple of --processes {}",
            self.sockets,
            self.processes
        );
        let per = self.sockets / self.processes;
        ensure!(per > 0, "--sockets must be at least --processes");
        ensure!(
            self.kill.is_multiple_of(per) && self.kill / per < self.processes,
            "--kill {} must be a multiple of the {per} sockets per process, and leave one \
             process",
            self.kill
        );
        ensure!(
            self.duration >= Duration::from_secs(60),
            "--duration must be at least 1m (start-up takes the first 15 s of the churn)"
        );
        ensure!(
            self.ring_full < self.duration / 4,
            "--ring-full must be less than a quarter of --duration"
        );
        Ok(per)
    }
}

/// Runs the soak with closewait-trace and churn from this binary's directory; prints the
/// report and writes it, with every process's stderr, to `soak/` in the target directory.
pub fn soak(args: &SoakArgs) -> Result<()> {
    ensure!(
        is_root(),
        "the soak needs root (BPF, network namespaces): run `sudo -E cargo xtask soak`"
    );
    let per = args.check()?;
    catch_interrupts();
    let exe = env::current_exe().context("cannot find this executable")?;
    let bin_dir = exe.parent().context("this executable has no directory")?;
    let trace = built(bin_dir, "closewait-trace", "soak")?;
    let churn = built(bin_dir, "churn", "soak")?;
    let out_dir = bin_dir.parent().unwrap_or(bin_dir).join("soak");
    let logs = out_dir.join("logs");
    let _ = fs::remove_dir_all(&logs);
    fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;

    netns::remove_stale(NETNS_PREFIX);
    let pid = std::process::id();
    let create = |name: String| {
        netns::Named::create(&name)
            .with_context(|| format!("cannot create network namespace {name}"))
    };
    let namespaces = (0..args.namespaces)
        .map(|i| create(format!("{NETNS_PREFIX}{pid}-{i}")))
        .collect::<Result<Vec<_>>>()?;
    let load_ns = create(format!("{NETNS_PREFIX}{pid}-load"))?;
    let mut run = Run {
        args: args.clone(),
        per,
        trace,
        churn,
        logs,
        namespaces: namespaces.iter().map(|n| n.name().to_owned()).collect(),
        netns_inodes: namespaces
            .iter()
            .chain([&load_ns])
            .map(|n| n.inode())
            .collect(),
        netns_paths: namespaces
            .iter()
            .chain([&load_ns])
            .map(|n| n.path())
            .collect(),
        load_ns: load_ns.name().to_owned(),
        next_port: FIRST_PORT,
        log_seq: 0,
        leakers: Vec::new(),
        gone: BTreeSet::new(),
        vanished: BTreeSet::new(),
        fresh: BTreeSet::new(),
        figures: Figures::default(),
    };
    let result = run.go();
    let report = report::render(args, &run.figures, result.as_ref().err());
    print!("{report}");
    let path = out_dir.join("report.md");
    fs::write(&path, &report).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("soak: report written to {}", path.display());
    result?;
    let problems = run.figures.problems();
    if !problems.is_empty() {
        bail!("the soak failed:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

struct Run {
    args: SoakArgs,
    per: u64,
    trace: PathBuf,
    churn: PathBuf,
    logs: PathBuf,
    namespaces: Vec<String>,
    netns_inodes: BTreeSet<u64>,
    netns_paths: Vec<PathBuf>,
    load_ns: String,
    next_port: u16,
    log_seq: u32,
    /// Leakers alive now.
    leakers: Vec<Leaker>,
    /// Sockets the kernel closed (their owner was killed or let them go).
    gone: BTreeSet<u64>,
    /// Sockets the kernel closed under their owner (a reset from the peer).
    vanished: BTreeSet<u64>,
    /// Sockets of the leakers started while tracing (capture armed): each
    /// should have its creation stack.
    fresh: BTreeSet<u64>,
    figures: Figures,
}

impl Run {
    fn go(&mut self) -> Result<()> {
        let started = Instant::now();
        eprintln!(
            "==> parking {} sockets in CLOSE_WAIT: {} processes in {} namespaces",
            self.args.sockets, self.args.processes, self.args.namespaces
        );
        for i in 0..self.args.processes {
            let ns = self.namespaces[(i % self.args.namespaces) as usize].clone();
            let leaker = self.spawn_leaker(&ns)?;
            self.leakers.push(leaker);
        }
        for leaker in &mut self.leakers {
            leaker.ready(self.per)?;
        }
        self.figures.park_s = started.elapsed().as_secs_f64();

        eprintln!("==> starting closewait-trace");
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let spawned = Instant::now();
        let log = self.log("closewait-trace");
        let mut tracer = Tracer::start(&self.trace, metrics, &[], log)?;
        self.figures.start_line_s = spawned.elapsed().as_secs_f64();
        let all = self.open_sockets();
        self.converge(
            &mut tracer,
            "the sockets stuck before start reported",
            &all,
            &BTreeSet::new(),
        )?;
        self.figures.all_reported_s = spawned.elapsed().as_secs_f64();
        // Start-up ends when every socket found is flagged stuck: those found
        // younger than the threshold cross it within its length.
        self.until_all_stuck(&mut tracer)?;
        self.figures.all_stuck_s = spawned.elapsed().as_secs_f64();
        let pid = tracer.proc.pid();
        self.figures.hwm_stuck_kib = status_kib(pid, "VmHWM")?;

        eprintln!("==> full-speed churn for {:?}", self.args.duration);
        let log = self.log("load");
        let load = Load::spawn(&self.churn, &self.load_ns, self.args.duration, log)?;
        let load_started = Instant::now();
        let cpu_before = cpu_seconds(pid)?;
        let mut kill_done = false;
        let mut ring_done = false;
        let mut next_sample = Instant::now();
        let mut warm = false;
        loop {
            check_interrupted()?;
            tracer.check_running()?;
            let at = load_started.elapsed();
            if at >= self.args.duration {
                break;
            }
            if !warm && at >= WARMUP {
                // Start-up's last part: the first periodic scans under churn.
                warm = true;
                self.figures.hwm_start_kib = status_kib(pid, "VmHWM")?;
                self.figures.rss_start_kib = status_kib(pid, "VmRSS")?;
            }
            if !kill_done && at >= self.args.duration.mul_f64(0.3) {
                kill_done = true;
                self.kill_and_replace(&mut tracer)?;
            } else if !ring_done && at >= self.args.duration.mul_f64(0.6) {
                ring_done = true;
                self.ring_full(&mut tracer)?;
            } else if Instant::now() >= next_sample {
                next_sample = Instant::now() + SAMPLE_EVERY;
                self.sample(&tracer, load_started)?;
            } else {
                pause(Duration::from_millis(200))?;
            }
        }
        let result = load.finish(Duration::from_secs(60))?;
        let load_s = load_started.elapsed().as_secs_f64();
        self.figures.cpu_percent = Some(100.0 * (cpu_seconds(pid)? - cpu_before) / load_s);
        self.figures.churn_rate = result.get("rate").and_then(|v| v.as_f64());
        self.figures.churn_connections = result.get("connections").and_then(|v| v.as_f64());
        self.figures.churn_errors = result.get("errors").and_then(|v| v.as_f64());
        self.sample(&tracer, load_started)?;

        eprintln!("==> at the end of the churn: auditing");
        self.figures.hwm_end_kib = status_kib(pid, "VmHWM")?;
        self.figures.rss_end_kib = status_kib(pid, "VmRSS")?;
        // The truth and the metrics at one moment: again if the kernel closed one meanwhile.
        let mut m = tracer.scrape()?;
        while self.refresh()? {
            m = tracer.scrape()?;
        }
        let open = self.open_sockets();
        self.figures.metrics_end = Some(m);
        self.figures.truth_open_end = open.len() as u64;
        self.figures.audit_end = Some(tracer.ledger().audit(
            &open,
            &self.gone,
            &self.vanished,
            &self.netns_inodes,
        ));
        // A new leak the kernel reset before any scan could see it (while the
        // tracer was stopped) owes no report, so no creation record either.
        self.figures.fresh = tracer.ledger().owed_creation(&self.fresh, &self.vanished) as u64;
        self.figures.fresh_with_creation = tracer.ledger().with_creation(&self.fresh) as u64;

        eprintln!("==> releasing every stuck socket");
        let released = Instant::now();
        for leaker in &mut self.leakers {
            leaker.release()?;
        }
        for leaker in self.leakers.drain(..) {
            self.gone.extend(leaker.sockets);
        }
        let gone = self.gone.clone();
        self.converge(
            &mut tracer,
            "the released sockets reported closed",
            &BTreeSet::new(),
            &gone,
        )?;
        self.figures.release_s = released.elapsed().as_secs_f64();
        // The table's last entries to go are unreported ones (churn's), by reconciliation.
        pause(Duration::from_secs(2))?;
        self.figures.close_wait_after = Some(close_wait_everywhere(&self.netns_paths)?);
        let status = tracer.stop()?;
        ensure!(status.success(), "closewait-trace exited with {status}");
        let ledger = tracer.ledger();
        self.figures.summary = ledger.summary.clone();
        self.figures.lost_in_stream = ledger.lost;
        self.figures.audit_final = Some(ledger.audit(
            &BTreeSet::new(),
            &self.gone,
            &self.vanished,
            &self.netns_inodes,
        ));
        Ok(())
    }

    /// Kills the first `--kill` worth of leakers and starts as many new ones.
    fn kill_and_replace(&mut self, tracer: &mut Tracer) -> Result<()> {
        let victims = (self.args.kill / self.per) as usize;
        eprintln!(
            "==> kill -9 the owners of {} sockets; {victims} new leakers",
            self.args.kill
        );
        let killed_at = Instant::now();
        let mut killed = BTreeSet::new();
        for mut leaker in self.leakers.drain(..victims).collect::<Vec<_>>() {
            leaker.kill()?;
            killed.extend(leaker.sockets.iter().copied());
            self.replace(&leaker.netns)?;
        }
        let fresh = self.fresh_sockets(victims)?;
        self.gone.extend(killed.iter().copied());
        self.converge(tracer, "after the kill", &fresh, &killed)?;
        self.figures.kill_converged_s = Some(killed_at.elapsed().as_secs_f64());
        Ok(())
    }

    /// Stops the tracer for `--ring-full` at full churn, kills one leaker and starts one in
    /// the meantime, resumes it, and waits for the stream to catch up.
    fn ring_full(&mut self, tracer: &mut Tracer) -> Result<()> {
        eprintln!(
            "==> SIGSTOP closewait-trace for {:?} at full churn",
            self.args.ring_full
        );
        let lost_before = tracer.ledger().lost;
        let stopped = Instant::now();
        tracer.proc.signal(libc::SIGSTOP)?;
        let mut leaker = self.leakers.remove(0);
        let resumed = (|| {
            leaker.kill()?;
            let killed = leaker.sockets.clone();
            self.replace(&leaker.netns)?;
            let fresh = self.fresh_sockets(1)?;
            pause(self.args.ring_full.saturating_sub(stopped.elapsed()))?;
            Ok::<_, anyhow::Error>((killed, fresh))
        })();
        tracer.proc.signal(libc::SIGCONT)?;
        let (killed, fresh) = resumed?;
        let resumed_at = Instant::now();
        self.figures.stopped_s = Some(stopped.elapsed().as_secs_f64());
        self.gone.extend(killed.iter().copied());
        self.converge(tracer, "after the ring buffer was full", &fresh, &killed)?;
        self.figures.ring_converged_s = Some(resumed_at.elapsed().as_secs_f64());
        self.figures.lost_in_ring_full = Some(tracer.ledger().lost - lost_before);
        Ok(())
    }

    /// A new leaker in `netns`, in place of one that is gone.
    fn replace(&mut self, netns: &str) -> Result<()> {
        let leaker = self.spawn_leaker(netns)?;
        self.leakers.push(leaker);
        Ok(())
    }

    /// Waits for the last `n` leakers to be parked; their sockets.
    fn fresh_sockets(&mut self, n: usize) -> Result<BTreeSet<u64>> {
        let start = self.leakers.len() - n;
        let mut fresh = BTreeSet::new();
        for leaker in &mut self.leakers[start..] {
            leaker.ready(self.per)?;
            fresh.extend(leaker.sockets.iter().copied());
        }
        self.fresh.extend(fresh.iter().copied());
        Ok(fresh)
    }

    fn spawn_leaker(&mut self, netns: &str) -> Result<Leaker> {
        let port = self.next_port;
        self.next_port += 1;
        let log = self.log(&format!("leaker-{port}"));
        Leaker::spawn(&self.churn, netns, port, self.per, log)
    }

    /// Moves the sockets the kernel closed without their owner from the leakers to `vanished`;
    /// whether there were any.
    fn refresh(&mut self) -> Result<bool> {
        let mut any = false;
        for leaker in &mut self.leakers {
            let left = leaker.refresh()?;
            any |= !left.is_empty();
            self.figures.closed_by_kernel += left.len() as u64;
            self.vanished.extend(left);
        }
        Ok(any)
    }

    /// Every socket the live leakers hold.
    fn open_sockets(&self) -> BTreeSet<u64> {
        self.leakers
            .iter()
            .flat_map(|l| l.sockets.iter().copied())
            .collect()
    }

    /// Waits until every socket of `reported` has been reported and every socket of `closed`
    /// reported closed; fails with the counts after [`CONVERGE`].
    fn converge(
        &mut self,
        tracer: &mut Tracer,
        what: &str,
        reported: &BTreeSet<u64>,
        closed: &BTreeSet<u64>,
    ) -> Result<()> {
        let deadline = Instant::now() + CONVERGE;
        let mut next_note = Instant::now() + Duration::from_secs(10);
        let mut next_refresh = Instant::now() + Duration::from_secs(5);
        let mut reported = reported.clone();
        loop {
            tracer.check_running()?;
            let (r, _) = tracer.ledger().progress(&reported);
            let (_, c) = tracer.ledger().progress(closed);
            if r == reported.len() && c == closed.len() {
                return Ok(());
            }
            // A socket the kernel closed under its owner while events were
            // lost may never be seen: it need not be reported.
            if Instant::now() >= next_refresh {
                next_refresh += Duration::from_secs(5);
                self.refresh()?;
                reported.retain(|s| !self.vanished.contains(s));
            }
            if Instant::now() >= next_note {
                next_note += Duration::from_secs(10);
                eprintln!(
                    "soak: {what}: {r} of {} reported, {c} of {} reported closed",
                    reported.len(),
                    closed.len()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{what}: after {CONVERGE:?}, {r} of {} sockets reported and {c} of {} \
                     reported closed",
                    reported.len(),
                    closed.len()
                );
            }
            pause(Duration::from_millis(100))?;
        }
    }

    /// Waits until the metrics count every live leaker's socket as stuck.
    fn until_all_stuck(&mut self, tracer: &mut Tracer) -> Result<()> {
        let deadline = Instant::now() + CONVERGE;
        loop {
            tracer.check_running()?;
            self.refresh()?;
            let want = self.open_sockets().len() as f64;
            let stuck = tracer.scrape()?.stuck_churn;
            if stuck == want {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("after {CONVERGE:?}, the metrics show {stuck} of {want} sockets stuck");
            }
            pause(Duration::from_millis(200))?;
        }
    }

    fn sample(&mut self, tracer: &Tracer, load_started: Instant) -> Result<()> {
        let pid = tracer.proc.pid();
        let m = tracer.scrape()?;
        self.figures.samples.push(Sample {
            at_s: load_started.elapsed().as_secs_f64(),
            rss_kib: status_kib(pid, "VmRSS")?,
            hwm_kib: status_kib(pid, "VmHWM")?,
            cpu_s: cpu_seconds(pid)?,
            metrics: m,
            leakers: self.leakers.len(),
        });
        Ok(())
    }

    fn log(&mut self, name: &str) -> PathBuf {
        self.log_seq += 1;
        self.logs.join(format!("{:03}-{name}.stderr", self.log_seq))
    }
}
