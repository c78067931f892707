//! leaker.rs - the Rust twin of leaker.c: leaks one TCP socket in CLOSE_WAIT
//! from a function with a known name, for closewait-trace's kernel tests.
//! Standard library only, so that it builds with a bare `rustc` (see build.md):
//!
//! ```text
//! rustc --edition 2021 -O -g -C force-frame-pointers=yes -o leaker-rs leaker.rs
//! rustc --edition 2021 -O -g -C force-frame-pointers=no  -o leaker-rs-nofp leaker.rs
//! ```
//!
//! Usage (the same as leaker.c, without `--fork`):
//!
//! ```text
//! leaker-rs connect IP PORT [--name NAME]
//! leaker-rs accept  IP PORT [--name NAME]
//! ```
//!
//! - `connect`: `leak_outgoing_connection` connects to IP:PORT with
//!   `TcpStream::connect`; the program then reads until the peer has closed
//!   its side (read returns 0): the socket is in CLOSE_WAIT and is never
//!   closed.
//! - `accept`: listens on IP:PORT (PORT may be 0), prints
//!   `listening pid=<pid> port=<port>`, then `leak_accepted_connection`
//!   accepts one connection with `TcpListener::accept`; the listener is closed
//!   right after. The program reads until the client has closed: CLOSE_WAIT.
//! - `--name NAME`: writes NAME to /proc/self/comm before any socket exists
//!   (byte for byte; control characters allowed; the kernel keeps 15 bytes).
//! - `--fork` is not supported (std has no fork; leaker.c covers it): it is a
//!   usage error (exit status 2).
//!
//! Output on stdout, one line each, flushed: `listening pid=<pid>
//! port=<port>` (accept mode only), then `ready pid=<pid> fd=<fd>` once the
//! socket is in CLOSE_WAIT. Then the program sleeps until it is killed
//! (SIGTERM) or its stdin reaches end of file (keep stdin on a pipe that the
//! test holds open; /dev/null ends it at once). Errors: one line on stderr,
//! exit status 1 (2 for usage errors).
//!
//! Stacks. The user stack that the kernel records at the connect()/accept()
//! system call is a frame-pointer walk (bpf_get_stackid with
//! BPF_F_USER_STACK, perf). It starts in glibc's frameless `connect` /
//! `accept4` wrapper, so the return address into the wrapper's direct caller
//! is never seen and that caller is skipped. Here that caller is std's
//! `<std::sys::net::connection::socket::TcpStream>::connect::inner` (resp.
//! the socket accept code); everything above it (`TcpStream::connect`, a
//! generic, is inlined into `leak_outgoing_connection`). Rust's precompiled
//! std is itself built with frame pointers (since Rust 1.79; checked with
//! objdump on 1.95: `push %rbp; mov %rsp,%rbp`), so the walk goes on through
//! std's frame. Observed with bpftrace's ustack on Debian 12 / kernel 6.18:
//!
//! - `-C force-frame-pointers=yes` (the complete case):
//!   ```text
//!   connect+16 (libc)                      accept4+19 (libc)
//!   leaker::leak_outgoing_connection+69    leaker::leak_accepted_connection+21
//!   leaker::main
//!   std::sys::backtrace::__rust_begin_short_backtrace
//!   std::rt::lang_start::{{closure}}
//!   std::rt::lang_start_internal
//!   main
//!   __libc_start_call_main (libc; the walk ends here: glibc has no frame pointers)
//!   ```
//! - `-C force-frame-pointers=no` (the truncated case): the walk gets the
//!   leak_* frame (through std's frame) and then loses the chain, because
//!   this file's code uses rbp as an ordinary register:
//!   ```text
//!   connect+16 (libc)
//!   leaker::leak_outgoing_connection+72
//!   ```
//!   No entry point is reached: the stack is truncated.
//!
//! The leak_* functions are `#[inline(never)]` and return the socket so that
//! they stay on the stack during the system call and are not merged into
//! `main`.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::exit;

fn usage() -> ! {
    eprintln!("usage: leaker-rs connect|accept IP PORT [--name NAME]");
    exit(2);
}

fn fail(what: &str, err: std::io::Error) -> ! {
    eprintln!("leaker-rs: {what}: {err}");
    exit(1);
}

/// The socket this function creates is the one that leaks.
#[inline(never)]
pub fn leak_outgoing_connection(addr: SocketAddr) -> TcpStream {
    match TcpStream::connect(addr) {
        Ok(stream) => std::hint::black_box(stream),
        Err(err) => fail("connect", err),
    }
}

/// The socket this function accepts is the one that leaks.
#[inline(never)]
pub fn leak_accepted_connection(listener: &TcpListener) -> TcpStream {
    match listener.accept() {
        Ok((stream, _peer)) => std::hint::black_box(stream),
        Err(err) => fail("accept", err),
    }
}

/// Read (and discard) until the peer has closed its side.
#[inline(never)]
fn wait_for_peer_close(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => fail("read", err),
        }
    }
}

/// Sleep until stdin reaches end of file (or fails).
fn sleep_until_stdin_eof() {
    let mut buf = [0u8; 256];
    let mut stdin = std::io::stdin().lock();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(err) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        fail("write stdout", err);
    }
}

fn main() {
    use std::os::unix::ffi::OsStrExt;

    let mut pos: Vec<String> = Vec::new();
    let mut name: Option<std::ffi::OsString> = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--name" {
            name = Some(args.next().unwrap_or_else(|| usage()));
        } else if arg == "--fork" {
            eprintln!("leaker-rs: --fork is not supported (use leaker.c)");
            usage();
        } else {
            pos.push(arg.into_string().unwrap_or_else(|_| usage()));
        }
    }
    if pos.len() != 3 {
        usage();
    }
    let accept_mode = match pos[0].as_str() {
        "connect" => false,
        "accept" => true,
        _ => usage(),
    };
    let ip: IpAddr = pos[1].parse().unwrap_or_else(|_| {
        eprintln!("leaker-rs: bad IP address: {}", pos[1]);
        exit(2)
    });
    let port: u16 = pos[2].parse().unwrap_or_else(|_| {
        eprintln!("leaker-rs: bad port: {}", pos[2]);
        exit(2)
    });
    let addr = SocketAddr::new(ip, port);

    if let Some(name) = name {
        if let Err(err) = std::fs::write("/proc/self/comm", name.as_bytes()) {
            fail("write /proc/self/comm", err);
        }
    }

    let pid = std::process::id();
    let mut stream = if accept_mode {
        let listener = TcpListener::bind(addr).unwrap_or_else(|err| fail("bind", err));
        let port = listener
            .local_addr()
            .unwrap_or_else(|err| fail("getsockname", err))
            .port();
        say(&format!("listening pid={pid} port={port}"));
        let stream = leak_accepted_connection(&listener);
        drop(listener);
        stream
    } else {
        leak_outgoing_connection(addr)
    };

    wait_for_peer_close(&mut stream);
    say(&format!("ready pid={pid} fd={}", stream.as_raw_fd()));

    sleep_until_stdin_eof();
    // Never closed by us: exit() lets the kernel do it.
    std::mem::forget(stream);
}
