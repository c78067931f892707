//! The probe: load the kernel program, pick the best attach point this
//! kernel offers, hand out the ring buffer, and read the drop counters.

pub mod btf;
pub mod features;
pub mod tracefs;

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use anyhow::{bail, Context as _};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{BtfTracePoint, ProgramError, ProgramFd, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use closewait_common::{
    armed, copy_slots_per_cpu, counter, Config, Creation, StackCopy, TpOffsets, BUDGET_WINDOW_NS,
    MAX_KERNEL_PORTS, NO_OFFSET,
};

use self::{
    btf as kernel_btf,
    features::{Feature, Features},
};

/// The kernel object, built by build.rs (empty when the build skipped it).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/closewait"));

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
const TRACEPOINT: &str = "inet_sock_set_state";

/// Which hook the program is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// BTF tracepoint: no tracefs needed, gives socket cookies and netns.
    TpBtf,
    /// Classic tracepoint (fallback without BTF): no cookie, no netns.
    Tracepoint,
    /// Benchmarks only: an empty program on the BTF tracepoint (the cost
    /// floor of attaching anything there). Reports nothing.
    Empty,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::TpBtf => "tp_btf",
            AttachMode::Tracepoint => "tracepoint",
            AttachMode::Empty => "empty",
        }
    }

    /// Whether events carry a socket cookie (else sockets are keyed by tuple).
    pub fn has_cookies(self) -> bool {
        self == AttachMode::TpBtf
    }
}

#[derive(Clone)]
pub struct LoadOptions {
    /// `None`: the best available.
    pub attach: Option<AttachMode>,
    pub ports: Vec<u16>,
    pub ring_buffer_bytes: u32,
    /// Record creation stacks (connect/accept) in the kernel.
    pub stacks: bool,
    /// connect() captures per second on each CPU while armed with the
    /// budget (`Kernel::arm_budget`).
    pub stack_budget: u32,
    /// Capacity of the creation-record maps (connect() and accept()).
    pub creation_records: u32,
    /// Features to treat as missing (tests force each fallback with it).
    pub without: Vec<Feature>,
}

/// Events the kernel could not deliver, as running totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    pub ringbuf_full: u64,
    pub read_failed: u64,
    /// Creation stacks that could not be recorded (not events: the socket
    /// is still reported, without its stack).
    pub stack_failed: u64,
    /// connect() calls not recorded because their CPU had used its capture
    /// budget (`--stacks auto` before anything is stuck).
    pub over_budget: u64,
    /// Runs the kernel skipped because a BPF program was already running on
    /// that CPU (bpf_prog_info.recursion_misses).
    pub recursion_misses: u64,
    /// connect() records pushed out of a full map (at least this many): the
    /// map holds the records of live connections only, so this means more
    /// live recorded connections than it has room for. Their stacks are
    /// lost.
    pub connects_evicted: u64,
}

impl Drops {
    /// Events lost, all reasons together (stack failures are not events).
    pub fn events_lost(&self) -> u64 {
        self.ringbuf_full + self.read_failed + self.recursion_misses
    }

