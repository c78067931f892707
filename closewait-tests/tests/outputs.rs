//! Root-only tests of the outputs beyond the stream, on the host only (not
//! in the guest kernel: they test the tool's outputs, not the kernel): the
//! live view in a real terminal (tmux), Prometheus metrics scraped by a real
//! Prometheus, pods from real cgroups.

mod support;

use std::{
    ffi::OsStr,
    net::SocketAddr,
    os::unix::ffi::OsStrExt,
    time::{Duration, Instant},
};

use support::{localhost4, port_of, NetNs, Tracer};

const S: Duration = Duration::from_secs(1);

// ---- the live view ----

/// `closewait-trace top` in a real terminal (tmux): the leaking process's
/// group appears with its count and owner, Enter shows its sockets and
/// stack, `q` quits with status 0 and leaves the alternate screen.
#[test]
fn top_shows_the_stuck_group_live_and_quits_on_q() {
    support::require_root();
    let ns = NetNs::new("top-live");
    let mut server =
        support::Leaker::spawn(&ns, None, "patterns", &["closing-server", "127.0.0.1", "0"]);
    let port = port_of(&server.expect("listening")).to_string();
    let tmux = support::tmux::Tmux::start("top", 160, 40);
    tmux.type_line(&format!(
        "{} top --threshold 300ms --port {port}; echo EXIT=$?",
        support::bin().display()
    ));
    // (Not the command line's "closewait-trace top": the header's counts.)
    tmux.wait_for("the view", 20 * S, |s| s.contains("events lost"));
    assert!(tmux.alternate_on(), "the view is on the alternate screen");
    let mut flood = support::Leaker::flood(&ns, &port, 7, "leaky-pool");
    let pid = flood.expect("ready")["pid"].clone();
    let owner = format!("{pid} (leaky-pool)");
    let screen = tmux.wait_for("the group row", 10 * S, |s| {
        s.lines().any(|l| l.starts_with("7 ") && l.contains(&owner))
    });
    let row = screen.lines().find(|l| l.contains(&owner)).unwrap();
    assert!(row.contains(&format!("127.0.0.1:{port}")), "{screen}");
    assert!(screen.contains("7 stuck"), "header: {screen}");
    tmux.keys("Enter");
    let detail = tmux.wait_for("the detail", 5 * S, |s| s.contains("Sockets (7):"));
    assert!(detail.contains("7 stuck sockets, pid "), "{detail}");
    assert!(detail.contains("Hint: "), "{detail}");
    tmux.keys("Escape");
    tmux.wait_for("the table again", 5 * S, |s| s.contains("CREATED AT"));
    tmux.keys("q");
    // A line of its own: the command line typed also says "EXIT=".
    let after = tmux.wait_for("the exit status", 10 * S, |s| {
        s.lines().any(|l| l.starts_with("EXIT="))
    });
    assert!(after.lines().any(|l| l == "EXIT=0"), "{after}");
    assert!(!tmux.alternate_on(), "the alternate screen was left");
    assert!(
        !after.contains("CREATED AT"),
        "nothing of the view left on the normal screen:\n{after}"
    );
}

/// Ctrl-C (in raw mode a key the view reads; it would be SIGINT if raw
/// mode were off, which ends the run too, so this does not tell the two
/// apart) and SIGTERM end the view as `q` does, the terminal restored
/// each time.
#[test]
fn top_quits_on_ctrl_c_and_sigterm_and_restores_the_terminal() {
    support::require_root();
    let tmux = support::tmux::Tmux::start("top-int", 120, 30);
    for (round, how) in ["ctrl-c", "sigterm"].iter().enumerate() {
        tmux.type_line(&format!(
            "clear; {} top --port 9; echo EXIT{round}=$?",
            support::bin().display()
        ));
        tmux.wait_for("the view", 20 * S, |s| s.contains("No socket stuck"));
        assert!(tmux.alternate_on(), "{how}");
        if *how == "ctrl-c" {
            tmux.keys("C-c");
        } else {
            let killed = std::process::Command::new("pkill")
                .args(["-TERM", "-P", &tmux.shell_pid().to_string()])
                .status()
                .unwrap();
            assert!(killed.success(), "the view's process");
        }
        let done = format!("EXIT{round}=");
        let after = tmux.wait_for("the exit status", 10 * S, |s| {
            s.lines().any(|l| l.starts_with(&done))
        });
        let ok = format!("EXIT{round}=0");
        assert!(after.lines().any(|l| l == ok), "{how}: {after}");
        assert!(!tmux.alternate_on(), "{how}");
        assert!(!after.contains("No socket stuck"), "{how}: {after}");
    }
}

