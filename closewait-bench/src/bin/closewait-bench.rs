//! `closewait-bench`: the benchmark harness. `cargo xtask bench` builds it next to
//! closewait-trace and churn and runs it with its own flags.

use std::process::ExitCode;

use clap::Parser;

use closewait_bench::harness::{self, BenchArgs, Invocation};

/// Benchmark closewait-trace against an empty program and peer tracers (root); closewait-trace
/// and churn are taken from this binary's directory. Prints a markdown report and writes it to
/// bench/report.md in the target directory.
#[derive(Parser)]
#[command(name = "closewait-bench", version)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
    /// The command line to show in the report (default: this one)
    #[arg(long, hide = true, value_name = "COMMAND")]
    invoked_as: Option<String>,
    /// Why installing the peer tracers failed, to show next to "not installed"
    #[arg(long, hide = true, value_name = "MESSAGE")]
    peer_setup_error: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let invocation = Invocation {
        command: cli.invoked_as.unwrap_or_else(command_line),
        peer_setup_error: cli.peer_setup_error,
    };
    if let Err(err) = harness::bench(&cli.args, &invocation) {
        eprintln!("closewait-bench: error: {err:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `closewait-bench ARGS`, as it was started.
fn command_line() -> String {
    let args = std::env::args().skip(1);
    std::iter::once("closewait-bench".to_owned())
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
}