    /// Lost events by reason, as the outputs name them.
    pub fn by_reason(&self) -> [(&'static str, u64); 3] {
        [
            ("ringbuf_full", self.ringbuf_full),
            ("recursion", self.recursion_misses),
            ("read_failed", self.read_failed),
        ]
    }

    /// Creation stacks lost: captures that failed, records evicted.
    pub fn stacks_missed(&self) -> u64 {
        self.stack_failed + self.connects_evicted
    }

    /// What was added since `before`.
    pub fn since(&self, before: &Drops) -> Drops {
        Drops {
            ringbuf_full: self.ringbuf_full.saturating_sub(before.ringbuf_full),
            read_failed: self.read_failed.saturating_sub(before.read_failed),
            stack_failed: self.stack_failed.saturating_sub(before.stack_failed),
            over_budget: self.over_budget.saturating_sub(before.over_budget),
            connects_evicted: self
                .connects_evicted
                .saturating_sub(before.connects_evicted),
            recursion_misses: self
                .recursion_misses
                .saturating_sub(before.recursion_misses),
        }
    }
}

/// The loaded, attached program.
pub struct Probe {
    pub mode: AttachMode,
    pub events: RingBuf<MapData>,
    /// Owns the programs and links (dropping it detaches), the drop
    /// counters and the stack switch.
    pub kernel: Kernel,
    /// Creation records and stacks; `None` with `--no-stacks`, or when the
    /// kernel cannot record stacks.
    pub creations: Option<Creations>,
}

/// The kernel's creation records (who created a socket, from which code).
pub struct Creations {
    pub stacks: StackTraceMap<MapData>,
    /// By socket cookie.
    pub connects: HashMap<MapData, u64, Creation>,
    /// By `accept_key(tgid, fd)`.
    pub accepts: HashMap<MapData, u64, Creation>,
    /// The first EOF read of sockets in CLOSE_WAIT, by socket cookie.
    pub eof_reads: HashMap<MapData, u64, Creation>,
    /// Copies of the top of user stacks, by `Creation::copy_slot - 1`.
    pub copies: Array<MapData, StackCopy>,
    /// Processes to copy the stacks of, found without frame pointers, and
    /// the switch that makes the kernel look there.
    pub nofp_tgids: HashMap<MapData, u32, u32>,
    pub nofp_on: Array<MapData, u32>,
    /// Processes already put in `nofp_tgids` this run (no repeated inserts
    /// for each of their sockets); cleared when it reaches the map's size,
    /// as the kernel's LRU may have evicted some by then.
    pub nofp_flagged: std::collections::HashSet<u32>,
}

/// CPUs the kernel may run programs on (the per-CPU rings).
fn possible_cpus() -> u32 {
    aya::util::nr_cpus().map_or(1, |n| n as u32)
}

/// The loaded kernel side: drop counters, the creation-stack switch, and the
/// programs themselves.
pub struct Kernel {
    counters: PerCpuArray<MapData, u64>,
    prog_fd: ProgramFd,
    /// Slot 0 arms creation-stack capture (`closewait_common::armed`);
    /// `None` without stacks.
    stacks_armed: Option<Array<MapData, u32>>,
    /// The load set a non-zero capture budget.
    budget: bool,
    /// Capacity of `CONNECTS`.
    connects_capacity: u64,
    /// Last count of skipped runs read, and whether a failed read was said.
    recursion_seen: std::cell::Cell<u64>,
    recursion_warned: std::cell::Cell<bool>,
    /// The accept() recorder is loaded lazily and attached when stacks are
    /// armed: an enabled syscall tracepoint slows every syscall on the host.
    accept_ready: bool,
    /// The EOF-read recorder: loaded with the BTF program (`Ok`), or why it
    /// could not be (`Err`); taken by [`Kernel::arm_eof_reads`].
    eof_reads: Option<Result<(), String>>,
    ebpf: Ebpf,
}

impl Probe {
    pub fn load(opts: &LoadOptions) -> anyhow::Result<Probe> {
        if OBJECT.is_empty() {
            bail!("this binary was built without its kernel program (AYA_BUILD_SKIP); rebuild with `cargo xtask build`");
        }
        let features = Features::detect(&opts.without);
        if !features.has(Feature::Ringbuf) {
            bail!("{}", Feature::Ringbuf.missing_line());
        }
        let mut opts = opts.clone();
        if opts.stacks && !features.has(Feature::Stacks) {
            say(Feature::Stacks);
            opts.stacks = false;
        }
        if opts.stacks && features.pretends(Feature::SyscallTracepoints) {
            say(Feature::SyscallTracepoints);
        }
        if !features.has(Feature::TaskRegs) {
            if opts.stacks {
                say(Feature::TaskRegs);
            }
            // From here on `without` is what the loaders leave out.
            if !opts.without.contains(&Feature::TaskRegs) {
                opts.without.push(Feature::TaskRegs);
            }
        }
        if opts.stacks && features.pretends(Feature::StackCopy) {
            say(Feature::StackCopy);
        }
        let opts = &opts;
        let btf_ready = [Feature::Btf, Feature::TpBtf, Feature::SocketCookie]
            .into_iter()
            .find(|&f| !features.has(f));
        let mode = match (opts.attach, btf_ready) {
            (Some(AttachMode::TpBtf | AttachMode::Empty), Some(missing)) => {
                bail!(
                    "this attach mode needs what is missing: {}",
                    missing.missing_line()
                )
            }
            (Some(mode), _) => mode,
            (None, None) => AttachMode::TpBtf,
            (None, Some(missing)) => {
                say(missing);
                AttachMode::Tracepoint
            }
        };
        let probe = match mode {
            AttachMode::TpBtf => match Self::load_btf(opts, AttachMode::TpBtf) {
                Ok(probe) => probe,
                Err(err) if is_out_of_fds(&err) => return Err(out_of_fds(err)),
                Err(err) if opts.attach.is_none() => {
                    let err = format!("{err:#}");
                    let missing = if Features::is_cookie_refusal(&err) {
                        Feature::SocketCookie
                    } else {
                        Feature::TpBtf
                    };
                    eprintln!(
                        "closewait-trace: {} (the BTF tracepoint program failed: {err})",
                        missing.missing_line()
                    );
                    Self::load_tracepoint(opts)?
                }
                Err(err) => return Err(err),
            },
            AttachMode::Tracepoint => Self::load_tracepoint(opts)?,
            AttachMode::Empty => Self::load_btf(opts, AttachMode::Empty)?,
        };
        Ok(probe)
    }

