//! Types shared by the kernel program (`closewait-ebpf`) and the agent
//! (`closewait-user`). Everything here is `#[repr(C)]` with explicit padding:
//! the kernel writes these bytes and the agent reads them.
#![no_std]

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;

    /// The kernel's name for a TCP state number.
    pub fn name(state: u8) -> &'static str {
        match state {
            ESTABLISHED => "ESTABLISHED",
            SYN_SENT => "SYN_SENT",
            SYN_RECV => "SYN_RECV",
            FIN_WAIT1 => "FIN_WAIT1",
            FIN_WAIT2 => "FIN_WAIT2",
            TIME_WAIT => "TIME_WAIT",
            CLOSE => "CLOSE",
            CLOSE_WAIT => "CLOSE_WAIT",
            LAST_ACK => "LAST_ACK",
            LISTEN => "LISTEN",
            CLOSING => "CLOSING",
            NEW_SYN_RECV => "NEW_SYN_RECV",
            _ => "UNKNOWN",
        }
    }
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// Tag at the start of every ring-buffer record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A TCP socket moved into or out of CLOSE_WAIT: [`StateEvent`].
    State = 1,
}

/// A TCP socket moved into or out of CLOSE_WAIT.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateEvent {
    /// [`EventKind::State`] as u32.
    pub kind: u32,
    pub old_state: u8,
    pub new_state: u8,
    /// AF_INET or AF_INET6.
    pub family: u16,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Socket cookie (`bpf_get_socket_cookie`); 0 when the attach mode has none.
    pub cookie: u64,
    /// `struct sock *`, for diagnostics only: addresses are reused at once.
    pub skaddr: u64,
    /// Inode of the socket's network namespace; 0 when unknown.
    pub netns: u32,
    /// Local port, host order.
    pub sport: u16,
    /// Remote port, host order.
    pub dport: u16,
    /// Local address: 4 bytes for AF_INET (rest zero), 16 for AF_INET6.
    pub saddr: [u8; 16],
    /// Remote address, same layout as `saddr`.
    pub daddr: [u8; 16],
    /// Inode of the socket's file (`socket:[N]` in /proc/PID/fd); 0 when
    /// unknown (no BTF, or the socket has no file).
    pub inode: u64,
}

impl StateEvent {
    pub const SIZE: usize = core::mem::size_of::<StateEvent>();

    pub const fn zeroed() -> Self {
        Self {
            kind: EventKind::State as u32,
            old_state: 0,
            new_state: 0,
            family: 0,
            ts_ns: 0,
            cookie: 0,
            skaddr: 0,
            netns: 0,
            sport: 0,
            dport: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            inode: 0,
        }
    }

    /// The record's bytes, as the kernel writes them.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: repr(C), no padding bytes (checked by the const assertion
        // below), every field is plain data.
        unsafe { core::slice::from_raw_parts((self as *const Self).cast::<u8>(), Self::SIZE) }
    }
}

// No implicit padding, and 8-byte aligned records.
const _: () = assert!(core::mem::size_of::<StateEvent>() == 80);
const _: () = assert!(core::mem::align_of::<StateEvent>() == 8);

/// Why a ring-buffer record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its kind requires.
    Short { len: usize, need: usize },
    /// An unknown kind tag.
    UnknownKind(u32),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Short { len, need } => {
                write!(f, "record of {len} bytes is shorter than {need}")
            }
            DecodeError::UnknownKind(kind) => write!(f, "unknown record kind {kind}"),
        }
    }
}

/// Decode one ring-buffer record. Never panics, whatever the bytes.
pub fn decode(buf: &[u8]) -> Result<StateEvent, DecodeError> {
    if buf.len() < 4 {
        return Err(DecodeError::Short {
            len: buf.len(),
            need: 4,
        });
    }
    let kind = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if kind != EventKind::State as u32 {
        return Err(DecodeError::UnknownKind(kind));
    }
    if buf.len() < StateEvent::SIZE {
        return Err(DecodeError::Short {
            len: buf.len(),
            need: StateEvent::SIZE,
        });
    }
    // SAFETY: length checked; read_unaligned copes with any alignment and
    // every bit pattern is a valid StateEvent.
    Ok(unsafe { core::ptr::read_unaligned(buf.as_ptr().cast::<StateEvent>()) })
}

