//! `cargo xtask soak`: set up, build, then run the soak (the `closewait-soak` binary of the
//! closewait-bench crate, which holds all of it) with the same flags.

use std::{path::Path, process::Command};

use anyhow::{ensure, Result};
pub use closewait_bench::soak::SoakArgs;

use crate::{build, cmd, setup};

/// Flags of the one-minute soak that `cargo xtask test` runs.
pub const SHORT: &[&str] = &["--duration", "1m", "--ring-full", "10s"];

/// Runs setup, builds closewait-trace, churn and the soak (release), then replaces this
/// process with the soak. Returns only on error.
pub fn soak(args: &SoakArgs) -> Result<()> {
    ensure!(
        cmd::is_root(),
        "the soak needs root (BPF, network namespaces): run `sudo -E cargo xtask soak`"
    );
    setup::setup()?;
    let release = build_all()?;
    cmd::exec_echoed(command(&release).args(args.to_args()))
}

/// Builds what the soak runs; the directory it is in.
pub fn build_all() -> Result<std::path::PathBuf> {
    build::cargo_build(&["closewait-user", "closewait-bench"], true)
}

/// `closewait-soak` in `release`, the directory of the build.
pub fn command(release: &Path) -> Command {
    Command::new(release.join("closewait-soak"))
}