    fn load_btf(opts: &LoadOptions, mode: AttachMode) -> anyhow::Result<Probe> {
        // Parsed kernel BTF is big (tens of MiB): drop it before aya parses
        // its own copy.
        let vmlinux = kernel_btf::open(Path::new(VMLINUX_BTF))?;
        let offsets = kernel_btf::sock_offsets(&vmlinux)?;
        // The user stack pointer, for the caller a frame-pointer walk skips.
        // Without the helper the offset stays unset: the program's branch
        // that calls it is then dead code, which the verifier never checks.
        let regs = kernel_btf::regs_sp_offset(&vmlinux)
            .filter(|_| !opts.without.contains(&Feature::TaskRegs))
            .map(|sp| UserRegs {
                sp,
                ip_bp: kernel_btf::regs_ip_bp_offsets(&vmlinux)
                    .filter(|_| !opts.without.contains(&Feature::StackCopy)),
            });
        drop(vmlinux);
        let stacks = opts.stacks && mode == AttachMode::TpBtf;
        let accept_ret = if stacks {
            accept_ret_offset(opts)
        } else {
            None
        };
        let mut ebpf = loader(opts, accept_ret, regs)
            .override_global("SOCK_OFFSETS", &offsets, true)
            .load(OBJECT)
            .context("loading the kernel object")?;
        let btf = Btf::from_sys_fs().context("parsing kernel BTF")?;
        let name = match mode {
            AttachMode::Empty => "inet_sock_set_state_empty",
            _ => "inet_sock_set_state_btf",
        };
        let prog: &mut BtfTracePoint = program(&mut ebpf, name)?;
        prog.load(TRACEPOINT, &btf)
            .map_err(|e| load_error(e, "the BTF tracepoint program"))?;
        prog.attach()
            .context("attaching to the BTF tracepoint inet_sock_set_state")?;
        let prog_fd = prog.fd()?.try_clone()?;
        let eof = stacks.then(|| load_eof_reads(&mut ebpf, &btf, opts));
        let mut probe = Self::finish(ebpf, mode, prog_fd, stacks, accept_ret.is_some())?;
        probe.kernel.eof_reads = eof;
        // Only the BTF program records connect() (the budget's one user).
        probe.kernel.budget = stacks && budget_per_window(opts.stack_budget) > 0;
        probe.kernel.connects_capacity = u64::from(opts.creation_records);
        Ok(probe)
    }

