//! The sock_diag scan: TCP sockets in CLOSE_WAIT, in every network namespace
//! listed by [`super::netns`].
//!
//! The eBPF programs only see state changes that happen after they are
//! attached; this module finds the sockets that were stuck before that,
//! using the kernel's `NETLINK_SOCK_DIAG` interface (the one `ss` uses).
//!
//! A netlink socket answers for the network namespace it was created in, so
//! scanning another namespace means creating the socket inside it. That is
//! done on a dedicated thread which `setns(2)`s into each namespace in turn;
//! the caller's threads never change namespace.
//!
//! Requests are built, and replies are framed and parsed, with
//! `netlink-packet-core` / `netlink-packet-sock-diag`. Attributes are walked
//! with [`NlasIterator`] rather than the crate's typed `Nla` parser so that a
//! dump never allocates per socket, never fails because of an attribute the
//! crate does not know, and reads `tcp_info` from any kernel's (shorter or
//! longer) layout.

use std::fs::File;
use std::io;
use std::mem::size_of;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use netlink_packet_core::{
    DecodeError, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NlasIterator, Parseable, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::constants::{
    AF_INET, AF_INET6, INET_DIAG_INFO, IPPROTO_TCP, SOCK_DIAG_BY_FAMILY, TCP_CLOSE_WAIT, TCP_LISTEN,
};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponseBuffer, InetResponseHeader, SocketId, StateFlags,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use super::netns::{list_netns, NetNs};

/// Size of the buffer each netlink datagram is received into. The kernel
/// builds dump datagrams of at most ~32 KiB, so this always holds one whole
/// datagram; a larger one is detected (`MSG_TRUNC`) and reported.
const RECV_BUF_LEN: usize = 64 * 1024;

/// How long to wait for the kernel's next dump datagram before giving up on a
/// namespace (a safety net: the kernel answers dumps immediately).
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// Byte offset of `tcpi_last_ack_recv` in the UAPI `struct tcp_info`
/// (`linux/tcp.h`): 8 single bytes, then the u32s `rto, ato, snd_mss,
/// rcv_mss, unacked, sacked, lost, retrans, fackets, last_data_sent,
/// last_ack_sent, last_data_recv, last_ack_recv` → 8 + 12 * 4 = 56. The
/// layout only ever grows at the end, so this offset holds on every kernel.
const TCPI_LAST_ACK_RECV_OFFSET: usize = 56;
/// The same layout: `last_data_sent` and `last_data_recv` are u32s 9 and 11
/// of that run; after 24 u32s (to `total_retrans`, offset 104) come the u64s
/// `pacing_rate`, `max_pacing_rate`, `bytes_acked` and `bytes_received`.
const TCPI_LAST_DATA_SENT_OFFSET: usize = 44;
const TCPI_LAST_DATA_RECV_OFFSET: usize = 52;
const TCPI_BYTES_ACKED_OFFSET: usize = 120;
const TCPI_BYTES_RECEIVED_OFFSET: usize = 128;

/// Length of `struct inet_diag_msg`; its attributes follow it directly.
const INET_DIAG_MSG_LEN: usize = size_of::<InetResponseBuffer>();

/// One TCP socket found in CLOSE_WAIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedSocket {
    /// inet_diag `idiag_cookie`: the value `bpf_get_socket_cookie` returns.
    pub cookie: u64,
    /// `libc::AF_INET` or `libc::AF_INET6`, as the kernel reported it.
    pub family: u16,
    /// Local address as reported (an AF_INET6 socket keeps its v6 form,
    /// even when v4-mapped).
    pub laddr: IpAddr,
    /// Local port.
    pub lport: u16,
    /// Remote address, as reported.
    pub raddr: IpAddr,
    /// Remote port.
    pub rport: u16,
    /// Inode number of the network namespace the socket was found in.
    pub netns: u32,
    /// `idiag_inode`: the socket's inode, 0 if the socket is orphaned.
    pub inode: u64,
    /// `idiag_uid`: owner of the socket.
    pub uid: u32,
    /// `tcp_info.tcpi_last_ack_recv`: milliseconds since the last ACK was
    /// received; `None` when the kernel sent no (or a too short) `tcp_info`.
    pub last_ack_recv_ms: Option<u32>,
    /// `idiag_rqueue`: bytes received and not read. In CLOSE_WAIT the peer's
    /// FIN counts as one until the application has read EOF.
    pub rqueue: u32,
    /// `idiag_wqueue`: bytes written and not yet acknowledged.
    pub wqueue: u32,
    /// `tcpi_last_data_sent`, `tcpi_last_data_recv`: milliseconds since data
    /// last went out, came in.
    pub last_data_sent_ms: Option<u32>,
    pub last_data_recv_ms: Option<u32>,
    /// `tcpi_bytes_acked`, `tcpi_bytes_received` (Linux 4.1+).
    pub bytes_acked: Option<u64>,
    pub bytes_received: Option<u64>,
}

/// A listening TCP socket (the scans list them for the evidence: which
/// local ports accept connections, and how full their accept queues are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub netns: u32,
    pub laddr: IpAddr,
    pub lport: u16,
    /// Connections waiting in the accept queue (`idiag_rqueue` of a listener).
    pub backlog: u32,
    /// The queue's limit (`idiag_wqueue` of a listener).
    pub max_backlog: u32,
}

