//! Kernel side of closewait-trace: one program on `inet_sock_set_state`,
//! in two flavours (BTF tracepoint, preferred; classic tracepoint, fallback).
//! The loader loads exactly one of them.
//!
//! Only TCP transitions into or out of CLOSE_WAIT reach the ring buffer; the
//! state test comes first because it costs nothing (tracepoint arguments),
//! everything else only runs for those ~2 in 10 transitions.
#![no_std]
#![no_main]

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{
        BPF_F_USER_STACK, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
    },
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_get_smp_processor_id,
        bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
        bpf_probe_read_user, bpf_probe_read_user_buf, bpf_task_pt_regs,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{tracing::StackIdContext, BtfTracePointContext, TracePointContext},
};
use closewait_common::{
    accept_key, armed, counter,
    tcp_state::{CLOSE, CLOSE_WAIT, SYN_SENT},
    Budget, Config, Creation, CreationKind, SockOffsets, StackCopy, StateEvent, TpOffsets, AF_INET,
    AF_INET6, BUDGET_WINDOW_NS, COMMON_WINDOW, IPPROTO_TCP, NO_OFFSET, STACK_COPY_BYTES,
    STACK_WORDS,
};

/// Events to the agent. The loader sets the real size (`--ring-buffer-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Per-CPU drop counters, indexed by `closewait_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// User stacks of the code that created sockets (deduplicated by the kernel).
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(4096, 0);

/// Slot 0: what to record now (`closewait_common::armed`). The agent sets
/// it at run time: `FULL` from the start (`--stacks on`) or once a socket is
/// found stuck, `BUDGET` from the start in the default mode.
#[map]
static STACKS_ARMED: Array<u32> = Array::with_max_entries(1, 0);

/// Each CPU's use of the capture budget (`armed::BUDGET`).
#[map]
static BUDGET: PerCpuArray<Budget> = PerCpuArray::with_max_entries(1, 0);

/// Copies of the top of the user stack for code without frame pointers, a
/// ring of `copy_slots_per_cpu` slots per CPU (the loader sizes it). A slot
/// is written in place: no hashing, no second copy.
#[map]
static STACK_COPIES: Array<StackCopy> = Array::with_max_entries(1, 0);

/// The next slot of each CPU's ring.
#[map]
static COPY_NEXT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Processes the agent found without frame pointers (a stack cut short)
/// although their frame pointer looked valid at the syscall: copy theirs
/// too.
#[map]
static NOFP_TGIDS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(4096, 0);

/// Slot 0 non-zero: `NOFP_TGIDS` has entries (until then the kernel does
/// not look there).
#[map]
static NOFP_ON: Array<u32> = Array::with_max_entries(1, 0);

/// connect() creation records, by socket cookie.
#[map]
static CONNECTS: LruHashMap<u64, Creation> = LruHashMap::with_max_entries(65536, 0);

/// accept() creation records, by `tgid << 32 | fd`.
#[map]
static ACCEPTS: LruHashMap<u64, Creation> = LruHashMap::with_max_entries(65536, 0);

/// The first read that returned EOF on a socket in CLOSE_WAIT, by cookie:
/// for a socket whose application read EOF and never closed it, the code
/// that should have.
#[map]
static EOF_READS: LruHashMap<u64, Creation> = LruHashMap::with_max_entries(16384, 0);

// Read-only globals, written by the loader before load (like libbpf's
// `const volatile`). Always read through `read_volatile` so the compiler does
// not fold the defaults.
#[no_mangle]
static SOCK_OFFSETS: SockOffsets = SockOffsets::UNSET;
#[no_mangle]
static TP_OFFSETS: TpOffsets = TpOffsets::UNSET;
#[no_mangle]
static CONFIG: Config = Config::DEFAULT;

/// One field of `CONFIG`: a single load, where [`config`] copies the whole
/// struct (ports included) to the stack, which costs on every event.
macro_rules! setting {
    ($field:ident) => {
        // SAFETY: a plain read of a read-only global the loader wrote.
        unsafe { read_volatile(core::ptr::addr_of!(CONFIG.$field)) }
    };
}

const CLOSE_WAIT_I32: i32 = CLOSE_WAIT as i32;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> u32 {
    match try_btf(&ctx) {
        Ok(()) => 0,
        Err(()) => {
            bump(counter::READ_FAILED);
            0
        }
    }
}

