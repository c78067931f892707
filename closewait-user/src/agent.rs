//! The event loop: ring buffer -> decode -> filter -> tracker -> enrichment
//! -> read model -> outputs. Wiring only; each stage lives in its module.

use std::{
    collections::{hash_map::Entry, HashMap, HashSet, VecDeque},
    io::{self, BufWriter},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use closewait_common::decode;
use closewait_host::clock::mono_ns;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use crate::{
    cli::{Cli, StacksMode},
    discovery::{self, ScanError, ScanResult, ScannedSocket},
    enrich::diagnosis::Cause,
    enrich::{self, Context},
    model::{Enriched, Model, StacksNow},
    output::{self, format::WallClock, Output, StartInfo},
    privileges,
    probe::{Drops, Kernel, LoadOptions, Probe},
    tracking::{Bound, Filter, Found, Observed, OwnerFilter, Report, Socket, Tracker, Transition},
};

/// How often the ring buffer is drained when the kernel does not wake us
/// (it only does when the buffer fills up: a wakeup costs ~12 us).
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);
/// How long to wait for owner and stack lookups still running: at exit, and
/// at start-up for the owner filter's verdicts on the sockets found then.
const CONTEXT_PATIENCE: Duration = Duration::from_secs(2);
/// At exit, how long lookups still running may take before the user is
/// told, and the most the agent waits for them in all.
const EXIT_NOTICE: Duration = Duration::from_millis(300);
const EXIT_PATIENCE: Duration = Duration::from_secs(30);
/// How often the kernel's drop counters are read and the model's counts
/// refreshed.
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// How soon a scan follows one that missed a socket the table holds, when
/// events were lost in the last [`LOSS_MEMORY`]: the exit may really be
/// among them. Otherwise the exit would have been seen, and a missing
/// socket is a dump that skipped it (under churn, a few of 100,000 per
/// scan): the regular scans settle it, without a scan of the whole table
/// every second.
const CONFIRM_INTERVAL: Duration = Duration::from_secs(1);
const LOSS_MEMORY: Duration = Duration::from_secs(60);

/// When the next reconciliation scan runs: every `interval`, and sooner
/// after lost events (at most one a [`CONFIRM_INTERVAL`], so a steady loss
/// does not make the scans back to back).
struct Schedule {
    interval: Duration,
    next: Instant,
    /// When the last scan started.
    started: Instant,
    /// When events were last lost.
    lost_at: Option<Instant>,
}

impl Schedule {
    fn new(interval: Duration) -> Schedule {
        let now = Instant::now();
        Schedule {
            interval,
            next: now + interval,
            started: now,
            lost_at: None,
        }
    }

    /// Events were lost: they may hide an entry or an exit, so scan soon.
    fn lost(&mut self, now: Instant) {
        self.lost_at = Some(now);
        self.next = self.next.min((self.started + CONFIRM_INTERVAL).max(now));
    }

    /// A scan ended. One that missed a socket the table holds is followed
    /// soon by the next one when events were lost lately.
    fn scanned(&mut self, missed: bool, now: Instant) {
        let lost_lately = self
            .lost_at
            .is_some_and(|t| now.saturating_duration_since(t) < LOSS_MEMORY);
        if lost_lately && missed {
            self.next = self.next.min(now + CONFIRM_INTERVAL);
        }
    }

    /// Whether a scan is due at `now`; if so, it counts as started.
    fn start(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.interval;
        self.started = now;
        true
    }
}

/// What the report queue and its indexes keep of their room once empty.
const QUEUE_KEPT: usize = 1024;

/// A report waiting, in order, for the context of its socket.
struct Pending {
    report: Report,
    at_ns: u64,
    /// The tracker id whose context must arrive first.
    needs: Option<u64>,
}

