//! Enrichment: who holds a socket and which code created it. Runs on its
//! own thread: walking /proc and symbolizing can take milliseconds on a big
//! host, and the event stream must never wait for it.

pub mod owner;
pub mod stacks;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    thread,
};

use closewait_common::{accept_key, Creation, CreationKind};
use tokio::sync::mpsc;

use self::{
    owner::Owner,
    stacks::{Stack, Symbolizer},
};
use crate::{discovery, probe::Creations, tracking::OwnerFilter, tracking::Socket};

/// Everything known about a reported socket beyond its addresses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Context {
    /// Holders, the primary one first (the creator when it still holds the
    /// socket, else the lowest pid). Empty when none was found.
    pub owners: Vec<Owner>,
    pub creation: Option<CreationContext>,
    /// The socket's inode, when the event had none (a socket that entered
    /// CLOSE_WAIT while still in the accept queue has no file yet).
    pub inode: Option<u64>,
}

impl Context {
    pub fn primary(&self) -> Option<&Owner> {
        self.owners.first()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct CreationContext {
    /// "connect" or "accept".
    pub kind: &'static str,
    /// The process that created the socket.
    pub pid: u32,
    /// Its user stack; `None` when it could not be captured.
    pub stack: Option<Stack>,
}

pub struct Request {
    pub id: u64,
    pub socket: Socket,
}

pub struct Response {
    pub id: u64,
    pub context: Arc<Context>,
}

/// Start the resolver thread. Requests go in on the returned sender; answers
/// come back on `tx`.
/// `owner_filter` narrows the /proc walk to the processes it could select.
pub fn spawn(
    creations: Option<Creations>,
    owner_filter: OwnerFilter,
    tx: mpsc::UnboundedSender<Response>,
) -> std::io::Result<std::sync::mpsc::Sender<Request>> {
    let (req_tx, req_rx) = std::sync::mpsc::channel::<Request>();
    thread::Builder::new()
        .name("context".into())
        .spawn(move || {
            let mut resolver = Resolver {
                creations,
                owner_filter,
                symbolizer: Symbolizer::new(),
            };
            // Take whatever has queued up, resolve it as one batch (one /proc
            // walk), answer, repeat.
            while let Ok(first) = req_rx.recv() {
                let mut batch = vec![first];
                batch.extend(req_rx.try_iter());
                let ids: Vec<u64> = batch.iter().map(|r| r.id).collect();
                // Whatever happens, every request gets an answer: the output
                // queue waits for them.
                let responses = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    resolver.resolve(batch)
                }))
                .unwrap_or_else(|_| {
                    ids.into_iter()
                        .map(|id| Response {
                            id,
                            context: Arc::default(),
                        })
                        .collect()
                });
                for response in responses {
                    if tx.send(response).is_err() {
                        return;
                    }
                }
            }
        })?;
    Ok(req_tx)
}

struct Resolver {
    creations: Option<Creations>,
    owner_filter: OwnerFilter,
    symbolizer: Symbolizer,
}

impl Resolver {
    fn resolve(&mut self, batch: Vec<Request>) -> Vec<Response> {
        let inodes = inodes_for(&batch);
        let wanted: HashSet<u64> = inodes.values().copied().collect();
        let filter = &self.owner_filter;
        let holders = owner::find_holders(&wanted, |p| {
            filter.may_hold(p.pid() as u32, || owner::comm(p))
        });
        let mut described: HashMap<(u32, u32), Option<Owner>> = HashMap::new();
        batch
            .into_iter()
            .map(|req| {
                let inode = inodes.get(&req.id).copied();
                let pairs = inode
                    .and_then(|inode| holders.get(&inode))
                    .cloned()
                    .unwrap_or_default();
                let mut owners: Vec<Owner> = pairs
                    .iter()
                    .filter_map(|&(pid, fd)| {
                        described
                            .entry((pid, fd))
                            .or_insert_with(|| owner::describe(pid, fd))
                            .clone()
                    })
                    .collect();
                let creation = self.creation(&req.socket, &owners);
                // The creator first, when it still holds the socket.
                if let Some(c) = &creation {
                    if let Some(i) = owners.iter().position(|o| o.pid == c.pid) {
                        owners[..=i].rotate_right(1);
                    }
                }
                Response {
                    id: req.id,
                    context: Arc::new(Context {
                        owners,
                        creation,
                        inode,
                    }),
                }
            })
            .collect()
    }

    /// The creation record: by cookie for connect(), by (pid, fd) of a holder
    /// (or of its parents, for a socket inherited across fork) for accept().
    fn creation(&mut self, socket: &Socket, owners: &[Owner]) -> Option<CreationContext> {
        let creations = self.creations.as_ref()?;
        let record: Creation = socket
            .cookie
            .and_then(|cookie| creations.connects.get(&cookie, 0).ok())
            .or_else(|| {
                owners.iter().find_map(|o| {
                    ancestry(o.pid)
                        .into_iter()
                        .find_map(|pid| creations.accepts.get(&accept_key(pid, o.fd), 0).ok())
                })
            })?;
        let kind = if record.kind == CreationKind::Connect as u32 {
            "connect"
        } else {
            "accept"
        };
        let stack = (record.user_stack_id >= 0)
            .then(|| creations.stacks.get(&(record.user_stack_id as u32), 0).ok())
            .flatten()
            .map(|trace| {
                let ips: Vec<u64> = trace.frames().iter().map(|f| f.ip).collect();
                // Symbolize in a live process that maps the same code: the
                // creator if it is still there, else a holder.
                let pid = owners
                    .iter()
                    .find(|o| o.pid == record.tgid)
                    .or(owners.first())
                    .map_or(record.tgid, |o| o.pid);
                self.symbolizer.symbolize(pid, &ips)
            });
        Some(CreationContext {
            kind,
            pid: record.tgid,
            stack,
        })
    }
}