fn try_btf(ctx: &BtfTracePointContext) -> Result<(), ()> {
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if new == CLOSE_WAIT_I32 {
        enter_btf(ctx, old)
    } else if new == SYN_SENT as i32 && old == CLOSE as i32 {
        record_connect(ctx)
    } else {
        if old == CLOSE_WAIT_I32 {
            exit_btf(ctx, new)?;
        }
        // CLOSE_WAIT -> CLOSE (a reset) too.
        if new == CLOSE as i32 {
            forget_connect(ctx)?;
        }
        Ok(())
    }
}

/// Into CLOSE_WAIT: everything the agent shows about the socket.
#[inline(always)]
fn enter_btf(ctx: &BtfTracePointContext, old: i32) -> Result<(), ()> {
    let sk: *const u8 = ctx.arg(0);
    let off = unsafe { read_volatile(&SOCK_OFFSETS) };
    // SCTP and MPTCP fire this tracepoint too (SCTP's CLOSING is CLOSE_WAIT).
    if read::<u16>(sk, off.sk_protocol)? != IPPROTO_TCP {
        return Ok(());
    }
    // Ports, addresses, family and netns in one read.
    let mut common = [0u8; COMMON_WINDOW];
    // SAFETY: bpf_probe_read_kernel copes with any address.
    unsafe { bpf_probe_read_kernel_buf(sk.wrapping_add(off.common_base as usize), &mut common) }
        .map_err(|_| ())?;
    let at = |field: u32| field.wrapping_sub(off.common_base) as usize;
    let sport = u16::from_ne_bytes(take(&common, at(off.skc_num))?);
    let dport = u16::from_be_bytes(take(&common, at(off.skc_dport))?);
    if setting!(n_ports) != 0 && !config().port_matches(sport, dport) {
        return Ok(());
    }
    let mut ev = StateEvent::zeroed();
    ev.old_state = old as u8;
    ev.new_state = CLOSE_WAIT;
    ev.sport = sport;
    ev.dport = dport;
    ev.family = u16::from_ne_bytes(take(&common, at(off.skc_family))?);
    if ev.family == AF_INET {
        let s: [u8; 4] = take(&common, at(off.skc_rcv_saddr))?;
        let d: [u8; 4] = take(&common, at(off.skc_daddr))?;
        ev.saddr[..4].copy_from_slice(&s);
        ev.daddr[..4].copy_from_slice(&d);
    } else if ev.family == AF_INET6 && off.skc_v6_daddr != NO_OFFSET {
        ev.saddr = take(&common, at(off.skc_v6_rcv_saddr))?;
        ev.daddr = take(&common, at(off.skc_v6_daddr))?;
    }
    if off.skc_net != NO_OFFSET && off.net_inum != NO_OFFSET {
        let net = u64::from_ne_bytes(take(&common, at(off.skc_net))?) as *const u8;
        ev.netns = read(net, off.net_inum)?;
    }
    if off.sk_socket != NO_OFFSET && off.socket_ino != NO_OFFSET {
        let socket: *const u8 = read(sk, off.sk_socket)?;
        // Null while the socket still waits in its listener's accept queue.
        if !socket.is_null() {
            ev.inode = read(socket, off.socket_ino)?;
        }
    }
    finish(sk, &mut ev);
    Ok(())
}

/// Out of CLOSE_WAIT: the agent knows the socket from its entry and needs
/// only the cookie (and the ports, to honour --port). No protocol test: a
/// cookie the agent does not know (SCTP, MPTCP) is ignored there.
#[inline(always)]
fn exit_btf(ctx: &BtfTracePointContext, new: i32) -> Result<(), ()> {
    let sk: *const u8 = ctx.arg(0);
    let mut ev = StateEvent::zeroed();
    if setting!(n_ports) != 0 {
        let off = unsafe { read_volatile(&SOCK_OFFSETS) };
        ev.sport = read(sk, off.skc_num)?;
        ev.dport = u16::from_be(read::<u16>(sk, off.skc_dport)?);
        if !config().port_matches(ev.sport, ev.dport) {
            return Ok(());
        }
    }
    ev.old_state = CLOSE_WAIT;
    ev.new_state = new as u8;
    finish(sk, &mut ev);
    Ok(())
}

/// Cookie, time, and out.
#[inline(always)]
fn finish(sk: *const u8, ev: &mut StateEvent) {
    ev.skaddr = sk as u64;
    // SAFETY: `sk` is the tracepoint's BTF-typed `struct sock *` argument.
    ev.cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    submit(ev);
}

