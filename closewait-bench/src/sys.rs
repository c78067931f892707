//! Thin wrappers over the libc calls the modes need: non-blocking loopback
//! sockets with a bounded `poll` fallback, sleeping on the monotonic clock,
//! limits and CPU affinity.

use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use closewait_host::clock::mono_ns;

/// Sleep until `CLOCK_MONOTONIC` reaches `deadline_ns` (absolute, so a
/// sequence of deadlines does not accumulate drift).
pub fn sleep_until_ns(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: valid timespec; a null remainder is allowed with TIMER_ABSTIME.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        // clock_nanosleep returns the error number instead of setting errno.
        if rc != libc::EINTR {
            return;
        }
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn cvt_size(rc: libc::ssize_t) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; returns the new limit.
pub fn raise_nofile() -> io::Result<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) })?;
    if rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: valid pointer to an rlimit.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) })?;
    }
    Ok(rl.rlim_cur)
}

/// Current soft and hard `RLIMIT_NOFILE`.
pub fn nofile_limits() -> io::Result<(u64, u64)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) })?;
    Ok((rl.rlim_cur, rl.rlim_max))
}

/// Pin the calling thread (the whole process: it has one thread) to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cpu {cpu} is out of range"),
        ));
    }
    // SAFETY: cpu_set_t is plain data; CPU_SET index checked above.
    unsafe {
        let mut set: libc::cpu_set_t = mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        cvt(libc::sched_setaffinity(
            0,
            mem::size_of::<libc::cpu_set_t>(),
            &set,
        ))?;
    }
    Ok(())
}

fn sockaddr_of(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data, all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn port_of(storage: &libc::sockaddr_storage) -> io::Result<u16> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: family says this is a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            Ok(u16::from_be(sin.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: family says this is a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Ok(u16::from_be(sin6.sin6_port))
        }
        f => Err(io::Error::other(format!("unexpected address family {f}"))),
    }
}

fn domain_of(ip: &IpAddr) -> libc::c_int {
    match ip {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    }
}

/// A new non-blocking, close-on-exec TCP socket for `ip`'s family.
pub fn tcp_socket(ip: &IpAddr) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = cvt(unsafe {
        libc::socket(
            domain_of(ip),
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY: pointer and length describe a c_int.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &val as *const _ as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// `IP_LOCAL_PORT_RANGE` (Linux 6.3+; not in the libc crate).
const IP_LOCAL_PORT_RANGE: libc::c_int = 51;

/// Restrict the ephemeral port `connect()` picks for this socket to
/// `lo..=hi` (must lie inside net.ipv4.ip_local_port_range). Unlike
/// `bind()`, the port stays a normal connect-allocated one that other
/// connections to other destinations may share.
pub fn set_local_port_range(fd: &OwnedFd, lo: u16, hi: u16) -> io::Result<()> {
    let val = (lo as u32 | ((hi as u32) << 16)) as libc::c_int;
    set_int_opt(fd.as_raw_fd(), libc::IPPROTO_IP, IP_LOCAL_PORT_RANGE, val)
}

pub fn bind(fd: &OwnedFd, addr: &SocketAddr) -> io::Result<()> {
    let (sa, len) = sockaddr_of(addr);
    // SAFETY: sa/len describe a valid sockaddr.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            len,
        )
    })?;
    Ok(())
}

/// A non-blocking listener on `addr` (port 0 = any) with `SO_REUSEADDR`
/// (so a fixed port can be re-bound while our own TIME_WAIT sockets hold it).
pub fn tcp_listener(addr: &SocketAddr, backlog: libc::c_int) -> io::Result<(OwnedFd, u16)> {
    let fd = tcp_socket(&addr.ip())?;
    set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind(&fd, addr)?;
    // SAFETY: plain syscall on a valid fd.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    let port = local_port(&fd)?;
    Ok((fd, port))
}

pub fn local_port(fd: &OwnedFd) -> io::Result<u16> {
    // SAFETY: sockaddr_storage is plain data.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage/len describe a writable buffer.
    cvt(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            &mut storage as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    })?;
    port_of(&storage)
}

