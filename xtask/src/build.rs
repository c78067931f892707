//! `cargo xtask build` and `cargo xtask run`.

use std::{env, ffi::OsString, path::PathBuf, process::Command};

use anyhow::Result;

use crate::{cmd, setup};

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Use the debug profile (default: release, the build to run on a real host)
    #[arg(long)]
    debug: bool,
}

/// Runs setup, builds closewait-trace, and returns the path of the binary.
pub fn build(args: &BuildArgs) -> Result<PathBuf> {
    setup::setup()?;
    let dir = cargo_build(&["closewait-user"], !args.debug)?;
    Ok(dir.join("closewait-trace"))
}

/// `cargo build -p PACKAGE...` (`--release` if `release`); the directory the binaries are in.
pub fn cargo_build(packages: &[&str], release: bool) -> Result<PathBuf> {
    let mut cargo = cmd::cargo();
    // aya-build compiles the eBPF crate with `-Z build-std=core`; this allows it on stable.
    cargo.env("RUSTC_BOOTSTRAP", "1").arg("build");
    for package in packages {
        cargo.args(["-p", package]);
    }
    if release {
        cargo.arg("--release");
    }
    cmd::run_echoed(&mut cargo)?;
    let profile = if release { "release" } else { "debug" };
    Ok(target_dir().join(profile))
}

/// Builds closewait-trace, then replaces this process with it (through sudo when not root and
/// sudo exists), so its exit code and signals are its own. Returns only on error.
pub fn run(args: &BuildArgs, trace_args: &[OsString]) -> Result<()> {
    let binary = build(args)?;
    let mut trace = if !cmd::is_root() && cmd::find_program("sudo").is_some() {
        let mut sudo = Command::new("sudo");
        sudo.arg(&binary);
        sudo
    } else {
        Command::new(&binary)
    };
    trace.args(trace_args);
    cmd::exec_echoed(&mut trace)
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace root) or `target`.
pub fn target_dir() -> PathBuf {
    let dir = env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
    cmd::workspace_root().join(dir)
}
