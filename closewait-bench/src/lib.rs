//! Loopback TCP connection generator for benchmarking closewait-trace.
//!
//! Every mode uses a loopback listener and its own client sockets. In `churn`
//! and `hold` the server side closes first, so the *client* socket receives
//! the FIN and enters CLOSE_WAIT; the client then closes (CLOSE_WAIT ->
//! LAST_ACK), which is the transition the tracer measures. In `park` the
//! client closes first and the *accepted* socket is kept in CLOSE_WAIT.
//!
//! All sockets are non-blocking. On loopback every step completes inside the
//! syscall that triggers it (the peer's packets are processed in softirq
//! before the syscall returns), so the fast path is exactly the blocking
//! sequence of syscalls; if a step would block anyway, a bounded `poll`
//! waits for it, so nothing can hang.
//!
//! The benchmark harness that runs churn next to closewait-trace and peer
//! tracers (`cargo xtask bench`, binary `closewait-bench`) is [`harness`].

pub mod harness;
pub mod scrape;
pub mod soak;
pub mod sys;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use closewait_host::{clock::mono_ns, netns};

/// How long one step of one connection may wait before it counts as failed.
/// A little more than the 1 s initial SYN retransmission timeout, so a single
/// dropped SYN still completes.
pub const STEP_TIMEOUT: Duration = Duration::from_millis(1500);

/// File descriptors kept in reserve (stdio, listener, a client in flight...).
const FD_RESERVE: u64 = 8;

/// Refuse anything but loopback: 127.0.0.0/8 or ::1.
pub fn check_loopback(ip: &IpAddr) -> Result<()> {
    let ok = match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => *v6 == Ipv6Addr::LOCALHOST,
    };
    if !ok {
        bail!("--addr {ip} is not a loopback address; only 127.0.0.0/8 and ::1 are allowed");
    }
    Ok(())
}

/// Fail with a clear message unless `needed` descriptors fit in RLIMIT_NOFILE.
pub fn ensure_fds(needed: u64, what: &str) -> Result<()> {
    let (soft, hard) = sys::nofile_limits().context("getrlimit(RLIMIT_NOFILE)")?;
    let needed = needed + FD_RESERVE;
    if needed > soft {
        bail!(
            "{what} needs about {needed} file descriptors, but RLIMIT_NOFILE is {soft} \
             (hard limit {hard}); use at most {} per process or run several processes",
            soft.saturating_sub(FD_RESERVE)
        );
    }
    Ok(())
}

fn is_timeout(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut
}

/// A recv-heavy load: one loopback connection, the client writes 64-byte
/// messages, the server reads each with a recv() of its own, for
/// `duration`. Returns (reads, reads per second).
pub fn run_recv(addr: &SocketAddr, duration: Duration) -> Result<(u64, f64)> {
    use std::io::Read;
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("listen on {addr}"))?;
    let mut client = std::net::TcpStream::connect(listener.local_addr()?).context("connect")?;
    client.set_nodelay(true)?;
    let (mut server, _) = listener.accept().context("accept")?;
    let msg = [0x5a_u8; 64];
    let mut buf = [0u8; 64];
    let start = mono_ns();
    let end = start + duration.as_nanos() as u64;
    let mut reads = 0u64;
    while mono_ns() < end {
        for _ in 0..256 {
            client.write_all(&msg).context("write")?;
            let mut got = 0;
            while got < msg.len() {
                let n = server.read(&mut buf[got..]).context("read")?;
                if n == 0 {
                    bail!("the connection closed");
                }
                got += n;
                reads += 1;
            }
        }
    }
    let secs = (mono_ns() - start) as f64 / 1e9;
    Ok((reads, reads as f64 / secs))
}

// ---------------------------------------------------------------- churn

#[derive(Debug, Clone)]
pub struct ChurnConfig {
    /// Listener address; port 0 = any.
    pub addr: SocketAddr,
    pub duration: Duration,
    /// Target connections per second; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Print a progress line on stderr every second.
    pub progress: bool,
}