/// Why a scan (or, collected as text in [`ScanResult::errors`], one
/// namespace of a scan) failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The namespace file could not be opened or inspected.
    #[error("cannot open network namespace {path}: {source}")]
    OpenNetns {
        /// The namespace file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// `setns(2)` into the namespace failed.
    #[error("cannot enter network namespace {path}: {source}")]
    EnterNetns {
        /// The namespace file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The `NETLINK_SOCK_DIAG` socket could not be created or set up.
    #[error("cannot create a NETLINK_SOCK_DIAG socket: {0}")]
    Socket(#[source] io::Error),
    /// The dump request could not be sent.
    #[error("cannot send the sock_diag dump request: {0}")]
    Send(#[source] io::Error),
    /// Receiving the dump failed.
    #[error("cannot receive the sock_diag dump: {0}")]
    Recv(#[source] io::Error),
    /// The kernel stopped answering in the middle of a dump.
    #[error("timed out after {0:?} waiting for the kernel's sock_diag reply")]
    RecvTimeout(Duration),
    /// The kernel answered with `NLMSG_ERROR`, or ended the dump with an
    /// error code in `NLMSG_DONE`.
    #[error("the kernel rejected the sock_diag dump: {0}")]
    Kernel(#[source] io::Error),
    /// The reply could not be framed as netlink messages.
    #[error("malformed sock_diag reply: {0}")]
    Malformed(String),
    /// The scanner thread could not be started.
    #[error("cannot start the network namespace scanner thread: {0}")]
    SpawnThread(#[source] io::Error),
    /// The scanner thread panicked.
    #[error("the network namespace scanner thread panicked")]
    ThreadPanicked,
}

/// What [`scan_close_wait`] found.
#[derive(Debug, Clone, Default)]
pub struct ScanResult {
    /// CLOSE_WAIT sockets of all scanned namespaces.
    pub sockets: Vec<ScannedSocket>,
    /// Per-namespace failures that were skipped, one message each, for the
    /// caller to log. Sockets found before a failure are still reported.
    pub errors: Vec<String>,
    /// Listening sockets of the scanned namespaces.
    pub listeners: Vec<Listener>,
}

/// Scan every namespace in `namespaces` for TCP sockets in CLOSE_WAIT.
///
/// Runs on a dedicated thread that `setns(CLONE_NEWNET)`s into each
/// namespace in turn and opens fresh `NETLINK_SOCK_DIAG` sockets inside it,
/// so the caller's threads never change namespace. Blocks until done (call it
/// from `spawn_blocking` in async code).
///
/// A namespace that vanished since it was listed is skipped silently. Other
/// per-namespace failures are skipped and described in
/// [`ScanResult::errors`]. Only a failure of the scan as a whole (the thread
/// could not start or panicked) is returned as `Err`.
pub fn scan_close_wait(namespaces: &[NetNs]) -> Result<ScanResult, ScanError> {
    if namespaces.is_empty() {
        return Ok(ScanResult::default());
    }
    thread::scope(|scope| {
        let handle = thread::Builder::new()
            .name("netns-scan".into())
            .spawn_scoped(scope, || scan_namespaces(namespaces))
            .map_err(ScanError::SpawnThread)?;
        handle.join().map_err(|_| ScanError::ThreadPanicked)
    })
}

/// Convenience: [`list_netns`] then [`scan_close_wait`].
pub fn scan_all() -> Result<ScanResult, ScanError> {
    scan_close_wait(&list_netns())
}

// ---------------------------------------------------------------------------
// Scanner thread

/// Body of the scanner thread.
fn scan_namespaces(namespaces: &[NetNs]) -> ScanResult {
    let mut result = ScanResult::default();
    let mut buf = vec![0u8; RECV_BUF_LEN];
    for ns in namespaces {
        scan_namespace(ns, &mut buf, &mut result);
    }
    result
}

/// Enters `ns` and dumps its IPv4 and IPv6 CLOSE_WAIT sockets into `result`.
fn scan_namespace(ns: &NetNs, buf: &mut [u8], result: &mut ScanResult) {
    match enter_netns(ns) {
        Ok(true) => {}
        Ok(false) => return,
        Err(err) => {
            result.errors.push(err.to_string());
            return;
        }
    }
    for family in [AF_INET, AF_INET6] {
        match dump_close_wait(
            family,
            ns.inode,
            buf,
            &mut result.sockets,
            &mut result.listeners,
        ) {
            Ok(0) => {}
            Ok(skipped) => result.errors.push(format!(
                "{}: skipped {skipped} malformed sock_diag message(s)",
                dump_context(ns, family)
            )),
            Err(err) if is_missing_ipv6(family, &err) => {}
            Err(err) => result
                .errors
                .push(format!("{}: {err}", dump_context(ns, family))),
        }
    }
}

/// Prefix naming the namespace and family of a failed dump.
fn dump_context(ns: &NetNs, family: u8) -> String {
    let family = if family == AF_INET6 { "IPv6" } else { "IPv4" };
    format!(
        "network namespace {} (inode {}), {family}",
        ns.path.display(),
        ns.inode
    )
}

/// A kernel without IPv6 has no AF_INET6 sock_diag handler: not an error.
fn is_missing_ipv6(family: u8, err: &ScanError) -> bool {
    family == AF_INET6
        && matches!(err, ScanError::Kernel(e) if e.raw_os_error() == Some(libc::ENOENT))
}

/// Moves the calling thread into `ns`. `Ok(false)` if the namespace is gone:
/// its file vanished, or now refers to another namespace (PID reuse).
fn enter_netns(ns: &NetNs) -> Result<bool, ScanError> {
    let open_error = |source| ScanError::OpenNetns {
        path: ns.path.clone(),
        source,
    };
    let file = match File::open(&ns.path) {
        Ok(file) => file,
        Err(err) if is_vanished(&err) => return Ok(false),
        Err(err) => return Err(open_error(err)),
    };
    let meta = file.metadata().map_err(open_error)?;
    if meta.ino() != u64::from(ns.inode) {
        return Ok(false);
    }
    closewait_host::netns::enter_file(&file).map_err(|source| ScanError::EnterNetns {
        path: ns.path.clone(),
        source,
    })?;
    Ok(true)
}

/// Errors meaning "the process (and so its ns file) is gone".
fn is_vanished(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ESRCH))
}

// ---------------------------------------------------------------------------
// Netlink dump

/// Sequence number of every dump request; each dump uses a fresh socket.
const DUMP_SEQ: u32 = 1;

/// Dumps the CLOSE_WAIT TCP sockets of `family` in the current namespace
/// (`netns` is its inode) into `sockets`, using `buf` to receive. Returns
/// how many inet_diag messages were skipped as malformed.
fn dump_close_wait(
    family: u8,
    netns: u32,
    buf: &mut [u8],
    sockets: &mut Vec<ScannedSocket>,
    listeners: &mut Vec<Listener>,
) -> Result<usize, ScanError> {
    let socket = open_diag_socket()?;
    send_all(&socket, &dump_request(family, DUMP_SEQ))?;
    let mut dump = Dump::new(DUMP_SEQ, netns, sockets);
    dump.listeners = Some(listeners);
    loop {
        let len = recv_datagram(&socket, buf)?;
        let datagram = buf.get(..len).unwrap_or_default();
        if let Flow::Done = dump.feed(datagram)? {
            return Ok(dump.malformed);
        }
    }
}

/// A fresh `NETLINK_SOCK_DIAG` socket in the current network namespace.
fn open_diag_socket() -> Result<Socket, ScanError> {
    let socket = Socket::new(NETLINK_SOCK_DIAG).map_err(ScanError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(ScanError::Socket)?;
    set_recv_timeout(&socket, RECV_TIMEOUT).map_err(ScanError::Socket)?;
    Ok(socket)
}

/// Sets `SO_RCVTIMEO` (whole seconds) so a silent kernel cannot hang the
/// scanner forever.
fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        // time_t's width differs between libcs; a day is plenty.
        tv_sec: timeout.as_secs().min(86_400) as _,
        tv_usec: 0,
    };
    let len = libc::socklen_t::try_from(size_of::<libc::timeval>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the fd is open for the duration of the call, and `tv` is a
    // valid `timeval` of `len` bytes that outlives it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The inet_diag dump request: TCP sockets of `family` in CLOSE_WAIT (and
/// listeners), with
/// `INET_DIAG_INFO` (struct tcp_info) attached.
fn dump_request(family: u8, seq: u32) -> Vec<u8> {
    let socket_id = if family == AF_INET6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    };
    let request = InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::INFO,
        states: StateFlags::CLOSE_WAIT | StateFlags::LISTEN,
        socket_id,
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
    message.finalize();
    let mut buf = vec![0u8; message.buffer_len()];
    // Cannot panic: `buf` has exactly `buffer_len()` bytes.
    message.serialize(&mut buf);
    buf
}

/// Sends one netlink request, retrying on EINTR.
fn send_all(socket: &Socket, request: &[u8]) -> Result<(), ScanError> {
    loop {
        match socket.send(request, 0) {
            Ok(sent) if sent == request.len() => return Ok(()),
            Ok(sent) => {
                return Err(ScanError::Send(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("sent {sent} of {} bytes", request.len()),
                )))
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(ScanError::Send(err)),
        }
    }
}

/// Receives one datagram into `buf`, retrying on EINTR; returns its length.
fn recv_datagram(socket: &Socket, buf: &mut [u8]) -> Result<usize, ScanError> {
    loop {
        // MSG_TRUNC makes recv return the real length of a datagram that did
        // not fit, so truncation is detected instead of silently parsed.
        match socket.recv(&mut &mut buf[..], libc::MSG_TRUNC) {
            Ok(0) => {
                return Err(ScanError::Malformed(
                    "empty datagram in the middle of a dump".into(),
                ))
            }
            Ok(len) if len > buf.len() => {
                return Err(ScanError::Malformed(format!(
                    "a {len}-byte datagram does not fit the {}-byte receive buffer",
                    buf.len()
                )))
            }
            Ok(len) => return Ok(len),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                return Err(ScanError::RecvTimeout(RECV_TIMEOUT))
            }
            Err(err) => return Err(ScanError::Recv(err)),
        }
    }
}

/// Whether a dump goes on after a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    More,
    Done,
}

/// Collects the sockets of one dump, datagram by datagram.
struct Dump<'a> {
    seq: u32,
    netns: u32,
    sockets: &'a mut Vec<ScannedSocket>,
    /// Where listeners go; `None`: dropped.
    listeners: Option<&'a mut Vec<Listener>>,
    /// inet_diag messages skipped because they could not be parsed.
    malformed: usize,
}

/// The inner message of a dump reply. The netlink crate frames the messages
/// and decodes `NLMSG_DONE`/`NLMSG_ERROR`; the inet_diag payload is read
/// here, tolerantly (see the module comment), so one odd message is counted
/// and skipped instead of failing the dump.
enum DiagReply {
    Socket(ScannedSocket),
    Listener(Listener),
    /// Not in CLOSE_WAIT, or not an inet_diag message.
    Other,
    Malformed,
}

impl NetlinkDeserializable for DiagReply {
    type Error = std::convert::Infallible;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
        if header.message_type != SOCK_DIAG_BY_FAMILY {
            return Ok(DiagReply::Other);
        }
        if let Some(listener) = parse_listener(payload, 0) {
            return Ok(DiagReply::Listener(listener));
        }
        Ok(match parse_inet_diag_msg(payload, 0) {
            Ok(Some(socket)) => DiagReply::Socket(socket),
            Ok(None) => DiagReply::Other,
            Err(_) => DiagReply::Malformed,
        })
    }
}

