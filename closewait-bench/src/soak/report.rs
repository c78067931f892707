//! What a soak measured, what is wrong with it, and its markdown report.

use std::fmt::Write as _;

use serde_json::Value;

use super::{ledger::Audit, SoakArgs, HWM_GROWTH, HWM_SLACK_KIB};
use crate::scrape::Metrics;

/// One point of the timeline.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Since the churn started.
    pub at_s: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub cpu_s: f64,
    pub metrics: Metrics,
    pub leakers: usize,
}

/// Everything a soak measured; `None` where the run did not get that far.
#[derive(Debug, Default)]
pub struct Figures {
    pub park_s: f64,
    pub start_line_s: f64,
    pub all_reported_s: f64,
    /// Spawn to every socket found flagged stuck (the end of start-up).
    pub all_stuck_s: f64,
    /// VmHWM once every socket found is stuck, and at the end of start-up (the first
    /// periodic scans under churn).
    pub hwm_stuck_kib: u64,
    pub hwm_start_kib: u64,
    pub rss_start_kib: u64,
    pub hwm_end_kib: u64,
    pub rss_end_kib: u64,
    pub cpu_percent: Option<f64>,
    pub churn_rate: Option<f64>,
    pub churn_connections: Option<f64>,
    pub churn_errors: Option<f64>,
    pub kill_converged_s: Option<f64>,
    pub stopped_s: Option<f64>,
    pub ring_converged_s: Option<f64>,
    pub lost_in_ring_full: Option<u64>,
    /// The sum of the stream's `lost` lines' counts.
    pub lost_in_stream: u64,
    pub truth_open_end: u64,
    /// Sockets of leakers started while tracing, and how many were reported with their
    /// creation record.
    pub fresh: u64,
    pub fresh_with_creation: u64,
    /// Sockets that left CLOSE_WAIT by the kernel's doing while their owner held them.
    pub closed_by_kernel: u64,
    pub metrics_end: Option<Metrics>,
    pub audit_end: Option<Audit>,
    pub release_s: f64,
    pub close_wait_after: Option<u64>,
    pub summary: Option<Value>,
    pub audit_final: Option<Audit>,
    pub samples: Vec<Sample>,
}

impl Figures {
    fn summary_u64(&self, key: &str) -> Option<u64> {
        self.summary.as_ref()?.get(key)?.as_u64()
    }

    /// The memory the end may reach: the start-up high-water mark and some slack.
    pub fn hwm_budget_kib(&self) -> u64 {
        (self.hwm_start_kib as f64 * (1.0 + HWM_GROWTH)) as u64 + HWM_SLACK_KIB
    }

    /// What is wrong, one line each; empty when the soak passed.
    pub fn problems(&self) -> Vec<String> {
        let (Some(end), Some(last), Some(m)) =
            (&self.audit_end, &self.audit_final, &self.metrics_end)
        else {
            return vec!["no audit: the run did not get that far".into()];
        };
        let mut out = Vec::new();
        if self.summary.is_none() {
            out.push("closewait-trace printed no summary line at exit".to_string());
        }
        for p in end.problems() {
            out.push(format!("at the end of the churn: {p}"));
        }
        for p in last.problems() {
            out.push(format!("after the release: {p}"));
        }
        if m.stuck_churn != self.truth_open_end as f64 {
            out.push(format!(
                "closewait_stuck_sockets of the leakers is {} at the end; {} were stuck",
                m.stuck_churn, self.truth_open_end
            ));
        }
        if self.fresh_with_creation < self.fresh {
            out.push(format!(
                "{} of {} sockets leaked while tracing were reported without their creation \
                 stack",
                self.fresh - self.fresh_with_creation,
                self.fresh
            ));
        }
        if self.hwm_end_kib > self.hwm_budget_kib() {
            out.push(format!(
                "memory grew: VmHWM {} KiB at the end, {} KiB after start-up (at most {} KiB)",
                self.hwm_end_kib,
                self.hwm_start_kib,
                self.hwm_budget_kib()
            ));
        }
        let table = self.summary_u64("in_close_wait");
        if self.summary.is_some() && table != self.close_wait_after {
            out.push(format!(
                "the table holds {table:?} sockets in CLOSE_WAIT after the release; the kernel \
                 has {:?}",
                self.close_wait_after
            ));
        }
        if self.lost_in_ring_full == Some(0) {
            out.push(
                "no event was lost while the tracer was stopped: the ring buffer never filled, \
                 so recovery was not tested"
                    .into(),
            );
        }
        let lost = self.summary_u64("lost");
        if self.summary.is_some() && lost.is_none_or(|l| l < self.lost_in_stream) {
            out.push(format!(
                "the summary counts {lost:?} lost events; the stream's lost lines count {}",
                self.lost_in_stream
            ));
        }
        if self.churn_errors.is_some_and(|e| e > 0.0) {
            out.push(format!("the churn had {:?} errors", self.churn_errors));
        }
        out
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn opt<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v}{unit}"))
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1} s"))
}