/// Per-run state the event loop shares with its helpers.
struct Agent {
    tracker: Tracker,
    filter: Filter,
    cookies: bool,
    /// `--all`: entries and closes are shown, so gated sockets keep the
    /// context their verdict was based on.
    all: bool,
    /// Gather evidence and a diagnosis for reported sockets (not with the
    /// hidden `--no-evidence`).
    evidence: bool,
    out: Box<dyn Output>,
    model: Model,
    /// Records the agent could not decode (a version mismatch; never expected).
    decode_errors: u64,
    /// Reports in output order; the head waits for its context.
    queue: VecDeque<Pending>,
    /// Queued reports per socket that wait for its context (so that a
    /// queue of 100,000 is not searched once for each report printed).
    waiting: HashMap<u64, usize>,
    /// Nothing is shown before the start line.
    started: bool,
    /// Contexts that arrived and are not yet in the model.
    contexts: HashMap<u64, Arc<Context>>,
    /// Asked of the resolver, not answered yet.
    requested: HashSet<u64>,
    resolver: std::sync::mpsc::Sender<enrich::Request>,
    /// A socket was found in CLOSE_WAIT at start or flagged stuck: the cue
    /// for `--stacks auto` to start recording creation stacks.
    trouble: bool,
    /// A reported socket read EOF and was not closed: the cue to record
    /// where sockets read EOF (`last_read`).
    eof_trouble: bool,
}

impl Agent {
    /// Apply every record waiting in the ring buffer.
    fn drain(&mut self, rb: &mut RingBuf<MapData>) -> io::Result<()> {
        while let Some(item) = rb.next() {
            let Ok(raw) = decode(&item) else {
                self.decode_errors += 1;
                continue;
            };
            let Some(obs) = Observed::from_raw(&raw, self.cookies) else {
                continue;
            };
            // Exits carry only the cookie (BTF mode): they are matched to
            // entries, which passed the filter.
            let entering = matches!(obs.transition, Transition::Enter { .. });
            if entering && !self.filter.matches_socket(&obs.socket) {
                continue;
            }
            let id = obs.socket.id(self.cookies);
            let ts = obs.ts_ns;
            for report in self.tracker.on_event(id, obs) {
                self.emit(report, ts);
            }
        }
        self.settle()
    }

    /// Reconcile with a finished scan. Drain the ring buffer first, so every
    /// event committed before the scan ended has been applied.
    fn reconcile(&mut self, scan: &ScanResult, startup: bool) -> io::Result<()> {
        let found: Vec<Found> = scan
            .sockets
            .iter()
            .map(|s| found_from_scan(s, self.cookies))
            .filter(|f| self.filter.matches_socket(&f.socket))
            .collect();
        let now = mono_ns();
        for report in self.tracker.finish_scan(found, now, startup) {
            self.emit(report, now);
        }
        self.settle()
    }

    fn poll_stuck(&mut self) -> io::Result<()> {
        let now = mono_ns();
        for report in self.tracker.poll_stuck(now) {
            self.emit(report, now);
        }
        self.settle()
    }

    /// After a batch: ask for the owners of sockets waiting for the owner
    /// filter's verdict, then print what is ready.
    fn settle(&mut self) -> io::Result<()> {
        for (id, socket) in self.tracker.take_unresolved() {
            self.request(id, socket, None, false);
        }
        self.flush()
    }

    /// Ask for a socket's context; `report` for reported sockets, with their
    /// creation stack and evidence (a context found for the owner filter's
    /// verdict has only owners).
    fn request(&mut self, id: u64, socket: Socket, enter_ns: Option<u64>, report: bool) {
        let have = self.contexts.get(&id).is_some_and(|c| !report || c.report);
        if have || !self.requested.insert(id) {
            return;
        }
        let request = enrich::Request {
            id,
            socket,
            enter_ns,
            report,
            evidence: report && self.evidence,
        };
        if self.resolver.send(request).is_err() {
            self.requested.remove(&id);
        }
    }