impl<'a> Dump<'a> {
    fn new(seq: u32, netns: u32, sockets: &'a mut Vec<ScannedSocket>) -> Self {
        Self {
            seq,
            netns,
            sockets,
            listeners: None,
            malformed: 0,
        }
    }

    /// Processes every netlink message in one received datagram.
    fn feed(&mut self, datagram: &[u8]) -> Result<Flow, ScanError> {
        let mut rest = datagram;
        while !rest.is_empty() {
            let message = NetlinkMessage::<DiagReply>::deserialize(rest)
                .map_err(|err| ScanError::Malformed(err.to_string()))?;
            let advance = nlmsg_align(message.header.length as usize);
            if advance < 16 {
                // Shorter than its own 16-byte header: it would not move on.
                return Err(ScanError::Malformed(format!(
                    "netlink message of length {}",
                    message.header.length
                )));
            }
            if message.header.sequence_number == self.seq {
                match message.payload {
                    NetlinkPayload::Done(done) if done.code < 0 => {
                        return Err(kernel_error(done.code))
                    }
                    NetlinkPayload::Done(_) => return Ok(Flow::Done),
                    NetlinkPayload::Error(err) => {
                        // Code 0 is an ACK.
                        if let Some(code) = err.code {
                            return Err(kernel_error(code.get()));
                        }
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(ScanError::Malformed("NLMSG_OVERRUN".into()))
                    }
                    NetlinkPayload::InnerMessage(DiagReply::Socket(mut socket)) => {
                        socket.netns = self.netns;
                        self.sockets.push(socket);
                    }
                    NetlinkPayload::InnerMessage(DiagReply::Listener(mut listener)) => {
                        listener.netns = self.netns;
                        if let Some(listeners) = self.listeners.as_mut() {
                            listeners.push(listener);
                        }
                    }
                    NetlinkPayload::InnerMessage(DiagReply::Malformed) => self.malformed += 1,
                    _ => {}
                }
            }
            rest = rest.get(advance..).unwrap_or_default();
        }
        Ok(Flow::More)
    }
}

