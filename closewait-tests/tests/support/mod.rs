//! Helpers for the kernel tests: network namespaces, socket pairs in them,
//! and the real binary driven through its JSON (or text) stream.

#![allow(dead_code)] // each test binary uses a different subset

pub mod http;
pub mod tmux;

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
        Arc, Mutex, Once, OnceLock,
    },
    time::{Duration, Instant},
};

use closewait_host::{
    netns::{self, Named},
    privileges, tracefs,
};
use serde_json::Value;

/// The agent under test: `$CLOSEWAIT_TRACE_BIN` when set (`cargo xtask test`
/// sets it), else `target/<profile>/closewait-trace` next to this test
/// binary (`target/<profile>/deps/kernel-*`). This crate does not build the
/// agent: a missing binary is a panic that says how to get one.
pub fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let path = match std::env::var_os("CLOSEWAIT_TRACE_BIN") {
            Some(path) => PathBuf::from(path),
            None => std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.parent()?.join("closewait-trace")))
                .unwrap_or_else(|| PathBuf::from("closewait-trace")),
        };
        assert!(
            path.is_file(),
            "no closewait-trace binary at {}: run `cargo xtask test`, which builds it \
             and runs these tests with CLOSEWAIT_TRACE_BIN set to it",
            path.display()
        );
        path
    })
}

/// A deadline for waiting on the tracer, stretched by
/// `CLOSEWAIT_TEST_SLOWDOWN` (a factor, default 1) where everything runs
/// slower: a guest kernel under emulation. Only waits are stretched, never
/// what a test asserts about dwell times.
pub fn slowed(timeout: Duration) -> Duration {
    static FACTOR: OnceLock<f64> = OnceLock::new();
    let factor = *FACTOR.get_or_init(|| {
        std::env::var("CLOSEWAIT_TEST_SLOWDOWN")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|f| *f >= 1.0)
            .unwrap_or(1.0)
    });
    timeout.mul_f64(factor)
}

pub fn require_root() {
    assert!(
        privileges::is_root(),
        "the kernel tests need root: run `sudo -E cargo xtask test`"
    );
}

/// Names of the namespaces these tests make: `cwt-<pid>-<seq>-<tag>`, so
/// that [`netns::remove_stale`] can delete those of a killed run.
const NETNS_PREFIX: &str = "cwt-";

/// A network namespace made for one test, loopback up, deleted on drop.
pub struct NetNs(Named);

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        require_root();
        static STALE: Once = Once::new();
        STALE.call_once(|| netns::remove_stale(NETNS_PREFIX));
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "{NETNS_PREFIX}{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        NetNs(Named::create(&name).unwrap_or_else(|e| panic!("network namespace {name}: {e}")))
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    pub fn inode(&self) -> u64 {
        self.0.inode()
    }

    /// Run `f` on a thread inside the namespace. Sockets it creates belong to
    /// the namespace and can be used from any thread afterwards.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.0
            .run(f)
            .unwrap_or_else(|e| panic!("entering network namespace {}: {e}", self.name()))
    }

    /// A listener on `addr`, any port.
    pub fn listen(&self, addr: IpAddr) -> TcpListener {
        self.enter(|| TcpListener::bind(SocketAddr::new(addr, 0)).expect("bind"))
    }

    pub fn connect(&self, addr: SocketAddr) -> TcpStream {
        self.enter(|| TcpStream::connect(addr).expect("connect"))
    }

    /// (client, accepted server side).
    pub fn connected_pair(&self, listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = self.connect(listener.local_addr().unwrap());
        let (server, _) = listener.accept().expect("accept");
        (client, server)
    }

    /// The client closes; the returned server side, never closed, sits in
    /// CLOSE_WAIT until dropped. Also returns the client's port.
    pub fn stuck_pair(&self, listener: &TcpListener) -> (TcpStream, u16) {
        let (client, server) = self.connected_pair(listener);
        let client_port = client.local_addr().unwrap().port();
        drop(client);
        (server, client_port)
    }
}