/// Not a terminal: `top` refuses in one line; `top --once` prints the
/// table once.
#[test]
fn top_once_prints_the_table_and_top_without_a_terminal_refuses() {
    let out = support::run_to_end(&["top", "--port", "9"], false);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("needs a terminal") && err.contains("--once"),
        "{err}"
    );

    let ns = NetNs::new("top-once");
    let listener = ns.listen(localhost4());
    let port = listener.local_addr().unwrap().port().to_string();
    let mut leaker = support::Leaker::spawn(
        &ns,
        None,
        "c",
        &["connect", "127.0.0.1", &port, "--name", "once-leaker"],
    );
    drop(listener.accept().unwrap());
    let pid = leaker.expect("ready")["pid"].clone();
    let out = top_once(&port);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.starts_with("closewait-trace top"), "{text}");
    let row = text
        .lines()
        .find(|l| l.contains(&format!("{pid} (once-leaker)")))
        .unwrap_or_else(|| panic!("no row for the leaker:\n{text}"));
    assert!(row.starts_with("1 "), "{row}");
    assert!(
        !text.contains('\u{1b}'),
        "plain text, no escape sequences: {text:?}"
    );
}

/// `top --once` on `port`: sockets found at start are stuck at once
/// (threshold 0) and shown after one interval.
fn top_once(port: &str) -> std::process::Output {
    let args = [
        "top",
        "--once",
        "-d",
        "1",
        "--threshold",
        "0s",
        "--port",
        port,
    ];
    support::run_to_end(&args, false)
}

// ---- metrics and pods ----

/// The tracer on `port` with `--metrics` on a free loopback port.
fn tracer_with_metrics(port: &str) -> (Tracer, SocketAddr) {
    let mport = support::http::free_port();
    let tracer = Tracer::start(&[
        "--threshold",
        "300ms",
        "--port",
        port,
        "--metrics",
        &format!(":{mport}"),
    ]);
    (tracer, SocketAddr::from(([127, 0, 0, 1], mport)))
}

