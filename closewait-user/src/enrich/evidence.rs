//! Evidence: what the kernel and /proc say about a stuck socket, gathered
//! when it is reported (found at start-up or flagged stuck), from the
//! sock_diag scan of its network namespace and the owner's /proc entries.

use serde::{Deserialize, Serialize};

use super::owner::Owner;
use crate::{
    discovery::{Listener, ScannedSocket},
    tracking::Socket,
};

/// Which side opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// This host called connect().
    Outgoing,
    /// Accepted by a listener on this host.
    Incoming,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Unread bytes; the peer's FIN counts as one until EOF is read.
    pub rqueue: Option<u32>,
    /// Written bytes not yet acknowledged.
    pub wqueue: Option<u32>,
    /// How long the connection carried no data before the peer's FIN.
    pub idle_before_fin_ms: Option<u64>,
    pub direction: Option<Direction>,
    /// False while the socket waits in its listener's accept queue.
    pub accepted: Option<bool>,
    /// That listener's queue: connections waiting, and its limit.
    pub backlog: Option<u32>,
    pub backlog_max: Option<u32>,
    /// The owner's open descriptors and its RLIMIT_NOFILE (soft).
    pub fds_open: Option<u64>,
    pub fds_limit: Option<u64>,
    pub bytes_received: Option<u64>,
    pub bytes_acked: Option<u64>,
    /// The owner's threads by scheduler state, where cheap to read.
    pub threads: Option<Threads>,
}

/// A process's threads by state (`/proc/PID/task/*/stat`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Threads {
    pub total: u32,
    /// R: running or runnable.
    pub running: u32,
    /// S: waiting (in poll, read, a lock): the usual state of a server.
    pub sleeping: u32,
    /// D: uninterruptible sleep, usually blocked on disk or NFS I/O.
    pub blocked: u32,
    /// T or t: stopped by a signal or a debugger.
    pub stopped: u32,
    /// Zombies, idle kernel threads and states the agent does not name.
    pub other: u32,
}

impl Threads {
    /// Count the states given by `/proc/PID/task/*/stat`'s third field.
    pub fn of(states: impl IntoIterator<Item = char>) -> Threads {
        let mut t = Threads::default();
        for state in states {
            t.total += 1;
            match state {
                'R' => t.running += 1,
                'S' => t.sleeping += 1,
                'D' => t.blocked += 1,
                'T' | 't' => t.stopped += 1,
                _ => t.other += 1,
            }
        }
        t
    }
}

/// Past this many threads a process's states are not read: one file per
/// thread is not cheap any more.
pub const THREADS_READ_MAX: usize = 512;

/// What [`gather`] needs beyond the socket.
pub struct Inputs<'a> {
    /// The socket in the scan of its namespace, if the scan listed it.
    pub scanned: Option<&'a ScannedSocket>,
    /// Listeners of that namespace.
    pub listeners: &'a [Listener],
    /// "connect" or "accept", from the creation record.
    pub creation: Option<&'a str>,
    /// The primary owner, and its descriptor use (open, limit).
    pub owner: Option<&'a Owner>,
    pub fds: Option<(u64, u64)>,
    pub threads: Option<Threads>,
    /// Milliseconds since the peer's FIN, when the entry was seen live.
    pub since_fin_ms: Option<u64>,
    /// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`).
    pub ephemeral: (u16, u16),
}

