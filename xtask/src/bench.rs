//! `cargo xtask bench`: set up, build, then run the benchmark harness (the `closewait-bench`
//! binary of the closewait-bench crate, which holds all of it) with the same flags.

use std::{env, process::Command};

use anyhow::{ensure, Result};
pub use closewait_bench::harness::BenchArgs;

use crate::{build, cmd, setup};

/// Runs setup (with the peer tracers), builds closewait-trace, churn and the harness (release),
/// then replaces this process with the harness. Returns only on error.
pub fn bench(args: &BenchArgs) -> Result<()> {
    ensure!(
        cmd::is_root(),
        "the benchmarks need root (BPF, network namespaces): run `sudo -E cargo xtask bench`"
    );
    setup::setup()?;
    let peer_setup = setup::setup_bench().err().map(|err| format!("{err:#}"));
    if let Some(err) = &peer_setup {
        eprintln!("bench: peers may be unavailable: {err}");
    }
    let release = build::cargo_build(&["closewait-user", "closewait-bench"], true)?;
    let mut harness = Command::new(release.join("closewait-bench"));
    harness
        .args(args.to_args())
        .arg("--invoked-as")
        .arg(command_line());
    if let Some(err) = &peer_setup {
        harness.arg("--peer-setup-error").arg(err);
    }
    cmd::exec_echoed(&mut harness)
}

/// The command as the user typed it.
fn command_line() -> String {
    let args: Vec<String> = env::args().skip(1).collect();
    format!("cargo xtask {}", args.join(" "))
}
