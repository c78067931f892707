//! closewait-trace: wiring only. See the modules for the logic.

mod cli;
mod context;
mod events;
mod existing;
mod kernel_btf;
mod loader;
mod output;
mod owner;
mod privileges;
mod stacks;
mod tracefs;
mod tracker;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    io::{self, BufWriter, Write},
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use closewait_common::decode;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use crate::{
    cli::{Cli, StacksMode},
    context::Context,
    events::{Filter, Observed, Socket, Transition},
    existing::{ScanError, ScanResult, ScannedSocket},
    loader::{Drops, LoadOptions, Probe},
    output::{Output, StartInfo, WallClock},
    tracker::{Found, Report, Tracker},
};

/// How often the ring buffer is drained when the kernel does not wake us
/// (it only does when the buffer fills up: a wakeup costs ~12 us).
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);
/// At exit, how long to wait for owner and stack lookups still running.
const CONTEXT_PATIENCE: Duration = Duration::from_secs(2);
/// How often the kernel's drop counters are read.
const DROP_CHECK_INTERVAL: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help, --version
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("closewait-trace: {}", cli::one_line_error(&err));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("closewait-trace: error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let msg = format!("{err:#}").replace('\n', " ");
            eprintln!("closewait-trace: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
fn mono_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Only sockets held by these processes (`--pid`, `--comm`); empty: all.
#[derive(Default)]
struct OwnerFilter {
    pids: Vec<u32>,
    comms: Vec<String>,
}

impl OwnerFilter {
    fn is_set(&self) -> bool {
        !self.pids.is_empty() || !self.comms.is_empty()
    }

    fn matches(&self, ctx: Option<&Context>) -> bool {
        if !self.is_set() {
            return true;
        }
        ctx.is_some_and(|c| {
            c.owners.iter().any(|o| {
                (self.pids.is_empty() || self.pids.contains(&o.pid))
                    && (self.comms.is_empty() || self.comms.contains(&o.comm))
            })
        })
    }
}

/// A report waiting, in order, for the context of its socket.
struct Pending {
    report: Report,
    at_ns: u64,
    /// The tracker id whose context must arrive first.
    needs: Option<u64>,
}

/// Per-run state the event loop shares with its helpers.
struct Agent<W: Write> {
    tracker: Tracker,
    filter: Filter,
    owner_filter: OwnerFilter,
    cookies: bool,
    out: Output<W>,
    /// Records the agent could not decode (a version mismatch; never expected).
    decode_errors: u64,
    /// Reports in output order; the head waits for its context.
    queue: VecDeque<Pending>,
    /// Owners and stacks of reported sockets still in CLOSE_WAIT.
    contexts: HashMap<u64, Arc<Context>>,
    /// Asked of the resolver, not answered yet.
    requested: HashSet<u64>,
    resolver: std::sync::mpsc::Sender<context::Request>,
    /// A socket was found in CLOSE_WAIT at start or flagged stuck: the cue
    /// for `--stacks auto` to start recording creation stacks.
    trouble: bool,
}

impl<W: Write> Agent<W> {
    /// Apply every record waiting in the ring buffer.
    fn drain(&mut self, rb: &mut RingBuf<MapData>) -> io::Result<()> {
        while let Some(item) = rb.next() {
            let raw = match decode(&item) {
                Ok(raw) => raw,
                Err(_) => {
                    self.decode_errors += 1;
                    continue;
                }
            };
            let Some(obs) = Observed::from_raw(&raw, self.cookies) else {
                continue;
            };
            // Exits carry only the cookie (BTF mode): they are matched to
            // entries, which passed the filter.
            let entering = matches!(obs.transition, Transition::Enter { .. });
            if entering && !self.filter.matches(&obs.socket) {
                continue;
            }
            let id = obs.socket.id(self.cookies);
            let ts = obs.ts_ns;
            if let Some(report) = self.tracker.on_event(id, obs) {
                self.emit(report, ts);
            }
        }
        self.flush()
    }

    /// Reconcile with a finished scan. Drain the ring buffer first, so every
    /// event committed before the scan ended has been applied.
    fn reconcile(&mut self, scan: &ScanResult, startup: bool) -> Vec<Report> {
        let found: Vec<Found> = scan
            .sockets
            .iter()
            .map(|s| found_from_scan(s, self.cookies))
            .filter(|f| self.filter.matches(&f.socket))
            .collect();
        self.tracker.finish_scan(found, mono_now(), startup)
    }

    /// Queue a report. Existing and stuck sockets get their owners and
    /// creation stack looked up first; the close of such a socket reuses
    /// what was found then (its owner may be gone by now).
    fn emit(&mut self, report: Report, at_ns: u64) {
        let id = report.socket().id(self.cookies);
        let needs = match &report {
            Report::Existing { .. } | Report::Stuck { .. } => {
                self.trouble = true;
                if !self.contexts.contains_key(&id) && self.requested.insert(id) {
                    let request = context::Request {
                        id,
                        socket: report.socket().clone(),
                    };
                    if self.resolver.send(request).is_err() {
                        self.requested.remove(&id);
                    }
                }
                Some(id)
            }
            Report::Close { .. }
                if self.contexts.contains_key(&id) || self.requested.contains(&id) =>
            {
                Some(id)
            }
            _ => None,
        };
        self.queue.push_back(Pending {
            report,
            at_ns,
            needs,
        });
    }

    fn emit_all(&mut self, reports: Vec<Report>, at_ns: u64) -> io::Result<()> {
        for report in reports {
            self.emit(report, at_ns);
        }
        self.flush()
    }

    fn on_context(&mut self, response: context::Response) -> io::Result<()> {
        self.requested.remove(&response.id);
        self.contexts.insert(response.id, response.context);
        self.flush()
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
            let ctx = needs.and_then(|id| self.contexts.get(&id).cloned());
            if self.owner_filter.matches(ctx.as_deref()) {
                self.out.report(&report, at_ns, ctx.as_deref())?;
            }
            if let (Report::Close { .. }, Some(id)) = (&report, needs) {
                self.contexts.remove(&id); // gone from CLOSE_WAIT
            }
        }
        Ok(())
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
        let _ = tx.blocking_send(existing::scan_all());
    });
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    privileges::check()?;
    privileges::raise_memlock();
    let probe = Probe::load(&LoadOptions {
        attach: cli.attach,
        ports: cli.ports.clone(),
        ring_buffer_bytes: cli.ring_buffer_size,
        stacks: cli.stacks_mode() != StacksMode::Off,
    })?;
    let Probe {
        mode,
        events,
        mut kernel,
        creations,
    } = probe;
    let stacks_mode = cli.stacks_mode();
    let mut stacks_armed = stacks_mode == StacksMode::On && kernel.arm_stacks()?;
    let (ctx_tx, mut ctx_rx) = mpsc::unbounded_channel();
    let resolver = context::spawn(creations, ctx_tx).context("starting the context thread")?;
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged
    // for as long as the AsyncFd owns the RingBuf.
    let mut rb = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("polling the ring buffer")?;
    let clock = WallClock::new(mono_now(), SystemTime::now());
    let stdout = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let mut agent = Agent {
        tracker: Tracker::new(cli.threshold.as_nanos() as u64, cli.all),
        filter: Filter {
            ports: cli.ports.clone(),
            family: cli.family(),
        },
        owner_filter: OwnerFilter {
            pids: cli.pids.clone(),
            comms: cli.comms.clone(),
        },
        cookies: mode.has_cookies(),
        out: Output::new(stdout, cli.json, clock),
        decode_errors: 0,
        queue: VecDeque::new(),
        contexts: HashMap::new(),
        requested: HashSet::new(),
        resolver,
        trouble: false,
    };

    // Start-up scan, after attach so nothing falls between the two.
    agent.tracker.begin_scan(mono_now());
    let namespaces = existing::list_netns();
    let netns_scanned = namespaces.len();
    let scan = tokio::task::spawn_blocking(move || existing::scan_close_wait(&namespaces))
        .await
        .context("start-up scan")?
        .context("scanning for sockets already in CLOSE_WAIT")?;
    for err in &scan.errors {
        eprintln!("closewait-trace: warning: {err}");
    }
    agent.drain(rb.get_mut())?;
    let existing = agent.reconcile(&scan, true);
    let now = mono_now();
    agent.out.start(
        &StartInfo {
            attach: mode.name(),
            stacks: stacks_mode.name(),
            threshold: cli.threshold,
            existing: existing.len(),
            netns_scanned,
        },
        now,
    )?;
    agent.emit_all(existing, now)?;
    agent.out.flush()?;
    let started = Instant::now();

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
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
    let mut next_scan = Instant::now() + cli.reconcile_interval;
    let mut next_drop_check = Instant::now() + DROP_CHECK_INTERVAL;
    let mut drops_seen = Drops::default();

    let result: anyhow::Result<()> = async {
        loop {
            let mut scan_done = None;
            tokio::select! {
                guard = rb.readable_mut() => guard?.clear_ready(),
                _ = tick.tick() => {}
                Some(res) = scan_rx.recv() => scan_done = Some(res),
                Some(response) = ctx_rx.recv() => agent.on_context(response)?,
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                _ = &mut end => break,
            }
            agent.drain(rb.get_mut())?;
            if let Some(res) = scan_done {
                scan_in_flight = false;
                match res {
                    Ok(scan) => {
                        let reports = agent.reconcile(&scan, false);
                        agent.emit_all(reports, mono_now())?;
                    }
                    Err(err) => {
                        eprintln!("closewait-trace: warning: reconciliation scan failed: {err}")
                    }
                }
            }
            let now = mono_now();
            let stuck = agent.tracker.poll_stuck(now);
            agent.emit_all(stuck, now)?;
            if stacks_mode == StacksMode::Auto && agent.trouble && !stacks_armed {
                stacks_armed = kernel.arm_stacks()?;
                if stacks_armed {
                    eprintln!("closewait-trace: sockets are stuck in CLOSE_WAIT: recording creation stacks from now on");
                }
            }
            let wall_now = Instant::now();
            if wall_now >= next_drop_check {
                next_drop_check = wall_now + DROP_CHECK_INTERVAL;
                let drops = kernel.drops()?;
                if drops.events_lost() != drops_seen.events_lost() {
                    agent.out.lost(&delta(&drops, &drops_seen), now)?;
                    // Lost events may hide an entry or an exit: check now.
                    next_scan = wall_now;
                }
                drops_seen = drops;
            }
            if wall_now >= next_scan && !scan_in_flight {
                next_scan = wall_now + cli.reconcile_interval;
                scan_in_flight = true;
                agent.tracker.begin_scan(mono_now());
                spawn_scan(scan_tx.clone());
            }
            agent.out.flush()?;
        }
        Ok(())
    }
    .await;
    if let Err(err) = result {
        if is_broken_pipe(&err) {
            return Ok(()); // the reader went away: nothing left to tell
        }
        return Err(err);
    }

    // Final drain and drop count, then detach before printing.
    agent.drain(rb.get_mut())?;
    let now = mono_now();
    let stuck = agent.tracker.poll_stuck(now);
    agent.emit_all(stuck, now)?;
    // Give owner and stack lookups in flight a moment, then print the rest.
    let patience = tokio::time::sleep(CONTEXT_PATIENCE);
    tokio::pin!(patience);
    while !agent.requested.is_empty() {
        tokio::select! {
            Some(response) = ctx_rx.recv() => agent.on_context(response)?,
            _ = &mut patience => break,
        }
    }
    agent.flush_all()?;
    let drops = kernel.drops()?;
    if drops.events_lost() != drops_seen.events_lost() {
        agent.out.lost(&delta(&drops, &drops_seen), now)?;
    }
    drop(kernel);
    drop(rb);
    if agent.decode_errors > 0 {
        eprintln!(
            "closewait-trace: warning: {} kernel records could not be decoded",
            agent.decode_errors
        );
    }
    let mut summary = agent.tracker.summary(now);
    let owner_filter = &agent.owner_filter;
    let contexts = &agent.contexts;
    summary
        .still_stuck
        .retain(|st| owner_filter.matches(contexts.get(&st.id).map(|c| &**c)));
    agent
        .out
        .summary(&summary, &agent.contexts, &drops, started.elapsed(), now)?;
    agent.out.flush()?;
    Ok(())
}

fn delta(now: &Drops, before: &Drops) -> Drops {
    Drops {
        ringbuf_full: now.ringbuf_full.saturating_sub(before.ringbuf_full),
        read_failed: now.read_failed.saturating_sub(before.read_failed),
        stack_failed: now.stack_failed.saturating_sub(before.stack_failed),
        recursion_misses: now.recursion_misses.saturating_sub(before.recursion_misses),
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}