    fn load_tracepoint(opts: &LoadOptions) -> anyhow::Result<Probe> {
        let root = tracefs::ensure_mounted()
            .context("no kernel BTF and no tracefs: closewait-trace needs one of them to attach")?;
        let offsets: TpOffsets = tracefs::tracepoint_offsets(&root)?;
        let accept_ret = if opts.stacks {
            accept_ret_offset(opts)
        } else {
            None
        };
        let mut ebpf = loader(opts, accept_ret, None)
            .override_global("TP_OFFSETS", &offsets, true)
            .load(OBJECT)
            .context("loading the kernel object")?;
        let prog: &mut TracePoint = program(&mut ebpf, "inet_sock_set_state_tp")?;
        prog.load()
            .map_err(|e| load_error(e, "the tracepoint program"))?;
        prog.attach("sock", TRACEPOINT)
            .context("attaching to the tracepoint sock:inet_sock_set_state")?;
        let prog_fd = prog.fd()?.try_clone()?;
        Self::finish(
            ebpf,
            AttachMode::Tracepoint,
            prog_fd,
            opts.stacks,
            accept_ret.is_some(),
        )
    }

    fn finish(
        mut ebpf: Ebpf,
        mode: AttachMode,
        prog_fd: ProgramFd,
        stacks: bool,
        accept_ready: bool,
    ) -> anyhow::Result<Probe> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("no {name} map"))
        };
        let events = RingBuf::try_from(take("EVENTS")?)?;
        let counters = PerCpuArray::try_from(take("COUNTERS")?)?;
        let stacks_armed = if stacks {
            Some(Array::try_from(take("STACKS_ARMED")?)?)
        } else {
            None
        };
        let creations = if stacks {
            Some(Creations {
                stacks: StackTraceMap::try_from(take("STACKS")?)?,
                connects: HashMap::try_from(take("CONNECTS")?)?,
                accepts: HashMap::try_from(take("ACCEPTS")?)?,
                eof_reads: HashMap::try_from(take("EOF_READS")?)?,
                copies: Array::try_from(take("STACK_COPIES")?)?,
                nofp_tgids: HashMap::try_from(take("NOFP_TGIDS")?)?,
                nofp_on: Array::try_from(take("NOFP_ON")?)?,
                nofp_flagged: Default::default(),
            })
        } else {
            None
        };
        Ok(Probe {
            creations,
            mode,
            events,
            kernel: Kernel {
                counters,
                prog_fd,
                stacks_armed,
                budget: false,
                connects_capacity: 0,
                recursion_seen: Default::default(),
                recursion_warned: Default::default(),
                accept_ready: accept_ready && stacks,
                eof_reads: None,
                ebpf,
            },
        })
    }
}

impl Kernel {
    /// Start recording every creation stack (idempotent). False when the
    /// run has no stacks (`--stacks off`, or the empty benchmark program).
    pub fn arm_stacks(&mut self) -> anyhow::Result<bool> {
        let Some(level) = self.stacks_armed.as_mut() else {
            return Ok(false);
        };
        level
            .set(0, armed::FULL, 0)
            .context("arming creation stacks")?;
        if std::mem::take(&mut self.accept_ready) {
            attach_accept(&mut self.ebpf);
        }
        Ok(true)
    }

    /// Record connect() stacks within the per-CPU budget (`LoadOptions::
    /// stack_budget`) until [`Kernel::arm_stacks`]: no syscall tracepoint,
    /// no accept() recorder. False when the run has no stacks or no budget.
    pub fn arm_budget(&mut self) -> anyhow::Result<bool> {
        let (Some(level), true) = (self.stacks_armed.as_mut(), self.budget) else {
            return Ok(false);
        };
        level
            .set(0, armed::BUDGET, 0)
            .context("arming creation stacks within the budget")?;
        Ok(true)
    }