/// A child's stdout, line by line, on a channel (closed at EOF).
fn line_reader(stdout: std::process::ChildStdout) -> Receiver<String> {
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// The real binary, running.
pub struct Tracer {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    json: bool,
    /// Received but not yet matched by an `expect`.
    pending: VecDeque<String>,
    /// Everything received.
    seen: Vec<String>,
}

impl Tracer {
    /// Start with `--json` and wait for the `start` event.
    pub fn start(args: &[&str]) -> Tracer {
        let mut t = Tracer::spawn(args, true);
        t.expect("start", Duration::from_secs(20), |v| v["event"] == "start");
        let first: Value = serde_json::from_str(&t.seen[0]).expect("JSON");
        assert_eq!(first["event"], "start", "start is the first line");
        t
    }

    /// Start with text output and wait for the banner.
    pub fn start_text(args: &[&str]) -> Tracer {
        let mut t = Tracer::spawn(args, false);
        t.expect_line("banner", Duration::from_secs(20), |l| {
            l.contains("watching TCP CLOSE_WAIT")
        });
        t
    }

    /// Start with `--json` under a wrapper (`setpriv ...`), which execs the
    /// binary with `args`; wait for the `start` event. `None` when it exits
    /// (or says nothing) before that.
    pub fn try_start_under(wrapper: &[&str], args: &[&str]) -> Option<Tracer> {
        let bin = bin().display().to_string();
        Tracer::try_start(&[wrapper, &[bin.as_str()]].concat(), args)
    }

    /// Start `cmd` (a wrapper that runs some closewait-trace itself) with
    /// `args` and `--json`; wait for the `start` event.
    pub fn start_under_cmd(cmd: &[&str], args: &[&str]) -> Tracer {
        let mut t = Tracer::spawn_argv(cmd, args);
        t.expect("start", Duration::from_secs(20), |v| v["event"] == "start");
        t
    }

    fn try_start(argv: &[&str], args: &[&str]) -> Option<Tracer> {
        let mut t = Tracer::spawn_argv(argv, args);
        t.try_expect(Duration::from_secs(20), |v| v["event"] == "start")?;
        Some(t)
    }

    fn spawn_argv(argv: &[&str], args: &[&str]) -> Tracer {
        require_root();
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..])
            .args(args)
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Tracer::spawn_cmd(cmd, true)
    }

    fn spawn(args: &[&str], json: bool) -> Tracer {
        let mut cmd = agent(args);
        if json {
            cmd.arg("--json");
        }
        Tracer::spawn_cmd(cmd, json)
    }

    fn spawn_cmd(mut cmd: Command, json: bool) -> Tracer {
        let mut child = cmd.spawn().expect("spawn closewait-trace");
        let lines = line_reader(child.stdout.take().expect("stdout"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Tracer {
            child,
            lines,
            stderr,
            json,
            pending: VecDeque::new(),
            seen: Vec::new(),
        }
    }

    /// Every event received so far.
    /// What it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn seen(&self) -> Vec<Value> {
        self.seen
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The first not-yet-matched JSON event satisfying `pred`, waiting up to
    /// `timeout` for it. Panics with what came instead.
    pub fn expect(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        assert!(self.json, "expect() needs --json; use expect_line()");
        let line = self.wait_for(what, timeout, |l| {
            serde_json::from_str::<Value>(l)
                .map(|v| pred(&v))
                .unwrap_or(false)
        });
        serde_json::from_str(&line).expect("valid JSON")
    }

    /// The first not-yet-matched text line satisfying `pred`.
    pub fn expect_line(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        self.wait_for(what, timeout, pred)
    }

    fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let timeout = slowed(timeout);
        self.try_wait_for(timeout, pred).unwrap_or_else(|why| {
            panic!(
                "expected {what} {why}; got:\n{}\nstderr:\n{}",
                self.seen.join("\n"),
                self.stderr.lock().unwrap()
            )
        })
    }

    /// The first line `pred` accepts within `timeout`, or why not.
    fn try_wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.pending.iter().position(|l| pred(l)) {
                return Ok(self.pending.remove(i).expect("index is valid"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if self.json {
                        assert!(
                            serde_json::from_str::<Value>(&line).is_ok(),
                            "stdout line is not JSON: {line}"
                        );
                    }
                    self.seen.push(line.clone());
                    self.pending.push_back(line);
                }
                Err(RecvTimeoutError::Timeout) => return Err(format!("within {timeout:?}")),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("but the tracer exited ({:?})", self.child.wait()))
                }
            }
        }
    }

    /// Like `expect`, `None` instead of a panic (timeout or exit).
    pub fn try_expect(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let line = self
            .try_wait_for(slowed(timeout), |l| {
                serde_json::from_str::<Value>(l)
                    .map(|v| pred(&v))
                    .unwrap_or(false)
            })
            .ok()?;
        serde_json::from_str(&line).ok()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our own child.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Stop the agent (SIGSTOP): the kernel keeps producing, nobody drains.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGINT, then the summary; asserts a clean exit. [`Tracer::seen`]
    /// then holds everything it wrote.
    pub fn interrupt(&mut self) -> Value {
        self.signal(libc::SIGINT);
        let (summary, status) = self.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "exit status after SIGINT: {status}");
        summary
    }

    /// SIGINT, then all text output; asserts a clean exit.
    pub fn interrupt_text(mut self) -> String {
        self.signal(libc::SIGINT);
        let status = self.drain_until_exit(Duration::from_secs(10));
        assert!(status.success(), "exit status after SIGINT: {status}");
        self.seen.join("\n")
    }

    /// Wait for the process to end by itself; returns its `summary` event.
    pub fn wait_exit(&mut self, timeout: Duration) -> (Value, ExitStatus) {
        let status = self.drain_until_exit(timeout);
        let summary = self.expect("summary", Duration::from_millis(1), |v| {
            v["event"] == "summary"
        });
        let last: Value = serde_json::from_str(self.seen.last().expect("a line")).expect("JSON");
        assert_eq!(last["event"], "summary", "the summary is the last line");
        (summary, status)
    }

    fn drain_until_exit(&mut self, timeout: Duration) -> ExitStatus {
        let timeout = slowed(timeout);
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    self.pending.push_back(line);
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "the tracer did not exit within {timeout:?}; got:\n{}",
                        self.seen.join("\n")
                    )
                }
            }
        }
        self.child.wait().expect("wait")
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary with `args`, stdin on /dev/null, stdout and stderr on pipes.
pub fn agent(args: &[&str]) -> Command {
    require_root();
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Run the binary to completion (optionally as an unprivileged user).
pub fn run_to_end(args: &[&str], unprivileged: bool) -> Output {
    let mut cmd = if unprivileged {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ]);
        c.arg(bin());
        c
    } else {
        Command::new(bin())
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run closewait-trace")
}

