//! Command-line interface.

use std::time::Duration;

use clap::Parser;

use closewait_host::duration::{
    parse as parse_duration, parse_positive as parse_positive_duration,
};

use crate::{
    probe::{features::Feature, AttachMode},
    tracking::Family,
};

/// Find TCP sockets stuck in CLOSE_WAIT, live: the peer closed, the local
/// application never did.
#[derive(Debug, Parser)]
#[command(name = "closewait-trace", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Flag a socket as stuck once it has been in CLOSE_WAIT this long
    /// (e.g. 500ms, 10s, 5m).
    #[arg(global = true, long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub threshold: Duration,

    /// Stop after this long and print the summary (default: until Ctrl-C).
    #[arg(global = true, long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub duration: Option<Duration>,

    /// Only sockets whose local or remote port is PORT (repeatable).
    #[arg(global = true, long = "port", short = 'p', value_name = "PORT", value_parser = parse_port)]
    pub ports: Vec<u16>,

    /// Only IPv4 sockets (IPv4-mapped IPv6 counts as IPv4).
    #[arg(global = true, short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Only IPv6 sockets.
    #[arg(global = true, short = '6', long = "ipv6")]
    pub ipv6: bool,

    /// Only sockets held by process PID (repeatable).
    #[arg(global = true, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Only sockets held by a process named NAME (its comm; repeatable).
    #[arg(global = true, long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,

    /// Creation stacks: `auto` records connect() stacks from the start
    /// within `--stack-budget`, so the first leaked outgoing socket has its
    /// stack and a connection flood costs nothing measurable, and every
    /// connect() and accept() from the first sign of trouble (a socket
    /// already in CLOSE_WAIT at start, or the first stuck one); `on` every
    /// connect() and accept() from the start (about 2.5 us each); `off`
    /// never.
    #[arg(
        global = true,
        long,
        value_enum,
        value_name = "WHEN",
        default_value = "auto"
    )]
    pub stacks: StacksMode,

    /// With `--stacks auto`, connect() stacks recorded per second on each
    /// CPU before anything is stuck; the rest are counted
    /// (`stacks_over_budget`). 0: none before trouble.
    #[arg(global = true, long, value_name = "N", default_value_t = 1000)]
    pub stack_budget: u32,

    /// Same as `--stacks off`: no stack capture, in the kernel too.
    #[arg(global = true, long, conflicts_with = "stacks")]
    pub no_stacks: bool,

    /// Also show every entry into and exit from CLOSE_WAIT.
    #[arg(global = true, long)]
    pub all: bool,

    /// One JSON object per line on stdout.
    #[arg(global = true, long)]
    pub json: bool,

    /// Serve Prometheus metrics on http://ADDR/metrics (OpenMetrics when
    /// asked for). Bound to ADDR only: `:PORT` means loopback
    /// (127.0.0.1:PORT); `0.0.0.0:PORT` or `[::]:PORT` for every address.
    #[arg(global = true, long, value_name = "ADDR", value_parser = crate::output::metrics::parse_addr)]
    pub metrics: Option<std::net::SocketAddr>,

    /// No stream on stdout: metrics and errors only (for services).
    #[arg(global = true, long, short = 'q')]
    pub quiet: bool,

    /// The kubelet's pod log directory, where pod names and namespaces are
    /// read (`<namespace>_<name>_<uid>/`).
    #[arg(global = true, long, value_name = "DIR", default_value = crate::enrich::pod::POD_LOGS, hide = true)]
    pub pod_logs: std::path::PathBuf,

    /// Size of the kernel-to-agent ring buffer in bytes (a power of two, at
    /// least 4096).
    #[arg(global = true, long, value_name = "BYTES", default_value = "1048576", value_parser = parse_ring_size)]
    pub ring_buffer_size: u32,

    /// How often to re-check the table against the kernel's socket table,
    /// which recovers from lost events.
    #[arg(global = true, long, value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub reconcile_interval: Duration,

    /// Force an attach point instead of the best available: `tp-btf`,
    /// `tracepoint` (the fallback, for testing it), or `empty` (benchmarks:
    /// an empty program on the same hook).
    #[arg(global = true, long, value_enum, hide = true)]
    pub attach: Option<AttachMode>,

    /// Behave as if the kernel lacked FEATURE (repeatable; for testing each
    /// fallback): btf, tp-btf, socket-cookie, ringbuf, stacks,
    /// syscall-tracepoints.
    #[arg(global = true, long, value_enum, value_name = "FEATURE", hide = true)]
    pub without: Vec<Feature>,

    /// Capacity of each creation-record map (connect() by cookie, accept()
    /// by process and fd); tests shrink it to fill it.
    #[arg(global = true, long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..=1 << 24), hide = true)]
    pub creation_records: u32,

    /// Look up owners and stacks only, no evidence or diagnosis (the
    /// benchmark's baseline for what evidence costs).
    #[arg(global = true, long, hide = true)]
    pub no_evidence: bool,

    /// Record EOF reads (`last_read`) from the start, not from the first
    /// socket found that read EOF and was not closed (the benchmark's
    /// measure of what the recorder costs).
    #[arg(global = true, long, hide = true)]
    pub arm_eof_reads: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// A live, full-screen view: one row per group of stuck sockets
    /// (count, growth, oldest dwell, owner, endpoint, creation site,
    /// cause); Enter shows a group's sockets, stack and hint. Keys: arrows
    /// or j/k, Enter, Esc, s (sort), / (filter), q or Ctrl-C (quit). Takes
    /// the same filters and --threshold as the stream.
    Top(TopArgs),
}

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Refresh every SECONDS (e.g. 1, 0.5, 2s); the screen is redrawn only
    /// when something changed.
    #[arg(short = 'd', long = "delay", value_name = "SECONDS", default_value = "1", value_parser = parse_delay)]
    pub delay: Duration,

    /// Print the table once, after one refresh interval, and exit (for
    /// pipes and scripts, like top's batch mode; stdout need not be a
    /// terminal).
    #[arg(long)]
    pub once: bool,
}

