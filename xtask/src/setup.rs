//! `cargo xtask setup`: install what building and testing closewait-trace needs.
//!
//! Every check is cheap, so this is fast when everything is present. On a Debian-based system
//! missing pieces are installed; anywhere else the commands are printed for the user to run.

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cmd::{self, display, find_program, probe},
    guest,
};

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Debian packages needed to build bpf-linker against LLVM 22.
const LLVM_BUILD_DEPS: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

pub fn setup() -> Result<()> {
    let mut setup = Setup::detect();
    setup.rust_src()?;
    setup.bpf_linker()?;
    setup.program("ip", "iproute2")?;
    setup.program("setpriv", "util-linux")?;
    setup.finish()
}

/// What the root tests use on top of [`setup`] (not needed to build or
/// run the tool): tmux for the live view's terminal, Prometheus and
/// promtool for the metrics, kubernetes-validate for the DaemonSet.
pub fn setup_tests() -> Result<()> {
    let mut setup = Setup::detect();
    setup.program("tmux", "tmux")?;
    setup.program("promtool", "prometheus")?;
    setup.python_module("kubernetes_validate", KUBERNETES_VALIDATE)?;
    setup.finish()
}

/// The musl target `cargo xtask dist` builds for (rustup's rust-std).
pub fn musl_target() -> Result<()> {
    let mut setup = Setup::detect();
    let installed =
        probe(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if installed.lines().any(|t| t.trim() == crate::build::MUSL) {
        eprintln!("rust-std for {}: present", crate::build::MUSL);
    } else {
        let mut add = Command::new("rustup");
        add.args(["target", "add", crate::build::MUSL]);
        setup.step(
            &format!("installing rust-std for {}", crate::build::MUSL),
            add,
            true,
        )?;
    }
    setup.finish()
}

/// Debian packages of the tracers `cargo xtask bench` compares against.
const BENCH_PEERS: &[&str] = &["libbpf-tools", "bpftrace"];

/// Install what `cargo xtask bench` needs on top of [`setup`]: the peer tracers (libbpf-tools'
/// `tcpstates`, `bpftrace`).
pub fn setup_bench() -> Result<()> {
    let mut setup = Setup::detect();
    setup.debs("benchmark peers (libbpf-tools, bpftrace)", BENCH_PEERS)?;
    setup.finish()
}

/// Debian packages virtme-ng needs to boot a kernel: qemu, and busybox for
/// the guest's init.
const GUEST_DEBS: &[&str] = &["qemu-system-x86", "busybox-static"];
/// The schema validator the DaemonSet's test runs (PyPI).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The virtme-ng release the guest runs were verified with.
const VIRTME_NG: &str = "virtme-ng==1.42";

/// Install what the kernel tests on a second kernel need on top of
/// [`setup`]: qemu, busybox, virtme-ng, and, unless `kernel` names an image,
/// Debian 12's newest 6.1 kernel. Returns (vng, kernel image).
pub fn setup_guest(kernel: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    let mut setup = Setup::detect();
    setup.debs("qemu and busybox (to boot a guest kernel)", GUEST_DEBS)?;
    let kernel = match kernel {
        Some(k) => Some(k.to_path_buf()),
        None => setup.debian_61_kernel()?,
    };
    let vng = setup.virtme_ng()?;
    setup.finish()?;
    match (vng, kernel) {
        (Some(vng), Some(kernel)) => Ok((vng, kernel)),
        (None, _) => bail!("virtme-ng (vng) is not installed"),
        (_, None) => bail!("no Debian 12 kernel (linux-image-6.1.0-*-amd64) is installed"),
    }
}

struct Setup {
    /// Debian-based system with apt: we may install things.
    debian: bool,
    /// How apt-get can be run: `Some(false)` directly (root), `Some(true)` via sudo, `None` not.
    apt_sudo: Option<bool>,
    apt_updated: bool,
    /// Commands the user has to run themselves.
    manual: Vec<String>,
}

impl Setup {
    fn detect() -> Self {
        let debian = fs::read_to_string("/etc/os-release").is_ok_and(|s| is_debian_like(&s))
            && find_program("apt-get").is_some();
        let apt_sudo = if cmd::is_root() {
            Some(false)
        } else if find_program("sudo").is_some() {
            Some(true)
        } else {
            None
        };
        Self {
            debian,
            apt_sudo,
            apt_updated: false,
            manual: Vec::new(),
        }
    }

    fn rust_src(&mut self) -> Result<()> {
        let installed = probe(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            "stable",
        ]))
        .context("cannot list rustup components (is rustup installed? see https://rustup.rs)")?;
        if installed
            .lines()
            .any(|l| l == "rust-src" || l.starts_with("rust-src-"))
        {
            eprintln!("rust-src (stable): present");
            return Ok(());
        }
        let mut add = Command::new("rustup");
        add.args(["component", "add", "rust-src", "--toolchain", "stable"]);
        self.step("installing rust-src", add, self.debian)?;
        Ok(())
    }

    fn bpf_linker(&mut self) -> Result<()> {
        let is_wanted = |v: &str| v.starts_with("0.13.");
        match bpf_linker_version() {
            Some(v) if is_wanted(&v) => {
                eprintln!("bpf-linker {v}: present");
                return Ok(());
            }
            Some(v) => eprintln!("bpf-linker: found {v}, need {BPF_LINKER_VERSION}"),
            None => eprintln!("bpf-linker: not found"),
        }
        let deps_ready = self.debs("LLVM 22 build dependencies", LLVM_BUILD_DEPS)?;
        if !self.debian {
            let hint = "# set LLVM_PREFIX below to where LLVM 22 is installed";
            self.manual.push(hint.to_owned());
        }
        let mut install = Command::new("cargo");
        install.env("LLVM_PREFIX", LLVM_PREFIX).args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
            "--force",
        ]);
        let what = format!("installing bpf-linker {BPF_LINKER_VERSION}");
        if self.step(&what, install, self.debian && deps_ready)? {
            match bpf_linker_version() {
                Some(v) if is_wanted(&v) => eprintln!("bpf-linker {v}: installed"),
                _ => bail!(
                    "installed bpf-linker {BPF_LINKER_VERSION}, \
                     but `bpf-linker --version` does not report it"
                ),
            }
        }
        Ok(())
    }

    /// Makes sure `program` (from the Debian package `package`) is available.
    fn program(&mut self, program: &str, package: &str) -> Result<()> {
        if find_program(program).is_some() {
            eprintln!("{package} ({program}): present");
            return Ok(());
        }
        eprintln!("{package}: `{program}` not found");
        self.apt_install(package, &[package])?;
        Ok(())
    }

    /// Makes sure the Debian packages `packages` are installed; whether they are now.
    fn debs(&mut self, what: &str, packages: &[&str]) -> Result<bool> {
        if !self.debian {
            return self.apt_install(what, packages);
        }
        let missing: Vec<&str> = packages
            .iter()
            .copied()
            .filter(|p| !deb_installed(p))
            .collect();
        if missing.is_empty() {
            eprintln!("{what}: present");
            return Ok(true);
        }
        self.apt_install(what, &missing)
    }

    /// Installs Debian packages (or queues the commands); whether they are installed now.
    fn apt_install(&mut self, what: &str, packages: &[&str]) -> Result<bool> {
        if !self.debian {
            let debian_names = match packages {
                [package] if package == &what => String::new(),
                _ => format!(" (Debian: {})", packages.join(" ")),
            };
            self.manual.push(format!(
                "# install {what}{debian_names} with your package manager"
            ));
            return Ok(false);
        }
        let can_run = self.apt_sudo.is_some();
        self.apt_update()?;
        let mut install = self.apt_get(&["install", "-y", "-q"]);
        install.args(packages);
        self.step(&format!("installing {what}"), install, can_run)
    }

    fn apt_get(&self, args: &[&str]) -> Command {
        let mut cmd = if self.apt_sudo == Some(true) {
            let mut sudo = Command::new("sudo");
            sudo.args(["DEBIAN_FRONTEND=noninteractive", "apt-get"]);
            sudo
        } else {
            let mut apt = Command::new("apt-get");
            apt.env("DEBIAN_FRONTEND", "noninteractive");
            apt
        };
        cmd.args(args);
        cmd
    }

    /// Runs `cmd`, announced as "<doing> (<command line>)", if `can_run`; otherwise queues it
    /// for the user. Whether it ran.
    fn step(&mut self, doing: &str, mut cmd: Command, can_run: bool) -> Result<bool> {
        let line = display(&cmd);
        if !can_run {
            eprintln!("{doing}: left to you (see below)");
            self.manual.push(line);
            return Ok(false);
        }
        eprintln!("{doing} ({line})");
        // Progress goes to stderr: stdout is for what a task produces (the tracer's output,
        // the benchmark report).
        cmd.stdout(io::stderr());
        cmd::run(&mut cmd)?;
        Ok(true)
    }

    /// `/boot/vmlinuz-6.1.0-N-amd64`, installing the newest such package
    /// Debian has when none is installed. Nothing reboots: it only lands in
    /// /boot, next to the running kernel.
    fn debian_61_kernel(&mut self) -> Result<Option<PathBuf>> {
        if let Some(kernel) = guest::installed_debian_61() {
            eprintln!("Debian 12 kernel: {}", kernel.display());
            return Ok(Some(kernel));
        }
        if !self.debian {
            self.manual
                .push("# install a Linux 6.1 kernel image for --kernel".to_owned());
            return Ok(None);
        }
        self.apt_update()?;
        let listed = probe(Command::new("apt-cache").args([
            "search",
            "--names-only",
            r"^linux-image-6\.1\.0-[0-9]+-amd64$",
        ]))
        .unwrap_or_default();
        let Some(package) = newest_61_package(&listed) else {
            bail!("apt-cache lists no linux-image-6.1.0-*-amd64 (is this Debian 12?); pass --kernel PATH");
        };
        let mut install = self.apt_get(&["install", "-y", "-q", "--no-install-recommends"]);
        install.arg(&package);
        let can_run = self.apt_sudo.is_some();
        self.step(&format!("installing {package}"), install, can_run)?;
        Ok(guest::installed_debian_61())
    }

    /// Python module `module` importable, installed from PyPI as `package`
    /// when missing.
    fn python_module(&mut self, module: &str, package: &str) -> Result<()> {
        let mut import = Command::new("python3");
        import.args(["-c", &format!("import {module}")]);
        if probe(&mut import).is_some() {
            eprintln!("{package}: present");
            return Ok(());
        }
        let mut pip = Command::new("python3");
        pip.args(["-m", "pip", "install", "-q", package]);
        let can_run = find_program("python3").is_some();
        self.step(&format!("installing {package}"), pip, can_run)?;
        Ok(())
    }

    /// `vng` on PATH or in Python's scripts directory, installed with pip
    /// when missing.
    fn virtme_ng(&mut self) -> Result<Option<PathBuf>> {
        if let Some(vng) = find_vng() {
            eprintln!("virtme-ng: {}", vng.display());
            return Ok(Some(vng));
        }
        let mut pip = Command::new("python3");
        pip.args(["-m", "pip", "install", "-q", VIRTME_NG]);
        let can_run = find_program("python3").is_some();
        self.step("installing virtme-ng", pip, can_run)?;
        Ok(find_vng())
    }

    fn apt_update(&mut self) -> Result<()> {
        if !self.apt_updated {
            self.apt_updated = true;
            let update = self.apt_get(&["update", "-q"]);
            let can_run = self.apt_sudo.is_some();
            self.step("updating apt package lists", update, can_run)?;
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        if self.manual.is_empty() {
            return Ok(());
        }
        let why = if self.debian {
            "apt-get needs root (or sudo)"
        } else {
            "not a Debian-based system"
        };
        eprintln!(
            "\nsetup: not installing here ({why}); run these, then `cargo xtask setup` again:"
        );
        for line in &self.manual {
            eprintln!("    {line}");
        }
        bail!("setup incomplete ({why})")
    }
}