    /// Queue a report. Existing and stuck sockets get their owners and
    /// creation stack looked up first; the close of such a socket reuses
    /// what was found then (its owner may be gone by now).
    fn emit(&mut self, report: Report, at_ns: u64) {
        let id = report.socket().id(self.cookies);
        let known = |a: &Agent| {
            a.contexts.contains_key(&id) || a.requested.contains(&id) || a.model.is_reported(id)
        };
        let needs = match &report {
            Report::Existing { .. } | Report::Stuck { .. } => {
                self.trouble = true;
                if !self.model.is_reported(id) {
                    // The FIN's time, where the entry was seen live.
                    let enter_ns = match &report {
                        Report::Stuck {
                            dwell_ns,
                            bound: Bound::Exact,
                            ..
                        } => Some(at_ns.saturating_sub(*dwell_ns)),
                        _ => None,
                    };
                    self.request(id, report.socket().clone(), enter_ns, true);
                }
                Some(id)
            }
            Report::Enter { .. } | Report::Close { .. } if known(self) => Some(id),
            _ => None,
        };
        if let Some(id) = needs {
            *self.waiting.entry(id).or_default() += 1;
        }
        self.queue.push_back(Pending {
            report,
            at_ns,
            needs,
        });
    }

    fn on_context(&mut self, response: enrich::Response) -> io::Result<()> {
        let id = response.id;
        self.requested.remove(&id);
        let ctx = response.context;
        if ctx.cause == Some(Cause::EofNotClosed) {
            self.eof_trouble = true;
        }
        if self.filter.owner.is_set() {
            let selected = self
                .filter
                .owner
                .matches(ctx.owners.iter().map(|o| (o.pid, &*o.comm)));
            let now = mono_ns();
            let reports = self.tracker.admit(id, selected, now);
            let shown = !reports.is_empty() || self.all;
            if selected && (shown || self.waiting.contains_key(&id)) {
                self.contexts.insert(id, ctx);
            }
            for report in reports {
                self.emit(report, now);
            }
        } else {
            self.contexts.insert(id, ctx);
        }
        self.settle()
    }

    /// Print queued reports whose context is in, in order.
    fn flush(&mut self) -> io::Result<()> {
        self.flush_inner(false)
    }

    /// At exit: print everything, with or without context.
    fn flush_all(&mut self) -> io::Result<()> {
        self.flush_inner(true)
    }

    fn flush_inner(&mut self, force: bool) -> io::Result<()> {
        if !self.started {
            return Ok(());
        }
        while let Some(head) = self.queue.front() {
            let ready = head.needs.is_none_or(|id| !self.requested.contains(&id));
            if !ready && !force {
                break;
            }
            let Some(Pending {
                report,
                at_ns,
                needs,
            }) = self.queue.pop_front()
            else {
                break;
            };
            let id = report.socket().id(self.cookies);
            if let Some(id) = needs {
                if let Entry::Occupied(mut n) = self.waiting.entry(id) {
                    *n.get_mut() -= 1;
                    if *n.get() == 0 {
                        n.remove();
                    }
                }
            }
            let ctx = needs.and_then(|id| {
                self.contexts
                    .get(&id)
                    .cloned()
                    .or_else(|| self.model.context(id))
            });
            let closing = matches!(report, Report::Close { .. });
            let reported = matches!(report, Report::Existing { .. } | Report::Stuck { .. });
            let mut enriched = Enriched {
                id,
                report,
                at_ns,
                ctx,
                quiet: false,
            };
            let group = self.model.apply(&mut enriched);
            self.out.event(&enriched)?;
            if let Some(group) = group {
                self.out.group(&group, at_ns)?;
            }
            if closing || (reported && !self.waiting.contains_key(&id)) {
                // Gone from CLOSE_WAIT, or now kept by the model.
                self.contexts.remove(&id);
            }
        }
        if self.queue.is_empty() && self.queue.capacity() > QUEUE_KEPT {
            // A burst (100,000 sockets found at start) leaves the queue and
            // its indexes empty but as big as at their peak: give it back.
            self.queue.shrink_to(QUEUE_KEPT);
            self.waiting.shrink_to(QUEUE_KEPT);
            self.contexts.shrink_to(QUEUE_KEPT);
        }
        Ok(())
    }