/// `NLMSG_ALIGN`: netlink messages start on 4-byte boundaries.
fn nlmsg_align(len: usize) -> usize {
    len.saturating_add(3) & !3
}

/// A kernel status code (negative errno) as an error.
fn kernel_error(code: i32) -> ScanError {
    ScanError::Kernel(io::Error::from_raw_os_error(code.saturating_neg()))
}

// ---------------------------------------------------------------------------
// inet_diag message parsing

/// Turns the payload of one `SOCK_DIAG_BY_FAMILY` message (a `struct
/// inet_diag_msg` followed by attributes) found in namespace `netns` into a
/// [`ScannedSocket`]. `Ok(None)` if the socket is not in CLOSE_WAIT.
fn parse_inet_diag_msg(payload: &[u8], netns: u32) -> Result<Option<ScannedSocket>, DecodeError> {
    let header = InetResponseHeader::parse(payload)?;
    if header.state != TCP_CLOSE_WAIT {
        return Ok(None);
    }
    let attributes = payload.get(INET_DIAG_MSG_LEN..).unwrap_or_default();
    let id = &header.socket_id;
    let info = find_tcp_info(attributes)?.unwrap_or_default();
    let u32_at = |offset: usize| {
        let bytes = info.get(offset..offset + 4)?;
        Some(u32::from_ne_bytes(bytes.try_into().ok()?))
    };
    let u64_at = |offset: usize| {
        let bytes = info.get(offset..offset + 8)?;
        Some(u64::from_ne_bytes(bytes.try_into().ok()?))
    };
    Ok(Some(ScannedSocket {
        cookie: cookie_from_sockid(id.cookie),
        family: u16::from(header.family),
        laddr: id.source_address,
        lport: id.source_port,
        raddr: id.destination_address,
        rport: id.destination_port,
        netns,
        inode: u64::from(header.inode),
        uid: header.uid,
        last_ack_recv_ms: tcpi_last_ack_recv(info),
        rqueue: header.recv_queue,
        wqueue: header.send_queue,
        last_data_sent_ms: u32_at(TCPI_LAST_DATA_SENT_OFFSET),
        last_data_recv_ms: u32_at(TCPI_LAST_DATA_RECV_OFFSET),
        bytes_acked: u64_at(TCPI_BYTES_ACKED_OFFSET),
        bytes_received: u64_at(TCPI_BYTES_RECEIVED_OFFSET),
    }))
}

/// A listening socket's message, if it is one.
fn parse_listener(payload: &[u8], netns: u32) -> Option<Listener> {
    let header = InetResponseHeader::parse(payload).ok()?;
    (header.state == TCP_LISTEN).then_some(Listener {
        netns,
        laddr: header.socket_id.source_address,
        lport: header.socket_id.source_port,
        backlog: header.recv_queue,
        max_backlog: header.send_queue,
    })
}

/// `idiag_cookie` is `__u32[2]` in host byte order, low word first
/// (`sock_diag_save_cookie`).
fn cookie_from_sockid(raw: [u8; 8]) -> u64 {
    let low = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let high = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
    u64::from(low) | (u64::from(high) << 32)
}

/// The raw `struct tcp_info` of the `INET_DIAG_INFO` attribute, if present.
fn find_tcp_info(attributes: &[u8]) -> Result<Option<&[u8]>, DecodeError> {
    for attribute in NlasIterator::new(attributes) {
        let attribute = attribute?;
        if attribute.kind() == INET_DIAG_INFO {
            let len = attribute.value_length();
            let whole: &[u8] = attribute.into_inner();
            // The value follows the 4-byte attribute header.
            return Ok(whole.get(4..4 + len));
        }
    }
    Ok(None)
}