/// The report: the settings, the verdict, the figures and the timeline.
pub fn render(args: &SoakArgs, f: &Figures, error: Option<&anyhow::Error>) -> String {
    let mut out = String::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = writeln!(out, "# closewait-trace soak\n");
    let _ = writeln!(
        out,
        "{} sockets stuck in CLOSE_WAIT across {} processes in {} network namespaces, \
         full-speed churn for {:?}; the owners of {} killed (SIGKILL) at 30% and replaced; \
         at 60% the tracer stopped (SIGSTOP) for {:?} at full churn while one more owner is \
         killed and replaced. Kernel {}, {} CPUs.\n",
        args.sockets,
        args.processes,
        args.namespaces,
        args.duration,
        args.kill,
        args.ring_full,
        kernel.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let mut problems = f.problems();
    if let Some(err) = error {
        problems.insert(0, format!("the run failed: {err:#}"));
    }
    if problems.is_empty() {
        let _ = writeln!(out, "**Result: passed.**\n");
    } else {
        let _ = writeln!(out, "**Result: FAILED.**\n");
        for p in &problems {
            let _ = writeln!(out, "- {p}");
        }
        out.push('\n');
    }
    let audit = |a: &Option<Audit>| {
        a.as_ref().map_or_else(
            || "-".into(),
            |a| {
                format!(
                    "{} open and {} closed sockets checked; {} problems",
                    a.open,
                    a.closed,
                    a.problems().len()
                )
            },
        )
    };
    let rows: Vec<(&str, String)> = vec![
        ("parking the sockets", format!("{:.1} s", f.park_s)),
        (
            "closewait-trace: spawn to start line",
            format!("{:.1} s", f.start_line_s),
        ),
        (
            "spawn to every existing socket reported",
            format!("{:.1} s", f.all_reported_s),
        ),
        (
            "churn",
            format!(
                "{} connections, {} conn/s, {} errors",
                opt(f.churn_connections, ""),
                opt(f.churn_rate.map(|r| format!("{r:.0}")), ""),
                opt(f.churn_errors, "")
            ),
        ),
        (
            "agent CPU during the churn (one core = 100%)",
            opt(f.cpu_percent.map(|c| format!("{c:.1}")), "%"),
        ),
        (
            "VmHWM when every socket found is stuck / after start-up (15 s of churn) / at the end",
            format!(
                "{} / {} / {} (budget {})",
                mib(f.hwm_stuck_kib),
                mib(f.hwm_start_kib),
                mib(f.hwm_end_kib),
                mib(f.hwm_budget_kib())
            ),
        ),
        (
            "VmRSS after start-up / at the end",
            format!("{} / {}", mib(f.rss_start_kib), mib(f.rss_end_kib)),
        ),
        (
            "kill -9: until every socket is reported closed and every new one stuck",
            secs(f.kill_converged_s),
        ),
        ("tracer stopped (ring buffer full)", secs(f.stopped_s)),
        ("events lost meanwhile", opt(f.lost_in_ring_full, "")),
        (
            "resume: until every socket is reported closed and every new one stuck",
            secs(f.ring_converged_s),
        ),
        ("audit at the end of the churn", audit(&f.audit_end)),
        (
            "sockets leaked while tracing, reported with their creation stack",
            format!("{} of {}", f.fresh_with_creation, f.fresh),
        ),
        (
            "sockets the kernel closed under their owner (a reset from the peer)",
            f.closed_by_kernel.to_string(),
        ),
        (
            "closewait_stuck_sockets of the leakers / truth",
            format!(
                "{} / {}",
                opt(f.metrics_end.map(|m| m.stuck_churn), ""),
                f.truth_open_end
            ),
        ),
        (
            "release of every socket: until all reported closed",
            format!("{:.1} s", f.release_s),
        ),
        ("audit after the release", audit(&f.audit_final)),
        (
            "in CLOSE_WAIT after the release: table / kernel",
            format!(
                "{} / {}",
                opt(f.summary_u64("in_close_wait"), ""),
                opt(f.close_wait_after, "")
            ),
        ),
        (
            "lost events (summary)",
            format!(
                "{} ({} recovered entries, {} recovered exits)",
                opt(f.summary_u64("lost"), ""),
                opt(f.summary_u64("recovered_enters"), ""),
                opt(f.summary_u64("recovered_exits"), "")
            ),
        ),
        (
            "closes found by reconciliation",
            opt(f.audit_final.as_ref().map(|a| a.recovered_closes), ""),
        ),
    ];
    let _ = writeln!(out, "| what | measured |\n| --- | --- |");
    for (what, value) in rows {
        let _ = writeln!(out, "| {what} | {value} |");
    }
    if !f.samples.is_empty() {
        let _ = writeln!(
            out,
            "\n| t | leakers | closewait_sockets | stuck | lost (total) | VmRSS | VmHWM | CPU since last |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let every = (f.samples.len() / 20).max(1);
        let mut last: Option<&Sample> = None;
        for (i, s) in f.samples.iter().enumerate() {
            if i % every != 0 && i + 1 != f.samples.len() {
                continue;
            }
            let cpu = last.map_or_else(
                || "-".into(),
                |l| {
                    format!(
                        "{:.1}%",
                        100.0 * (s.cpu_s - l.cpu_s) / (s.at_s - l.at_s).max(0.001)
                    )
                },
            );
            let _ = writeln!(
                out,
                "| {:.0} s | {} | {} | {} | {} | {} | {} | {cpu} |",
                s.at_s,
                s.leakers,
                s.metrics.sockets,
                s.metrics.stuck,
                s.metrics.lost,
                mib(s.rss_kib),
                mib(s.hwm_kib)
            );
            last = Some(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passing() -> Figures {
        Figures {
            hwm_start_kib: 50 * 1024,
            hwm_end_kib: 60 * 1024,
            truth_open_end: 100,
            metrics_end: Some(Metrics {
                stuck_churn: 100.0,
                ..Metrics::default()
            }),
            audit_end: Some(Audit::default()),
            audit_final: Some(Audit::default()),
            close_wait_after: Some(0),
            lost_in_ring_full: Some(7),
            lost_in_stream: 7,
            summary: Some(serde_json::json!({"in_close_wait": 0, "lost": 9})),
            ..Figures::default()
        }
    }

    #[test]
    fn a_good_run_has_no_problems() {
        assert_eq!(passing().problems(), Vec::<String>::new());
    }

    #[test]
    fn each_broken_promise_is_a_problem() {
        type Breaks = fn(&mut Figures);
        let cases: Vec<(Breaks, &str)> = vec![
            (|f| f.hwm_end_kib = 90 * 1024, "memory grew"),
            (|f| f.close_wait_after = Some(3), "the table holds"),
            (|f| f.lost_in_ring_full = Some(0), "never filled"),
            (|f| f.lost_in_stream = 10, "lost events"),
            (|f| f.fresh = 3, "without their creation stack"),
            (
                |f| f.metrics_end.as_mut().unwrap().stuck_churn = 99.0,
                "closewait_stuck_sockets",
            ),
            (
                |f| f.audit_final.as_mut().unwrap().closed_not_closed = 1,
                "after the release: 1 sockets the kernel closed",
            ),
            (|f| f.audit_end = None, "did not get that far"),
            (|f| f.summary = None, "no summary line"),
        ];
        for (breaks, wanted) in cases {
            let mut f = passing();
            breaks(&mut f);
            let problems = f.problems();
            assert!(
                problems.len() == 1 && problems[0].contains(wanted),
                "{wanted}: {problems:?}"
            );
        }
    }

    #[test]
    fn the_report_says_failed_with_the_reason() {
        let args = SoakArgs {
            duration: std::time::Duration::from_secs(60),
            sockets: 100,
            processes: 10,
            namespaces: 5,
            kill: 30,
            ring_full: std::time::Duration::from_secs(10),
        };
        let ok = render(&args, &passing(), None);
        assert!(ok.contains("**Result: passed.**"), "{ok}");
        let err = anyhow::anyhow!("leaker died");
        let failed = render(&args, &passing(), Some(&err));
        assert!(
            failed.contains("FAILED") && failed.contains("leaker died"),
            "{failed}"
        );
    }
}