    /// Refresh what the model says about counts and drops.
    fn refresh_model(&mut self, drops: Drops) {
        self.model.set_counts(self.tracker.counts());
        self.model.set_drops(drops);
    }
}

/// Before flagging: whether the ring buffer lost events since `seen` (read
/// only when a socket is due to be flagged); if so the tracker holds what
/// the loss may have hidden until a scan confirms it.
fn check_losses(agent: &mut Agent, kernel: &Kernel, seen: &mut u64) -> anyhow::Result<bool> {
    if !agent.tracker.is_due(mono_ns()) {
        return Ok(false);
    }
    let losses = kernel.events_lost()?;
    if losses == *seen {
        return Ok(false);
    }
    *seen = losses;
    agent.tracker.note_loss(mono_ns());
    Ok(true)
}

/// The first time connect() records are evicted: one line.
fn say_evictions(before: &Drops, now: &Drops, capacity: u32) {
    if now.connects_evicted > 0 && before.connects_evicted == 0 {
        eprintln!(
            "closewait-trace: warning: more live connections were recorded than the connect() \
             record map holds ({capacity}): the oldest records are evicted, and their sockets \
             will have no creation stack (counted in stacks_missed)"
        );
    }
}

fn found_from_scan(s: &ScannedSocket, cookies: bool) -> Found {
    let bytes = |a: std::net::IpAddr| -> [u8; 16] {
        match a {
            std::net::IpAddr::V4(v4) => {
                let mut out = [0; 16];
                out[..4].copy_from_slice(&v4.octets());
                out
            }
            std::net::IpAddr::V6(v6) => v6.octets(),
        }
    };
    let socket = Socket::new(
        Some(s.cookie),
        s.family,
        bytes(s.laddr),
        s.lport,
        bytes(s.raddr),
        s.rport,
        Some(s.netns),
    );
    let socket = Socket {
        inode: (s.inode != 0).then_some(s.inode),
        ..socket
    };
    Found {
        id: socket.id(cookies),
        socket,
        age_ns: s.last_ack_recv_ms.map(|ms| u64::from(ms) * 1_000_000),
    }
}

/// Scan every network namespace on a blocking thread; the result arrives on
/// `tx`.
fn spawn_scan(tx: mpsc::Sender<Result<ScanResult, ScanError>>) {
    tokio::task::spawn_blocking(move || {
        let _ = tx.blocking_send(discovery::scan_all());
    });
}

