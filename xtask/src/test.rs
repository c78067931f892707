//! `cargo xtask test`: host unit tests, then the root-only kernel tests.

use std::{ffi::OsString, process::Command};

use anyhow::{bail, Result};

use crate::{build, cmd, setup};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Only run the host unit tests (no root needed)
    #[arg(long)]
    unit_only: bool,
    /// Extra arguments for the kernel test binary, e.g. a test name filter
    #[arg(last = true, conflicts_with = "unit_only")]
    kernel_args: Vec<OsString>,
}

pub fn test(args: &TestArgs) -> Result<()> {
    if !args.unit_only && !cmd::is_root() {
        bail!(
            "the kernel tests need root: run `sudo -E cargo xtask test` \
             (or `cargo xtask test --unit-only` to skip them)"
        );
    }
    setup::setup()?;

    // Unit tests only: the kernel tests need root and run one at a time below.
    let mut steps = vec![(
        "host unit tests",
        cargo(&[
            "test",
            "--workspace",
            "--exclude",
            "closewait-ebpf",
            "--exclude",
            "closewait-tests",
            "--lib",
            "--bins",
        ]),
        false,
    )];
    if !args.unit_only {
        // closewait-tests does not depend on the agent: build it here, in the
        // profile `cargo test` uses, and tell the tests where it is.
        steps.push((
            "build the agent",
            cargo(&["build", "-p", "closewait-user", "--bin", "closewait-trace"]),
            false,
        ));
        let mut kernel = cargo(&["test", "-p", "closewait-tests", "--", "--test-threads=1"]);
        kernel
            .env(
                "CLOSEWAIT_TRACE_BIN",
                build::target_dir().join("debug").join("closewait-trace"),
            )
            .args(&args.kernel_args);
        steps.push(("kernel tests (root)", kernel, true));
        let ignored = cargo(&[
            "test",
            "-p",
            "closewait-user",
            "--lib",
            "--bins",
            "--",
            "--ignored",
            "--test-threads=1",
        ]);
        steps.push(("ignored root-only unit tests", ignored, false));
    }

    // Run every step, even after a failure, so one run shows all problems;
    // only a step that needs the one before it (`true`) is skipped.
    let mut failed = Vec::new();
    let mut previous_ok = true;
    for (name, mut cargo, needs_previous) in steps {
        eprintln!("==> {name}");
        if needs_previous && !previous_ok {
            eprintln!("skipped: the step before it failed");
            failed.push(name);
            continue;
        }
        previous_ok = match cmd::run_echoed(&mut cargo) {
            Ok(()) => true,
            Err(err) => {
                eprintln!("{err:#}");
                failed.push(name);
                false
            }
        };
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    eprintln!("==> all tests passed");
    Ok(())
}

fn cargo(args: &[&str]) -> Command {
    let mut cargo = cmd::cargo();
    // closewait-user's build script builds the eBPF crate with `-Z build-std` (see build.rs).
    cargo.env("RUSTC_BOOTSTRAP", "1").args(args);
    cargo
}
