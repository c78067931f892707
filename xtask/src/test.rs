//! `cargo xtask test`: host unit tests, then the root-only kernel tests.

use std::{ffi::OsString, process::Command};

use anyhow::{bail, Result};

use crate::{cmd, setup};

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

    let mut steps = vec![(
        "host unit tests",
        // Unit tests only: the kernel tests need root and run one at a time below.
        cargo_test(&[
            "--workspace",
            "--exclude",
            "closewait-ebpf",
            "--lib",
            "--bins",
        ]),
    )];
    if !args.unit_only {
        let mut kernel = cargo_test(&[
            "-p",
            "closewait-user",
            "--test",
            "kernel",
            "--",
            "--test-threads=1",
        ]);
        kernel.args(&args.kernel_args);
        steps.push(("kernel tests (root)", kernel));
        steps.push((
            "ignored root-only unit tests",
            cargo_test(&[
                "-p",
                "closewait-user",
                "--bins",
                "--",
                "--ignored",
                "--test-threads=1",
            ]),
        ));
    }

    // Run every step, even after a failure, so one run shows all problems.
    let mut failed = Vec::new();
    for (name, mut cargo) in steps {
        eprintln!("==> {name}");
        if let Err(err) = cmd::run_echoed(&mut cargo) {
            eprintln!("{err:#}");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    eprintln!("==> all tests passed");
    Ok(())
}

fn cargo_test(args: &[&str]) -> Command {
    let mut cargo = cmd::cargo();
    // closewait-user's build script builds the eBPF crate with `-Z build-std` (see build.rs).
    cargo.env("RUSTC_BOOTSTRAP", "1").arg("test").args(args);
    cargo
}
