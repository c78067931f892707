//! `cargo xtask build` and `cargo xtask run`.

use std::{
    env, ffi::OsString, os::unix::process::CommandExt as _, path::PathBuf, process::Command,
};

use anyhow::{Context as _, Result};

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
    let mut cargo = cmd::cargo();
    // aya-build compiles the eBPF crate with `-Z build-std=core`; this allows it on stable.
    cargo
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["build", "-p", "closewait-user"]);
    if !args.debug {
        cargo.arg("--release");
    }
    cmd::run_echoed(&mut cargo)?;
    let profile = if args.debug { "debug" } else { "release" };
    Ok(target_dir().join(profile).join("closewait-trace"))
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
    eprintln!("$ {}", cmd::display(&trace));
    let err = trace.exec();
    Err(err).with_context(|| format!("failed to start: {}", cmd::display(&trace)))
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace root) or `target`.
pub fn target_dir() -> PathBuf {
    let dir = env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
    cmd::workspace_root().join(dir)
}
