//! `churn`: loopback TCP connection generator for benchmarking closewait-trace.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use closewait_host::duration;

use closewait_bench::{
    catch_release_signals, check_loopback, park, run_churn, run_hold, run_recv, stdin_is_dev_null,
    sys, tune_netns, wait_for_release, ChurnConfig, HoldConfig, Release,
};

/// Loopback TCP connection churn for benchmarking closewait-trace.
///
/// Modes (exactly one): churn (default, needs --duration), hold (--hold),
/// park (--park), recv (--recv). In churn and hold the server side closes first, so the
/// client socket gets the FIN, sits in CLOSE_WAIT, and leaves it when the
/// client closes (CLOSE_WAIT -> LAST_ACK). Traffic goes to loopback only.
#[derive(Parser, Debug)]
#[command(name = "churn", version)]
struct Cli {
    /// Listener (and client) address: 127.0.0.0/8 or ::1 only
    #[arg(long, default_value = "127.0.0.1")]
    addr: IpAddr,

    /// Listener port (0 = any free port)
    #[arg(long, default_value_t = 0)]
    port: u16,

    /// Pin this process to CPU N (sched_setaffinity)
    #[arg(long, value_name = "N")]
    cpu: Option<usize>,

    /// Set net.ipv4.tcp_max_tw_buckets=1024 and net.ipv4.ip_local_port_range="1024 65535"
    /// in the current network namespace first (refused in the host's namespace)
    #[arg(long)]
    tune_netns: bool,

    /// churn: run this long (e.g. 500ms, 5s, 2m)
    #[arg(long, value_name = "DUR", value_parser = duration::parse,
          required_unless_present_any = ["hold", "park", "recv"],
          conflicts_with_all = ["hold", "park", "recv"])]
    duration: Option<Duration>,

    /// churn: target connections per second (absolute schedule); default: as fast as possible
    #[arg(long, value_name = "N", requires = "duration", value_parser = parse_rate)]
    rate: Option<f64>,

    /// churn: print a progress line on stderr every second
    #[arg(long, requires = "duration")]
    progress: bool,

    /// hold: leave each client socket in CLOSE_WAIT this long (ground truth for dwell)
    #[arg(long, value_name = "DUR", value_parser = duration::parse, requires = "count",
          conflicts_with = "park")]
    hold: Option<Duration>,

    /// hold: number of connections
    #[arg(long, value_name = "N", requires = "hold")]
    count: Option<u64>,

    /// hold: connections per batch
    #[arg(long, value_name = "B", default_value_t = 50, requires = "hold")]
    batch: usize,

    /// hold: write the per-connection JSON lines here instead of stdout
    #[arg(long, value_name = "FILE", requires = "hold")]
    truth: Option<PathBuf>,

    /// park: keep N accepted sockets in CLOSE_WAIT until stdin EOF, SIGTERM or SIGINT
    /// (if stdin is /dev/null, only the signals count)
    #[arg(long, value_name = "N")]
    park: Option<usize>,

    /// recv: for this long, one connection carrying 64-byte messages, each
    /// read by its own recv() (a recv-heavy load: what a per-read
    /// tracepoint costs); `rate` is reads per second
    #[arg(long, value_name = "DUR", value_parser = duration::parse,
          conflicts_with_all = ["hold", "park"])]
    recv: Option<Duration>,

    /// park: give up waiting and exit after this long
    #[arg(long, value_name = "DUR", value_parser = duration::parse, default_value = "60m",
          requires = "park")]
    park_timeout: Duration,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !(r.is_finite() && r > 0.0) {
        return Err(format!("`{s}`: rate must be > 0"));
    }
    Ok(r)
}

fn stdout_line(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("write stdout")?;
    out.flush().context("flush stdout")?;
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    check_loopback(&cli.addr)?;
    let addr = std::net::SocketAddr::new(cli.addr, cli.port);
    sys::raise_nofile().context("raise RLIMIT_NOFILE")?;
    if let Some(cpu) = cli.cpu {
        sys::pin_to_cpu(cpu).with_context(|| format!("pin to CPU {cpu}"))?;
    }
    if cli.tune_netns {
        for line in tune_netns()? {
            eprintln!("churn: {line}");
        }
    }

    if let Some(hold) = cli.hold {
        let count = cli.count.context("--hold needs --count")?;
        let cfg = HoldConfig {
            addr,
            hold,
            count,
            batch: cli.batch,
        };
        let n = match &cli.truth {
            Some(path) => {
                let f = std::fs::File::create(path)
                    .with_context(|| format!("create {}", path.display()))?;
                let mut w = std::io::BufWriter::new(f);
                run_hold(&cfg, &mut w)?
            }
            None => {
                let mut w = std::io::BufWriter::new(std::io::stdout().lock());
                run_hold(&cfg, &mut w)?
            }
        };
        return stdout_line(&format!("{{\"mode\":\"hold\",\"connections\":{n}}}"));
    }

    if let Some(duration) = cli.recv {
        let (reads, rate) = run_recv(&addr, duration)?;
        return stdout_line(&format!(
            "{{\"mode\":\"recv\",\"connections\":{reads},\"reads\":{reads},\"errors\":0,\"rate\":{rate:.1}}}"
        ));
    }

    if let Some(n) = cli.park {
        catch_release_signals().context("sigaction")?;
        let parked = park(&addr, n)?;
        stdout_line(&format!(
            "{{\"mode\":\"park\",\"parked\":{},\"port\":{}}}",
            parked.len(),
            parked.port
        ))?;
        let watch_stdin = !stdin_is_dev_null();
        if !watch_stdin {
            eprintln!("churn: stdin is /dev/null; waiting for SIGTERM or SIGINT");
        }
        match wait_for_release(cli.park_timeout, watch_stdin).context("wait")? {
            Release::StdinEof | Release::Signal(_) => {}
            Release::Timeout => eprintln!(
                "churn: --park-timeout ({:?}) reached, releasing",
                cli.park_timeout
            ),
        }
        drop(parked);
        return Ok(());
    }

    let Some(duration) = cli.duration else {
        bail!("churn mode needs --duration");
    };
    let st = run_churn(&ChurnConfig {
        addr,
        duration,
        rate: cli.rate,
        progress: cli.progress,
    })?;
    eprint!("{}", st.diagnostics());
    stdout_line(&st.json())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("churn: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