/// Whether the reader of stdout went away (a closed pipe, a hung-up
/// terminal), without writing to it.
fn stdout_gone() -> bool {
    let mut fds = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd; zero timeout.
    let rc = unsafe { libc::poll(&mut fds, 1, 0) };
    rc > 0 && fds.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Whether `err` means the reader of stdout went away.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Run until `--duration`, a signal, or the reader of stdout leaving. Ends
/// with `Err` carrying a BrokenPipe io::Error in the last case, which the
/// binary ends quietly on ([`is_broken_pipe`]).
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.top().is_some_and(|t| !t.once) && !output::top::stdout_is_terminal() {
        anyhow::bail!(
            "`top` needs a terminal on stdout: `top --once` prints the table once, and without `top` the stream is text (or --json) for pipes and files"
        );
    }
    privileges::check()?;
    // Before anything is attached or printed: a signal that arrives during
    // start-up (right after the start line, say) ends the run cleanly at
    // the loop's first turn instead of killing the process.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    privileges::raise_memlock();
    privileges::raise_nofile();
    enrich::pod::set_log_dir(&cli.pod_logs);
    // Bound before attaching: a busy port is one line and exit 1.
    let metrics_listener = cli
        .metrics
        .map(|addr| {
            std::net::TcpListener::bind(addr).with_context(|| format!("serving metrics on {addr}"))
        })
        .transpose()?;
    let stacks_mode = cli.stacks_mode();
    let probe = Probe::load(&LoadOptions {
        attach: cli.attach,
        ports: cli.ports.clone(),
        ring_buffer_bytes: cli.ring_buffer_size,
        stacks: stacks_mode != StacksMode::Off,
        stack_budget: cli.stack_budget,
        creation_records: cli.creation_records,
        without: cli.without.clone(),
    })?;
    let Probe {
        mode,
        events,
        mut kernel,
        creations,
    } = probe;
    // The kernel may not record stacks at all (said at load).
    let stacks_mode = if creations.is_none() {
        StacksMode::Off
    } else {
        stacks_mode
    };
    let mut stacks_armed = stacks_mode == StacksMode::On && kernel.arm_stacks()?;
    let kernel_budget = stacks_mode == StacksMode::Auto && kernel.arm_budget()?;
    let mut eof_armed = stacks_armed && cli.arm_eof_reads && kernel.arm_eof_reads();
    let stacks_now = |armed: bool| match stacks_mode {
        _ if armed => StacksNow::Armed,
        StacksMode::Auto if kernel_budget => StacksNow::Budget,
        _ => StacksNow::Off,
    };
    let owner_filter = OwnerFilter {
        pids: cli.pids.clone(),
        comms: cli.comms.clone(),
    };
    let (ctx_tx, mut ctx_rx) = mpsc::unbounded_channel();
    let resolver = enrich::spawn(creations, owner_filter.clone(), ctx_tx)
        .context("starting the context thread")?;
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged
    // for as long as the AsyncFd owns the RingBuf.
    let mut rb = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("polling the ring buffer")?;
    let clock = WallClock::new(mono_ns(), SystemTime::now());
    let mut outs: Vec<Box<dyn Output>> = Vec::new();
    match cli.top() {
        Some(top) => outs.push(output::top::new(output::top::TopOptions {
            delay: top.delay,
            threshold: cli.threshold,
            once: top.once,
        })),
        None if cli.quiet => {}
        None => {
            let stdout = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
            outs.push(output::for_cli(cli.json, stdout, clock));
        }
    }
    if let Some(listener) = metrics_listener {
        outs.push(Box::new(
            output::metrics::Metrics::serve(listener).context("serving metrics")?,
        ));
    }
    let out: Box<dyn Output> = if outs.len() == 1 {
        outs.remove(0)
    } else {
        Box::new(output::Tee(outs))
    };
    let gated = owner_filter.is_set();
    let mut agent = Agent {
        tracker: Tracker::new(cli.threshold.as_nanos() as u64, cli.all, gated),
        filter: Filter {
            ports: cli.ports.clone(),
            family: cli.family(),
            owner: owner_filter,
        },
        cookies: mode.has_cookies(),
        all: cli.all,
        evidence: !cli.no_evidence,
        out,
        model: Model::default(),
        decode_errors: 0,
        queue: VecDeque::new(),
        waiting: HashMap::new(),
        started: false,
        contexts: HashMap::new(),
        requested: HashSet::new(),
        resolver,
        trouble: false,
        eof_trouble: false,
    };
    agent.model.set_stacks(stacks_now(stacks_armed));

    // Start-up scan, after attach so nothing falls between the two.
    agent.tracker.begin_scan(mono_ns());
    let namespaces = discovery::list_netns();
    let netns_scanned = namespaces.len();
    let scan = tokio::task::spawn_blocking(move || discovery::scan_close_wait(&namespaces))
        .await
        .context("start-up scan")?
        .context("scanning for sockets already in CLOSE_WAIT")?;
    for err in &scan.errors {
        eprintln!("closewait-trace: warning: {err}");
    }
    agent.drain(rb.get_mut())?;
    agent.reconcile(&scan, true)?;
    if gated {
        // The start line counts only the sockets the owner filter selects.
        let patience = tokio::time::sleep(CONTEXT_PATIENCE);
        tokio::pin!(patience);
        let mut tick = tokio::time::interval(DRAIN_INTERVAL);
        while !agent.requested.is_empty() {
            tokio::select! {
                Some(response) = ctx_rx.recv() => agent.on_context(response)?,
                _ = tick.tick() => agent.drain(rb.get_mut())?,
                _ = &mut patience => break,
            }
        }
    }
    let now = mono_ns();
    agent.out.start(
        &StartInfo {
            attach: mode.name(),
            stacks: stacks_mode.name(),
            threshold: cli.threshold,
            existing: agent.tracker.totals().existing,
            netns_scanned,
        },
        now,
    )?;
    agent.started = true;
    agent.flush()?;
    agent.out.flush()?;
    let started = Instant::now();

    let end = async {
        match cli.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(end);
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (scan_tx, mut scan_rx) = mpsc::channel(1);
    let mut scan_in_flight = false;
    let mut schedule = Schedule::new(cli.reconcile_interval);
    let mut next_stats = Instant::now() + STATS_INTERVAL;
    // Two readers of the same loss counters: the tracker, before it flags a
    // socket, and the outputs' `lost` lines, once a second.
    let mut drops_seen = Drops::default();
    let mut losses_seen = 0;

    loop {
        let mut scan_done = None;
        tokio::select! {
            guard = rb.readable_mut() => guard?.clear_ready(),
            _ = tick.tick() => {}
            Some(res) = scan_rx.recv() => scan_done = Some(res),
            Some(response) = ctx_rx.recv() => agent.on_context(response)?,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
            _ = &mut end => break,
        }
        if stdout_gone() {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe).into());
        }
        agent.drain(rb.get_mut())?;
        if let Some(res) = scan_done {
            scan_in_flight = false;
            match res {
                Ok(scan) => {
                    agent.reconcile(&scan, false)?;
                    // A socket missing from this scan is settled by the next ones.
                    schedule.scanned(agent.tracker.has_absent(), Instant::now());
                }
                Err(err) => {
                    eprintln!("closewait-trace: warning: reconciliation scan failed: {err}")
                }
            }
        }
        // Flag nothing whose exit may be among events lost since the last look.
        if check_losses(&mut agent, &kernel, &mut losses_seen)? {
            schedule.lost(Instant::now());
        }
        agent.poll_stuck()?;
        if stacks_mode == StacksMode::Auto && agent.trouble && !stacks_armed {
            stacks_armed = kernel.arm_stacks()?;
            if stacks_armed {
                agent.model.set_stacks(stacks_now(true));
                eprintln!("closewait-trace: sockets are stuck in CLOSE_WAIT: recording creation stacks from now on");
            }
        }
        if agent.eof_trouble && stacks_armed && !eof_armed {
            eof_armed = kernel.arm_eof_reads();
            if eof_armed {
                eprintln!("closewait-trace: a socket read EOF and was not closed: recording where sockets in CLOSE_WAIT read EOF from now on (last_read)");
            }
        }
        let wall_now = Instant::now();
        if wall_now >= next_stats {
            next_stats = wall_now + STATS_INTERVAL;
            let drops = kernel.drops()?;
            say_evictions(&drops_seen, &drops, cli.creation_records);
            if drops.events_lost() != drops_seen.events_lost() {
                agent.out.lost(&drops.since(&drops_seen), mono_ns())?;
                schedule.lost(wall_now);
            }
            drops_seen = drops;
            agent.refresh_model(drops);
        }
        if agent.out.tick(&agent.model, mono_ns())? {
            break;
        }
        if !scan_in_flight && schedule.start(wall_now) {
            scan_in_flight = true;
            agent.tracker.begin_scan(mono_ns());
            spawn_scan(scan_tx.clone());
        }
        agent.out.flush()?;
    }

    // Final drain and drop count, then detach before printing.
    agent.drain(rb.get_mut())?;
    check_losses(&mut agent, &kernel, &mut losses_seen)?;
    agent.poll_stuck()?;
    // Let the lookups in flight finish while they make progress (thousands
    // of sockets flagged at once take a while on a slow machine), then
    // print the rest. A second signal cuts it short.
    let mut told = false;
    let cap = tokio::time::sleep(EXIT_PATIENCE);
    tokio::pin!(cap);
    // A live view shows the present: nothing to finish for it.
    while !agent.requested.is_empty() && !agent.out.is_live() {
        let idle = tokio::time::sleep(if told { CONTEXT_PATIENCE } else { EXIT_NOTICE });
        tokio::select! {
            Some(response) = ctx_rx.recv() => agent.on_context(response)?,
            _ = idle => {
                if told {
                    break;
                }
                told = true;
                eprintln!(
                    "closewait-trace: finishing the lookups of {} sockets before exit (Ctrl-C to skip)",
                    agent.requested.len()
                );
            }
            _ = &mut cap => break,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
        }
    }
    agent.flush_all()?;
    let now = mono_ns();
    let drops = kernel.drops()?;
    say_evictions(&drops_seen, &drops, cli.creation_records);
    if drops.events_lost() != drops_seen.events_lost() {
        agent.out.lost(&drops.since(&drops_seen), now)?;
    }
    drop(kernel);
    drop(rb);
    if agent.decode_errors > 0 {
        eprintln!(
            "closewait-trace: warning: {} kernel records could not be decoded",
            agent.decode_errors
        );
    }
    agent.refresh_model(drops);
    agent.out.summary(&agent.model, started.elapsed(), now)?;
    agent.out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(10);

    #[test]
    fn scans_come_every_interval_without_losses() {
        let mut s = Schedule::new(INTERVAL);
        let t0 = s.started;
        assert!(!s.start(t0 + INTERVAL / 2));
        assert!(s.start(t0 + INTERVAL));
        assert!(!s.start(t0 + INTERVAL + Duration::from_secs(1)));
        // A scan that missed a socket is not followed sooner: nothing was lost.
        s.scanned(true, t0 + INTERVAL + Duration::from_millis(200));
        assert!(!s.start(t0 + INTERVAL + Duration::from_secs(2)));
        assert!(s.start(t0 + 2 * INTERVAL));
    }

    #[test]
    fn a_loss_brings_the_scan_forward_but_not_back_to_back() {
        let mut s = Schedule::new(INTERVAL);
        let t0 = s.started;
        assert!(s.start(t0 + INTERVAL));
        let started = t0 + INTERVAL;
        // Lost right after a scan started: the next waits a CONFIRM_INTERVAL.
        s.lost(started + Duration::from_millis(100));
        assert!(!s.start(started + Duration::from_millis(500)));
        assert!(s.start(started + CONFIRM_INTERVAL));
        // Lost long after the last scan: scan at once.
        let later = started + CONFIRM_INTERVAL + Duration::from_secs(5);
        s.lost(later);
        assert!(s.start(later));
    }

    #[test]
    fn a_scan_that_missed_a_socket_after_a_loss_is_confirmed_soon() {
        let mut s = Schedule::new(INTERVAL);
        let t0 = s.started;
        s.lost(t0);
        assert!(s.start(t0 + CONFIRM_INTERVAL));
        let done = t0 + CONFIRM_INTERVAL + Duration::from_millis(300);
        s.scanned(false, done);
        assert!(
            !s.start(done + CONFIRM_INTERVAL),
            "nothing missed: no hurry"
        );
        s.scanned(true, done);
        assert!(s.start(done + CONFIRM_INTERVAL));
        // A loss forgotten after LOSS_MEMORY brings nothing forward.
        let much_later = t0 + LOSS_MEMORY + INTERVAL;
        assert!(s.start(much_later));
        s.scanned(true, much_later + Duration::from_millis(300));
        assert!(!s.start(much_later + Duration::from_secs(2)));
    }
}