#[derive(Debug, Default, Clone)]
pub struct ChurnStats {
    pub port: u16,
    pub connections: u64,
    pub errors: u64,
    pub seconds: f64,
    /// connect() failed with EADDRNOTAVAIL (no ephemeral port left).
    pub port_exhausted: u64,
    /// A step did not complete within [`STEP_TIMEOUT`].
    pub timeouts: u64,
    /// Steps that would have blocked and had to wait in poll (0 on loopback
    /// unless something is off).
    pub slow_waits: u64,
    /// Other failures, by "step: error".
    pub other: BTreeMap<String, u64>,
}

impl ChurnStats {
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.connections as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The one JSON line churn mode prints on stdout.
    pub fn json(&self) -> String {
        format!(
            "{{\"mode\":\"churn\",\"connections\":{},\"seconds\":{:.3},\"rate\":{:.1},\"errors\":{}}}",
            self.connections,
            self.seconds,
            self.rate(),
            self.errors
        )
    }

    /// Human-readable breakdown of the errors and, when they are a
    /// problem, a hint (for stderr). Empty when there were no errors.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        if self.errors == 0 && self.slow_waits == 0 {
            return s;
        }
        s.push_str(&format!(
            "churn: {} errors ({} no ephemeral port / EADDRNOTAVAIL, {} step timeouts), \
             {} slow steps waited in poll\n",
            self.errors, self.port_exhausted, self.timeouts, self.slow_waits
        ));
        for (what, n) in &self.other {
            s.push_str(&format!("churn:   {n} x {what}\n"));
        }
        let attempts = self.connections + self.errors;
        if self.port_exhausted * 100 > attempts {
            s.push_str(
                "churn: hint: connect() found no free ephemeral port (EADDRNOTAVAIL). churn \
                 itself does not use ports up (its clients end in CLOSED, and each server-side \
                 TIME_WAIT is recycled by the next SYN on the same tuple), so other sockets \
                 hold net.ipv4.ip_local_port_range: check `ss -tan`, use another --addr \
                 (e.g. 127.0.0.2), or run in a fresh network namespace with --tune-netns \
                 (net.ipv4.ip_local_port_range=\"1024 65535\" and \
                 net.ipv4.tcp_max_tw_buckets=1024 there).\n",
            );
        }
        if self.errors * 2 > attempts {
            s.push_str("churn: hint: most connections failed; see the breakdown above.\n");
        }
        s
    }
}

enum Fail {
    NoPort,
    Step(&'static str, io::Error),
}

/// One connection: connect, client writes 1 byte, server reads it and
/// closes, client reads EOF and closes.
fn churn_one(
    listener: &OwnedFd,
    addr: &SocketAddr,
    slow: &mut u64,
) -> std::result::Result<(), Fail> {
    let mut buf = [0u8; 1];
    let client = sys::tcp_socket(&addr.ip()).map_err(|e| Fail::Step("socket", e))?;
    match sys::connect_start(&client, addr) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => return Err(Fail::NoPort),
        Err(e) => return Err(Fail::Step("connect", e)),
    }
    // Fails with EAGAIN while the handshake is still in progress.
    sys::retry(
        client.as_raw_fd(),
        libc::POLLOUT,
        STEP_TIMEOUT,
        slow,
        || sys::send(&client, b"x"),
    )
    .map_err(|e| Fail::Step("client send", e))?;
    let (server, _) = sys::retry(
        listener.as_raw_fd(),
        libc::POLLIN,
        STEP_TIMEOUT,
        slow,
        || sys::accept(listener, false),
    )
    .map_err(|e| Fail::Step("accept", e))?;
    let n = sys::retry(server.as_raw_fd(), libc::POLLIN, STEP_TIMEOUT, slow, || {
        sys::recv(&server, &mut buf)
    })
    .map_err(|e| Fail::Step("server recv", e))?;
    if n != 1 {
        return Err(Fail::Step(
            "server recv",
            io::Error::other("got EOF instead of the byte (stale connection)"),
        ));
    }
    sys::close(server).map_err(|e| Fail::Step("server close", e))?;
    let n = sys::retry(client.as_raw_fd(), libc::POLLIN, STEP_TIMEOUT, slow, || {
        sys::recv(&client, &mut buf)
    })
    .map_err(|e| Fail::Step("client recv EOF", e))?;
    if n != 0 {
        return Err(Fail::Step(
            "client recv EOF",
            io::Error::other("got data instead of EOF"),
        ));
    }
    sys::close(client).map_err(|e| Fail::Step("client close", e))?;
    Ok(())
}

