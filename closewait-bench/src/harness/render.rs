//! The report: markdown, one section a step, then the budget (or, for a smoke run, a note that
//! there is none).

use std::{collections::BTreeMap, fmt::Write as _, fs, process::Command, thread};

use anyhow::Result;
use closewait_host::command::probe;

use super::{
    budget::render_budget,
    measure::{Dwell, ProgStats},
    plan::{Config, CPU_TEST_RATE, DWELL_PORT, HOLD, LOAD_CPU, RSS_DRAIN, TRACER_CPU},
    run::{Bench, Results, Round, Rss, Sample, StartRun, Startup, RECV_CONFIGS},
    stats::{
        cpu_per_10k, cpu_percent, ns_per_run, paired, percentile, ratios, samples, summary_number,
        total_runs, Spread,
    },
};

pub(super) fn render(bench: &Bench, results: &Results, command: &str) -> String {
    let mut out = String::new();
    render_header(&mut out, bench, command);
    render_section(
        &mut out,
        "Throughput",
        &results.throughput,
        |out, rounds| render_throughput(out, rounds, &bench.unavailable),
    );
    render_section(
        &mut out,
        "BPF program cost",
        &results.bpf_cost,
        |out, rounds| render_bpf_cost(out, rounds, &bench.unavailable),
    );
    let cpu_title = format!("Agent CPU at {CPU_TEST_RATE} connections/s");
    render_section(&mut out, &cpu_title, &results.cpu, |out, s| {
        render_cpu(out, s)
    });
    render_section(&mut out, "Dwell accuracy", &results.dwell, render_dwell);
    render_section(&mut out, "Start-up", &results.startup, render_startup);
    render_section(&mut out, "Memory", &results.rss, render_rss);
    render_section(&mut out, "Recv-heavy load", &results.recv, |out, r| {
        render_recv(out, r)
    });
    if bench.plan.smoke {
        out.push_str("## Budget\n\nSmoke run (tiny sizes): no budget comparison.\n");
    } else {
        render_budget(&mut out, results);
    }
    out
}

fn render_section<T>(
    out: &mut String,
    title: &str,
    result: &Result<T>,
    body: impl FnOnce(&mut String, &T),
) {
    let _ = writeln!(out, "## {title}\n");
    match result {
        Ok(value) => body(out, value),
        Err(err) => {
            let _ = writeln!(out, "**failed**: {err:#}");
        }
    }
    out.push('\n');
}