/// Start a non-blocking connect. `Ok(())` also when it is merely in
/// progress (on loopback it is in fact complete by the time this returns).
pub fn connect_start(fd: &OwnedFd, addr: &SocketAddr) -> io::Result<()> {
    let (sa, len) = sockaddr_of(addr);
    // SAFETY: sa/len describe a valid sockaddr.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINPROGRESS) => Ok(()),
        _ => Err(err),
    }
}

/// `accept4` (non-blocking, close-on-exec). With `want_peer`, also returns
/// the peer's port.
pub fn accept(listener: &OwnedFd, want_peer: bool) -> io::Result<(OwnedFd, u16)> {
    let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    if want_peer {
        // SAFETY: sockaddr_storage is plain data.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: storage/len describe a writable buffer.
        let fd = cvt(unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                &mut storage as *mut _ as *mut libc::sockaddr,
                &mut len,
                flags,
            )
        })?;
        // SAFETY: fresh fd from accept4.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let port = port_of(&storage)?;
        Ok((fd, port))
    } else {
        // SAFETY: null address is allowed.
        let fd = cvt(unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                flags,
            )
        })?;
        // SAFETY: fresh fd from accept4.
        Ok((unsafe { OwnedFd::from_raw_fd(fd) }, 0))
    }
}

pub fn send(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is a valid readable slice.
    cvt_size(unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    })
}

pub fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is a valid writable slice.
    cvt_size(unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            0,
        )
    })
}

/// Close and report the error, if any (dropping an `OwnedFd` ignores it).
pub fn close(fd: OwnedFd) -> io::Result<()> {
    use std::os::fd::IntoRawFd;
    // SAFETY: we own the fd and give it up here.
    cvt(unsafe { libc::close(fd.into_raw_fd()) })?;
    Ok(())
}

/// One poll(2) on one fd for at most `ms`: `Some(revents)` when it is
/// ready, `None` on timeout or EINTR. An fd of -1 only sleeps.
pub fn poll_once(
    fd: RawFd,
    events: libc::c_short,
    ms: libc::c_int,
) -> io::Result<Option<libc::c_short>> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd (fd -1 is ignored by poll).
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::Interrupted => Ok(None),
            _ => Err(err),
        };
    }
    Ok((rc > 0).then_some(pfd.revents))
}

/// Wait until `fd` is ready for `events` or `timeout` passes (retrying on
/// EINTR). Returns whether it became ready.
pub fn wait_fd(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let deadline = mono_ns() + timeout.as_nanos() as u64;
    loop {
        let now = mono_ns();
        if now >= deadline {
            return Ok(false);
        }
        let ms = (deadline - now).div_ceil(1_000_000).min(i32::MAX as u64) as libc::c_int;
        if poll_once(fd, events, ms)?.is_some() {
            return Ok(true);
        }
    }
}

/// Run a non-blocking operation; on EAGAIN wait (at most `timeout` in all)
/// for `events` on `fd` and retry. `slow` counts the waits.
pub fn retry<T>(
    fd: RawFd,
    events: libc::c_short,
    timeout: Duration,
    slow: &mut u64,
    mut op: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let mut deadline: Option<u64> = None;
    loop {
        match op() {
            Ok(v) => return Ok(v),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let dl = *deadline.get_or_insert_with(|| mono_ns() + timeout.as_nanos() as u64);
                let now = mono_ns();
                if now >= dl {
                    return Err(io::Error::from(io::ErrorKind::TimedOut));
                }
                *slow += 1;
                if !wait_fd(fd, events, Duration::from_nanos(dl - now))? {
                    return Err(io::Error::from(io::ErrorKind::TimedOut));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The kernel's TCP state of a socket (`tcpi_state`: 8 = CLOSE_WAIT).
pub fn tcp_state(fd: &OwnedFd) -> io::Result<u8> {
    // SAFETY: tcp_info is plain data.
    let mut info: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: info/len describe a writable buffer.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut _ as *mut libc::c_void,
            &mut len,
        )
    })?;
    Ok(info.tcpi_state)
}

pub const TCP_CLOSE_WAIT: u8 = 8;