/// After a failure, accept and drop whatever is queued so the next accept
/// pairs with the next connect again.
fn drain_accept_queue(listener: &OwnedFd) {
    for _ in 0..4096 {
        if sys::accept(listener, false).is_err() {
            break;
        }
    }
}

/// Churn mode: connections back to back (or paced at `rate`) until
/// `duration` has passed. Single-threaded.
pub fn run_churn(cfg: &ChurnConfig) -> Result<ChurnStats> {
    let (listener, port) =
        sys::tcp_listener(&cfg.addr, 4096).with_context(|| format!("listen on {}", cfg.addr))?;
    let target = SocketAddr::new(cfg.addr.ip(), port);
    let mut st = ChurnStats {
        port,
        ..Default::default()
    };

    let start = mono_ns();
    let end = start + cfg.duration.as_nanos() as u64;
    let interval_ns = cfg.rate.map(|r| 1e9 / r);
    let mut slot: u64 = 0;
    let mut backoff_ns: u64 = 1_000_000;
    let mut next_progress = start + 1_000_000_000;
    let mut last_progress = (start, 0u64);

    loop {
        let now = mono_ns();
        if now >= end {
            break;
        }
        if cfg.progress && now >= next_progress {
            let (t0, c0) = last_progress;
            let dt = (now - t0) as f64 / 1e9;
            eprintln!(
                "churn: t={:.1}s connections={} errors={} rate={:.0}/s",
                (now - start) as f64 / 1e9,
                st.connections,
                st.errors,
                (st.connections - c0) as f64 / dt,
            );
            last_progress = (now, st.connections);
            next_progress += 1_000_000_000;
        }
        if let Some(iv) = interval_ns {
            // Absolute schedule: slot k is due at start + k/rate.
            let due = start + (slot as f64 * iv) as u64;
            if due >= end {
                sys::sleep_until_ns(end);
                break;
            }
            if due > now {
                sys::sleep_until_ns(due);
            }
            slot += 1;
        }
        match churn_one(&listener, &target, &mut st.slow_waits) {
            Ok(()) => {
                st.connections += 1;
                backoff_ns = 1_000_000;
            }
            Err(Fail::NoPort) => {
                st.errors += 1;
                st.port_exhausted += 1;
                let now = mono_ns();
                sys::sleep_until_ns((now + backoff_ns).min(end));
                backoff_ns = (backoff_ns * 2).min(50_000_000);
            }
            Err(Fail::Step(step, e)) => {
                st.errors += 1;
                if is_timeout(&e) {
                    st.timeouts += 1;
                }
                *st.other.entry(format!("{step}: {e}")).or_insert(0) += 1;
                drain_accept_queue(&listener);
            }
        }
    }
    st.seconds = (mono_ns() - start) as f64 / 1e9;
    Ok(st)
}

// ---------------------------------------------------------------- hold

#[derive(Debug, Clone)]
pub struct HoldConfig {
    pub addr: SocketAddr,
    /// Time each client socket is left in CLOSE_WAIT.
    pub hold: Duration,
    pub count: u64,
    pub batch: usize,
}