/// Put the evidence together. Pure: the caller reads the kernel and /proc.
pub fn gather(socket: &Socket, inp: &Inputs) -> Evidence {
    let s = inp.scanned;
    let listener = inp.listeners.iter().find(|l| {
        l.lport == socket.lport
            && socket.netns.is_none_or(|ns| ns == l.netns)
            && (l.laddr.is_unspecified() || l.laddr.to_canonical() == socket.laddr.to_canonical())
    });
    // Without a creation record or a listener (servers that stopped
    // listening, one-shot accepts), the ports tell: connect() picks the
    // local port from the ephemeral range, a server's port is outside it.
    let ephemeral = |p: u16| (inp.ephemeral.0..=inp.ephemeral.1).contains(&p);
    let direction = match inp.creation {
        Some("connect") => Some(Direction::Outgoing),
        Some("accept") => Some(Direction::Incoming),
        _ if listener.is_some() => Some(Direction::Incoming),
        _ => match (ephemeral(socket.lport), ephemeral(socket.rport)) {
            (true, false) => Some(Direction::Outgoing),
            (false, true) => Some(Direction::Incoming),
            _ => None,
        },
    };
    // In the accept queue: the kernel lists the socket with no file yet.
    let accepted = s.map(|s| s.inode != 0 || inp.owner.is_some());
    let queued = accepted == Some(false);
    // The FIN's own ACK is the latest ACK received: its age says when it came.
    let since_fin_ms = inp
        .since_fin_ms
        .or_else(|| s.and_then(|s| s.last_ack_recv_ms.map(u64::from)));
    let last_data_ms = s.and_then(|s| match (s.last_data_recv_ms, s.last_data_sent_ms) {
        (Some(r), Some(w)) => Some(u64::from(r.min(w))),
        (r, w) => r.or(w).map(u64::from),
    });
    let idle_before_fin_ms = match (last_data_ms, since_fin_ms) {
        (Some(data), Some(fin)) => Some(data.saturating_sub(fin)),
        _ => None,
    };
    Evidence {
        rqueue: s.map(|s| s.rqueue),
        wqueue: s.map(|s| s.wqueue),
        idle_before_fin_ms,
        direction: if queued {
            Some(Direction::Incoming)
        } else {
            direction
        },
        accepted,
        backlog: listener.filter(|_| queued).map(|l| l.backlog),
        backlog_max: listener.filter(|_| queued).map(|l| l.max_backlog),
        fds_open: inp.fds.map(|f| f.0),
        fds_limit: inp.fds.map(|f| f.1),
        bytes_received: s.and_then(|s| s.bytes_received),
        bytes_acked: s.and_then(|s| s.bytes_acked),
        threads: inp.threads,
    }
}

/// The ephemeral port range of this host's namespace (Linux's default when
/// unreadable). Namespaces may set their own; this one is a hint only.
pub fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// The owner's descriptor use: (open, soft RLIMIT_NOFILE).
pub fn fd_use(pid: u32) -> Option<(u64, u64)> {
    let process = procfs::process::Process::new(pid as i32).ok()?;
    let open = process.fd_count().ok()? as u64;
    let limit = match process.limits().ok()?.max_open_files.soft_limit {
        procfs::process::LimitValue::Value(v) => v,
        procfs::process::LimitValue::Unlimited => u64::MAX,
    };
    Some((open, limit))
}