    /// Start recording where sockets in CLOSE_WAIT read EOF (`last_read`;
    /// with stacks armed). A program at every recvmsg() on the host, so the
    /// agent arms it only once a socket is found that read EOF and was not
    /// closed. False where the kernel cannot.
    pub fn arm_eof_reads(&mut self) -> bool {
        match self.eof_reads.take() {
            Some(Ok(())) => attach_eof_reads(&mut self.ebpf),
            Some(Err(why)) => {
                eprintln!("closewait-trace: {why}");
                false
            }
            None => false,
        }
    }

    /// The kernel's count of runs skipped, or the last one read when
    /// fdinfo cannot be read now (out of descriptors): said once.
    fn recursion_misses(&self) -> u64 {
        match recursion_misses(&self.prog_fd) {
            Ok(n) => {
                self.recursion_seen.set(n);
                n
            }
            Err(err) => {
                if !self.recursion_warned.replace(true) {
                    eprintln!("closewait-trace: warning: cannot read the count of skipped runs ({err:#}); lost events may be undercounted");
                }
                self.recursion_seen.get()
            }
        }
    }

    /// Events lost, every reason together (the ring buffer full, a failed
    /// read of the tracepoint's arguments, a run the kernel skipped): the
    /// part of [`Kernel::drops`] the tracker must hear of before it flags a
    /// socket, whose exit may be among them.
    /// Reads only the counters [`Drops::events_lost`] adds up.
    pub fn events_lost(&self) -> anyhow::Result<u64> {
        let lost = Drops {
            ringbuf_full: self.counter(counter::RINGBUF_FULL)?,
            read_failed: self.counter(counter::READ_FAILED)?,
            recursion_misses: self.recursion_misses(),
            ..Drops::default()
        };
        Ok(lost.events_lost())
    }

    /// Current totals of everything the kernel dropped.
    pub fn drops(&self) -> anyhow::Result<Drops> {
        let sum = |index: u32| self.counter(index);
        Ok(Drops {
            ringbuf_full: sum(counter::RINGBUF_FULL)?,
            read_failed: sum(counter::READ_FAILED)?,
            stack_failed: sum(counter::STACK_FAILED)?,
            over_budget: sum(counter::OVER_BUDGET)?,
            connects_evicted: {
                let live = sum(counter::CONNECTS_RECORDED)?
                    .saturating_sub(sum(counter::CONNECTS_FORGOTTEN)?);
                live.saturating_sub(self.connects_capacity)
            },
            recursion_misses: self.recursion_misses(),
        })
    }

    /// One of the kernel's counters, summed over CPUs.
    fn counter(&self, index: u32) -> anyhow::Result<u64> {
        Ok(self.counters.get(&index, 0)?.iter().sum())
    }
}

/// One line on stderr: `feature` is missing, and what happens instead.
fn say(feature: Feature) {
    eprintln!("closewait-trace: {}", feature.missing_line());
}

/// The per-second budget as captures per window of the kernel's fixed
/// window (at least one, unless the budget is 0).
fn budget_per_window(per_sec: u32) -> u32 {
    let windows = (1_000_000_000 / BUDGET_WINDOW_NS) as u32;
    per_sec.div_ceil(windows)
}

/// Where the user registers the kernel side reads are in `struct pt_regs`.
#[derive(Clone, Copy, Debug)]
struct UserRegs {
    sp: u32,
    /// `None`: no stack copies.
    ip_bp: Option<(u32, u32)>,
}