/// A real Prometheus scrapes `--metrics`: its query API reports as many
/// stuck sockets as the test leaked, and `promtool check metrics` accepts
/// a scrape.
#[test]
fn prometheus_scrapes_as_many_stuck_sockets_as_were_leaked() {
    use support::http;
    // A power of two: the group event announces it.
    const LEAKED: usize = 4;
    let ns = NetNs::new("metrics");
    let mut server =
        support::Leaker::spawn(&ns, None, "patterns", &["closing-server", "127.0.0.1", "0"]);
    let port = port_of(&server.expect("listening")).to_string();
    let (mut tracer, metrics) = tracer_with_metrics(&port);
    let dir = support::TempDir::new("prom");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: closewait\n    static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let pport = http::free_port();
    let prometheus: SocketAddr = format!("127.0.0.1:{pport}").parse().unwrap();
    let _prom = support::Daemon::spawn(std::process::Command::new("prometheus").args([
        &format!("--config.file={}", config.display()),
        &format!("--storage.tsdb.path={}", dir.path().join("data").display()),
        &format!("--web.listen-address={prometheus}"),
    ]));
    let mut flood = support::Leaker::flood(&ns, &port, LEAKED, "scraped-svc");
    flood.expect("ready");
    tracer.expect("the stuck sockets", 10 * S, |v| {
        v["event"] == "group" && v["count"] == LEAKED
    });
    let query = |q: &str| -> Option<String> {
        let path = format!("/api/v1/query?query={}", http::encode(q));
        let (status, _, body) = http::get(prometheus, &path, &[]).ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status == 200).then(|| {
            v["data"]["result"][0]["value"][1]
                .as_str()
                .map(String::from)
        })?
    };
    let q = "sum(closewait_stuck_sockets{comm=\"scraped-svc\"})";
    let deadline = Instant::now() + 60 * S;
    let value = loop {
        if let Some(v) = query(q).filter(|v| v == &LEAKED.to_string()) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never had {q} = {LEAKED}: {:?}",
            query(q)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(value, LEAKED.to_string());
    assert_eq!(query("closewait_build_info").as_deref(), Some("1"));
    assert_eq!(
        query("closewait_lost_events_total{reason=\"ringbuf_full\"}").as_deref(),
        Some("0")
    );
    // Both formats, and promtool's lint.
    let (status, head, text) = http::get(metrics, "/metrics", &[]).unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(
        text.contains("closewait_dwell_seconds_bucket{le=\"0.001\"}"),
        "{text}"
    );
    assert!(!text.contains("pid="), "never a pid label: {text}");
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    use std::io::Write as _;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(out.status.success(), "promtool: {out:?}\n{text}");
    let (status, head, open) = http::get(
        metrics,
        "/metrics",
        &["Accept: application/openmetrics-text; version=1.0.0"],
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(open.ends_with("# EOF\n"), "{open}");
    let (status, _, _) = http::get(metrics, "/", &[]).unwrap();
    assert_eq!(status, 404);
    tracer.interrupt();
}

/// Clients that send garbage, or nothing, or hold more connections than
/// the server serves at once, do not hold up tracing; a scrape gets
/// through once the slow ones time out.
#[test]
fn malformed_and_slow_metrics_clients_do_not_affect_tracing() {
    use std::io::{Read as _, Write as _};
    use support::http;
    let ns = NetNs::new("metrics-slow");
    let listener = ns.listen(localhost4());
    let port = listener.local_addr().unwrap().port().to_string();
    let (mut tracer, metrics) = tracer_with_metrics(&port);
    // More silent connections than the server's slots.
    let silent: Vec<std::net::TcpStream> = (0..40)
        .map(|_| std::net::TcpStream::connect(metrics).unwrap())
        .collect();
    let mut garbage = std::net::TcpStream::connect(metrics).unwrap();
    garbage.write_all(b"\x00\x01GARBAGE \xff\r\n\r\n").unwrap();
    let leaker = support::Leaker::spawn(&ns, None, "c", &["connect", "127.0.0.1", &port]);
    drop(listener.accept().unwrap());
    let started = Instant::now();
    tracer.expect("stuck while clients hang", 5 * S, |v| v["event"] == "stuck");
    assert!(started.elapsed() < 3 * S, "tracing was held up");
    // The silent ones time out (5 s); then a scrape is served.
    let (status, _, body) = http::get(metrics, "/metrics", &[]).expect("a scrape");
    assert_eq!(status, 200);
    assert!(
        body.contains("closewait_stuck_sockets{comm=\"leaker-c\""),
        "{body}"
    );
    drop(leaker);
    let mut reply = Vec::new();
    garbage.set_read_timeout(Some(10 * S)).unwrap();
    let _ = garbage.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
        "{reply}"
    );
    drop(silent);
    tracer.interrupt();
}

/// An owner in a kubelet pod cgroup (systemd and cgroupfs drivers) has the
/// pod's name and namespace from the log directory, its UID and the
/// container id; text shows `pod=namespace/name`.
#[test]
fn owner_in_a_kubelet_pod_has_pod_name_namespace_and_uid() {
    let n = std::process::id();
    let uid = format!("0f1e2d3c-4b5a-6978-8796-{n:012x}");
    let id = format!("{:064x}", u64::from(n) * 7919);
    let us = uid.replace('-', "_");
    let layouts = [
        format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{us}.slice/cri-containerd-{id}.scope"),
        format!("/kubepods/besteffort/pod{uid}/{id}"),
    ];
    let logs = support::TempDir::new("pods");
    std::fs::create_dir_all(logs.path().join(format!("shop_checkout-7f9c_{uid}"))).unwrap();
    let logs_arg = logs.path().display().to_string();
    for (i, layout) in layouts.iter().enumerate() {
        let ns = NetNs::new("pod");
        let cg = support::Cgroup::at(layout);
        let listener = ns.listen(localhost4());
        let port = listener.local_addr().unwrap().port().to_string();
        let args = [
            "--threshold",
            "300ms",
            "--port",
            &port,
            "--pod-logs",
            &logs_arg,
        ];
        let text = i == 1;
        let mut tracer = if text {
            Tracer::start_text(&args)
        } else {
            Tracer::start(&args)
        };
        let mut leaker =
            support::Leaker::spawn(&ns, Some(&cg), "c", &["connect", "127.0.0.1", &port]);
        drop(listener.accept().unwrap());
        leaker.expect("ready");
        if text {
            let line = tracer.expect_line("stuck", 5 * S, |l| l.contains(" STUCK "));
            assert!(line.contains("pod=shop/checkout-7f9c"), "{line}");
        } else {
            let stuck = tracer.expect("stuck", 5 * S, |v| v["event"] == "stuck");
            assert_eq!(stuck["pod"], "checkout-7f9c", "{layout}: {stuck}");
            assert_eq!(stuck["pod_namespace"], "shop", "{stuck}");
            assert_eq!(stuck["pod_uid"], uid.as_str(), "{stuck}");
            assert_eq!(stuck["container_id"], id.as_str(), "{stuck}");
            assert_eq!(stuck["owners"][0]["pod"], "checkout-7f9c", "{stuck}");
            assert_eq!(stuck["cgroup"], layout.as_str(), "{stuck}");
        }
        if text {
            tracer.interrupt_text();
        } else {
            tracer.interrupt();
        }
        drop(leaker);
    }
}