/// `N` bytes at `i` of the copied window; an error (never a panic) when out
/// of range.
#[inline(always)]
fn take<const N: usize>(window: &[u8; COMMON_WINDOW], i: usize) -> Result<[u8; N], ()> {
    window
        .get(i..i.wrapping_add(N))
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(())
}

/// CLOSE -> SYN_SENT runs inside connect(), in the caller's context: the
/// current task is the socket's creator and its user stack is the call site.
#[inline(always)]
fn record_connect(ctx: &BtfTracePointContext) -> Result<(), ()> {
    let level = armed_level();
    if level == armed::OFF {
        return Ok(());
    }
    let sk: *const u8 = ctx.arg(0);
    let off = unsafe { read_volatile(&SOCK_OFFSETS) };
    if read::<u16>(sk, off.sk_protocol)? != IPPROTO_TCP {
        return Ok(());
    }
    if level == armed::BUDGET && !take_budget() {
        bump(counter::OVER_BUDGET);
        return Ok(());
    }
    // SAFETY: `sk` is the tracepoint's BTF-typed `struct sock *` argument.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    let creation = creation(ctx, CreationKind::Connect);
    if CONNECTS.insert(cookie, creation, 0).is_err() {
        bump(counter::STACK_FAILED);
    } else {
        bump(counter::CONNECTS_RECORDED);
    }
    Ok(())
}

/// Into CLOSE (every socket ends there), while armed: its connect() record
/// goes, so the map holds live connections only and churn does not push
/// out the record of a socket that leaked minutes ago.
#[inline(always)]
fn forget_connect(ctx: &BtfTracePointContext) -> Result<(), ()> {
    if armed_level() == armed::OFF {
        return Ok(());
    }
    let sk: *const u8 = ctx.arg(0);
    // SAFETY: `sk` is the tracepoint's BTF-typed `struct sock *` argument.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    // Look first: most sockets have no record (the budget), and a lookup
    // takes no lock where a delete does.
    // SAFETY: the value is not kept.
    if unsafe { CONNECTS.get(&cookie) }.is_some() && CONNECTS.remove(&cookie).is_ok() {
        bump(counter::CONNECTS_FORGOTTEN);
    }
    Ok(())
}

/// accept() and accept4() return the new socket's fd, in the caller's
/// context: record its user stack under (tgid, fd).
#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    if !stacks_armed() {
        return 0;
    }
    let accept_ret: u32 = setting!(accept_ret);
    // SAFETY: the offset comes from this kernel's format file.
    let Ok(fd) = (unsafe { ctx.read_at::<i64>(accept_ret as usize) }) else {
        return 0;
    };
    if fd < 0 {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let creation = creation(&ctx, CreationKind::Accept);
    if ACCEPTS
        .insert(accept_key(tgid, fd as u32), creation, 0)
        .is_err()
    {
        bump(counter::STACK_FAILED);
    }
    0
}

/// `sock_recv_length(sk, ret, flags)` fires at the end of every recvmsg()
/// on every socket, in the reader's context: only EOF (`ret == 0`) goes on,
/// which costs nothing to test; only sockets in CLOSE_WAIT are recorded.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> u32 {
    let ret: i32 = ctx.arg(1);
    if ret != 0 || !stacks_armed() {
        return 0;
    }
    let _ = record_eof_read(&ctx);
    0
}

#[inline(always)]
fn record_eof_read(ctx: &BtfTracePointContext) -> Result<(), ()> {
    let sk: *const u8 = ctx.arg(0);
    if sk.is_null() {
        return Ok(());
    }
    let off = unsafe { read_volatile(&SOCK_OFFSETS) };
    if off.skc_state == NO_OFFSET || read::<u8>(sk, off.skc_state)? != CLOSE_WAIT {
        return Ok(());
    }
    if read::<u16>(sk, off.sk_protocol)? != IPPROTO_TCP {
        return Ok(());
    }
    // SAFETY: `sk` is the tracepoint's BTF-typed `struct sock *` argument.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    // The first EOF read only: an application that keeps reading EOF (a
    // level-triggered poll loop) walks its stack once.
    // SAFETY: the value is copied out at once.
    if unsafe { EOF_READS.get(&cookie) }.is_some() {
        return Ok(());
    }
    let record = creation(ctx, CreationKind::EofRead);
    let _ = EOF_READS.insert(cookie, record, BPF_NOEXIST as u64);
    Ok(())
}

#[inline(always)]
fn armed_level() -> u32 {
    if setting!(stacks) == 0 {
        return armed::OFF;
    }
    STACKS_ARMED.get(0).map_or(armed::OFF, |level| *level)
}