/// Ground truth for one client socket's CLOSE_WAIT dwell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRecord {
    /// The client socket's local port.
    pub lport: u16,
    /// The server (listener) port, the client socket's remote port.
    pub rport: u16,
    /// t_close - t_fin, CLOCK_MONOTONIC ns.
    pub dwell_ns: u64,
}

impl HoldRecord {
    pub fn json(&self) -> String {
        format!(
            "{{\"lport\":{},\"rport\":{},\"dwell_ns\":{}}}",
            self.lport, self.rport, self.dwell_ns
        )
    }
}

/// Accept the connection whose client has local port `lport`.
fn accept_peer(listener: &OwnedFd, lport: u16) -> Result<OwnedFd> {
    let mut slow = 0;
    let (s, peer) = sys::retry(
        listener.as_raw_fd(),
        libc::POLLIN,
        STEP_TIMEOUT,
        &mut slow,
        || sys::accept(listener, true),
    )
    .context("accept")?;
    if peer != lport {
        bail!("accepted a connection from port {peer}, expected {lport}");
    }
    Ok(s)
}

/// Hold mode: in batches, open pairs, close the server side (t_fin), wait
/// `hold`, close the clients (t_close); one JSON line per connection to
/// `truth`. Returns the number of connections.
pub fn run_hold(cfg: &HoldConfig, truth: &mut dyn Write) -> Result<u64> {
    if cfg.batch == 0 {
        bail!("--batch must be at least 1");
    }
    ensure_fds(2 * cfg.batch as u64, &format!("--batch {}", cfg.batch))?;
    let (listener, port) =
        sys::tcp_listener(&cfg.addr, 4096).with_context(|| format!("listen on {}", cfg.addr))?;
    let target = SocketAddr::new(cfg.addr.ip(), port);
    let hold_ns = cfg.hold.as_nanos() as u64;
    let mut picker = PortPicker::new(port);
    let mut done: u64 = 0;
    let mut buf = [0u8; 1];

    while done < cfg.count {
        let b = (cfg.count - done).min(cfg.batch as u64) as usize;
        let mut pairs = Vec::with_capacity(b);
        for _ in 0..b {
            let (c, lport) = match picker.connect(&target)? {
                Some(x) => x,
                None => {
                    // A whole cycle through the port range: start another
                    // (lports repeat from here on), unless nothing worked.
                    picker.rewind();
                    picker.connect(&target)?.with_context(|| {
                        format!("no client port available: {}", picker.exhausted_hint())
                    })?
                }
            };
            let s = accept_peer(&listener, lport)?;
            pairs.push((c, s, lport));
        }
        // Server closes first: its FIN puts the client socket in CLOSE_WAIT
        // (on loopback, before close() returns).
        let mut open = Vec::with_capacity(b);
        for (c, s, lport) in pairs {
            sys::close(s).context("server close")?;
            let t_fin = mono_ns();
            open.push((c, lport, t_fin));
        }
        let last_fin = open.last().map(|p| p.2).unwrap_or_else(mono_ns);
        sys::sleep_until_ns(last_fin + hold_ns);
        for (c, lport, t_fin) in open {
            let mut slow = 0;
            let n = sys::retry(c.as_raw_fd(), libc::POLLIN, STEP_TIMEOUT, &mut slow, || {
                sys::recv(&c, &mut buf)
            })
            .context("client recv EOF")?;
            if n != 0 {
                bail!("client {lport}: expected EOF, got data");
            }
            let t_close = mono_ns();
            sys::close(c).context("client close")?;
            let rec = HoldRecord {
                lport,
                rport: port,
                dwell_ns: t_close - t_fin,
            };
            writeln!(truth, "{}", rec.json()).context("write truth")?;
        }
        done += b as u64;
    }
    truth.flush().context("flush truth")?;
    Ok(done)
}

// ---------------------------------------------------------------- park