/// The loader with the settings both attach modes share.
fn loader(
    opts: &LoadOptions,
    accept_ret: Option<u32>,
    regs: Option<UserRegs>,
) -> EbpfLoader<'static> {
    let mut config = Config::DEFAULT;
    if opts.ports.len() <= MAX_KERNEL_PORTS {
        config.ports[..opts.ports.len()].copy_from_slice(&opts.ports);
        config.n_ports = opts.ports.len() as u32;
    }
    // Beyond that the kernel passes every port and the agent filters.
    config.wakeup_bytes = opts.ring_buffer_bytes / 4;
    if opts.stacks && opts.attach != Some(AttachMode::Empty) {
        config.stacks = 1;
        config.accept_ret = accept_ret.unwrap_or(NO_OFFSET);
        if let Some(regs) = regs {
            config.regs_sp = regs.sp;
            if let Some((ip, bp)) = regs.ip_bp {
                config.regs_ip = ip;
                config.regs_bp = bp;
                config.copy_slots_per_cpu = copy_slots_per_cpu(possible_cpus());
            }
        }
        config.budget_per_window = budget_per_window(opts.stack_budget);
    }
    // One slot when there are no copies: the map's memory is preallocated.
    let copy_slots = (config.copy_slots_per_cpu * possible_cpus()).max(1);
    let mut loader = EbpfLoader::new();
    // EbpfLoader borrows the value for its own lifetime; leak the few bytes
    // once so the loader can be returned.
    let config: &'static Config = Box::leak(Box::new(config));
    loader
        .override_global("CONFIG", config, true)
        .map_max_entries("EVENTS", opts.ring_buffer_bytes)
        .map_max_entries("STACK_COPIES", copy_slots)
        .map_max_entries("CONNECTS", opts.creation_records)
        .map_max_entries("ACCEPTS", opts.creation_records);
    loader
}

/// Where `ret` is in the accept syscall tracepoints, which need tracefs.
/// `None` (with a warning): accepted sockets will have no creation stack.
fn accept_ret_offset(opts: &LoadOptions) -> Option<u32> {
    if opts.without.contains(&Feature::SyscallTracepoints) {
        return None; // said at load
    }
    match tracefs::ensure_mounted().and_then(|root| tracefs::accept_ret_offset(&root)) {
        Ok(offset) => Some(offset),
        Err(err) => {
            eprintln!(
                "closewait-trace: warning: no creation stacks for accepted sockets ({err:#})"
            );
            None
        }
    }
}

/// Attach the accept() stack recorder to sys_exit_accept4 and sys_exit_accept.
/// Best effort: without it accepted sockets are reported without a stack.
/// Load (not attach) the EOF-read recorder on `sock:sock_recv_length`: Ok,
/// or why not (the kernel has no such tracepoint), which is said only when
/// the recorder would be armed.
fn load_eof_reads(ebpf: &mut Ebpf, btf: &Btf, opts: &LoadOptions) -> Result<(), String> {
    if opts.without.contains(&Feature::RecvTracepoint) {
        return Err(Feature::RecvTracepoint.missing_line().to_string());
    }
    let result = (|| -> anyhow::Result<()> {
        let prog: &mut BtfTracePoint = program(ebpf, "sock_recv_length")?;
        prog.load("sock_recv_length", btf)
            .map_err(|e| load_error(e, "the EOF-read recorder"))?;
        Ok(())
    })();
    result.map_err(|err| format!("{} ({err:#})", Feature::RecvTracepoint.missing_line()))
}

/// Attach the loaded EOF-read recorder. Best effort, like the accept one.
fn attach_eof_reads(ebpf: &mut Ebpf) -> bool {
    let result = (|| -> anyhow::Result<()> {
        let prog: &mut BtfTracePoint = program(ebpf, "sock_recv_length")?;
        prog.attach()?;
        Ok(())
    })();
    match result {
        Ok(()) => true,
        Err(err) => {
            eprintln!("closewait-trace: warning: no last_read stacks ({err:#})");
            false
        }
    }
}

