//! The budget table: what closewait-trace promises, next to what this run measured.
//! Informational only; nothing here fails a run.

use std::fmt::Write as _;

use super::{
    plan::Config,
    render::{int, mib, pct},
    run::{Results, StartRun},
    stats::{cpu_percent, paired, percentile, ratios, samples, summary_number, Spread},
};

/// A budget row's verdict: `None` when met, else by how much it is missed.
type Missed = Option<String>;

fn missed_by(excess: f64, show: impl Fn(f64) -> String) -> Missed {
    (excess > 0.0).then(|| show(excess))
}

pub(super) fn render_budget(out: &mut String, results: &Results) {
    out.push_str(
        "## Budget\n\nInformational (noisy machine): nothing here fails the run.\n\n\
         | item | budget | measured | verdict |\n| --- | --- | --- | --- |\n",
    );
    let mut row = |item: &str, budget: &str, measured: Option<(String, Missed)>| {
        let (measured, verdict) = match measured {
            Some((text, None)) => (text, "met".to_owned()),
            Some((text, Some(by))) => (text, format!("**missed by {by}**")),
            None => ("no data".into(), String::new()),
        };
        let _ = writeln!(out, "| {item} | {budget} | {measured} | {verdict} |");
    };
    let pp = |x: f64| format!("{:.2} pp", x * 100.0);
    let rounds = results.throughput.as_ref().ok();
    let ratio = |c| rounds.and_then(|r| Spread::of(ratios(r, c)));
    // A median ratio against its floor: the text, and by how much it misses.
    let at_least = |floor: f64| {
        move |s: Spread| {
            let text = s.show(|x| format!("{:.2}%", x * 100.0));
            (text, missed_by(floor - s.median, pp))
        }
    };
    let closewait = ratio(Config::Closewait).map(at_least(0.97));
    row(
        "closewait (default) rate / none (median)",
        ">= 97%",
        closewait,
    );
    let paired_ratio = |c, base| rounds.and_then(|r| Spread::of(paired(r, c, base)));
    let stacks = paired_ratio(Config::ClosewaitStacks, Config::ClosewaitNoStacks);
    row(
        "stacks on / stacks off, paired per round (median)",
        ">= 98%",
        stacks.map(at_least(0.98)),
    );
    // Under churn nothing is stuck: the default records connect() stacks
    // within its budget only.
    let budget = paired_ratio(Config::Closewait, Config::ClosewaitNoStacks);
    row(
        "default (budgeted connect() stacks) / stacks off, paired per round (median)",
        ">= 99%",
        budget.map(at_least(0.99)),
    );
    let recv = results.recv.as_ref().ok();
    let recv = recv.and_then(|r| {
        Spread::of(paired(
            r,
            Config::ClosewaitEofReads,
            Config::ClosewaitStacks,
        ))
    });
    row(
        "recv-heavy load: EOF-read recorder armed / stacks on, paired (median)",
        ">= 98%",
        recv.map(at_least(0.98)),
    );
    let overlap = ratio(Config::Closewait)
        .zip(ratio(Config::Empty))
        .map(|(c, e)| {
            let text = format!("closewait {}, empty {}", c.show(pct), e.show(pct));
            (text, missed_by(c.min.max(e.min) - c.max.min(e.max), pp))
        });
    row("closewait vs empty", "ranges overlap", overlap);
    let lost = rounds.map(|r| {
        let lost: f64 = samples(r, Config::Closewait)
            .filter_map(|s| summary_number(s, "lost"))
            .sum();
        (int(lost), missed_by(lost, int))
    });
    row("lost events at max churn", "0", lost);
    let p99 = results.dwell.as_ref().ok().and_then(|d| {
        let mut errors = d.errors_ns.clone();
        errors.sort_by(f64::total_cmp);
        percentile(&errors, 99.0)
    });
    let ms = |ns: f64| format!("{:.3} ms", ns / 1e6);
    let p99 = p99.map(|ns| (ms(ns), missed_by(ns - 1e6, ms)));
    row("dwell error p99", "<= 1 ms", p99);
    let cpu = results.cpu.as_ref().ok();
    let cpu = cpu.and_then(|s| Spread::of(s.iter().filter_map(cpu_percent)));
    let percent = |x: f64| format!("{x:.2}%");
    let cpu = cpu.map(|s| (s.show(percent), missed_by(s.median - 5.0, percent)));
    row("agent CPU at 20k conn/s (median)", "<= 5% of a core", cpu);
    let rss = results.rss.as_ref().ok();
    let memory = |kib: u64| {
        let excess = kib as f64 - 64.0 * 1024.0;
        let missed = missed_by(excess, |kib| format!("{:.1} MiB", kib / 1024.0));
        (format!("{} VmHWM", mib(kib)), missed)
    };
    row(
        "memory, 100k sockets tracked",
        "<= 64 MiB",
        rss.map(|r| memory(r.hwm_kib)),
    );
    let reported = rss.map(|r| memory(r.hwm_stuck_kib));
    row(
        "memory, 100k sockets stuck and reported",
        "<= 64 MiB",
        reported,
    );
    let startup = results.startup.as_ref().ok();
    let msec = |x: f64| format!("{:.0} ms", x * 1e3);
    let runs = |evidence: bool, f: fn(&StartRun) -> f64| {
        let runs = startup.into_iter().flat_map(|s| &s.runs);
        Spread::of(runs.filter(move |r| r.evidence == evidence).map(f))
    };
    let start = runs(true, |r| r.start_s);
    let start = start.map(|s| (s.show(msec), missed_by(s.max - 1.0, msec)));
    row("start with 10k existing (max)", "<= 1 s", start);
    // What evidence and diagnosis add, medians side by side: to the start
    // line, and to the last existing report (where the lookups end).
    for (item, f) in [
        (
            "evidence for 10k existing: added to the start line",
            (|r| r.start_s) as fn(&StartRun) -> f64,
        ),
        ("evidence for 10k existing: added to the last report", |r| {
            r.reported_s
        }),
    ] {
        let added = runs(true, f).zip(runs(false, f)).map(|(with, without)| {
            let added = with.median - without.median;
            let text = format!(
                "{} (with {}, without {})",
                msec(added),
                msec(with.median),
                msec(without.median)
            );
            (text, missed_by(added - 1.0, msec))
        });
        row(item, "<= 1 s", added);
    }
}