/// Sockets parked in CLOSE_WAIT; dropping this closes them all.
pub struct Parked {
    pub port: u16,
    _listener: OwnedFd,
    socks: Vec<OwnedFd>,
}

impl Parked {
    pub fn len(&self) -> usize {
        self.socks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }
}

/// Read net.ipv4.ip_local_port_range and ip_local_reserved_ports.
fn local_port_range() -> (u16, u16, Vec<(u16, u16)>) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u16>());
            match (it.next(), it.next()) {
                (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Some((lo, hi)),
                _ => None,
            }
        })
        .unwrap_or((32768, 60999));
    let reserved = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports")
        .map(|s| parse_port_list(&s))
        .unwrap_or_default();
    (range.0, range.1, reserved)
}

/// Parse a port list like `1,5-9`.
fn parse_port_list(s: &str) -> Vec<(u16, u16)> {
    s.trim()
        .split(',')
        .filter(|x| !x.is_empty())
        .filter_map(|x| match x.split_once('-') {
            Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
            None => {
                let p = x.trim().parse().ok()?;
                Some((p, p))
            }
        })
        .collect()
}

/// Chooses client ports itself: walks net.ipv4.ip_local_port_range from a
/// per-process starting point, one port per connect, and has the kernel
/// allocate exactly that port (`IP_LOCAL_PORT_RANGE` = [p, p]). So within
/// one cycle through the range no client port is used twice (hold mode's
/// truth lines have unique (lport, rport)), and connect() does not have to
/// scan a range full of our own ports (park mode: 19000 connects take ~11 s
/// with the kernel's own choice, most of it in `__inet_hash_connect`). The
/// ports stay connect-allocated, shareable by other connections, unlike
/// ports taken with bind().
struct PortPicker {
    lo: u16,
    hi: u16,
    reserved: Vec<(u16, u16)>,
    skip: u16,
    span: u64,
    offset: u64,
    tried: u64,
    /// false once the kernel rejected IP_LOCAL_PORT_RANGE (before 6.3):
    /// then plain ephemeral connects.
    per_socket_range: bool,
}

impl PortPicker {
    /// `skip`: the listener's own port.
    fn new(skip: u16) -> Self {
        let (lo, hi, reserved) = local_port_range();
        let span = (hi - lo) as u64 + 1;
        let offset = (std::process::id() as u64 * 7919 + mono_ns() / 1000) % span;
        PortPicker {
            lo,
            hi,
            reserved,
            skip,
            span,
            offset,
            tried: 0,
            per_socket_range: true,
        }
    }

    /// Start a new cycle through the range (ports may repeat from now on).
    fn rewind(&mut self) {
        self.tried = 0;
    }

    /// A client socket connecting to `target` from the next usable port,
    /// and that port; `None` once every port of this cycle has been tried.
    fn connect(&mut self, target: &SocketAddr) -> Result<Option<(OwnedFd, u16)>> {
        let ip = target.ip();
        while self.tried < self.span {
            let c = sys::tcp_socket(&ip).context("socket")?;
            if self.per_socket_range {
                let p = self.lo + self.offset as u16;
                self.offset = (self.offset + 1) % self.span;
                self.tried += 1;
                if p == self.skip || self.reserved.iter().any(|&(a, b)| a <= p && p <= b) {
                    continue;
                }
                if let Err(e) = sys::set_local_port_range(&c, p, p) {
                    eprintln!(
                        "churn: warning: IP_LOCAL_PORT_RANGE unsupported ({e}); using the \
                         kernel's port choice (client ports may repeat)"
                    );
                    self.per_socket_range = false;
                }
            } else {
                self.tried += 1;
            }
            match sys::connect_start(&c, target) {
                Ok(()) => {
                    let port = sys::local_port(&c).context("getsockname")?;
                    return Ok(Some((c, port)));
                }
                // This port's tuple is taken (e.g. by a TIME_WAIT socket).
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => continue,
                Err(e) => return Err(e).with_context(|| format!("connect to {target}")),
            }
        }
        Ok(None)
    }