fn render_header(out: &mut String, bench: &Bench, command: &str) {
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("model name"))?;
            Some(line.split_once(':')?.1.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let date = probe(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
    let start = bench.trace_start.as_ref();
    let field = |key| start.and_then(|s| s.get(key)?.as_str()).unwrap_or("?");
    let plan = &bench.plan;
    let _ = writeln!(out, "# closewait-trace benchmarks\n");
    let _ = writeln!(out, "- command: `{command}`");
    let _ = writeln!(out, "- date: {}", date.unwrap_or_default().trim());
    let _ = writeln!(
        out,
        "- machine: Linux {} ({cpus} CPUs, {cpu_model})",
        kernel.trim()
    );
    let _ = writeln!(
        out,
        "- closewait-trace {} (attach: {}, source {}); peers: {}",
        field("version"),
        field("attach"),
        source_revision(),
        peer_versions(bench)
    );
    let _ = writeln!(
        out,
        "- {} round(s) of {} s of load; churn on CPU {LOAD_CPU} in network namespace \
         `{}`, tracers on CPU {TRACER_CPU}",
        plan.rounds, plan.seconds, bench.netns
    );
    let _ = writeln!(
        out,
        "- logs (stderr of every process): {}\n",
        bench.out_dir.join("logs").display()
    );
}

/// The commit the binaries were built from, and whether the tree had changes.
fn source_revision() -> String {
    let git = |args: &[&str]| {
        let mut git = Command::new("git");
        // This crate's directory is inside the work tree the binaries were built from.
        git.current_dir(env!("CARGO_MANIFEST_DIR")).args(args);
        probe(&mut git)
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.trim().is_empty());
    let changes = if dirty { " + uncommitted changes" } else { "" };
    format!("{}{changes}", head.trim())
}

fn peer_versions(bench: &Bench) -> String {
    let version = |package: &str| {
        let query = Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", package])
            .output();
        query
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let describe = |config: Config, package: &str| match bench.peers.get(&config) {
        Some(path) => format!(
            "{} ({package} {})",
            path.display(),
            version(package).unwrap_or_else(|| "?".into())
        ),
        None => format!("{} not installed", config.name()),
    };
    format!(
        "{}, {}",
        describe(Config::Tcpstates, "libbpf-tools"),
        describe(Config::Bpftrace, "bpftrace")
    )
}

fn render_throughput(out: &mut String, rounds: &[Round], unavailable: &BTreeMap<Config, String>) {
    out.push_str(
        "Churn at full speed next to each configuration; rate relative to `none` (no tracer) \
         in the same round.\n\n\
         | config | rate / none: median (min–max) | median rate (conn/s) | lost events | \
         events seen / connections | agent CPU ms per 10k conn |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for config in Config::ALL {
        if let Some(reason) = unavailable.get(&config) {
            let _ = writeln!(out, "| {} | unavailable: {reason} | | | | |", config.name());
            continue;
        }
        let dash = || "—".to_owned();
        let show = |values: Vec<f64>, f: fn(f64) -> String| {
            Spread::of(values).map_or_else(dash, |s| s.show(f))
        };
        let ratio = show(ratios(rounds, config), pct);
        let rate = Spread::of(samples(rounds, config).map(|s| s.rate))
            .map_or_else(dash, |s| int(s.median));
        let closewait = config == Config::Empty || config.is_closewait();
        let lost = samples(rounds, config).filter_map(|s| summary_number(s, "lost"));
        let lost = if closewait { int(lost.sum()) } else { dash() };
        let seen = samples(rounds, config)
            .filter_map(|s| Some(summary_number(s, "entered")? / s.connections))
            .collect();
        let seen = if config.is_closewait() {
            show(seen, |x| format!("{x:.3}"))
        } else {
            dash()
        };
        let cpu = show(
            samples(rounds, config).filter_map(cpu_per_10k).collect(),
            |x| format!("{x:.1}"),
        );
        let name = config.name();
        let _ = writeln!(
            out,
            "| {name} | {ratio} | {rate} | {lost} | {seen} | {cpu} |"
        );
    }
    out.push_str("\nRates per round (conn/s), in the order run:\n\n| round | order |");
    for config in Config::ALL {
        let _ = write!(out, " {} |", config.name());
    }
    out.push_str("\n| --- | --- |");
    out.push_str(&" --- |".repeat(Config::ALL.len()));
    out.push('\n');
    for (i, round) in rounds.iter().enumerate() {
        let order: Vec<&str> = round.order.iter().map(|c| c.name()).collect();
        let _ = write!(out, "| {} | {} |", i + 1, order.join(", "));
        for config in Config::ALL {
            let rate = round
                .samples
                .get(&config)
                .map_or("—".into(), |s| int(s.rate));
            let _ = write!(out, " {rate} |");
        }
        out.push('\n');
    }
    let errors: f64 = rounds
        .iter()
        .flat_map(|r| r.samples.values())
        .map(|s| s.errors)
        .sum();
    let _ = writeln!(out, "\nchurn errors over all runs: {errors:.0}");
}

fn render_bpf_cost(out: &mut String, rounds: &[Round], unavailable: &BTreeMap<Config, String>) {
    out.push_str(
        "Separate rounds with kernel.bpf_stats_enabled=1: run_time_ns and run_cnt of the BPF \
         programs the tracer holds (/proc/PID/fdinfo), per connection of churn.\n\n\
         | tracer | ns per run: median (min–max) | runs per connection | BPF ns per \
         connection | programs, last round (id: ns/run × runs/conn) |\n\
         | --- | --- | --- | --- | --- |\n",
    );
    for config in Config::TRACERS {
        let name = config.name();
        if let Some(reason) = unavailable.get(&config) {
            let _ = writeln!(out, "| {name} | unavailable: {reason} | | | |");
            continue;
        }
        let median = |f: fn(&Sample) -> Option<f64>, show: fn(f64) -> String| {
            let spread = Spread::of(samples(rounds, config).filter_map(f));
            spread.map_or("—".into(), |s| show(s.median))
        };
        let ns = Spread::of(samples(rounds, config).filter_map(ns_per_run));
        let ns = ns.map_or("—".into(), |s| s.show(int));
        let runs = median(
            |s| Some(total_runs(s) as f64 / s.connections),
            |x| format!("{x:.2}"),
        );
        let per_conn = median(
            |s| Some(s.progs.iter().map(|p| p.run_time_ns).sum::<u64>() as f64 / s.connections),
            int,
        );
        let progs = samples(rounds, config).last().map_or("—".into(), |s| {
            let prog = |p: &ProgStats| {
                let ns = p.run_time_ns as f64 / p.run_cnt.max(1) as f64;
                format!(
                    "{}: {ns:.0} × {:.2}",
                    p.id,
                    p.run_cnt as f64 / s.connections
                )
            };
            s.progs.iter().map(prog).collect::<Vec<_>>().join(", ")
        });
        let _ = writeln!(out, "| {name} | {ns} | {runs} | {per_conn} | {progs} |");
    }
}

fn render_cpu(out: &mut String, samples: &[Sample]) {
    out.push_str(
        "closewait-trace (default mode) during churn `--rate` runs; CPU = agent user+system \
         time / wall time.\n\n\
         | run | achieved rate (conn/s) | agent CPU s | wall s | CPU % of one core |\n\
         | --- | --- | --- | --- | --- |\n",
    );
    for (i, s) in samples.iter().enumerate() {
        let cpu = s.cpu_s.unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "| {} | {} | {cpu:.2} | {:.2} | {:.2}% |",
            i + 1,
            int(s.rate),
            s.wall_s,
            cpu / s.wall_s * 100.0
        );
    }
    if let Some(spread) = Spread::of(samples.iter().filter_map(cpu_percent)) {
        let _ = writeln!(
            out,
            "\nCPU % of one core: {}",
            spread.show(|x| format!("{x:.2}%"))
        );
    }
}

fn render_dwell(out: &mut String, dwell: &Dwell) {
    let mut errors = dwell.errors_ns.clone();
    errors.sort_by(f64::total_cmp);
    let us = |p: f64| percentile(&errors, p).map_or("—".into(), |ns| format!("{:.1}", ns / 1e3));
    let _ = writeln!(
        out,
        "`churn --hold {HOLD}` ground truth against closewait-trace `--all --port {DWELL_PORT}` \
         close events, matched by (lport, rport); error = |dwell_ms × 10⁶ − dwell_ns|.\n\n\
         | truth lines | close events | matched | error p50 (µs) | p99 (µs) | max (µs) |\n\
         | --- | --- | --- | --- | --- | --- |\n\
         | {} | {} | {} | {} | {} | {} |",
        dwell.truth,
        dwell.closes,
        errors.len(),
        us(50.0),
        us(99.0),
        us(100.0)
    );
}

fn render_startup(out: &mut String, startup: &Startup) {
    let ms = |x: f64| format!("{:.0} ms", x * 1e3);
    let _ = writeln!(
        out,
        "closewait-trace spawned (pinned) with {} sockets parked in CLOSE_WAIT, timed to its \
         start line and to its last `existing` report; with evidence and diagnosis (the \
         default) and without (`--no-evidence`, the baseline), alternating, {} runs each.\n\n\
         | evidence | start.existing | diagnosed | spawn → start line | spawn → last existing |\n\
         | --- | --- | --- | --- | --- |",
        startup.parked,
        startup.runs.len() / 2,
    );
    for evidence in [true, false] {
        let runs: Vec<&StartRun> = startup
            .runs
            .iter()
            .filter(|r| r.evidence == evidence)
            .collect();
        let spread = |f: fn(&StartRun) -> f64| {
            Spread::of(runs.iter().map(|r| f(r))).map_or("—".into(), |s| s.show(ms))
        };
        let list = |f: fn(&StartRun) -> u64| {
            let all: Vec<String> = runs.iter().map(|r| f(r).to_string()).collect();
            all.join(", ")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            if evidence { "yes" } else { "no" },
            list(|r| r.existing),
            list(|r| r.diagnosed),
            spread(|r| r.start_s),
            spread(|r| r.reported_s),
        );
    }
}

fn render_recv(out: &mut String, rounds: &[Round]) {
    out.push_str(
        "`churn --recv`: one loopback connection, one recv() per 64-byte message, next to \
         closewait-trace in its default mode, with `--stacks on`, and with `--stacks on` and \
         the EOF-read recorder on `sock:sock_recv_length` armed from the start (it runs at \
         every recv() on the host; otherwise it is armed at the first socket that read EOF \
         and was not closed); reads per second relative to `none` in the same round, and \
         paired per round.\n\n\
         | config | rate / none: median (min–max) | median reads/s |\n| --- | --- | --- |\n",
    );
    for config in RECV_CONFIGS {
        let ratio = Spread::of(ratios(rounds, config)).map_or("—".into(), |s| s.show(pct));
        let rate = Spread::of(samples(rounds, config).map(|s| s.rate))
            .map_or("—".into(), |s| int(s.median));
        let _ = writeln!(out, "| {} | {ratio} | {rate} |", config.name());
    }
    let pair = |c, base| Spread::of(paired(rounds, c, base)).map_or("—".into(), |s| s.show(pct));
    let _ = writeln!(
        out,
        "\nPaired per round: closewait-stacks / closewait {}, closewait-eofreads / closewait-stacks {}",
        pair(Config::ClosewaitStacks, Config::Closewait),
        pair(Config::ClosewaitEofReads, Config::ClosewaitStacks),
    );
}

fn render_rss(out: &mut String, rss: &Rss) {
    let _ = writeln!(
        out,
        "closewait-trace (default mode) with sockets parked in CLOSE_WAIT. Tracked: \
         `--threshold 1h` while churn parks them, /proc/PID/status {}s after; reported: a \
         second closewait-trace (default threshold) finds them at start, \
         /proc/PID/status once its metrics count them all stuck (owners, evidence, \
         diagnosis, groups).\n\n\
         | parked | summary in_close_wait | lost | tracked: VmHWM | VmRSS | reported: VmHWM | VmRSS |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n| {} | {} | {} | {} | {} | {} | {} |",
        RSS_DRAIN.as_secs(),
        rss.parked,
        rss.in_close_wait,
        rss.lost,
        mib(rss.hwm_kib),
        mib(rss.rss_kib),
        mib(rss.hwm_stuck_kib),
        mib(rss.rss_stuck_kib)
    );
}

pub(super) fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

pub(super) fn int(x: f64) -> String {
    format!("{x:.0}")
}

pub(super) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
