//! Enrichment: who holds a socket, which code created it, and why it is
//! stuck (evidence and diagnosis). Runs on its own thread: walking /proc,
//! scanning namespaces and symbolizing can take milliseconds on a big host,
//! and the event stream must never wait for it.

pub mod caller;
pub mod diagnosis;
pub mod evidence;
pub mod owner;
pub mod perf_map;
pub mod pod;
pub mod stacks;
pub mod unwind;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    thread,
};

use closewait_common::{accept_key, Creation, CreationKind};
use tokio::sync::mpsc;

use self::{
    diagnosis::{Cause, Diagnosis},
    evidence::Evidence,
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
    /// Why it is stuck: gathered for reported sockets (existing, stuck).
    pub evidence: Option<Evidence>,
    /// What the evidence diagnoses. Only the cause is kept; the text is
    /// made when shown ([`Context::diagnosis`]), not kept for each of
    /// 100,000 stuck sockets.
    pub cause: Option<Cause>,
    /// The user stack of the first read that returned EOF while the socket
    /// was in CLOSE_WAIT: the code that should have closed it.
    pub last_read: Option<Arc<Stack>>,
    /// Looked up for a report (creation stack asked for), not only for the
    /// owner filter's verdict.
    pub report: bool,
}

impl Context {
    pub fn primary(&self) -> Option<&Owner> {
        self.owners.first()
    }