/// Lift RLIMIT_NOFILE to its hard limit for tests with many sockets.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

/// Unmount tracefs from [`tracefs::TRACEFS`] if it is mounted there and not
/// busy; true when no tracefs is mounted now.
pub fn unmount_tracefs() -> bool {
    if tracefs::mounted().is_some() {
        let _ = Command::new("umount").arg(tracefs::TRACEFS).status();
    }
    tracefs::mounted().is_none()
}

/// Build a leaker test program once per test run; returns its path.
/// `which`: "c" (cc, frame pointers), "direct" (cc, frame pointers) and
/// "direct-nofp" (cc -O2, none): tests/leakers/direct.c, "rs" (rustc, frame
/// pointers) or "rs-nofp" (rustc, no frame pointers).
pub fn leaker(which: &str) -> std::path::PathBuf {
    use std::sync::OnceLock;
    static BUILT: Mutex<Vec<(String, std::path::PathBuf)>> = Mutex::new(Vec::new());
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    let mut built = BUILT.lock().unwrap();
    if let Some((_, path)) = built.iter().find(|(w, _)| w == which) {
        return path.clone();
    }
    let dir = DIR.get_or_init(|| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/leakers");
    let out = dir.join(format!("leaker-{which}"));
    let source = src.join(match which {
        "c" => "leaker.c",
        "direct" | "direct-nofp" => "direct.c",
        _ => "leaker.rs",
    });
    // Built by an earlier run from the same source (the guest kernel's run
    // reuses the host run's builds: compiling under emulation is slow).
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&out).is_some() && modified(&out) >= modified(&source) {
        built.push((which.to_string(), out.clone()));
        return out;
    }
    let status = match which {
        "c" => Command::new("cc")
            .args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&out)
            .arg(src.join("leaker.c"))
            .status(),
        // Leaking functions that call connect()/accept() directly.
        "direct" => Command::new("cc")
            .args(["-O0", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
            .arg(&out)
            .arg(&source)
            .status(),
        "direct-nofp" => Command::new("cc")
            .args(["-O2", "-g", "-fomit-frame-pointer", "-pthread", "-o"])
            .arg(&out)
            .arg(&source)
            .status(),
        "rs" | "rs-nofp" => Command::new("rustc")
            .args(["--edition", "2021", "-O", "-g", "-C"])
            .arg(if which == "rs" {
                "force-frame-pointers=yes"
            } else {
                "force-frame-pointers=no"
            })
            .arg("-o")
            .arg(&out)
            .arg(src.join("leaker.rs"))
            .status(),
        other => panic!("no leaker {other}"),
    };
    assert!(
        status.expect("compiler runs").success(),
        "building leaker-{which}"
    );
    built.push((which.to_string(), out.clone()));
    out
}

/// A cgroup (v2) made for one test, removed on drop.
pub struct Cgroup {
    dir: std::path::PathBuf,
    /// As /proc/PID/cgroup shows it, e.g. `/cwt-owner-123`.
    pub path: String,
    /// Directories this created, outermost first (removed innermost first).
    made: Vec<std::path::PathBuf>,
}
impl Cgroup {
    pub fn new(tag: &str) -> Cgroup {
        Cgroup::at(&format!("/cwt-{tag}-{}", std::process::id()))
    }

    /// A cgroup at `path` below the cgroup2 root (e.g. a kubelet layout),
    /// creating the levels that are missing.
    pub fn at(path: &str) -> Cgroup {
        let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
        let root = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
            })
            .expect("a cgroup2 mount");
        let mut made = Vec::new();
        let mut dir = std::path::PathBuf::from(&root);
        for part in path.split('/').filter(|p| !p.is_empty()) {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).expect("mkdir cgroup");
                made.push(dir.clone());
            }
        }
        Cgroup {
            dir,
            path: path.to_string(),
            made,
        }
    }

    pub fn procs_file(&self) -> std::path::PathBuf {
        self.dir.join("cgroup.procs")
    }
}
impl Drop for Cgroup {
    fn drop(&mut self) {
        // Processes must be gone first; retry briefly while they exit.
        for dir in self.made.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The python3 on PATH, resolved once (its real path: no shim in between).
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "python3: {out:?}");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// The command line of leaker `which`: one of the programs [`leaker`]
/// builds, or `py`: python3 running tests/leakers/peer.py.
fn leaker_command(which: &str) -> Vec<PathBuf> {
    match which {
        "py" => vec![
            python().to_path_buf(),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/leakers/peer.py"),
        ],
        "patterns" => vec![
            python().to_path_buf(),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/leakers/patterns.py"),
        ],
        _ => vec![leaker(which)],
    }
}

/// A leaker process: in a network namespace, optionally in a cgroup.
pub struct Leaker {
    child: Child,
    lines: Receiver<String>,
    /// Keeps the leaker alive: it exits when its stdin closes.
    stdin: std::process::ChildStdin,
}

impl Leaker {
    /// Start leaker `which` (see [`leaker_command`]) with `args`.
    /// patterns.py flood: `count` connections to 127.0.0.1:`port` (a
    /// closing-server) from a process named `name`, all kept in CLOSE_WAIT.
    pub fn flood(ns: &NetNs, port: &str, count: usize, name: &str) -> Leaker {
        let count = count.to_string();
        Leaker::spawn(
            ns,
            None,
            "patterns",
            &["flood", "127.0.0.1", port, &count, "--name", name],
        )
    }