/// Whether os-release text describes Debian or a derivative (ID or ID_LIKE).
fn is_debian_like(os_release: &str) -> bool {
    os_release.lines().any(|line| {
        let value = line
            .strip_prefix("ID=")
            .or_else(|| line.strip_prefix("ID_LIKE="));
        value.is_some_and(|v| {
            v.trim_matches('"')
                .split_whitespace()
                .any(|id| id == "debian")
        })
    })
}

fn deb_installed(package: &str) -> bool {
    probe(Command::new("dpkg").args(["-s", package]))
        .is_some_and(|out| out.lines().any(|l| l == "Status: install ok installed"))
}

/// The newest `linux-image-6.1.0-N-amd64` in `apt-cache search` output.
fn newest_61_package(listed: &str) -> Option<String> {
    listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            let abi: u32 = name
                .strip_prefix("linux-image-6.1.0-")?
                .strip_suffix("-amd64")?
                .parse()
                .ok()?;
            Some((abi, name.to_owned()))
        })
        .max()
        .map(|(_, name)| name)
}

fn find_vng() -> Option<PathBuf> {
    find_program("vng").or_else(|| {
        let scripts = probe(Command::new("python3").args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ]))?;
        let vng = Path::new(scripts.trim()).join("vng");
        vng.is_file().then_some(vng)
    })
}

/// The version `bpf-linker --version` reports ("bpf-linker 0.13.0"), if it runs.
fn bpf_linker_version() -> Option<String> {
    let out = probe(Command::new("bpf-linker").arg("--version"))?;
    out.split_whitespace().nth(1).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_61_kernel_package() {
        let listed = "linux-image-6.1.0-9-amd64 - Linux 6.1 for 64-bit PCs (signed)\n\
                      linux-image-6.1.0-57-amd64 - Linux 6.1 for 64-bit PCs (signed)\n\
                      linux-image-6.1.0-56-amd64 - Linux 6.1 for 64-bit PCs (signed)\n";
        assert_eq!(
            newest_61_package(listed).as_deref(),
            Some("linux-image-6.1.0-57-amd64")
        );
        assert_eq!(newest_61_package(""), None);
    }
}