/// Indexes into the kernel's per-CPU `COUNTERS` array.
pub mod counter {
    /// `bpf_ringbuf_output` failed: the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 0;
    /// A kernel read (`bpf_probe_read_kernel`) failed, so the event was dropped.
    pub const READ_FAILED: u32 = 1;
    /// A creation stack could not be recorded (`bpf_get_stackid` failed).
    pub const STACK_FAILED: u32 = 2;
    /// A connect() not recorded because this CPU had used its capture
    /// budget (`armed::BUDGET`).
    pub const OVER_BUDGET: u32 = 3;
    /// connect() records written to `CONNECTS`.
    pub const CONNECTS_RECORDED: u32 = 4;
    /// connect() records removed because their socket closed. Recorded
    /// minus forgotten beyond the map's capacity were evicted.
    pub const CONNECTS_FORGOTTEN: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 6;
}

/// Values of `STACKS_ARMED` slot 0: what the kernel records now.
pub mod armed {
    /// Nothing.
    pub const OFF: u32 = 0;
    /// Every connect() and accept() (and EOF reads, once attached).
    pub const FULL: u32 = 1;
    /// connect() only, at most `Config::budget_per_window` a window of
    /// `BUDGET_WINDOW_NS` on each CPU: a quiet service's first leak has its
    /// stack, a connection flood costs what a clock read costs.
    pub const BUDGET: u32 = 2;
}

/// Window of the capture budget.
pub const BUDGET_WINDOW_NS: u64 = 100_000_000;

/// This CPU's use of the capture budget in the current window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub window_start_ns: u64,
    pub used: u32,
    pub _pad: u32,
}

/// Marks an offset the kernel does not have (the field is skipped).
pub const NO_OFFSET: u32 = u32::MAX;

/// Bytes of `struct sock_common` the kernel program copies in one read; every
/// `skc_*` field it uses must lie in `[common_base, common_base + COMMON_WINDOW)`
/// (checked at start-up). One read instead of one per field.
pub const COMMON_WINDOW: usize = 128;

/// Byte offsets in the running kernel's `struct sock`, looked up in its BTF
/// at start-up (Rust eBPF has no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOffsets {
    /// Start of the window of `struct sock` read in one go.
    pub common_base: u32,
    pub sk_protocol: u32,
    pub skc_family: u32,
    /// Local port, host order (`skc_num`).
    pub skc_num: u32,
    /// Remote port, network order (`skc_dport`).
    pub skc_dport: u32,
    pub skc_rcv_saddr: u32,
    pub skc_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    /// `skc_net.net`: the `struct net *`.
    pub skc_net: u32,
    /// `struct net` -> `ns.inum`.
    pub net_inum: u32,
    /// `sk_socket`: the `struct socket *`.
    pub sk_socket: u32,
    /// From a `struct socket *` to its inode number: the inode follows the
    /// socket in `struct socket_alloc`.
    pub socket_ino: u32,
    /// `skc_state` (one byte): read by the EOF-read recorder only.
    pub skc_state: u32,
}

impl SockOffsets {
    pub const UNSET: Self = Self {
        common_base: NO_OFFSET,
        sk_protocol: NO_OFFSET,
        skc_family: NO_OFFSET,
        skc_num: NO_OFFSET,
        skc_dport: NO_OFFSET,
        skc_rcv_saddr: NO_OFFSET,
        skc_daddr: NO_OFFSET,
        skc_v6_rcv_saddr: NO_OFFSET,
        skc_v6_daddr: NO_OFFSET,
        skc_net: NO_OFFSET,
        net_inum: NO_OFFSET,
        sk_socket: NO_OFFSET,
        socket_ino: NO_OFFSET,
        skc_state: NO_OFFSET,
    };
}

/// Field offsets of the classic `sock/inet_sock_set_state` tracepoint,
/// read from its tracefs `format` file at start-up.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpOffsets {
    pub skaddr: u32,
    pub oldstate: u32,
    pub newstate: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub protocol: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
}

impl TpOffsets {
    pub const UNSET: Self = Self {
        skaddr: NO_OFFSET,
        oldstate: NO_OFFSET,
        newstate: NO_OFFSET,
        sport: NO_OFFSET,
        dport: NO_OFFSET,
        family: NO_OFFSET,
        protocol: NO_OFFSET,
        saddr: NO_OFFSET,
        daddr: NO_OFFSET,
        saddr_v6: NO_OFFSET,
        daddr_v6: NO_OFFSET,
    };
}

/// How many `--port` values the kernel filters itself; with more, the
/// kernel passes every port and the agent filters.
pub const MAX_KERNEL_PORTS: usize = 8;