/// When creation stacks are recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StacksMode {
    Auto,
    On,
    Off,
}

impl StacksMode {
    pub fn name(self) -> &'static str {
        match self {
            StacksMode::Auto => "auto",
            StacksMode::On => "on",
            StacksMode::Off => "off",
        }
    }
}

impl Cli {
    /// `top`'s settings, when it is `top`.
    pub fn top(&self) -> Option<&TopArgs> {
        match &self.command {
            Some(Command::Top(t)) => Some(t),
            None => None,
        }
    }

    pub fn stacks_mode(&self) -> StacksMode {
        if self.no_stacks {
            StacksMode::Off
        } else {
            self.stacks
        }
    }

    pub fn family(&self) -> Option<Family> {
        match (self.ipv4, self.ipv6) {
            (true, _) => Some(Family::V4),
            (_, true) => Some(Family::V6),
            _ => None,
        }
    }
}

/// Seconds as a number (`0.5`) or a duration (`500ms`), at least 100 ms.
fn parse_delay(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("`{s}` is not a number of seconds")),
        Err(_) => parse_duration(s)?,
    };
    if d < Duration::from_millis(100) {
        return Err(format!(
            "`{s}` is under the shortest refresh interval (0.1 s)"
        ));
    }
    Ok(d)
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{s}` is not a port (1-65535)")),
        Ok(p) => Ok(p),
    }
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n >= 4096 && n.is_power_of_two() => Ok(n),
        _ => Err(format!("`{s}` is not a power of two of at least 4096")),
    }
}

/// Parse arguments; on a usage error return its first line (clap's error
/// without the usage block), for a one-line message.
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    let conflict = |msg: String| {
        <Cli as clap::CommandFactory>::command()
            .error(clap::error::ErrorKind::ArgumentConflict, msg)
    };
    if cli.quiet && (cli.json || cli.all || cli.top().is_some()) {
        return Err(conflict(
            "--quiet prints no stream: it does not go with --json, --all or top".into(),
        ));
    }
    if matches!(cli.command, Some(Command::Top(_))) {
        for (set, flag) in [(cli.json, "--json"), (cli.all, "--all")] {
            if set {
                return Err(conflict(format!(
                    "`top` is a live view; {flag} is for the stream (run without `top`)"
                )));
            }
        }
    }
    Ok(cli)
}

/// Clap's error, reduced to its first line.
pub fn one_line_error(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments");
    format!("{} (see --help)", first.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Cli, clap::Error> {
        parse(std::iter::once("closewait-trace").chain(a.iter().copied()))
    }

    #[test]
    fn top_takes_the_stream_flags_and_its_own() {
        let cli = args(&["top", "--threshold", "2s", "--port", "80", "-d", "0.5"]).unwrap();
        let top = cli.top().expect("top");
        assert_eq!(top.delay, Duration::from_millis(500));
        assert!(!top.once);
        assert_eq!(cli.threshold, Duration::from_secs(2));
        assert_eq!(cli.ports, [80]);
        let cli = args(&["--comm", "api", "top", "--once", "--delay", "2s"]).unwrap();
        assert_eq!(cli.top().unwrap().delay, Duration::from_secs(2));
        assert!(cli.top().unwrap().once);
        assert_eq!(cli.comms, ["api"]);
        assert_eq!(
            args(&["top"]).unwrap().top().unwrap().delay,
            Duration::from_secs(1)
        );
        assert!(args(&[]).unwrap().top().is_none());
        for bad in [
            &["top", "-d", "0"][..],
            &["top", "-d", "x"],
            &["top", "-d", "-1"],
            &["top", "--json"],
            &["top", "--all"],
        ] {
            let err = args(bad).expect_err("refused");
            assert!(!one_line_error(&err).contains('\n'), "{bad:?}");
        }
        assert!(one_line_error(&args(&["top", "--json"]).unwrap_err()).contains("live view"));
    }

    #[test]
    fn metrics_address_and_quiet() {
        let cli = args(&["--metrics", ":9464", "--quiet"]).unwrap();
        assert_eq!(cli.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(cli.quiet);
        assert_eq!(args(&[]).unwrap().metrics, None);
        for bad in [
            &["--metrics", "9464"][..],
            &["--quiet", "--json"],
            &["--quiet", "top"],
        ] {
            let err = args(bad).expect_err("refused");
            assert!(!one_line_error(&err).contains('\n'), "{bad:?}");
        }
    }

    #[test]
    fn defaults() {
        let cli = args(&[]).expect("no flags is valid");
        assert_eq!(cli.threshold, Duration::from_secs(5));
        assert_eq!(cli.duration, None);
        assert!(cli.ports.is_empty());
        assert_eq!(cli.family(), None);
        assert!(!cli.all && !cli.json);
        assert_eq!(cli.ring_buffer_size, 1 << 20);
    }

    #[test]
    fn durations_ports_families() {
        let cli = args(&[
            "--threshold",
            "500ms",
            "--duration",
            "5m",
            "--port",
            "80",
            "-p",
            "443",
            "-6",
            "--all",
            "--json",
        ])
        .expect("valid");
        assert_eq!(cli.threshold, Duration::from_millis(500));
        assert_eq!(cli.duration, Some(Duration::from_secs(300)));
        assert_eq!(cli.ports, vec![80, 443]);
        assert_eq!(cli.family(), Some(Family::V6));
        assert!(cli.all && cli.json);
        let cli =
            args(&["--pid", "42", "--pid", "43", "--comm", "api", "--no-stacks"]).expect("valid");
        assert_eq!(cli.pids, vec![42, 43]);
        assert_eq!(cli.comms, vec!["api".to_string()]);
        assert_eq!(cli.stacks_mode(), StacksMode::Off);
        assert_eq!(args(&[]).unwrap().stacks_mode(), StacksMode::Auto);
        assert_eq!(
            args(&["--stacks", "on"]).unwrap().stacks_mode(),
            StacksMode::On
        );
    }

    #[test]
    fn bad_flags_are_one_line_errors() {
        for bad in [
            &["--threshold", "soon"][..],
            &["--duration", "0s"],
            &["--port", "70000"],
            &["--port", "0"],
            &["-4", "-6"],
            &["--bogus"],
            &["--ring-buffer-size", "5000"],
            &["--pid", "-1"],
            &["--pid", "x"],
            &["--stacks", "sometimes"],
            &["--stacks", "on", "--no-stacks"],
        ] {
            let err = args(bad).expect_err(&format!("{bad:?} must be rejected"));
            let line = one_line_error(&err);
            assert!(!line.contains('\n'), "{line}");
            assert!(line.starts_with("error:"), "{line}");
        }
    }
}