fn attach_accept(ebpf: &mut Ebpf) {
    let result = (|| -> anyhow::Result<()> {
        let prog: &mut TracePoint = program(ebpf, "sys_exit_accept")?;
        prog.load()
            .map_err(|e| load_error(e, "the accept() stack recorder"))?;
        prog.attach("syscalls", "sys_exit_accept4")?;
        // Not every architecture has plain accept(); accept4 is enough there.
        let _ = prog.attach("syscalls", "sys_exit_accept");
        Ok(())
    })();
    if let Err(err) = result {
        eprintln!("closewait-trace: warning: no creation stacks for accepted sockets ({err:#})");
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .with_context(|| format!("the kernel object has no program {name}"))?;
    Ok(prog.try_into()?)
}

/// A load failure as one line: the errno and the verifier's last words.
fn load_error(err: ProgramError, what: &str) -> anyhow::Error {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(3).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            anyhow::anyhow!(
                "the kernel refused {what} ({io_error}); verifier: {}",
                tail.join(" / ")
            )
        }
        other => anyhow::Error::new(other).context(format!("loading {what}")),
    }
}

/// `recursion_misses` of the program (Linux 5.12+), from the kernel's
/// fdinfo of the program fd; 0 where the kernel does not report it.
fn recursion_misses(fd: &ProgramFd) -> anyhow::Result<u64> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(fdinfo_field(&text, "recursion_misses").unwrap_or(0))
}

/// Whether loading failed for want of file descriptors (EMFILE, ENFILE):
/// not a missing kernel feature, so no fallback.
fn is_out_of_fds(err: &anyhow::Error) -> bool {
    let text = format!("{err:#}");
    text.contains("Too many open files") || text.contains("os error 23")
}

fn out_of_fds(err: anyhow::Error) -> anyhow::Error {
    let limit = crate::privileges::nofile_limit()
        .map(|r| r.rlim_cur)
        .map_or_else(|| "?".to_string(), |n| n.to_string());
    anyhow::anyhow!(
        "out of file descriptors loading the kernel program (RLIMIT_NOFILE {limit}; it needs about 64): raise it (ulimit -n) ({err:#})"
    )
}

/// `name:\tvalue` from an fdinfo file.
fn fdinfo_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fdinfo_fields() {
        // Captured from /proc/PID/fdinfo of a tp_btf program on 6.18.
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\nprog_type:\t26\nprog_jited:\t1\nprog_tag:\t5b9fbd6e1de5cfc4\nmemlock:\t4096\nprog_id:\t231\nrun_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t17\nverified_insns:\t201\n";
        assert_eq!(fdinfo_field(text, "recursion_misses"), Some(17));
        assert_eq!(fdinfo_field(text, "prog_id"), Some(231));
        assert_eq!(fdinfo_field("pos:\t0\n", "recursion_misses"), None);
    }

    #[test]
    fn budget_per_window_rounds_up_and_keeps_zero() {
        assert_eq!(budget_per_window(0), 0);
        assert_eq!(budget_per_window(1), 1);
        assert_eq!(budget_per_window(1000), 100);
        assert_eq!(budget_per_window(1001), 101);
    }

    #[test]
    fn drops_since_and_by_reason() {
        let before = Drops {
            ringbuf_full: 1,
            read_failed: 0,
            stack_failed: 2,
            over_budget: 7,
            recursion_misses: 3,
            connects_evicted: 0,
        };
        let now = Drops {
            ringbuf_full: 4,
            read_failed: 0,
            stack_failed: 2,
            over_budget: 10,
            recursion_misses: 5,
            connects_evicted: 4,
        };
        let d = now.since(&before);
        assert_eq!(d.events_lost(), 5, "stacks skipped are not events");
        assert_eq!(d.stacks_missed(), 4, "evicted records are missed stacks");
        assert_eq!(d.over_budget, 3);
        assert_eq!(
            d.by_reason(),
            [("ringbuf_full", 3), ("recursion", 2), ("read_failed", 0)]
        );
    }
}