/// Run-time settings, written by the loader before the program loads.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Ports matched against the local or the remote port.
    pub ports: [u16; MAX_KERNEL_PORTS],
    /// How many of `ports` are in use; 0 passes every port.
    pub n_ports: u32,
    /// Wake the agent only once this many bytes wait in the ring buffer;
    /// otherwise it drains on its own timer.
    pub wakeup_bytes: u32,
    /// Non-zero: record the user stack of every connect() and accept().
    pub stacks: u32,
    /// Offset of `ret` in the `syscalls/sys_exit_accept*` tracepoint record.
    pub accept_ret: u32,
    /// Offset of `sp` in `struct pt_regs` (from BTF): where the user stack
    /// pointer is in the task's saved user registers. `NO_OFFSET`: the
    /// words at the user stack pointer are not read.
    pub regs_sp: u32,
    /// Offsets of `ip` and `bp` in `struct pt_regs`: the registers the
    /// agent's unwinder starts from.
    pub regs_ip: u32,
    pub regs_bp: u32,
    /// Slots of `STACK_COPIES` per CPU, a power of two; 0: no copies of the
    /// user stack (code without frame pointers gets a stack cut short).
    pub copy_slots_per_cpu: u32,
    /// Captures a CPU may take per `BUDGET_WINDOW_NS` while armed with
    /// `armed::BUDGET`.
    pub budget_per_window: u32,
}

impl Config {
    pub const DEFAULT: Self = Self {
        ports: [0; MAX_KERNEL_PORTS],
        n_ports: 0,
        wakeup_bytes: 0,
        stacks: 0,
        accept_ret: NO_OFFSET,
        regs_sp: NO_OFFSET,
        regs_ip: NO_OFFSET,
        regs_bp: NO_OFFSET,
        copy_slots_per_cpu: 0,
        budget_per_window: 0,
    };

    /// Whether an event with these ports passes the port filter.
    #[inline(always)]
    pub fn port_matches(&self, sport: u16, dport: u16) -> bool {
        if self.n_ports == 0 {
            return true;
        }
        let mut i = 0;
        while i < MAX_KERNEL_PORTS {
            if (i as u32) < self.n_ports && (self.ports[i] == sport || self.ports[i] == dport) {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// How a socket came to be, recorded when it was created.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreationKind {
    /// connect(): recorded at CLOSE -> SYN_SENT, in the caller's context.
    Connect = 1,
    /// accept()/accept4(): recorded at the syscall's exit.
    Accept = 2,
    /// A read that returned EOF on a socket in CLOSE_WAIT (not a creation:
    /// the code that should have closed it), at `sock:sock_recv_length`.
    EofRead = 3,
}

/// A creation record: who created the socket, when, and from which code.
/// Keyed by cookie for connect(), by `tgid << 32 | fd` for accept().
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Creation {
    pub ts_ns: u64,
    /// Id in the `STACKS` map; negative: the capture failed (-errno).
    pub user_stack_id: i64,
    pub tgid: u32,
    /// [`CreationKind`] as u32.
    pub kind: u32,
    /// The words at the user stack pointer when the syscall was made (zero
    /// where unreadable). A syscall wrapper that sets up no frame (glibc's
    /// connect(), accept()) leaves the return address into its caller among
    /// them, which a frame-pointer walk skips; the agent finds it.
    pub stack_words: [u64; STACK_WORDS],
    /// 1 + the index in `STACK_COPIES` of a copy of the top of the user
    /// stack, taken for code without frame pointers; 0: none.
    pub copy_slot: u32,
    pub _pad: u32,
}

/// Bytes of user stack copied for the agent's unwinder (from the stack
/// pointer up), for code without frame pointers.
pub const STACK_COPY_BYTES: usize = 4096;

/// A copy of the top of a user stack with the registers an unwinder starts
/// from, in a slot of `STACK_COPIES` (a ring per CPU: a later copy on the
/// same CPU reuses the slot, which `ts_ns` tells).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackCopy {
    /// The `ts_ns` of the record this copy belongs to.
    pub ts_ns: u64,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub tgid: u32,
    /// Bytes of `bytes` that hold the stack (the copy stops at the end of
    /// the stack's mapping).
    pub len: u32,
    pub bytes: [u8; STACK_COPY_BYTES],
}

/// Slots in `STACK_COPIES` in all, spread over the CPUs (at least
/// [`MIN_COPY_SLOTS_PER_CPU`] each): ~4 MiB of kernel memory.
pub const COPY_SLOTS: u32 = 1024;
pub const MIN_COPY_SLOTS_PER_CPU: u32 = 16;

/// Slots per CPU for `cpus` possible CPUs: a power of two.
pub fn copy_slots_per_cpu(cpus: u32) -> u32 {
    let share = COPY_SLOTS / cpus.max(1);
    let pow2 = if share == 0 {
        1
    } else {
        1 << (31 - share.leading_zeros())
    };
    pow2.max(MIN_COPY_SLOTS_PER_CPU)
}

/// Words read at the user stack pointer: glibc's wrappers keep the return
/// address within the first four (`sub $0x18,%rsp` on their threaded path).
pub const STACK_WORDS: usize = 8;

/// The key of an accept() creation record.
pub const fn accept_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C) plain data with no implicit padding.
    unsafe impl aya::Pod for super::StateEvent {}
    unsafe impl aya::Pod for super::SockOffsets {}
    unsafe impl aya::Pod for super::TpOffsets {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Creation {}
    unsafe impl aya::Pod for super::StackCopy {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StateEvent {
        let mut ev = StateEvent::zeroed();
        ev.old_state = tcp_state::ESTABLISHED;
        ev.new_state = tcp_state::CLOSE_WAIT;
        ev.family = AF_INET6;
        ev.ts_ns = 123_456_789;
        ev.cookie = 0xdead_beef_0042;
        ev.skaddr = 0xffff_8880_1234_5678;
        ev.netns = 4026531840;
        ev.sport = 8080;
        ev.dport = 51234;
        ev.saddr = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        ev.daddr = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        ev.inode = 123_456;
        ev
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let ev = sample();
        assert_eq!(decode(ev.as_bytes()), Ok(ev));
    }

