//! Deployment: the systemd unit's capability set (tested by running the
//! binary as an unprivileged user with exactly that set), the unit and the
//! DaemonSet validated by their own tools, and the static binary. Root;
//! host only.

mod support;

use std::{path::PathBuf, process::Command, time::Duration};

use support::{localhost4, port_of, NetNs, Tracer};

const S: Duration = Duration::from_secs(1);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn unit() -> String {
    std::fs::read_to_string(repo().join("deploy/systemd/closewait-trace.service")).unwrap()
}

/// The unit's AmbientCapabilities, e.g. `["bpf", "perfmon"]`.
fn unit_caps() -> Vec<String> {
    let unit = unit();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities in the unit");
    let caps: Vec<String> = line
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    let bounding = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet in the unit");
    assert_eq!(line, bounding, "ambient and bounding sets are the same");
    caps
}

#[test]
fn the_systemd_unit_verifies() {
    let dir = support::TempDir::new("unit");
    // verify checks that ExecStart exists: point it at the built binary.
    let unit = unit().replace(
        "/usr/local/bin/closewait-trace",
        &support::bin().display().to_string(),
    );
    let path = dir.path().join("closewait-trace.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a run as user nobody with capabilities `caps` (setpriv, as
/// systemd's AmbientCapabilities sets them) could do: attach, find a socket
/// stuck before start in another network namespace and its root-owned
/// owner, trace a new leak with its creation stack, without a warning.
#[derive(Debug, PartialEq)]
struct Could {
    attached: bool,
    found_existing: bool,
    found_owner: bool,
    stack: bool,
    no_warning: bool,
}

/// What the full set can do.
const ALL: Could = Could {
    attached: true,
    found_existing: true,
    found_owner: true,
    stack: true,
    no_warning: true,
};

fn run_with_caps(caps: &[String]) -> Could {
    run_under(&[], caps)
}

/// [`run_with_caps`] under `prefix` (which execs the rest of its argv).
fn run_under(prefix: &[&str], caps: &[String]) -> Could {
    let caps: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    let caps = caps.join(",");
    let inh = format!("--inh-caps=-all,{caps}");
    let amb = format!("--ambient-caps={caps}");
    let bounding = format!("--bounding-set=-all,{caps}");
    let mut wrapper = prefix.to_vec();
    wrapper.extend([
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ]);
    if !caps.is_empty() {
        wrapper.extend([inh.as_str(), amb.as_str(), bounding.as_str()]);
    }
    let ns = NetNs::new("caps");
    // Stuck before start: an accepted socket whose client closed.
    let mut before = support::Leaker::spawn(&ns, None, "c", &["accept", "127.0.0.1", "0"]);
    let port = port_of(&before.expect("listening"));
    drop(ns.connect(std::net::SocketAddr::new(localhost4(), port)));
    let before_pid = before.expect("ready")["pid"].clone();
    let listener = ns.listen(localhost4());
    let lport = listener.local_addr().unwrap().port().to_string();
    let port = port.to_string();
    let Some(mut tracer) = Tracer::try_start_under(
        &wrapper,
        &["--threshold", "300ms", "--port", &port, "--port", &lport],
    ) else {
        return Could {
            attached: false,
            found_existing: false,
            found_owner: false,
            stack: false,
            no_warning: false,
        };
    };
    let start = tracer.seen()[0].clone();
    let found_existing = start["existing"] == 1;
    let found_owner = found_existing
        && tracer
            .try_expect(5 * S, |v| v["event"] == "existing")
            .is_some_and(|e| {
                e["pid"] == before_pid.parse::<u64>().unwrap() && e["comm"] == "leaker-c"
            });
    let mut after = support::Leaker::spawn(&ns, None, "direct", &["connect", "127.0.0.1", &lport]);
    drop(listener.accept().unwrap());
    after.expect("ready");
    let rport: u64 = lport.parse().unwrap();
    let stuck = tracer.expect("stuck", 5 * S, |v| {
        v["event"] == "stuck" && v["rport"] == rport
    });
    let stack = stuck["stack"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f["symbol"] == "open_pool_connection"));
    tracer.interrupt();
    Could {
        attached: start["attach"] == "tp_btf",
        found_existing,
        found_owner,
        stack,
        no_warning: !tracer.stderr().contains("warning"),
    }
}

/// Exactly the unit's capabilities are enough, and each of them is needed.
#[test]
fn the_units_capabilities_are_enough_and_each_is_needed() {
    support::require_root();
    let caps = unit_caps();
    assert_eq!(run_with_caps(&caps), ALL, "with {caps:?}");
    for dropped in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != dropped).cloned().collect();
        let could = run_with_caps(&fewer);
        assert_ne!(could, ALL, "{dropped} was not needed");
    }
}

