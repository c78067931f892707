//! What one run measures and at what sizes: the command-line flags, the sizes they give, the
//! configurations that run next to the load, and where everything runs.

use std::time::Duration;

/// Benchmark closewait-trace against an empty program and peer tracers (root). The flags of
/// `cargo xtask bench`, which passes them on to the `closewait-bench` binary.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct BenchArgs {
    /// Interleaved rounds of each measurement
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of load in each measurement
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Quick run of every step with tiny sizes (1 round of 1 s); checks only that each step
    /// produced numbers, never timings
    #[arg(long, conflicts_with_all = ["rounds", "seconds"])]
    smoke: bool,
}

impl BenchArgs {
    /// The flags that parse back into these arguments.
    pub fn to_args(&self) -> Vec<String> {
        if self.smoke {
            return vec!["--smoke".to_owned()];
        }
        vec![
            "--rounds".to_owned(),
            self.rounds.to_string(),
            "--seconds".to_owned(),
            self.seconds.to_string(),
        ]
    }
}

/// Tracers run here; the load generator runs on the other CPU.
pub(super) const TRACER_CPU: &str = "0";
pub(super) const LOAD_CPU: &str = "1";

/// Server ports of the fixed-port steps (any port is free in our own network namespace).
pub(super) const DWELL_PORT: u16 = 47000;
pub(super) const STARTUP_PORT: u16 = 47100;
pub(super) const RSS_FIRST_PORT: u16 = 47200;

/// The connection rate at which the agent's CPU use is measured.
pub(super) const CPU_TEST_RATE: u32 = 20_000;

/// How long each socket of the dwell-accuracy run stays in CLOSE_WAIT.
pub(super) const HOLD: &str = "50ms";

/// Peers print no "ready" line: after their program shows up, this long for the attach.
pub(super) const PEER_SETTLE: Duration = Duration::from_secs(1);

/// Time for an agent to drain its ring buffer after the load stops.
pub(super) const DRAIN: Duration = Duration::from_millis(500);
pub(super) const RSS_DRAIN: Duration = Duration::from_secs(2);

/// Sizes of one run.
pub(super) struct Plan {
    pub(super) smoke: bool,
    pub(super) rounds: usize,
    pub(super) seconds: u64,
    pub(super) hold_count: u32,
    pub(super) startup_park: u32,
    pub(super) rss_park: u32,
    pub(super) rss_processes: u32,
}

impl Plan {
    pub(super) fn new(args: &BenchArgs) -> Self {
        if args.smoke {
            return Self {
                smoke: true,
                rounds: 1,
                seconds: 1,
                hold_count: 20,
                startup_park: 200,
                rss_park: 2000,
                rss_processes: 2,
            };
        }
        Self {
            smoke: false,
            rounds: args.rounds.max(1),
            seconds: args.seconds.max(1),
            hold_count: 500,
            startup_park: 10_000,
            rss_park: 100_000,
            rss_processes: 6,
        }
    }

    pub(super) fn load(&self) -> String {
        format!("{}s", self.seconds)
    }
}

/// What runs next to the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Config {
    NoTracer,
    Empty,
    /// closewait-trace's default mode (`--stacks auto`: under churn nothing
    /// is stuck, so connect() stacks within the per-CPU budget only).
    Closewait,
    /// `--stacks off`: no capture at all, the base of "stacks on / off".
    ClosewaitNoStacks,
    /// `--stacks on`: creation stacks of every connect() and accept().
    ClosewaitStacks,
    /// `--stacks on` for connect() only (`--without syscall-tracepoints`):
    /// what the accept() recorder and its syscall tracepoints cost.
    ClosewaitNoAccept,
    /// `--stacks on` with the EOF-read recorder armed from the start (hidden
    /// `--arm-eof-reads`): what it costs each recv(). Recv-heavy load only.
    ClosewaitEofReads,
    Tcpstates,
    Bpftrace,
}

impl Config {
    pub(super) const ALL: [Config; 8] = [
        Config::NoTracer,
        Config::Empty,
        Config::Closewait,
        Config::ClosewaitNoStacks,
        Config::ClosewaitStacks,
        Config::ClosewaitNoAccept,
        Config::Tcpstates,
        Config::Bpftrace,
    ];
    pub(super) const TRACERS: [Config; 7] = [
        Config::Empty,
        Config::Closewait,
        Config::ClosewaitNoStacks,
        Config::ClosewaitStacks,
        Config::ClosewaitNoAccept,
        Config::Tcpstates,
        Config::Bpftrace,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Config::NoTracer => "none",
            Config::Empty => "empty",
            Config::Closewait => "closewait",
            Config::ClosewaitNoStacks => "closewait-nostacks",
            Config::ClosewaitStacks => "closewait-stacks",
            Config::ClosewaitNoAccept => "closewait-noaccept",
            Config::ClosewaitEofReads => "closewait-eofreads",
            Config::Tcpstates => "tcpstates",
            Config::Bpftrace => "bpftrace",
        }
    }

    /// closewait-trace in one of its modes.
    pub(super) fn is_closewait(self) -> bool {
        matches!(
            self,
            Config::Closewait
                | Config::ClosewaitNoStacks
                | Config::ClosewaitStacks
                | Config::ClosewaitNoAccept
                | Config::ClosewaitEofReads
        )
    }

    pub(super) fn is_peer(self) -> bool {
        matches!(self, Config::Tcpstates | Config::Bpftrace)
    }
}

/// `configs` rotated left by `round`, so that each configuration takes every place in turn.
pub(super) fn rotated(configs: &[Config], round: usize) -> Vec<Config> {
    let mut order = configs.to_vec();
    order.rotate_left(round % configs.len().max(1));
    order
}

/// Splits `total` into `parts` nearly equal counts.
pub(super) fn split(total: u32, parts: u32) -> Vec<u32> {
    let parts = parts.max(1);
    (0..parts)
        .map(|i| total / parts + u32::from(i < total % parts))
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn rotation_and_split() {
        // A full turn plus one: the second configuration leads, the first
        // comes last.
        let n = Config::ALL.len();
        let order = rotated(&Config::ALL, n + 1);
        assert_eq!(order[0], Config::ALL[1]);
        assert_eq!(order[n - 1], Config::NoTracer);
        assert_eq!(rotated(&Config::ALL, n), Config::ALL.to_vec());
        assert_eq!(split(100_000, 6).iter().sum::<u32>(), 100_000);
        assert_eq!(split(2000, 2), vec![1000, 1000]);
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(argv: &[&str]) -> BenchArgs {
        let argv = std::iter::once("bench").chain(argv.iter().copied());
        Cli::try_parse_from(argv).expect("valid flags").args
    }

    #[test]
    fn args_round_trip() {
        for argv in [&[][..], &["--smoke"], &["--rounds", "9", "--seconds", "10"]] {
            let args = parse(argv);
            let again = args.to_args();
            let again: Vec<&str> = again.iter().map(String::as_str).collect();
            assert_eq!(parse(&again), args, "{argv:?} -> {again:?}");
        }
        assert!(parse(&["--smoke"]).smoke);
        assert_eq!(parse(&[]).rounds, 5);
    }
}
