//! The benchmark harness (binary `closewait-bench`, run by `cargo xtask bench`): what
//! closewait-trace costs and how accurate it is, next to an empty program on the same hook and
//! two peer tracers (libbpf-tools' `tcpstates`, `bpftrace`).
//!
//! The load is `churn` (this crate) on loopback inside a network namespace made for the run,
//! pinned to CPU 1; every tracer is pinned to CPU 0. The numbers come from churn's and the
//! tracers' JSON lines and from /proc. Throughput is measured in interleaved rounds and
//! reported as ratios to the no-tracer rate of the same round, because these machines are
//! noisy. The method is described in docs/benchmarks.md.
//!
//! `plan` sizes a run, `run` holds the steps, `launch` starts tracers and churn, `process`
//! watches child processes, `measure` reads /proc and BPF statistics, `check` decides whether
//! every step produced numbers, `stats`, `render` and `budget` write the report.

mod budget;
mod check;
mod launch;
pub(crate) mod measure;
mod plan;
pub(crate) mod process;
mod render;
mod run;
mod stats;

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, ensure, Context as _, Result};
use closewait_host::{netns, privileges::is_root, tracefs};

pub use plan::BenchArgs;

/// Prefix of the network namespaces the harness creates (`cwt-bench-<pid>`).
const NETNS_PREFIX: &str = "cwt-bench-";

/// How the harness was started, for the report.
pub struct Invocation {
    /// The command line the report shows.
    pub command: String,
    /// Why installing the peer tracers failed, if it did; shown next to "not installed".
    pub peer_setup_error: Option<String>,
}

/// Runs every step with closewait-trace and churn from the directory this binary is in, prints
/// the report on stdout and writes it, with the logs of every process, under `bench/` in the
/// target directory; fails if a step produced no data.
pub fn bench(args: &BenchArgs, invocation: &Invocation) -> Result<()> {
    ensure!(
        is_root(),
        "the benchmarks need root (BPF, network namespaces): run `sudo -E cargo xtask bench`"
    );
    process::catch_interrupts();
    mount_tracefs();
    let exe = env::current_exe().context("cannot find this executable")?;
    let bin_dir = exe.parent().context("this executable has no directory")?;
    let trace = built(bin_dir, "closewait-trace", "bench")?;
    let churn = built(bin_dir, "churn", "bench")?;
    let target_dir = bin_dir.parent().unwrap_or(bin_dir);
    let out_dir = target_dir.join("bench");
    let logs = out_dir.join("logs");
    let _ = fs::remove_dir_all(&logs);
    fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    netns::remove_stale(NETNS_PREFIX);
    let name = format!("{NETNS_PREFIX}{}", std::process::id());
    let ns = netns::Named::create(&name)
        .with_context(|| format!("cannot create network namespace {name}"))?;

    let plan = plan::Plan::new(args);
    let peer_setup = invocation.peer_setup_error.clone();
    let mut bench = run::Bench::new(plan, trace, churn, ns.name(), out_dir, peer_setup);
    let results = bench.run_all();
    let report = render::render(&bench, &results, &invocation.command);
    print!("{report}");
    let path = bench.out_dir.join("report.md");
    fs::write(&path, &report).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("bench: report written to {}", path.display());

    let problems = results.problems(&bench.plan, &bench.unavailable);
    if !problems.is_empty() {
        bail!("some steps produced no data:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

/// `name`, built next to this binary (`cargo xtask TASK` builds them together).
pub(crate) fn built(bin_dir: &Path, name: &str, task: &str) -> Result<PathBuf> {
    let path = bin_dir.join(name);
    ensure!(
        path.is_file(),
        "{} not found: build it with `cargo build --release -p closewait-user -p \
         closewait-bench`, or run `cargo xtask {task}`",
        path.display()
    );
    Ok(path)
}

/// The peers use classic tracepoints, which need tracefs (closewait-trace does not).
fn mount_tracefs() {
    match tracefs::ensure_mounted() {
        Ok((root, true)) => eprintln!("bench: mounted tracefs on {}", root.display()),
        Ok((_, false)) => {}
        Err(err) => eprintln!(
            "bench: peers may fail to attach: cannot mount tracefs on {}: {err}",
            tracefs::TRACEFS
        ),
    }
}
