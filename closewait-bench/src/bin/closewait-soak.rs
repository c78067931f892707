//! `closewait-soak`: the soak. `cargo xtask soak` builds it next to closewait-trace and churn
//! and runs it with its own flags.

use std::process::ExitCode;

use clap::Parser;

use closewait_bench::soak::{self, SoakArgs};

/// Leave closewait-trace running under 100,000 stuck sockets, full-speed churn, killed owners
/// and a full ring buffer, and audit every line it prints against the truth (root);
/// closewait-trace and churn are taken from this binary's directory. Prints a markdown report
/// and writes it to soak/report.md in the target directory; fails when a promise breaks.
#[derive(Parser)]
#[command(name = "closewait-soak", version)]
struct Cli {
    #[command(flatten)]
    args: SoakArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = soak::soak(&cli.args) {
        eprintln!("closewait-soak: error: {err:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