    #[test]
    fn decode_accepts_trailing_bytes_and_any_alignment() {
        let ev = sample();
        let mut buf = [0u8; StateEvent::SIZE + 9];
        buf[1..1 + StateEvent::SIZE].copy_from_slice(ev.as_bytes());
        assert_eq!(decode(&buf[1..]), Ok(ev));
    }

    #[test]
    fn decode_rejects_short_input() {
        assert_eq!(decode(&[]), Err(DecodeError::Short { len: 0, need: 4 }));
        let ev = sample();
        let bytes = ev.as_bytes();
        assert_eq!(
            decode(&bytes[..StateEvent::SIZE - 1]),
            Err(DecodeError::Short {
                len: StateEvent::SIZE - 1,
                need: StateEvent::SIZE
            })
        );
    }

    #[test]
    fn decode_rejects_garbage_kind() {
        let buf = [0xffu8; StateEvent::SIZE];
        assert_eq!(decode(&buf), Err(DecodeError::UnknownKind(u32::MAX)));
        // Every length of garbage: never a panic.
        for len in 0..buf.len() {
            let _ = decode(&buf[..len]);
        }
    }

    #[test]
    fn port_filter_matches_local_or_remote() {
        let mut cfg = Config::DEFAULT;
        assert!(cfg.port_matches(1, 2), "no ports passes everything");
        cfg.ports[0] = 80;
        cfg.ports[1] = 443;
        cfg.n_ports = 2;
        assert!(cfg.port_matches(80, 5000));
        assert!(cfg.port_matches(5000, 443));
        assert!(!cfg.port_matches(5000, 5001));
        // Unused slots (0) must not match port 0.
        assert!(!cfg.port_matches(0, 5001));
    }

    #[test]
    fn copy_slots_are_a_power_of_two_spread_over_the_cpus() {
        assert_eq!(copy_slots_per_cpu(1), COPY_SLOTS);
        assert_eq!(copy_slots_per_cpu(2), COPY_SLOTS / 2);
        assert_eq!(copy_slots_per_cpu(3), 256);
        assert_eq!(copy_slots_per_cpu(0), COPY_SLOTS);
        assert_eq!(copy_slots_per_cpu(4096), MIN_COPY_SLOTS_PER_CPU);
        for cpus in 1..300 {
            assert!(copy_slots_per_cpu(cpus).is_power_of_two());
        }
    }

    #[test]
    fn state_names() {
        assert_eq!(tcp_state::name(tcp_state::CLOSE_WAIT), "CLOSE_WAIT");
        assert_eq!(tcp_state::name(tcp_state::LAST_ACK), "LAST_ACK");
        assert_eq!(tcp_state::name(200), "UNKNOWN");
    }
}