    /// Why it is stuck, in words: the diagnosis of its evidence.
    pub fn diagnosis(&self) -> Option<Diagnosis> {
        self.evidence.as_ref().map(diagnosis::diagnose)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct CreationContext {
    /// "connect" or "accept".
    pub kind: &'static str,
    /// The process that created the socket.
    pub pid: u32,
    /// Its user stack; `None` when it could not be captured. Shared by the
    /// sockets of a batch created by the same code.
    pub stack: Option<Arc<Stack>>,
}

pub struct Request {
    pub id: u64,
    pub socket: Socket,
    /// When it entered CLOSE_WAIT (CLOCK_MONOTONIC ns), if seen live: the
    /// time of the peer's FIN.
    pub enter_ns: Option<u64>,
    /// A reported socket (existing or stuck): look up its creation stack and
    /// `last_read` too. The owner filter's verdicts need only the owners,
    /// and symbolizing is the slow part.
    pub report: bool,
    /// Gather evidence and a diagnosis too (reported sockets, unless the
    /// hidden `--no-evidence`).
    pub evidence: bool,
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
                callers: caller::Callers::default(),
                unwinder: unwind::StackUnwinder::default(),
                stacks: HashMap::new(),
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
    callers: caller::Callers,
    unwinder: unwind::StackUnwinder,
    /// This batch's symbolized stacks, by process and addresses.
    stacks: HashMap<(u32, Vec<u64>), Arc<Stack>>,
}

impl Resolver {
    fn resolve(&mut self, batch: Vec<Request>) -> Vec<Response> {
        self.callers.forget();
        // The last batch's stacks, and the map's room, go.
        self.stacks = HashMap::new();
        // One sock_diag scan of the namespaces involved serves the inode
        // lookups and the evidence of the whole batch.
        let scan_started = closewait_host::clock::mono_ns();
        let scan = if batch.iter().any(|r| r.evidence || r.socket.inode.is_none()) {
            scan_for(&batch)
        } else {
            discovery::ScanResult::default()
        };
        let scan_took = closewait_host::clock::mono_ns().saturating_sub(scan_started);
        let ephemeral = evidence::ephemeral_ports();
        let index = ScanIndex::new(&scan.sockets);
        let inodes = inodes_for(&batch, &index);
        let wanted: HashSet<u64> = inodes.values().copied().collect();
        let filter = &self.owner_filter;
        let holders = owner::find_holders(&wanted, |p| {
            filter.may_hold(p.pid() as u32, || owner::comm(p))
        });
        // Per process, once a batch: one holding 10,000 stuck sockets is
        // described once, not 10,000 times.
        let mut described: HashMap<u32, Option<Owner>> = HashMap::new();
        // Per owner, once a batch: counting a big process's fds is not free.
        let mut fds: HashMap<u32, Option<(u64, u64)>> = HashMap::new();
        let mut threads: HashMap<u32, Option<evidence::Threads>> = HashMap::new();
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
                        let process = described
                            .entry(pid)
                            .or_insert_with(|| owner::describe(pid, fd));
                        process.clone().map(|owner| Owner { fd, ..owner })
                    })
                    .collect();
                let (creation, last_read) = if req.report {
                    let creation = self.creation(&req.socket, &owners);
                    (creation, self.last_read(&req.socket, &owners))
                } else {
                    (None, None)
                };
                // The creator first, when it still holds the socket.
                if let Some(c) = &creation {
                    if let Some(i) = owners.iter().position(|o| o.pid == c.pid) {
                        owners[..=i].rotate_right(1);
                    }
                }
                let evidence = req.evidence.then(|| {
                    // When the scan read tcp_info, give or take half the scan.
                    let now = scan_started + scan_took / 2;
                    evidence::gather(
                        &req.socket,
                        &evidence::Inputs {
                            scanned: index.find(&req.socket),
                            listeners: &scan.listeners,
                            creation: creation.as_ref().map(|c| c.kind),
                            owner: owners.first(),
                            fds: owners.first().and_then(|o| {
                                *fds.entry(o.pid).or_insert_with(|| evidence::fd_use(o.pid))
                            }),
                            threads: owners.first().and_then(|o| {
                                *threads
                                    .entry(o.pid)
                                    .or_insert_with(|| evidence::thread_states(o.pid))
                            }),
                            since_fin_ms: req.enter_ns.map(|e| now.saturating_sub(e) / 1_000_000),
                            ephemeral,
                        },
                    )
                });
                let cause = evidence.as_ref().map(|e| diagnosis::diagnose(e).cause);
                Response {
                    id: req.id,
                    context: Arc::new(Context {
                        owners,
                        creation,
                        inode,
                        evidence,
                        cause,
                        last_read,
                        report: req.report,
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
        let stack = self.stack_of(&record, owners);
        Some(CreationContext {
            kind,
            pid: record.tgid,
            stack,
        })
    }

    /// The stack of the first EOF read in CLOSE_WAIT, if one was recorded.
    fn last_read(&mut self, socket: &Socket, owners: &[Owner]) -> Option<Arc<Stack>> {
        let creations = self.creations.as_ref()?;
        let record = creations.eof_reads.get(&socket.cookie?, 0).ok()?;
        self.stack_of(&record, owners)
    }

    /// A record's user stack, symbolized, with the callers a frame-pointer
    /// walk skips put back.
    fn stack_of(&mut self, record: &Creation, owners: &[Owner]) -> Option<Arc<Stack>> {
        let creations = self.creations.as_mut()?;
        let id = u32::try_from(record.user_stack_id).ok()?;
        let trace = creations.stacks.get(&id, 0).ok()?;
        let ips: Vec<u64> = trace.frames().iter().map(|f| f.ip).collect();
        // Symbolize in a live process that maps the same code: the recorder
        // if it is still there, else a holder.
        let pid = owners
            .iter()
            .find(|o| o.pid == record.tgid)
            .or(owners.first())
            .map_or(record.tgid, |o| o.pid);
        let ips = self.callers.with_caller(pid, &ips, &record.stack_words);
        let walked = symbolize(&mut self.symbolizer, &mut self.stacks, pid, ips);
        if !walked.truncated {
            return Some(walked);
        }
        // Cut short: code without frame pointers. Unwind the kernel's copy
        // of the stack where there is one; otherwise ask for copies of this
        // process's stacks from now on.
        let copy = record
            .copy_slot
            .checked_sub(1)
            .and_then(|slot| creations.copies.get(&slot, 0).ok())
            .filter(|c| c.ts_ns == record.ts_ns && c.tgid == record.tgid);
        let Some(copy) = copy else {
            if record.copy_slot == 0 {
                flag_nofp(creations, record.tgid);
            }
            return Some(walked);
        };
        let unwound = self
            .unwinder
            .unwind(pid, &copy)
            .filter(|ips| ips.len() > 1)
            .map(|ips| symbolize(&mut self.symbolizer, &mut self.stacks, pid, ips));
        match unwound {
            Some(stack) if !stack.truncated || stack.frames.len() > walked.frames.len() => {
                Some(stack)
            }
            _ => Some(walked),
        }
    }
}

/// `ips` of process `pid`, symbolized once a batch: the thousands of sockets
/// one leak creates share one copy.
fn symbolize(
    symbolizer: &mut Symbolizer,
    stacks: &mut HashMap<(u32, Vec<u64>), Arc<Stack>>,
    pid: u32,
    ips: Vec<u64>,
) -> Arc<Stack> {
    let stack = stacks
        .entry((pid, ips))
        .or_insert_with_key(|(pid, ips)| Arc::new(symbolizer.symbolize(*pid, ips)));
    Arc::clone(stack)
}

/// Have the kernel copy the stacks of process `tgid`, whose frame pointer
/// looked valid at the syscall but whose walk was cut short. Best effort.
fn flag_nofp(creations: &mut Creations, tgid: u32) {
    if creations.nofp_flagged.len() >= NOFP_FLAGGED_MAX {
        creations.nofp_flagged.clear();
    }
    if creations.nofp_flagged.contains(&tgid) {
        return;
    }
    // Remembered once in the kernel's map: a failed insert is retried.
    if creations.nofp_tgids.insert(tgid, 1, 0).is_ok() {
        creations.nofp_flagged.insert(tgid);
        let _ = creations.nofp_on.set(0, 1, 0);
    }
}

/// Entries of the kernel's `NOFP_TGIDS`.
const NOFP_FLAGGED_MAX: usize = 4096;

/// Scan the namespaces the batch's sockets are in (all, when one of them
/// has no namespace: the classic-tracepoint fallback).
fn scan_for(batch: &[Request]) -> discovery::ScanResult {
    let mut namespaces = discovery::list_netns();
    if batch.iter().all(|r| r.socket.netns.is_some()) {
        namespaces.retain(|ns| batch.iter().any(|r| r.socket.netns == Some(ns.inode)));
    }
    discovery::scan_close_wait(&namespaces).unwrap_or_default()
}

/// Socket inodes for a batch: from the kernel event when it carried one,
/// else from the scan. A socket that entered CLOSE_WAIT before it was
/// accepted had no file yet, and the classic-tracepoint fallback reads no
/// inode at all.
fn inodes_for(batch: &[Request], scanned: &ScanIndex) -> HashMap<u64, u64> {
    batch
        .iter()
        .filter_map(|r| {
            let inode = r.socket.inode.or_else(|| match_inode(&r.socket, scanned))?;
            Some((r.id, inode))
        })
        .collect()
}

/// The inode of `socket` among scanned sockets, if it has a file.
fn match_inode(socket: &Socket, scanned: &ScanIndex) -> Option<u64> {
    scanned
        .find(socket)
        .map(|f| f.inode)
        .filter(|&inode| inode != 0)
}

/// A batch's scan, indexed once: a batch of every socket found at start-up
/// looks up each of them in a scan of as many.
struct ScanIndex<'a> {
    by_cookie: HashMap<u64, &'a discovery::ScannedSocket>,
    by_tuple: HashMap<(u16, u16, IpAddr, IpAddr), Vec<&'a discovery::ScannedSocket>>,
}

impl<'a> ScanIndex<'a> {
    fn new(scanned: &'a [discovery::ScannedSocket]) -> Self {
        let mut index = ScanIndex {
            by_cookie: HashMap::with_capacity(scanned.len()),
            by_tuple: HashMap::with_capacity(scanned.len()),
        };
        for f in scanned {
            index.by_cookie.entry(f.cookie).or_insert(f);
            let key = (
                f.lport,
                f.rport,
                f.laddr.to_canonical(),
                f.raddr.to_canonical(),
            );
            index.by_tuple.entry(key).or_default().push(f);
        }
        index
    }

    /// `socket` among the scanned sockets: by cookie and network namespace
    /// when the event had them (cookies are unique on the host, the 4-tuple
    /// is not: two pods can use the very same one); else by 4-tuple, and
    /// only when exactly one socket has it, since a wrong owner is worse than
    /// none.
    fn find(&self, socket: &Socket) -> Option<&'a discovery::ScannedSocket> {
        let in_ns = |f: &discovery::ScannedSocket| socket.netns.is_none_or(|ns| ns == f.netns);
        if let Some(cookie) = socket.cookie {
            return self.by_cookie.get(&cookie).copied().filter(|f| in_ns(f));
        }
        let key = (
            socket.lport,
            socket.rport,
            socket.laddr.to_canonical(),
            socket.raddr.to_canonical(),
        );
        let mut hits = self.by_tuple.get(&key)?.iter().filter(|f| in_ns(f));
        let first = hits.next()?;
        hits.next().is_none().then_some(*first)
    }
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
            rqueue: 1,
            wqueue: 0,
            last_data_sent_ms: None,
            last_data_recv_ms: None,
            bytes_acked: None,
            bytes_received: None,
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
        assert_eq!(
            match_inode(&socket(Some(22), Some(200)), &ScanIndex::new(&scan)),
            Some(2002)
        );
        assert_eq!(
            match_inode(&socket(Some(11), Some(100)), &ScanIndex::new(&scan)),
            Some(1001)
        );
        assert_eq!(
            match_inode(&socket(Some(11), Some(200)), &ScanIndex::new(&scan)),
            None
        );
        assert_eq!(
            match_inode(&socket(Some(33), Some(100)), &ScanIndex::new(&scan)),
            None
        );
        // Without a cookie (classic tracepoint): ambiguous, so no owner.
        assert_eq!(
            match_inode(&socket(None, None), &ScanIndex::new(&scan)),
            None
        );
        assert_eq!(
            match_inode(&socket(None, None), &ScanIndex::new(&scan[..1])),
            Some(1001)
        );
        // Still in the accept queue when scanned too: no file, no inode.
        assert_eq!(
            match_inode(
                &socket(Some(11), Some(100)),
                &ScanIndex::new(&[scanned(11, 100, 0)])
            ),
            None
        );
    }

    #[test]
    fn mapped_and_plain_ipv4_are_the_same_address() {
        let mut mapped = scanned(11, 100, 1001);
        mapped.laddr = "::ffff:127.0.0.1".parse().unwrap();
        mapped.raddr = "::ffff:127.0.0.1".parse().unwrap();
        let index = ScanIndex::new(std::slice::from_ref(&mapped));
        assert_eq!(match_inode(&socket(None, Some(100)), &index), Some(1001));
        let mut other = socket(None, Some(100));
        other.laddr = "::1".parse().unwrap();
        assert_eq!(match_inode(&other, &index), None);
    }
}