// ---- text from other processes ----

/// A process whose name and command line hold invalid UTF-8, a terminal
/// escape and a bidirectional override: the stream, the live view and the
/// metrics' labels show them escaped, and JSON stays valid.
#[test]
fn hostile_process_names_are_escaped_in_every_output() {
    let ns = NetNs::new("hostile");
    let listener = ns.listen(localhost4());
    let port = listener.local_addr().unwrap().port();
    let (mut json, metrics) = tracer_with_metrics(&port.to_string());
    let mut text = Tracer::start_text(&["--threshold", "300ms", "--port", &port.to_string()]);
    // 12 bytes: all of it fits in the kernel's comm (15 at most).
    let name = OsStr::from_bytes(b"\xff\x1b[2J\xe2\x80\xaeevil");
    let port_arg = port.to_string();
    let args: [&OsStr; 5] = [
        "connect".as_ref(),
        "127.0.0.1".as_ref(),
        port_arg.as_ref(),
        "--name".as_ref(),
        name,
    ];
    let mut leaker = support::Leaker::spawn_os(&ns, None, "c", &args);
    drop(listener.accept().unwrap());
    let pid = leaker.expect("ready")["pid"].clone();

    // JSON: the line parsed, so it is valid; the name is the kernel's,
    // with the invalid byte replaced.
    let stuck = json.expect("stuck", 5 * S, |v| {
        v["event"] == "stuck" && v["rport"] == port
    });
    assert_eq!(stuck["comm"], "\u{fffd}\u{1b}[2J\u{202e}evil", "{stuck}");
    assert!(
        stuck["cmdline"].as_str().unwrap().ends_with("\u{202e}evil"),
        "{stuck}"
    );

    let line = text.expect_line("STUCK line", 5 * S, |l| {
        l.contains(" STUCK ") && l.contains(&format!(":{port} "))
    });
    // The metrics follow the model, refreshed every second.
    let deadline = Instant::now() + 5 * S;
    let label = loop {
        let (_, _, scrape) = support::http::get(metrics, "/metrics", &[]).expect("scrape");
        let series = scrape
            .lines()
            .find(|l| l.starts_with("closewait_stuck_sockets{") && l.contains("evil"));
        match series {
            Some(series) => break series.to_owned(),
            None if Instant::now() < deadline => std::thread::sleep(S / 10),
            None => panic!("no series for the process:\n{scrape}"),
        }
    };
    let out = top_once(&port.to_string());
    let top = String::from_utf8(out.stdout).expect("top --once prints UTF-8");
    let row = top
        .lines()
        .find(|l| l.contains(&format!(" {pid} (")))
        .unwrap_or_else(|| panic!("no row for the process:\n{top}"))
        .to_owned();
    for (what, shown) in [("stream", &line), ("metrics", &label), ("top", &row)] {
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{202e}'),
            "{what} shows the raw text: {shown:?}"
        );
        // (the live view's owner column is cut short after the override)
        assert!(
            shown.contains(r"\x1b[2J") && shown.contains(r"\u{202e}"),
            "{what}: {shown:?}"
        );
    }
    let rest = text.interrupt_text();
    assert!(
        !rest.contains('\u{1b}') && !rest.contains('\u{202e}'),
        "{rest:?}"
    );
    drop(json);
}