/// Every recorder: `FULL` only (the accept() and EOF-read recorders are
/// attached only then, too).
#[inline(always)]
fn stacks_armed() -> bool {
    armed_level() == armed::FULL
}

/// One capture out of this CPU's budget for the current window, if any is
/// left: a fixed window, restarted by the first capture after it ends.
#[inline(always)]
fn take_budget() -> bool {
    let Some(budget) = BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's own slot; programs on one CPU do not nest here.
    let budget = unsafe { &mut *budget };
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(budget.window_start_ns) >= BUDGET_WINDOW_NS {
        budget.window_start_ns = now;
        budget.used = 0;
    }
    if budget.used >= setting!(budget_per_window) {
        return false;
    }
    budget.used += 1;
    true
}

#[inline(always)]
fn creation<C: StackIdContext>(ctx: &C, kind: CreationKind) -> Creation {
    let user_stack_id = match ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64) {
        Ok(id) => id,
        Err(err) => {
            bump(counter::STACK_FAILED);
            err as i64
        }
    };
    let mut record = Creation {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        user_stack_id,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        kind: kind as u32,
        stack_words: [0; STACK_WORDS],
        copy_slot: 0,
        _pad: 0,
    };
    user_stack(&mut record);
    record
}

/// From the task's saved user registers (we run inside the syscall): the
/// words at the user stack pointer, and for code without frame pointers a
/// copy of the top of the stack for the agent's unwinder.
#[inline(always)]
fn user_stack(record: &mut Creation) {
    let cfg = config();
    if cfg.regs_sp == NO_OFFSET {
        return;
    }
    // SAFETY: helpers; the pt_regs pointer is only read through
    // bpf_probe_read_kernel, the user stack through bpf_probe_read_user.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    let Ok(sp) = read::<u64>(regs, cfg.regs_sp) else {
        return;
    };
    // SAFETY: the array is plain data; a failed read is zeroed again.
    let words = unsafe { &mut *(record.stack_words.as_mut_ptr() as *mut [u8; 8 * STACK_WORDS]) };
    if unsafe { bpf_probe_read_user_buf(sp as *const u8, words) }.is_err() {
        record.stack_words = [0; STACK_WORDS];
    }
    if cfg.copy_slots_per_cpu == 0 || cfg.regs_bp == NO_OFFSET || cfg.regs_ip == NO_OFFSET {
        return;
    }
    let Ok(bp) = read::<u64>(regs, cfg.regs_bp) else {
        return;
    };
    if frame_chain_plausible(sp, bp) && !flagged_nofp(record.tgid) {
        return;
    }
    let Ok(ip) = read::<u64>(regs, cfg.regs_ip) else {
        return;
    };
    copy_stack(record, &cfg, ip, sp, bp);
}

/// With frame pointers, `bp` at the syscall is the frame of the code that
/// called the C library's wrapper, a little above `sp`, and the frame it
/// saved is further up (or 0, the end of the chain). Code built without
/// them uses the register for anything; precompiled code with frame
/// pointers (Rust's std) called from code without has a valid first frame
/// whose saved one is not, hence the second test.
#[inline(always)]
fn frame_chain_plausible(sp: u64, bp: u64) -> bool {
    let above = |low: u64, high: u64| high > low && high - low < (1 << 20) && high & 7 == 0;
    if !above(sp, bp) {
        return false;
    }
    // SAFETY: bpf_probe_read_user copes with any address.
    match unsafe { bpf_probe_read_user(bp as *const u64) } {
        Ok(saved) => saved == 0 || above(bp, saved),
        Err(_) => false,
    }
}

#[inline(always)]
fn flagged_nofp(tgid: u32) -> bool {
    NOFP_ON.get(0).is_some_and(|on| *on != 0)
        // SAFETY: only tested for presence.
        && unsafe { NOFP_TGIDS.get(&tgid) }.is_some()
}

