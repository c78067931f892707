//! `cargo xtask setup`: install what building and testing closewait-trace needs.
//!
//! Every check is cheap, so this is fast when everything is present. On a Debian-based system
//! missing pieces are installed; anywhere else the commands are printed for the user to run.

use std::{fs, io, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{self, display, find_program, probe};

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

/// Debian packages of the tracers `cargo xtask bench` compares against.
const BENCH_PEERS: &[&str] = &["libbpf-tools", "bpftrace"];

/// Install what `cargo xtask bench` needs on top of [`setup`]: the peer tracers (libbpf-tools'
/// `tcpstates`, `bpftrace`).
pub fn setup_bench() -> Result<()> {
    let mut setup = Setup::detect();
    setup.debs("benchmark peers (libbpf-tools, bpftrace)", BENCH_PEERS)?;
    setup.finish()
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
        if !self.apt_updated {
            self.apt_updated = true;
            let update = self.apt_get(&["update", "-q"]);
            self.step("updating apt package lists", update, can_run)?;
        }
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

/// The version `bpf-linker --version` reports ("bpf-linker 0.13.0"), if it runs.
fn bpf_linker_version() -> Option<String> {
    let out = probe(Command::new("bpf-linker").arg("--version"))?;
    out.split_whitespace().nth(1).map(str::to_owned)
}