    fn exhausted_hint(&self) -> String {
        format!(
            "every port of net.ipv4.ip_local_port_range ({}-{}) was tried and none is free \
             for this destination (park mode: each parked socket's client side holds its \
             port for 60 s in TIME_WAIT). Use fewer, wait a minute, use another --addr \
             (e.g. 127.0.0.2), or widen the range.",
            self.lo, self.hi
        )
    }
}

/// Park mode: `n` accepted sockets in CLOSE_WAIT (the client closes first).
///
/// Each closed client leaves a TIME_WAIT socket (FIN_WAIT2 substate) on its
/// tuple for 60 s; the kernel never hands such a tuple out again through
/// tcp_tw_reuse (6.18 refuses reuse of FIN_WAIT2-substate TIME_WAIT), so a
/// new connect cannot land on one of our parked sockets.
pub fn park(addr: &SocketAddr, n: usize) -> Result<Parked> {
    ensure_fds(n as u64, &format!("--park {n}"))?;
    let (listener, port) =
        sys::tcp_listener(addr, 4096).with_context(|| format!("listen on {addr}"))?;
    let target = SocketAddr::new(addr.ip(), port);
    let mut picker = PortPicker::new(port);
    let mut socks = Vec::with_capacity(n);
    let mut slow = 0;

    while socks.len() < n {
        let Some((client, cport)) = picker.connect(&target)? else {
            bail!(
                "ran out of client ports after parking {} of {n} sockets: {}",
                socks.len(),
                picker.exhausted_hint()
            );
        };
        // Wait for the handshake so the client's close() sends a FIN.
        sys::retry(
            client.as_raw_fd(),
            libc::POLLOUT,
            STEP_TIMEOUT,
            &mut slow,
            || sys::send(&client, b""),
        )
        .context("wait for connect")?;
        let s = accept_peer(&listener, cport)?;
        sys::close(client).context("client close")?;
        socks.push(s);
    }

    // Every parked socket must really be in CLOSE_WAIT.
    let deadline = mono_ns() + 2_000_000_000;
    for (i, s) in socks.iter().enumerate() {
        loop {
            let st = sys::tcp_state(s).context("getsockopt(TCP_INFO)")?;
            if st == sys::TCP_CLOSE_WAIT {
                break;
            }
            let now = mono_ns();
            if now >= deadline {
                bail!("parked socket {i} is in TCP state {st}, not CLOSE_WAIT (8)");
            }
            sys::wait_fd(
                s.as_raw_fd(),
                libc::POLLRDHUP,
                Duration::from_nanos((deadline - now).min(10_000_000)),
            )?;
        }
    }
    Ok(Parked {
        port,
        _listener: listener,
        socks,
    })
}

// ---------------------------------------------------------------- release

static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

/// Why [`wait_for_release`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    StdinEof,
    Signal(i32),
    Timeout,
}

/// Whether fd 0 is /dev/null (a background job of a non-interactive shell
/// gets it): its immediate EOF means nothing, so only signals count then.
pub fn stdin_is_dev_null() -> bool {
    // SAFETY: stat is plain data; fstat on fd 0 only writes into it.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(0, &mut st) == 0
            && (st.st_mode & libc::S_IFMT) == libc::S_IFCHR
            && st.st_rdev == libc::makedev(1, 3)
    }
}