    pub fn spawn(ns: &NetNs, cgroup: Option<&Cgroup>, which: &str, args: &[&str]) -> Leaker {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        Leaker::spawn_os(ns, cgroup, which, &args)
    }

    /// [`Leaker::spawn`] with arguments that need not be UTF-8.
    pub fn spawn_os(
        ns: &NetNs,
        cgroup: Option<&Cgroup>,
        which: &str,
        args: &[&std::ffi::OsStr],
    ) -> Leaker {
        // Join the cgroup from a shell, then exec into the namespace (`ip
        // netns exec` remounts /sys, hiding the cgroup fs, so join first).
        // Every exec keeps the pid: the leaker lives its whole life there.
        let mut script = String::new();
        if let Some(cg) = cgroup {
            script.push_str(&format!("echo $$ > '{}' && ", cg.procs_file().display()));
        }
        script.push_str(&format!("exec ip netns exec '{}' \"$@\"", ns.name()));
        let mut child = Command::new("sh")
            .args(["-c", &script, "sh"])
            .args(leaker_command(which))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn leaker");
        let stdin = child.stdin.take().expect("stdin");
        let lines = line_reader(child.stdout.take().expect("stdout"));
        Leaker {
            child,
            lines,
            stdin,
        }
    }

    /// SIGKILL now (its pid is the leaker's: every exec kept it); reaped
    /// when dropped.
    pub fn kill(&self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
    }