/// `/proc` mounted with `hidepid=2` (other users' processes hidden): with
/// the unit's capabilities (CAP_SYS_PTRACE sees through it) everything
/// still works, owners included.
#[test]
fn hidepid_2_proc_hides_nothing_from_the_units_capabilities() {
    support::require_root();
    let remount =
        support::in_private_mounts("mount -t proc -o hidepid=2 proc /proc && exec \"$@\"");
    let could = run_under(&remount, &unit_caps());
    assert_eq!(could, ALL);
}

/// The DaemonSet is valid against the Kubernetes schema (strict: no
/// unknown fields) and adds exactly the unit's capabilities.
#[test]
fn the_daemonset_validates_and_has_the_units_capabilities() {
    let path = repo().join("deploy/kubernetes/daemonset.yaml");
    let validate = |path: &std::path::Path| {
        Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
            .arg(path)
            .output()
            .expect("kubernetes-validate (PyPI; `cargo xtask setup` installs it)")
    };
    let out = validate(&path);
    assert!(out.status.success(), "{out:?}");
    // The validator does bite: a misspelt field fails.
    let yaml = std::fs::read_to_string(&path).unwrap();
    let dir = support::TempDir::new("ds");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, yaml.replace("hostPID: true", "hostPid: true")).unwrap();
    assert!(!validate(&bad).status.success(), "a misspelt field passed");
    let added = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("add: "))
        .expect("capabilities add");
    let mut added: Vec<String> = added
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_lowercase())
        .collect();
    let mut caps = unit_caps();
    added.sort();
    caps.sort();
    assert_eq!(added, caps);
    for host_path in [
        "/sys/kernel/btf",
        "/sys/kernel/tracing",
        "/sys/fs/cgroup",
        "/var/log/pods",
    ] {
        assert!(yaml.contains(&format!("path: {host_path}")), "{host_path}");
    }
    assert!(yaml.contains("hostPID: true"));
}

/// `cargo xtask dist`'s binary (`$CLOSEWAIT_DIST_BIN`, set by `cargo xtask
/// test`; else target/dist/closewait-trace).
fn dist_bin() -> PathBuf {
    let path = std::env::var_os("CLOSEWAIT_DIST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/dist/closewait-trace"));
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask dist` (cargo xtask test does)",
        path.display()
    );
    path
}

/// Static: no program interpreter, no shared libraries; its checksum file
/// matches.
#[test]
fn the_dist_binary_is_static_and_checksummed() {
    let bin = dist_bin();
    let readelf = |flag: &str| {
        let out = Command::new("readelf")
            .args(["--wide", flag])
            .arg(&bin)
            .output()
            .expect("readelf (binutils)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let headers = readelf("--program-headers");
    assert!(headers.contains("LOAD"), "{headers}");
    assert!(
        !headers.contains("INTERP"),
        "a program interpreter:\n{headers}"
    );
    let dynamic = readelf("--dynamic");
    assert!(
        !dynamic.contains("(NEEDED)"),
        "shared libraries:\n{dynamic}"
    );
    let dir = bin.parent().unwrap();
    let check = Command::new("sha256sum")
        .current_dir(dir)
        .args(["--check", "--strict", "closewait-trace.sha256"])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
}

/// From an empty root with only /proc and /sys mounted (no libc, no
/// /etc, no /tmp): it attaches, and reports a leak with its owner.
#[test]
fn the_dist_binary_traces_from_an_empty_chroot() {
    support::require_root();
    let root = support::TempDir::new("chroot");
    std::fs::copy(dist_bin(), root.path().join("closewait-trace")).unwrap();
    for dir in ["proc", "sys"] {
        std::fs::create_dir(root.path().join(dir)).unwrap();
    }
    assert_eq!(
        std::fs::read_dir(root.path()).unwrap().count(),
        3,
        "nothing else"
    );
    let ns = NetNs::new("chroot");
    let listener = ns.listen(localhost4());
    let port = listener.local_addr().unwrap().port().to_string();
    let script = format!(
        "mount -t proc proc {r}/proc && mount -t sysfs sysfs {r}/sys && exec chroot {r} /closewait-trace \"$@\"",
        r = root.path().display()
    );
    let wrapper = support::in_private_mounts(&script);
    let mut tracer = Tracer::start_under_cmd(&wrapper, &["--threshold", "300ms", "--port", &port]);
    let mut leaker = support::Leaker::spawn(&ns, None, "c", &["connect", "127.0.0.1", &port]);
    drop(listener.accept().unwrap());
    let pid: u64 = leaker.expect("ready")["pid"].parse().unwrap();
    let stuck = tracer.expect("stuck", 5 * S, |v| v["event"] == "stuck");
    assert_eq!(stuck["pid"], pid, "{stuck}");
    assert_eq!(stuck["comm"], "leaker-c", "{stuck}");
    let summary = tracer.interrupt();
    assert_eq!(summary["event"], "summary");
}