/// Socket inodes for a batch: from the kernel event when it carried one,
/// else from a sock_diag scan. A socket that entered CLOSE_WAIT before it was
/// accepted had no file yet, and the classic-tracepoint fallback reads no
/// inode at all.
fn inodes_for(batch: &[Request]) -> HashMap<u64, u64> {
    let mut inodes: HashMap<u64, u64> = batch
        .iter()
        .filter_map(|r| r.socket.inode.map(|i| (r.id, i)))
        .collect();
    let missing: Vec<&Socket> = batch
        .iter()
        .filter(|r| r.socket.inode.is_none())
        .map(|r| &r.socket)
        .collect();
    if missing.is_empty() {
        return inodes;
    }
    // Scan only the namespaces the sockets are in, when known.
    let mut namespaces = discovery::list_netns();
    if missing.iter().all(|s| s.netns.is_some()) {
        namespaces.retain(|ns| missing.iter().any(|s| s.netns == Some(ns.inode)));
    }
    let Ok(scan) = discovery::scan_close_wait(&namespaces) else {
        return inodes;
    };
    for req in batch.iter().filter(|r| r.socket.inode.is_none()) {
        if let Some(inode) = match_inode(&req.socket, &scan.sockets) {
            inodes.insert(req.id, inode);
        }
    }
    inodes
}

/// The inode of `socket` among scanned sockets: by cookie and network
/// namespace when the event had them (cookies are unique on the host, the
/// 4-tuple is not: two pods can use the very same one); else by 4-tuple, and
/// only when exactly one socket has it, since a wrong owner is worse than
/// none.
fn match_inode(socket: &Socket, scanned: &[discovery::ScannedSocket]) -> Option<u64> {
    let with_file = scanned.iter().filter(|f| f.inode != 0);
    if let Some(cookie) = socket.cookie {
        return with_file
            .filter(|f| f.cookie == cookie && socket.netns.is_none_or(|ns| ns == f.netns))
            .map(|f| f.inode)
            .next();
    }
    let mut hits = with_file.filter(|f| {
        f.lport == socket.lport
            && f.rport == socket.rport
            && same_addr(f.laddr, socket.laddr)
            && same_addr(f.raddr, socket.raddr)
            && socket.netns.is_none_or(|ns| ns == f.netns)
    });
    let first = hits.next()?;
    hits.next().is_none().then_some(first.inode)
}

/// Equal, counting an IPv4-mapped IPv6 address as its IPv4 address.
fn same_addr(a: std::net::IpAddr, b: std::net::IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// `pid`, its parent, grandparent... (a few levels), for fds inherited
/// across fork.
fn ancestry(pid: u32) -> Vec<u32> {
    let mut chain = vec![pid];
    let mut current = pid;
    for _ in 0..4 {
        let Some(parent) = owner::parent_of(current).filter(|&p| p > 1) else {
            break;
        };
        chain.push(parent);
        current = parent;
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_parent_is_in_our_ancestry() {
        let me = std::process::id();
        let chain = ancestry(me);
        assert_eq!(chain[0], me);
        let ppid = std::os::unix::process::parent_id();
        if ppid > 1 {
            assert_eq!(chain.get(1), Some(&ppid));
        }
    }

    fn scanned(cookie: u64, netns: u32, inode: u64) -> discovery::ScannedSocket {
        discovery::ScannedSocket {
            cookie,
            family: libc::AF_INET as u16,
            laddr: "127.0.0.1".parse().unwrap(),
            lport: 8080,
            raddr: "127.0.0.1".parse().unwrap(),
            rport: 40000,
            netns,
            inode,
            uid: 0,
            last_ack_recv_ms: None,
        }
    }

    fn socket(cookie: Option<u64>, netns: Option<u32>) -> Socket {
        Socket {
            cookie,
            family: crate::tracking::Family::V4,
            laddr: "127.0.0.1".parse().unwrap(),
            lport: 8080,
            raddr: "127.0.0.1".parse().unwrap(),
            rport: 40000,
            netns,
            inode: None,
        }
    }

    #[test]
    fn the_same_tuple_in_two_namespaces_is_told_apart_by_cookie() {
        // Two pods, the very same 4-tuple, each socket in its own namespace.
        let scan = [scanned(11, 100, 1001), scanned(22, 200, 2002)];
        assert_eq!(match_inode(&socket(Some(22), Some(200)), &scan), Some(2002));
        assert_eq!(match_inode(&socket(Some(11), Some(100)), &scan), Some(1001));
        assert_eq!(match_inode(&socket(Some(11), Some(200)), &scan), None);
        assert_eq!(match_inode(&socket(Some(33), Some(100)), &scan), None);
        // Without a cookie (classic tracepoint): ambiguous, so no owner.
        assert_eq!(match_inode(&socket(None, None), &scan), None);
        assert_eq!(match_inode(&socket(None, None), &scan[..1]), Some(1001));
        // Still in the accept queue when scanned too: no file, no inode.
        assert_eq!(
            match_inode(&socket(Some(11), Some(100)), &[scanned(11, 100, 0)]),
            None
        );
    }

    #[test]
    fn mapped_and_plain_ipv4_are_the_same_address() {
        let v4: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(same_addr(v4, mapped));
        assert!(!same_addr(v4, "::1".parse().unwrap()));
    }
}
