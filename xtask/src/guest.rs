//! The kernel tests on a second kernel: Debian 12's own 6.1 (or any image
//! given with `--kernel`), booted under qemu by virtme-ng, which shares the
//! host's root file system with the guest, so the built binary and test
//! executable run there unchanged.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{build, cmd};

/// How long a boot with KVM may take before KVM counts as unusable (nested
/// virtualization here either aborts at once or hangs at boot).
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// The whole guest run, boot included.
const GUEST_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// How much slower than the host the guest is, for the tests' waits.
const SLOWDOWN_TCG: &str = "4";
const SLOWDOWN_KVM: &str = "1.5";

/// The newest `/boot/vmlinuz-6.1.0-N-amd64`: Debian 12's kernel.
pub fn installed_debian_61() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let abi = name
                .strip_prefix("vmlinuz-6.1.0-")?
                .strip_suffix("-amd64")?
                .parse()
                .ok()?;
            Some((abi, e.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, path)| path)
}

/// Boot `kernel` and run `test_exe` (the closewait-tests kernel test binary)
/// in it against `agent`, with `filters` passed to the test binary.
pub fn run_tests(
    vng: &Path,
    kernel: &Path,
    test_exe: &Path,
    agent: &Path,
    filters: &[String],
) -> Result<()> {
    if !kernel.is_file() {
        bail!("no kernel image at {}", kernel.display());
    }
    let kvm = kvm_works(vng, kernel);
    eprintln!(
        "guest: {} under qemu with {}",
        kernel.display(),
        if kvm {
            "KVM"
        } else {
            "TCG (software emulation; KVM is not usable here)"
        }
    );
    let target = build::target_dir();
    let script = target.join("tmp/guest-kernel-tests.sh");
    fs::create_dir_all(script.parent().expect("has a parent"))?;
    let filters: Vec<String> = filters.iter().map(|f| shell_quote(f)).collect();
    fs::write(
        &script,
        format!(
            "set -e\ncd {root}\nexport CLOSEWAIT_TRACE_BIN={agent} CLOSEWAIT_TEST_SLOWDOWN={slowdown} PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH\n\
             echo \"guest kernel: $(uname -r)\"\nexec {exe} --test-threads=1 {filters}\n",
            root = shell_quote(&cmd::workspace_root().display().to_string()),
            agent = shell_quote(&agent.display().to_string()),
            slowdown = if kvm { SLOWDOWN_KVM } else { SLOWDOWN_TCG },
            exe = shell_quote(&test_exe.display().to_string()),
            filters = filters.join(" "),
        ),
    )?;
    let mut vng_cmd = vng_command(vng, kernel, kvm);
    vng_cmd
        .args([
            "--memory", "2G", "--cpus", "2", "--rwdir", "/tmp", "--rwdir",
        ])
        .arg(&target)
        .arg("--exec")
        .arg(format!("sh {}", shell_quote(&script.display().to_string())));
    eprintln!("$ {}", cmd::display(&vng_cmd));
    let started = Instant::now();
    let status = run_with_timeout(&mut vng_cmd, GUEST_TIMEOUT, false)?;
    eprintln!(
        "guest: ran {:.0} s, boot included",
        started.elapsed().as_secs_f64()
    );
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => bail!("the kernel tests failed in the guest ({s})"),
        None => bail!("the guest run did not end within {GUEST_TIMEOUT:?}"),
    }
}

fn vng_command(vng: &Path, kernel: &Path, kvm: bool) -> Command {
    let mut vng_cmd = Command::new(vng);
    if !kvm {
        vng_cmd.arg("--disable-kvm");
    }
    vng_cmd.arg("--run").arg(kernel);
    vng_cmd
}

/// Whether a guest boots with KVM: `/dev/kvm` exists and a trivial boot ends
/// in time.
fn kvm_works(vng: &Path, kernel: &Path) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let mut probe = vng_command(vng, kernel, true);
    probe.args(["--memory", "1G", "--exec", "true"]);
    matches!(
        run_with_timeout(&mut probe, KVM_PROBE_TIMEOUT, true),
        Ok(Some(status)) if status.success()
    )
}

/// Run `cmd` in its own process group; kill the group (qemu included) if it
/// is not done within `timeout`. `None` on timeout.
fn run_with_timeout(
    cmd: &mut Command,
    timeout: Duration,
    quiet: bool,
) -> Result<Option<std::process::ExitStatus>> {
    use std::os::unix::process::CommandExt as _;
    cmd.process_group(0).stdin(Stdio::null());
    if quiet {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    if !quiet {
        // Through pipes: qemu opens its output with O_TRUNC, which would
        // wipe a log file that our stdout or stderr is redirected to.
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to start: {}", cmd::display(cmd)))?;
    let forwarders: Vec<_> = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|pipe| thread::spawn(move || forward(pipe)))
    .collect();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            for f in forwarders {
                let _ = f.join();
            }
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Copy the guest's output to our stderr, line by line, without the runs of
/// padding the guest console adds.
fn forward(pipe: Box<dyn std::io::Read + Send>) {
    use std::io::BufRead as _;
    for line in std::io::BufReader::new(pipe)
        .split(b'\n')
        .map_while(Result::ok)
    {
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end();
        if !line.is_empty() {
            eprintln!("{line}");
        }
    }
}

/// The path of the closewait-tests kernel test executable, built now.
pub fn build_test_exe() -> Result<PathBuf> {
    let mut cargo = cmd::cargo();
    cargo.env("RUSTC_BOOTSTRAP", "1").args([
        "test",
        "-p",
        "closewait-tests",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    eprintln!("$ {}", cmd::display(&cargo));
    let out = cargo.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("building the kernel tests failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == "kernel")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .context("cargo did not report the kernel test executable")
}

/// `'text'` for sh.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_for_sh() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