/// The owner's threads by state; `None` when it has more than
/// [`THREADS_READ_MAX`] or is gone. Threads that exit meanwhile are skipped.
pub fn thread_states(pid: u32) -> Option<Threads> {
    let process = procfs::process::Process::new(pid as i32).ok()?;
    let tasks: Vec<_> = process.tasks().ok()?.flatten().collect();
    if tasks.is_empty() || tasks.len() > THREADS_READ_MAX {
        return None;
    }
    let states = tasks.iter().filter_map(|t| t.stat().ok()).map(|s| s.state);
    Some(Threads::of(states))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tracking::Family;

    pub fn scanned(rqueue: u32, inode: u64) -> ScannedSocket {
        ScannedSocket {
            cookie: 1,
            family: libc::AF_INET as u16,
            laddr: "127.0.0.1".parse().unwrap(),
            lport: 40000,
            raddr: "127.0.0.1".parse().unwrap(),
            rport: 8080,
            netns: 7,
            inode,
            uid: 0,
            last_ack_recv_ms: Some(3000),
            rqueue,
            wqueue: 0,
            last_data_sent_ms: Some(4100),
            last_data_recv_ms: Some(4000),
            bytes_acked: Some(20),
            bytes_received: Some(10),
        }
    }

    pub fn socket() -> Socket {
        Socket {
            cookie: Some(1),
            family: Family::V4,
            laddr: "127.0.0.1".parse().unwrap(),
            lport: 40000,
            raddr: "127.0.0.1".parse().unwrap(),
            rport: 8080,
            netns: Some(7),
            inode: Some(5),
        }
    }

    fn inputs<'a>(s: &'a ScannedSocket, listeners: &'a [Listener]) -> Inputs<'a> {
        Inputs {
            scanned: Some(s),
            listeners,
            creation: None,
            owner: None,
            fds: Some((10, 1024)),
            threads: None,
            since_fin_ms: None,
            ephemeral: (32768, 60999),
        }
    }

    #[test]
    fn thread_states_are_counted_by_letter() {
        let t = Threads::of("RSSDTtZI".chars());
        let want = Threads {
            total: 8,
            running: 1,
            sleeping: 2,
            blocked: 1,
            stopped: 2,
            other: 2,
        };
        assert_eq!(t, want);
        let ours = thread_states(std::process::id()).expect("this process");
        assert!(ours.total >= 1 && ours.running >= 1, "{ours:?}");
    }

    #[test]
    fn idle_gap_before_the_fin() {
        let s = scanned(1, 5);
        // Data last moved 4.0 s ago, the FIN came 3.0 s ago: 1 s idle.
        let e = gather(&socket(), &inputs(&s, &[]));
        assert_eq!(e.idle_before_fin_ms, Some(1000));
        assert_eq!(e.rqueue, Some(1));
        assert_eq!(
            e.direction,
            Some(Direction::Outgoing),
            "no listener; 40000 is an ephemeral port, 8080 is not"
        );
        assert_eq!(e.accepted, Some(true));
        assert_eq!((e.fds_open, e.fds_limit), (Some(10), Some(1024)));
        // The tracepoint's FIN time wins over the ACK's age.
        let mut inp = inputs(&s, &[]);
        inp.since_fin_ms = Some(3500);
        assert_eq!(gather(&socket(), &inp).idle_before_fin_ms, Some(500));
    }

    #[test]
    fn a_listener_on_the_local_port_means_incoming_and_the_queue_shows() {
        let s = scanned(1, 0);
        let l = [Listener {
            netns: 7,
            laddr: "0.0.0.0".parse().unwrap(),
            lport: 40000,
            backlog: 3,
            max_backlog: 128,
        }];
        let e = gather(&socket(), &inputs(&s, &l));
        assert_eq!(e.direction, Some(Direction::Incoming));
        assert_eq!(e.accepted, Some(false));
        assert_eq!((e.backlog, e.backlog_max), (Some(3), Some(128)));
        // Another namespace's listener says nothing about this socket.
        let other = [Listener {
            netns: 8,
            ..l[0].clone()
        }];
        assert_eq!(gather(&socket(), &inputs(&s, &other)).backlog, None);
    }

    #[test]
    fn without_record_or_listener_the_ports_say_the_direction() {
        let s = scanned(0, 5);
        let mut inp = inputs(&s, &[]);
        let mut server_side = socket();
        (server_side.lport, server_side.rport) = (8080, 40000);
        assert_eq!(
            gather(&server_side, &inp).direction,
            Some(Direction::Incoming)
        );
        inp.ephemeral = (1024, 65535); // both ports look ephemeral: unknown
        assert_eq!(gather(&server_side, &inp).direction, None);
    }

    #[test]
    fn the_creation_record_says_the_direction() {
        let s = scanned(0, 5);
        let mut inp = inputs(&s, &[]);
        inp.creation = Some("accept");
        assert_eq!(gather(&socket(), &inp).direction, Some(Direction::Incoming));
    }
}