    /// Write `line` to its stdin.
    pub fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("leaker: writing `{line}` to its stdin: {e}"));
    }

    /// Wait for the line starting with `word` and return its `key=value`s.
    pub fn expect(&mut self, word: &str) -> std::collections::HashMap<String, String> {
        self.expect_within(word, Duration::from_secs(10))
    }

    /// [`Leaker::expect`], waiting up to `timeout` (stretched by [`slowed`]).
    pub fn expect_within(
        &mut self,
        word: &str,
        timeout: Duration,
    ) -> std::collections::HashMap<String, String> {
        let timeout = slowed(timeout);
        loop {
            let line = self.lines.recv_timeout(timeout).unwrap_or_else(|e| {
                panic!(
                    "leaker: no `{word}` line ({e}); status {:?}",
                    self.child.try_wait()
                )
            });
            if let Some(rest) = line.strip_prefix(word) {
                return rest
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            }
        }
    }
}

impl Drop for Leaker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory for one test, removed at the end.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cwt-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A helper server (Prometheus) for one test; killed at the end. Its
/// output goes to a file shown if the test fails while reading it.
pub struct Daemon(Child);

impl Daemon {
    pub fn spawn(cmd: &mut Command) -> Daemon {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e} (`cargo xtask setup` installs it)"));
        Daemon(child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn localhost4() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// The `port=` of a leaker's line.
pub fn port_of(line: &std::collections::HashMap<String, String>) -> u16 {
    line["port"].parse().expect("a port")
}

/// The BPF programs process `pid` holds (`prog_id:` in its fdinfo).
pub fn prog_ids_of(pid: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for fd in fds.flatten() {
        let text = std::fs::read_to_string(fd.path()).unwrap_or_default();
        ids.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u32>().ok()),
        );
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Every BPF program the kernel has loaded now (BPF_PROG_GET_NEXT_ID): a
/// program still attached (through a link, pinned or not) is among them.
pub fn kernel_prog_ids() -> Vec<u32> {
    const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
    #[repr(C)]
    struct NextId {
        start_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut ids = Vec::new();
    let mut attr = NextId {
        start_id: 0,
        next_id: 0,
        open_flags: 0,
    };
    loop {
        // SAFETY: bpf(2) with a zeroed attr of the size given.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_GET_NEXT_ID,
                &mut attr as *mut NextId,
                std::mem::size_of::<NextId>(),
            )
        };
        if rc != 0 {
            return ids;
        }
        ids.push(attr.next_id);
        attr.start_id = attr.next_id;
    }
}

/// argv that runs `script` (which ends in `exec "$@"`, and gets the rest
/// of the command line) in a mount namespace of its own: mounts it makes
/// go away with it.
pub fn in_private_mounts(script: &str) -> [&str; 8] {
    [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ]
}
