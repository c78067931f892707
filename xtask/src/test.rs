//! `cargo xtask test`: host unit tests, then the root-only kernel tests.

use std::{ffi::OsString, path::PathBuf, process::Command};

use anyhow::{bail, Result};

use crate::{build, cmd, guest, setup, soak};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Only run the host unit tests (no root needed)
    #[arg(long)]
    unit_only: bool,
    /// Run the kernel tests on the running kernel only, not in the guest
    #[arg(long, conflicts_with_all = ["unit_only", "guest_only", "kernel"])]
    host_only: bool,
    /// Run the kernel tests in the guest kernel only, not on the running one
    #[arg(long, conflicts_with = "unit_only")]
    guest_only: bool,
    /// The guest kernel image (default: Debian 12's newest 6.1,
    /// /boot/vmlinuz-6.1.0-N-amd64, installed by set-up)
    #[arg(long, value_name = "PATH", conflicts_with = "unit_only")]
    kernel: Option<PathBuf>,
    /// Extra arguments for the kernel test binary, e.g. a test name filter
    #[arg(last = true, conflicts_with = "unit_only")]
    kernel_args: Vec<OsString>,
}

/// One step of the run; `needs_previous` steps are skipped when the step
/// before them failed.
struct Step {
    name: String,
    run: Box<dyn FnOnce() -> Result<()>>,
    needs_previous: bool,
}

impl Step {
    fn cargo(name: &str, mut cargo: Command, needs_previous: bool) -> Step {
        Step {
            name: name.to_owned(),
            run: Box::new(move || cmd::run_echoed(&mut cargo)),
            needs_previous,
        }
    }
}

pub fn test(args: &TestArgs) -> Result<()> {
    if !args.unit_only && !cmd::is_root() {
        bail!(
            "the kernel tests need root: run `sudo -E cargo xtask test` \
             (or `cargo xtask test --unit-only` to skip them)"
        );
    }
    setup::setup()?;
    if !args.unit_only {
        setup::setup_tests()?;
    }
    let guest = if args.unit_only || args.host_only {
        None
    } else {
        Some(setup::setup_guest(args.kernel.as_deref())?)
    };

    // Unit tests only: the kernel tests need root and run one at a time below.
    let mut steps = vec![Step::cargo(
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
    if !args.unit_only && !args.guest_only {
        // The static binary, for its own tests (tests/fleet.rs).
        steps.push(Step {
            name: "build the static binary (cargo xtask dist)".into(),
            run: Box::new(|| build::dist().map(|_| ())),
            needs_previous: false,
        });
    }
    if !args.unit_only {
        // closewait-tests does not depend on the agent: build it here, the
        // release build that users run, and tell the tests where it is.
        let agent = build::target_dir().join("release").join("closewait-trace");
        steps.push(Step::cargo(
            "build the agent",
            cargo(&[
                "build",
                "--release",
                "-p",
                "closewait-user",
                "--bin",
                "closewait-trace",
            ]),
            false,
        ));
        if !args.guest_only {
            let dist = build::target_dir().join("dist").join("closewait-trace");
            let mut kernel = cargo(&["test", "-p", "closewait-tests", "--", "--test-threads=1"]);
            kernel
                .env("CLOSEWAIT_TRACE_BIN", &agent)
                .env("CLOSEWAIT_DIST_BIN", &dist)
                .args(&args.kernel_args);
            let name = format!("kernel tests (root) on the running kernel, {}", uname_r());
            steps.push(Step::cargo(&name, kernel, true));
            // Not when the tests are filtered by name: it runs as a whole.
            if args.kernel_args.is_empty() {
                steps.push(Step {
                    name: format!(
                        "the one-minute soak (closewait-soak {})",
                        soak::SHORT.join(" ")
                    ),
                    run: Box::new(|| {
                        let release = soak::build_all()?;
                        cmd::run_echoed(soak::command(&release).args(soak::SHORT))
                    }),
                    needs_previous: false,
                });
            }
            steps.push(Step::cargo(
                "ignored root-only unit tests",
                cargo(&[
                    "test",
                    "-p",
                    "closewait-user",
                    "--lib",
                    "--bins",
                    "--",
                    "--ignored",
                    "--test-threads=1",
                ]),
                false,
            ));
        }
        if let Some((vng, image)) = guest {
            let filters: Vec<String> = args
                .kernel_args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            steps.push(Step {
                name: format!("kernel tests (root) in a guest kernel, {}", image.display()),
                run: Box::new(move || {
                    let exe = guest::build_test_exe()?;
                    guest::run_tests(&vng, &image, &exe, &agent, &filters)
                }),
                needs_previous: false,
            });
        }
    }

    // Run every step, even after a failure, so one run shows all problems.
    let mut failed = Vec::new();
    let mut previous_ok = true;
    for step in steps {
        eprintln!("==> {}", step.name);
        if step.needs_previous && !previous_ok {
            eprintln!("skipped: the step before it failed");
            failed.push(step.name);
            continue;
        }
        previous_ok = match (step.run)() {
            Ok(()) => true,
            Err(err) => {
                eprintln!("{err:#}");
                failed.push(step.name);
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

/// The running kernel's release, for the step's name.
fn uname_r() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn cargo(args: &[&str]) -> Command {
    let mut cargo = cmd::cargo();
    // closewait-user's build script builds the eBPF crate with `-Z build-std` (see build.rs).
    cargo.env("RUSTC_BOOTSTRAP", "1").args(args);
    cargo
}
