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

/// The target of the static binary.
pub const MUSL: &str = "x86_64-unknown-linux-musl";

/// `cargo xtask dist`: one static binary (musl) in `target/dist/`, with
/// its SHA-256 next to it (`sha256sum -c closewait-trace.sha256`). Returns
/// the binary's path.
pub fn dist() -> Result<PathBuf> {
    setup::setup()?;
    setup::musl_target()?;
    let mut cargo = cmd::cargo();
    cargo.env("RUSTC_BOOTSTRAP", "1").args([
        "build",
        "--release",
        "--target",
        MUSL,
        "-p",
        "closewait-user",
        "--bin",
        "closewait-trace",
    ]);
    cmd::run_echoed(&mut cargo)?;
    let built = target_dir()
        .join(MUSL)
        .join("release")
        .join("closewait-trace");
    let dir = target_dir().join("dist");
    std::fs::create_dir_all(&dir)?;
    let binary = dir.join("closewait-trace");
    // Replace, not overwrite: a running copy keeps its inode.
    let _ = std::fs::remove_file(&binary);
    std::fs::copy(&built, &binary)?;
    let mut sum = Command::new("sha256sum");
    sum.current_dir(&dir).arg("closewait-trace");
    let out = sum.output()?;
    anyhow::ensure!(out.status.success(), "sha256sum failed");
    std::fs::write(dir.join("closewait-trace.sha256"), &out.stdout)?;
    eprintln!(
        "built {} (static, {}): {}",
        binary.display(),
        MUSL,
        String::from_utf8_lossy(&out.stdout).trim()
    );
    Ok(binary)
}