/// Copy the top of the user stack into this CPU's next slot, in place.
#[inline(always)]
fn copy_stack(record: &mut Creation, cfg: &Config, ip: u64, sp: u64, bp: u64) {
    let per_cpu = cfg.copy_slots_per_cpu;
    let Some(next) = COPY_NEXT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's own counter.
    let n = unsafe {
        let n = *next;
        *next = n.wrapping_add(1);
        n
    };
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let index = cpu
        .wrapping_mul(per_cpu)
        .wrapping_add(n & per_cpu.wrapping_sub(1));
    // A failed copy bumps nothing: the frame-pointer stack is still there,
    // and the agent marks it cut short.
    let Some(slot) = STACK_COPIES.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: a slot of a map of plain data, written in place.
    let slot = unsafe { &mut *slot };
    slot.ts_ns = record.ts_ns;
    slot.tgid = record.tgid;
    slot.ip = ip;
    slot.sp = sp;
    slot.bp = bp;
    slot.len = 0;
    // The whole window or, near the top of the stack's mapping (the next
    // page not mapped), the rest of the stack pointer's page.
    let mut len = STACK_COPY_BYTES as u32;
    // SAFETY: bpf_probe_read_user copes with any address.
    if unsafe { bpf_probe_read_user_buf(sp as *const u8, &mut slot.bytes) }.is_err() {
        len = (4096 - (sp & 4095) as u32) & (STACK_COPY_BYTES as u32 - 1);
        if len == 0 {
            return;
        }
        let Some(part) = slot.bytes.get_mut(..len as usize) else {
            return;
        };
        if unsafe { bpf_probe_read_user_buf(sp as *const u8, part) }.is_err() {
            return;
        }
    }
    slot.len = len;
    record.copy_slot = index.wrapping_add(1);
}

/// The benchmark floor: the same hook, no work. Loaded only by
/// `--attach empty`, to measure what attaching anything at all costs.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_empty(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state_tp(ctx: TracePointContext) -> u32 {
    match try_tp(&ctx) {
        Ok(()) => 0,
        Err(_) => {
            bump(counter::READ_FAILED);
            0
        }
    }
}

fn try_tp(ctx: &TracePointContext) -> Result<(), i32> {
    let off = unsafe { read_volatile(&TP_OFFSETS) };
    // SAFETY (all read_at calls): offsets come from this kernel's format file
    // and the loader checked each field's size.
    let old: i32 = unsafe { ctx.read_at(off.oldstate as usize)? };
    let new: i32 = unsafe { ctx.read_at(off.newstate as usize)? };
    if old != CLOSE_WAIT_I32 && new != CLOSE_WAIT_I32 {
        return Ok(());
    }
    if unsafe { ctx.read_at::<u16>(off.protocol as usize)? } != IPPROTO_TCP {
        return Ok(());
    }
    let sport: u16 = unsafe { ctx.read_at(off.sport as usize)? };
    let dport: u16 = unsafe { ctx.read_at(off.dport as usize)? };
    if setting!(n_ports) != 0 && !config().port_matches(sport, dport) {
        return Ok(());
    }
    let mut ev = StateEvent::zeroed();
    ev.old_state = old as u8;
    ev.new_state = new as u8;
    ev.sport = sport;
    ev.dport = dport;
    ev.family = unsafe { ctx.read_at(off.family as usize)? };
    if ev.family == AF_INET {
        let s: [u8; 4] = unsafe { ctx.read_at(off.saddr as usize)? };
        let d: [u8; 4] = unsafe { ctx.read_at(off.daddr as usize)? };
        ev.saddr[..4].copy_from_slice(&s);
        ev.daddr[..4].copy_from_slice(&d);
    } else {
        ev.saddr = unsafe { ctx.read_at(off.saddr_v6 as usize)? };
        ev.daddr = unsafe { ctx.read_at(off.daddr_v6 as usize)? };
    }
    ev.skaddr = unsafe { ctx.read_at(off.skaddr as usize)? };
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    submit(&ev);
    Ok(())
}

#[inline(always)]
fn config() -> Config {
    unsafe { read_volatile(&CONFIG) }
}

/// Read a `T` at `base + offset` in kernel memory.
#[inline(always)]
fn read<T>(base: *const u8, offset: u32) -> Result<T, ()> {
    // SAFETY: bpf_probe_read_kernel copes with any address; a bad one is an
    // error, not a fault.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }.map_err(|_| ())
}

/// Queue an event without waking the agent, which drains on a short timer;
/// a wakeup costs ~12 us, far more than the event. Only when the buffer is
/// filling up is the agent woken at once.
#[inline(always)]
fn submit(ev: &StateEvent) {
    let wakeup_bytes: u32 = setting!(wakeup_bytes);
    let wakeup_bytes = u64::from(wakeup_bytes);
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<StateEvent>(ev, flags as u64).is_err() {
        bump(counter::RINGBUF_FULL);
    }
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; programs on one CPU do not nest here.
        unsafe { *slot += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