/// `tcpi_last_ack_recv` read at its fixed UAPI offset in a raw `struct
/// tcp_info` (host byte order); `None` if `tcp_info` is too short.
fn tcpi_last_ack_recv(tcp_info: &[u8]) -> Option<u32> {
    let bytes = tcp_info.get(TCPI_LAST_ACK_RECV_OFFSET..TCPI_LAST_ACK_RECV_OFFSET + 4)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkBuffer, NLMSG_DONE, NLMSG_ERROR};
    use std::fs;
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
    use std::time::Instant;

    const NLMSG_HDR_LEN: usize = 16;
    const COOKIE: u64 = 0x0000_1234_89ab_cdef;

    /// A hand-built `struct inet_diag_msg` + attributes.
    struct DiagMsg {
        family: u8,
        state: u8,
        sport: u16,
        dport: u16,
        src: [u8; 16],
        dst: [u8; 16],
        cookie: u64,
        uid: u32,
        inode: u32,
        /// (type, value) attributes, appended in order.
        attrs: Vec<(u16, Vec<u8>)>,
    }

    impl DiagMsg {
        fn v4_close_wait() -> Self {
            let mut src = [0u8; 16];
            src[..4].copy_from_slice(&[10, 0, 0, 1]);
            let mut dst = [0u8; 16];
            dst[..4].copy_from_slice(&[192, 0, 2, 7]);
            Self {
                family: AF_INET,
                state: TCP_CLOSE_WAIT,
                sport: 8080,
                dport: 51000,
                src,
                dst,
                cookie: COOKIE,
                uid: 1000,
                inode: 424242,
                attrs: vec![
                    (8 /* INET_DIAG_SHUTDOWN */, vec![1]),
                    (INET_DIAG_INFO, tcp_info(248, 1234)),
                ],
            }
        }

        fn payload(&self) -> Vec<u8> {
            let mut b = vec![self.family, self.state, 0, 0];
            b.extend_from_slice(&self.sport.to_be_bytes());
            b.extend_from_slice(&self.dport.to_be_bytes());
            b.extend_from_slice(&self.src);
            b.extend_from_slice(&self.dst);
            b.extend_from_slice(&0u32.to_ne_bytes()); // interface
            b.extend_from_slice(&(self.cookie as u32).to_ne_bytes());
            b.extend_from_slice(&((self.cookie >> 32) as u32).to_ne_bytes());
            for v in [0u32, 1, 0, self.uid, self.inode] {
                b.extend_from_slice(&v.to_ne_bytes()); // expires rqueue wqueue uid inode
            }
            assert_eq!(b.len(), INET_DIAG_MSG_LEN);
            for (kind, value) in &self.attrs {
                b.extend_from_slice(&((value.len() + 4) as u16).to_ne_bytes());
                b.extend_from_slice(&kind.to_ne_bytes());
                b.extend_from_slice(value);
                b.resize(nlmsg_align(b.len()), 0);
            }
            b
        }
    }

    /// A raw tcp_info of `len` bytes with `tcpi_last_ack_recv` set (if it fits).
    fn tcp_info(len: usize, last_ack_recv: u32) -> Vec<u8> {
        let mut info = vec![0xAAu8; len];
        info[0] = TCP_CLOSE_WAIT;
        if let Some(field) = info.get_mut(56..60) {
            field.copy_from_slice(&last_ack_recv.to_ne_bytes());
        }
        for (offset, value) in [(44, 5000u32), (52, 4000)] {
            if let Some(field) = info.get_mut(offset..offset + 4) {
                field.copy_from_slice(&value.to_ne_bytes());
            }
        }
        for (offset, value) in [(120, 301u64), (128, 7)] {
            if let Some(field) = info.get_mut(offset..offset + 8) {
                field.copy_from_slice(&value.to_ne_bytes());
            }
        }
        info
    }

    /// A netlink message: header + payload, padded to 4 bytes.
    fn nlmsg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((NLMSG_HDR_LEN + payload.len()) as u32).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(payload);
        b.resize(nlmsg_align(b.len()), 0);
        b
    }

    fn feed(datagram: &[u8]) -> (Result<Flow, ScanError>, Vec<ScannedSocket>, usize) {
        let mut sockets = Vec::new();
        let mut dump = Dump::new(7, 99, &mut sockets);
        let flow = dump.feed(datagram);
        let malformed = dump.malformed;
        (flow, sockets, malformed)
    }

    #[test]
    fn parses_ipv4_close_wait_message() {
        let socket = parse_inet_diag_msg(&DiagMsg::v4_close_wait().payload(), 4026531840)
            .unwrap()
            .unwrap();
        assert_eq!(
            socket,
            ScannedSocket {
                cookie: COOKIE,
                family: libc::AF_INET as u16,
                laddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                lport: 8080,
                raddr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
                rport: 51000,
                netns: 4026531840,
                inode: 424242,
                uid: 1000,
                last_ack_recv_ms: Some(1234),
                rqueue: 1,
                wqueue: 0,
                last_data_sent_ms: Some(5000),
                last_data_recv_ms: Some(4000),
                bytes_acked: Some(301),
                bytes_received: Some(7),
            }
        );
    }

    #[test]
    fn ipv6_keeps_v4_mapped_form() {
        let mapped = Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped();
        let mut msg = DiagMsg::v4_close_wait();
        msg.family = AF_INET6;
        msg.src = mapped.octets();
        msg.dst = Ipv6Addr::LOCALHOST.octets();
        let socket = parse_inet_diag_msg(&msg.payload(), 1).unwrap().unwrap();
        assert_eq!(socket.family, libc::AF_INET6 as u16);
        assert_eq!(socket.laddr, IpAddr::V6(mapped));
        assert_eq!(socket.raddr, IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn other_states_are_ignored() {
        let mut msg = DiagMsg::v4_close_wait();
        msg.state = 1; // ESTABLISHED
        assert_eq!(parse_inet_diag_msg(&msg.payload(), 1).unwrap(), None);
        assert_eq!(parse_listener(&msg.payload(), 1), None);
    }

    #[test]
    fn listeners_give_their_accept_queue() {
        let mut msg = DiagMsg::v4_close_wait();
        msg.state = TCP_LISTEN;
        let listener = parse_listener(&msg.payload(), 9).expect("a listener");
        assert_eq!(listener.lport, 8080);
        assert_eq!((listener.backlog, listener.max_backlog), (1, 0));
        assert_eq!(parse_inet_diag_msg(&msg.payload(), 9).unwrap(), None);
        let datagram = nlmsg(SOCK_DIAG_BY_FAMILY, 7, &msg.payload());
        let mut sockets = Vec::new();
        let mut listeners = Vec::new();
        let mut dump = Dump::new(7, 99, &mut sockets);
        dump.listeners = Some(&mut listeners);
        dump.feed(&datagram).unwrap();
        assert_eq!(listeners.len(), 1);
        assert_eq!(listeners[0].netns, 99);
    }

    #[test]
    fn missing_or_short_tcp_info_gives_none() {
        let mut msg = DiagMsg::v4_close_wait();
        msg.attrs = vec![(8, vec![0])];
        let socket = parse_inet_diag_msg(&msg.payload(), 1).unwrap().unwrap();
        assert_eq!(socket.last_ack_recv_ms, None);

        msg.attrs = vec![(INET_DIAG_INFO, tcp_info(59, 5))];
        let socket = parse_inet_diag_msg(&msg.payload(), 1).unwrap().unwrap();
        assert_eq!(socket.last_ack_recv_ms, None);
    }

    #[test]
    fn old_short_tcp_info_still_has_last_ack_recv() {
        // 2.6-era tcp_info was 104 bytes; the offset is unchanged.
        let mut msg = DiagMsg::v4_close_wait();
        msg.attrs = vec![(INET_DIAG_INFO, tcp_info(104, 77))];
        let socket = parse_inet_diag_msg(&msg.payload(), 1).unwrap().unwrap();
        assert_eq!(socket.last_ack_recv_ms, Some(77));
    }

    #[test]
    fn tcp_info_offset_matches_uapi_layout() {
        assert_eq!(
            std::mem::offset_of!(libc::tcp_info, tcpi_last_ack_recv),
            TCPI_LAST_ACK_RECV_OFFSET
        );
        assert_eq!(
            std::mem::offset_of!(libc::tcp_info, tcpi_last_data_sent),
            TCPI_LAST_DATA_SENT_OFFSET
        );
        assert_eq!(
            std::mem::offset_of!(libc::tcp_info, tcpi_last_data_recv),
            TCPI_LAST_DATA_RECV_OFFSET
        );
        assert_eq!(
            tcpi_last_ack_recv(&tcp_info(60, 0xdead_beef)),
            Some(0xdead_beef)
        );
        assert_eq!(tcpi_last_ack_recv(&[0u8; 59]), None);
    }

    #[test]
    fn inet_diag_msg_len_is_72() {
        assert_eq!(INET_DIAG_MSG_LEN, 72);
    }

    #[test]
    fn cookie_is_low_word_first() {
        let mut raw = [0u8; 8];
        raw[..4].copy_from_slice(&0x89ab_cdefu32.to_ne_bytes());
        raw[4..].copy_from_slice(&0x1234u32.to_ne_bytes());
        assert_eq!(cookie_from_sockid(raw), COOKIE);
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let payload = DiagMsg::v4_close_wait().payload();
        for len in 0..payload.len() {
            // Header cut: error. Attribute cut: error (never a panic).
            let result = parse_inet_diag_msg(&payload[..len], 1);
            if len < INET_DIAG_MSG_LEN {
                assert!(result.is_err(), "len {len}");
            }
        }
        let datagram = nlmsg(SOCK_DIAG_BY_FAMILY, 7, &payload);
        for len in 1..datagram.len() {
            let _ = feed(&datagram[..len]);
        }
    }

    #[test]
    fn multipart_datagram_until_done() {
        let payload = DiagMsg::v4_close_wait().payload();
        let mut datagram = nlmsg(SOCK_DIAG_BY_FAMILY, 7, &payload);
        datagram.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 7, &payload));
        let (flow, sockets, malformed) = feed(&datagram);
        assert_eq!(flow.unwrap(), Flow::More);
        assert_eq!((sockets.len(), malformed), (2, 0));
        assert!(sockets.iter().all(|s| s.netns == 99));

        datagram.extend(nlmsg(NLMSG_DONE, 7, &0i32.to_ne_bytes()));
        let (flow, sockets, _) = feed(&datagram);
        assert_eq!(flow.unwrap(), Flow::Done);
        assert_eq!(sockets.len(), 2);
    }

    #[test]
    fn done_without_payload_ends_dump() {
        let (flow, _, _) = feed(&nlmsg(NLMSG_DONE, 7, &[]));
        assert_eq!(flow.unwrap(), Flow::Done);
    }

    #[test]
    fn done_with_negative_code_is_an_error() {
        let (flow, _, _) = feed(&nlmsg(NLMSG_DONE, 7, &(-libc::ENOMEM).to_ne_bytes()));
        match flow {
            Err(ScanError::Kernel(err)) => assert_eq!(err.raw_os_error(), Some(libc::ENOMEM)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn nlmsg_error_is_an_error() {
        let mut payload = (-libc::EPERM).to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0u8; NLMSG_HDR_LEN]); // echoed request header
        let (flow, _, _) = feed(&nlmsg(NLMSG_ERROR, 7, &payload));
        match flow {
            Err(ScanError::Kernel(err)) => assert_eq!(err.raw_os_error(), Some(libc::EPERM)),
            other => panic!("unexpected {other:?}"),
        }
        let (flow, _, _) = feed(&nlmsg(NLMSG_ERROR, 7, &0i32.to_ne_bytes()));
        assert_eq!(flow.unwrap(), Flow::More, "code 0 is an ACK");
    }

    #[test]
    fn foreign_sequence_numbers_are_ignored() {
        let payload = DiagMsg::v4_close_wait().payload();
        let mut datagram = nlmsg(SOCK_DIAG_BY_FAMILY, 8, &payload);
        datagram.extend(nlmsg(NLMSG_DONE, 8, &0i32.to_ne_bytes()));
        let (flow, sockets, _) = feed(&datagram);
        assert_eq!(flow.unwrap(), Flow::More);
        assert!(sockets.is_empty());
    }

    #[test]
    fn malformed_inet_diag_message_is_skipped_and_counted() {
        let mut payload = DiagMsg::v4_close_wait().payload();
        payload[0] = 99; // unknown family
        let mut datagram = nlmsg(SOCK_DIAG_BY_FAMILY, 7, &payload);
        datagram.extend(nlmsg(
            SOCK_DIAG_BY_FAMILY,
            7,
            &DiagMsg::v4_close_wait().payload(),
        ));
        let (flow, sockets, malformed) = feed(&datagram);
        assert_eq!(flow.unwrap(), Flow::More);
        assert_eq!((sockets.len(), malformed), (1, 1));
    }

    #[test]
    fn bad_netlink_framing_is_an_error() {
        let mut datagram = nlmsg(NLMSG_DONE, 7, &[0; 4]);
        datagram[0] = 200; // length beyond the datagram
        let (flow, _, _) = feed(&datagram);
        assert!(matches!(flow, Err(ScanError::Malformed(_))));
    }

    #[test]
    fn dump_request_layout() {
        let req = dump_request(AF_INET6, 42);
        assert_eq!(req.len(), NLMSG_HDR_LEN + 56);
        let header = NetlinkBuffer::new_checked(&req[..]).unwrap();
        assert_eq!(header.length() as usize, req.len());
        assert_eq!(header.message_type(), SOCK_DIAG_BY_FAMILY);
        assert_eq!(header.flags(), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(header.sequence_number(), 42);
        let body = &req[NLMSG_HDR_LEN..];
        assert_eq!(body[0], libc::AF_INET6 as u8);
        assert_eq!(body[1], libc::IPPROTO_TCP as u8);
        assert_eq!(body[2], 1 << (INET_DIAG_INFO - 1));
        assert_eq!(
            u32::from_ne_bytes(body[4..8].try_into().unwrap()),
            (1 << 8) | (1 << 10),
            "CLOSE_WAIT and LISTEN"
        );
    }

    #[test]
    fn vanished_namespace_is_skipped_silently() {
        let gone = NetNs {
            inode: 1,
            path: PathBuf::from("/proc/self/ns/no-such-namespace"),
        };
        let result = scan_close_wait(&[gone]).unwrap();
        assert!(result.sockets.is_empty());
        assert!(result.errors.is_empty(), "{:?}", result.errors);
    }

    // ----- root-only test against the real kernel -----

    /// `SO_COOKIE` from asm-generic/socket.h (not exported by libc for gnu).
    const SO_COOKIE: libc::c_int = 57;

    /// Connects to a new listener on `listen`, closes the client, returns
    /// the accepted (soon CLOSE_WAIT) side; `None` if `listen` is unusable.
    fn close_wait_pair(listen: &str, connect_ip: &str) -> Option<TcpStream> {
        let listener = TcpListener::bind(listen).ok()?;
        let port = listener.local_addr().ok()?.port();
        let client = TcpStream::connect((connect_ip, port)).ok()?;
        let (server, _) = listener.accept().ok()?;
        drop(client);
        Some(server)
    }

    /// Creates CLOSE_WAIT sockets inside the namespace at `ns_path`: IPv4
    /// (always), IPv6 and v4-mapped (when the namespace has IPv6).
    fn close_wait_sockets_in(ns_path: PathBuf) -> Vec<TcpStream> {
        closewait_host::netns::run_in(&ns_path, || {
            let mut streams = vec![close_wait_pair("127.0.0.1:0", "127.0.0.1").expect("v4")];
            streams.extend(close_wait_pair("[::1]:0", "::1"));
            streams.extend(close_wait_pair("[::]:0", "127.0.0.1"));
            streams
        })
        .expect("enter the namespace")
    }

    fn so_cookie(stream: &TcpStream) -> u64 {
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "SO_COOKIE: {}", io::Error::last_os_error());
        cookie
    }

    /// Polls `scan_all` (≤ 2 s) until it reports the socket of `stream`.
    fn wait_for_scan(stream: &TcpStream, netns: u32) -> ScannedSocket {
        let lport = stream.local_addr().unwrap().port();
        let rport = stream.peer_addr().unwrap().port();
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let result = scan_all().expect("scan_all");
            let found = result
                .sockets
                .into_iter()
                .find(|s| s.netns == netns && s.lport == lport && s.rport == rport);
            if let Some(socket) = found {
                return socket;
            }
            assert!(
                Instant::now() < deadline,
                "not found; errors: {:?}",
                result.errors
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    #[ignore = "needs root and ip(8): creates a network namespace"]
    fn scan_finds_close_wait_in_other_netns() {
        let netns =
            closewait_host::netns::Named::create(&format!("cwt-scan-test-{}", std::process::id()))
                .expect("ip netns add");
        let ns_inode = u32::try_from(fs::metadata(netns.path()).unwrap().ino()).unwrap();
        let streams = close_wait_sockets_in(netns.path());
        for stream in &streams {
            let found = wait_for_scan(stream, ns_inode);
            eprintln!("found {found:?}");
            let local = stream.local_addr().unwrap();
            let peer = stream.peer_addr().unwrap();
            let family = if local.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            assert_eq!(found.family, family as u16);
            assert_eq!((found.laddr, found.raddr), (local.ip(), peer.ip()));
            assert_ne!(found.cookie, 0);
            assert_eq!(found.cookie, so_cookie(stream));
            let fd_path = format!("/proc/self/fd/{}", stream.as_raw_fd());
            assert_eq!(found.inode, fs::metadata(fd_path).unwrap().ino());
            assert_eq!(found.uid, unsafe { libc::geteuid() });
            assert!(found.last_ack_recv_ms.is_some_and(|ms| ms < 60_000));
        }
        assert!(streams.len() == 3 || streams.len() == 1);
        // Listeners come with the scan, with their accept queue.
        let listener = closewait_host::netns::run_in(&netns.path(), || {
            TcpListener::bind("127.0.0.1:0").expect("bind")
        })
        .expect("enter the namespace");
        let port = listener.local_addr().unwrap().port();
        let scan = scan_all().expect("scan_all");
        let found = scan
            .listeners
            .iter()
            .find(|l| l.netns == ns_inode && l.lport == port);
        assert!(
            found.is_some(),
            "listener :{port} not in {:?}",
            scan.listeners
        );
    }

    /// Hostile input: the parser of dump replies (netlink framing, inet_diag
    /// messages, their attributes, tcp_info) on real replies (the corpus in
    /// `fuzz-corpus/sock_diag/`, dumps captured from a real kernel, and the
    /// builders above) mutated, truncated and spliced, and on random bytes.
    /// It must return (a socket, a skip, or an error) and never panic or
    /// spin; a bounded run is part of `cargo xtask test`.
    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        fn corpus() -> Vec<Vec<u8>> {
            let dir =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus/sock_diag");
            let mut seeds: Vec<Vec<u8>> = fs::read_dir(&dir)
                .expect("the corpus directory")
                .map(|e| fs::read(e.unwrap().path()).unwrap())
                .collect();
            assert!(seeds.len() >= 4, "corpus at {}", dir.display());
            let payload = DiagMsg::v4_close_wait().payload();
            let mut built = nlmsg(SOCK_DIAG_BY_FAMILY, 7, &payload);
            built.extend(nlmsg(NLMSG_DONE, 7, &0i32.to_ne_bytes()));
            seeds.push(built);
            seeds
        }

        /// Parse a datagram, and every message payload on its own.
        fn exercise(datagram: &[u8]) {
            let (flow, sockets, _) = feed(datagram);
            if flow.is_ok() {
                for s in &sockets {
                    assert_eq!(s.netns, 99);
                }
            }
            let _ = parse_inet_diag_msg(datagram, 1);
            let _ = parse_listener(datagram, 1);
            if datagram.len() > NLMSG_HDR_LEN {
                let payload = &datagram[NLMSG_HDR_LEN..];
                let _ = parse_inet_diag_msg(payload, 1);
                let _ = parse_listener(payload, 1);
                if payload.len() > INET_DIAG_MSG_LEN {
                    if let Ok(Some(info)) = find_tcp_info(&payload[INET_DIAG_MSG_LEN..]) {
                        let _ = tcpi_last_ack_recv(info);
                    }
                }
            }
        }

        #[test]
        fn the_corpus_parses() {
            let seeds = corpus();
            let real: Vec<&Vec<u8>> = seeds.iter().filter(|s| s.len() > 100).collect();
            for seed in real {
                let mut sockets = Vec::new();
                let mut dump = Dump::new(7, 1, &mut sockets);
                assert!(dump.feed(seed).is_ok(), "a real reply parses");
                assert_eq!(dump.malformed, 0);
                assert!(!sockets.is_empty(), "it holds sockets in CLOSE_WAIT");
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 3000,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn mutated_replies_never_panic(
                pick in any::<prop::sample::Index>(),
                writes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..16),
                cut in any::<prop::sample::Index>(),
                splice in prop::collection::vec(any::<u8>(), 0..64),
            ) {
                let seeds = corpus();
                let mut data = pick.get(&seeds).clone();
                for (at, byte) in &writes {
                    let i = at.index(data.len());
                    data[i] = *byte;
                }
                exercise(&data);
                data.truncate(cut.index(data.len() + 1));
                exercise(&data);
                data.extend_from_slice(&splice);
                exercise(&data);
            }

            #[test]
            fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..1024)) {
                exercise(&data);
            }

            #[test]
            fn any_header_length_is_framing_or_an_error(len in any::<u32>(), kind in any::<u16>()) {
                let payload = DiagMsg::v4_close_wait().payload();
                let mut data = nlmsg(kind, 7, &payload);
                data[..4].copy_from_slice(&len.to_ne_bytes());
                exercise(&data);
            }
        }
    }
}
