//! Who holds a reported socket and which code created it. Runs on its own
//! thread: walking /proc and symbolizing can take milliseconds on a big host,
//! and the event stream must never wait for it.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    thread,
};

use closewait_common::{accept_key, Creation, CreationKind};
use tokio::sync::mpsc;

use crate::{
    events::Socket,
    existing,
    loader::Creations,
    owner::{self, Owner},
    stacks::{Stack, Symbolizer},
};

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
pub fn spawn(
    creations: Option<Creations>,
    tx: mpsc::UnboundedSender<Response>,
) -> std::io::Result<std::sync::mpsc::Sender<Request>> {
    let (req_tx, req_rx) = std::sync::mpsc::channel::<Request>();
    thread::Builder::new()
        .name("context".into())
        .spawn(move || {
            let mut resolver = Resolver {
                creations,
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
    symbolizer: Symbolizer,
}

impl Resolver {
    fn resolve(&mut self, batch: Vec<Request>) -> Vec<Response> {
        let inodes = inodes_for(&batch);
        let wanted: HashSet<u64> = inodes.values().copied().collect();
        let holders = owner::find_holders(&wanted);
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
/// else from a sock_diag scan matched by 4-tuple (the classic-tracepoint
/// fallback has no inode, and a socket that entered CLOSE_WAIT before it was
/// accepted had no file yet).
fn inodes_for(batch: &[Request]) -> HashMap<u64, u64> {
    let mut inodes: HashMap<u64, u64> = batch
        .iter()
        .filter_map(|r| r.socket.inode.map(|i| (r.id, i)))
        .collect();
    if inodes.len() < batch.len() {
        if let Ok(scan) = existing::scan_all() {
            for req in batch.iter().filter(|r| r.socket.inode.is_none()) {
                let s = &req.socket;
                let hit = scan.sockets.iter().find(|f| {
                    f.inode != 0
                        && f.lport == s.lport
                        && f.rport == s.rport
                        && same_addr(f.laddr, s.laddr)
                        && same_addr(f.raddr, s.raddr)
                });
                if let Some(hit) = hit {
                    inodes.insert(req.id, hit.inode);
                }
            }
        }
    }
    inodes
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
        let Some(parent) = parent_of(current).filter(|&p| p > 1) else {
            break;
        };
        chain.push(parent);
        current = parent;
    }
    chain
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field may contain spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
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

    #[test]
    fn mapped_and_plain_ipv4_are_the_same_address() {
        let v4: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(same_addr(v4, mapped));
        assert!(!same_addr(v4, "::1".parse().unwrap()));
    }
}
