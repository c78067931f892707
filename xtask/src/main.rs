//! Developer tasks for closewait-trace: `cargo xtask <command>`.

mod bench;
mod build;
mod cmd;
mod guest;
mod setup;
mod soak;
mod test;

use std::{ffi::OsString, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Developer tasks for closewait-trace (run as `cargo xtask <command>`)")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: rust-src, bpf-linker 0.13 (built against LLVM 22), iproute2,
    /// util-linux (and for `test`: tmux, prometheus, kubernetes-validate). Only installs on Debian-based systems; elsewhere prints the commands
    Setup,
    /// Run setup, then build closewait-trace (`cargo build -p closewait-user`)
    Build(build::BuildArgs),
    /// Build (release unless --debug), then run target/<profile>/closewait-trace with ARGS,
    /// through sudo when not root; exits with its exit code
    Run {
        #[command(flatten)]
        build: build::BuildArgs,
        /// Arguments for closewait-trace
        #[arg(last = true, value_name = "ARGS")]
        trace_args: Vec<OsString>,
    },
    /// Build one static binary (musl) in target/dist/, with its SHA-256, for hosts with no Rust
    /// and any libc
    Dist,
    /// Run setup, the host unit tests, then the kernel tests (these need root)
    Test(test::TestArgs),
    /// Run setup, build (release), then benchmark closewait-trace against an empty program and
    /// peer tracers (root); writes target/bench/report.md
    Bench(bench::BenchArgs),
    /// Run setup, build (release), then leave closewait-trace running for 10 minutes under
    /// 100,000 stuck sockets, full-speed churn, killed owners and a full ring buffer, auditing
    /// every line it prints (root); writes target/soak/report.md, fails on a broken promise
    Soak(soak::SoakArgs),
}

fn main() -> ExitCode {
    cmd::add_cargo_bin_to_path();
    let result = match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Build(args) => build::build(&args).map(|binary| {
            eprintln!("built {}", binary.display());
        }),
        Task::Run { build, trace_args } => build::run(&build, &trace_args),
        Task::Dist => build::dist().map(|_| ()),
        Task::Test(args) => test::test(&args),
        Task::Bench(args) => bench::bench(&args),
        Task::Soak(args) => soak::soak(&args),
    };
    if let Err(err) = result {
        eprintln!("xtask: error: {err:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