/// Catch SIGTERM and SIGINT from now on (they end [`wait_for_release`]).
/// Call it before announcing parked sockets, so a signal sent right after
/// the announcement is not fatal.
pub fn catch_release_signals() -> io::Result<()> {
    // SAFETY: installing a handler that only stores to an atomic; no
    // SA_RESTART, so poll() returns EINTR at once.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        for sig in [libc::SIGTERM, libc::SIGINT] {
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Wait until stdin reaches EOF (or is closed), SIGTERM/SIGINT arrives, or
/// `max` passes. If `watch_stdin` is false, only the signals and `max`
/// count.
pub fn wait_for_release(max: Duration, watch_stdin: bool) -> io::Result<Release> {
    catch_release_signals()?;
    let deadline = mono_ns() + max.as_nanos() as u64;
    let mut buf = [0u8; 4096];
    loop {
        let sig = SIGNALLED.load(Ordering::SeqCst);
        if sig != 0 {
            return Ok(Release::Signal(sig));
        }
        let now = mono_ns();
        if now >= deadline {
            return Ok(Release::Timeout);
        }
        let ms = ((deadline - now) / 1_000_000).clamp(1, 200) as libc::c_int;
        let stdin = if watch_stdin { 0 } else { -1 };
        if let Some(revents) = sys::poll_once(stdin, libc::POLLIN, ms)? {
            if revents & libc::POLLNVAL != 0 {
                return Ok(Release::StdinEof);
            }
            // SAFETY: buf is a valid writable buffer.
            let n = unsafe { libc::read(0, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n == 0 {
                return Ok(Release::StdinEof);
            }
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => {}
                    _ => return Ok(Release::StdinEof),
                }
            }
        }
    }
}

// ---------------------------------------------------------------- netns

/// Number of TIME_WAIT sockets `--tune-netns` allows.
pub const TUNED_TW_BUCKETS: u64 = 1024;
pub const TUNED_PORT_RANGE: &str = "1024 65535";

/// Inode of the initial network namespace on kernels that give it a fixed
/// one (`PROC_NET_INIT_INO`; 6.x, as here).
const PROC_NET_INIT_INO: u64 = 0xEFFF_FFF9;

/// Interfaces of the current network namespace (`/proc/self/net/dev`).
fn netns_interfaces() -> Result<Vec<String>> {
    let dev = std::fs::read_to_string("/proc/self/net/dev").context("read /proc/self/net/dev")?;
    Ok(dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect())
}

/// `--tune-netns`: lower net.ipv4.tcp_max_tw_buckets and widen
/// net.ipv4.ip_local_port_range in the *current* network namespace.
///
/// Refuses unless the namespace looks like a fresh test namespace: not the
/// initial one (PID 1's, when readable, or the kernel's fixed init inode)
/// and no interface but `lo`. Returns a description of what was changed.
pub fn tune_netns() -> Result<Vec<String>> {
    let me = netns::inode(Path::new("/proc/self/ns/net")).context("stat /proc/self/ns/net")?;
    let init = netns::inode(Path::new("/proc/1/ns/net")).ok();
    let others: Vec<String> = netns_interfaces()?
        .into_iter()
        .filter(|n| n != "lo")
        .collect();
    if me == PROC_NET_INIT_INO || Some(me) == init || !others.is_empty() {
        bail!(
            "--tune-netns changes sysctls of the current network namespace, and this one \
             does not look like a fresh test namespace (initial namespace, or interfaces \
             other than lo: {}); run it inside a fresh one, e.g. `ip netns add X; \
             ip -n X link set lo up; ip netns exec X churn --tune-netns ...`",
            if others.is_empty() {
                "none".to_string()
            } else {
                others.join(", ")
            }
        );
    }
    let mut done = Vec::new();
    for (name, value) in [
        ("tcp_max_tw_buckets", TUNED_TW_BUCKETS.to_string()),
        ("ip_local_port_range", TUNED_PORT_RANGE.to_string()),
    ] {
        let path = format!("/proc/sys/net/ipv4/{name}");
        let old = std::fs::read_to_string(&path)
            .with_context(|| format!("read {path}"))?
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        std::fs::write(&path, format!("{value}\n")).with_context(|| format!("write {path}"))?;
        done.push(format!("net.ipv4.{name}: {old} -> {value}"));
    }
    Ok(done)
}

/// Used by tests and main: a loopback socket address.
pub fn loopback(ip: IpAddr, port: u16) -> Result<SocketAddr> {
    check_loopback(&ip)?;
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn lo() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
    }

    #[test]
    fn loopback_only() {
        assert!(check_loopback(&"127.0.0.1".parse().unwrap()).is_ok());
        assert!(check_loopback(&"127.9.8.7".parse().unwrap()).is_ok());
        assert!(check_loopback(&"::1".parse().unwrap()).is_ok());
        for bad in [
            "10.0.0.1",
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
            "192.168.1.1",
        ] {
            assert!(check_loopback(&bad.parse().unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn port_lists() {
        assert_eq!(parse_port_list("\n"), vec![]);
        assert_eq!(parse_port_list("1,5-9\n"), vec![(1, 1), (5, 9)]);
    }

    #[test]
    fn recv_runs() {
        let (reads, rate) = run_recv(&lo(), Duration::from_millis(200)).unwrap();
        assert!(reads >= 256, "{reads}");
        assert!(rate > 0.0);
    }

    #[test]
    fn churn_runs() {
        let st = run_churn(&ChurnConfig {
            addr: lo(),
            duration: Duration::from_millis(200),
            rate: None,
            progress: false,
        })
        .unwrap();
        assert!(st.connections > 0, "{st:?}");
        assert_eq!(st.errors, 0, "{}", st.diagnostics());
        assert!(st.seconds >= 0.2 && st.seconds < 1.0, "{st:?}");
        assert!(st
            .json()
            .starts_with("{\"mode\":\"churn\",\"connections\":"));
    }

    #[test]
    fn churn_paced() {
        let st = run_churn(&ChurnConfig {
            addr: lo(),
            duration: Duration::from_millis(200),
            rate: Some(100.0),
            progress: false,
        })
        .unwrap();
        // Slots at 0, 10, ..., 190 ms.
        assert!((19..=21).contains(&st.connections), "{st:?}");
        assert_eq!(st.errors, 0);
    }

    #[test]
    fn hold_truth() {
        let mut out = Vec::new();
        let n = run_hold(
            &HoldConfig {
                addr: lo(),
                hold: Duration::from_millis(20),
                count: 5,
                batch: 50,
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(n, 5);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        let mut lports = std::collections::HashSet::new();
        for l in lines {
            let field = |k: &str| -> u64 {
                let rest = &l[l.find(&format!("\"{k}\":")).unwrap() + k.len() + 3..];
                rest[..rest.find([',', '}']).unwrap()].parse().unwrap()
            };
            let dwell = field("dwell_ns");
            assert!((20_000_000..200_000_000).contains(&dwell), "{l}");
            assert!(field("lport") > 0 && field("rport") > 0, "{l}");
            lports.insert(field("lport"));
        }
        assert_eq!(lports.len(), 5);
    }

    #[test]
    fn hold_batches() {
        let mut out = Vec::new();
        let n = run_hold(
            &HoldConfig {
                addr: lo(),
                hold: Duration::from_millis(1),
                count: 7,
                batch: 3,
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(n, 7);
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 7);
    }

    /// Sockets in /proc/net/tcp{,6} with local port `port` in `state` (hex).
    fn count_in_state(port: u16, state: &str) -> usize {
        let want = format!(":{port:04X}");
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .map(|t| {
                t.lines()
                    .skip(1)
                    .filter(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        f.len() > 3 && f[1].ends_with(&want) && f[3] == state
                    })
                    .count()
            })
            .sum()
    }

    #[test]
    fn park_close_wait() {
        let parked = park(&lo(), 10).unwrap();
        assert_eq!(parked.len(), 10);
        assert_eq!(count_in_state(parked.port, "08"), 10);
        let port = parked.port;
        drop(parked);
        assert_eq!(count_in_state(port, "08"), 0);
    }
}
