//! Where the numbers come from besides churn's result lines: the tracer's BPF programs, CPU
//! time and memory in /proc, kernel BPF statistics, and closewait-trace's dwell times matched
//! against churn's ground truth.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fs,
};

use anyhow::{ensure, Context as _, Result};
use serde_json::Value;

use super::process::kind;

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// A BPF program's kernel statistics (run_time_ns and run_cnt count only while
/// kernel.bpf_stats_enabled is 1).
#[derive(Clone, Copy, Debug)]
pub(super) struct ProgStats {
    pub(super) id: u64,
    pub(super) run_time_ns: u64,
    pub(super) run_cnt: u64,
}

/// The BPF programs `pid` holds, from /proc/PID/fdinfo (one entry per program id: a program
/// may be open through several descriptors).
pub(super) fn bpf_progs(pid: u32) -> Result<Vec<ProgStats>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let entries = fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))?;
    let mut progs = BTreeMap::new();
    for entry in entries {
        // A descriptor may close while we read: skip it.
        let Ok(text) = entry.and_then(|e| fs::read_to_string(e.path())) else {
            continue;
        };
        if let Some(prog) = parse_prog_fdinfo(&text) {
            progs.insert(prog.id, prog);
        }
    }
    Ok(progs.into_values().collect())
}

/// A BPF program descriptor's fdinfo has `prog_id` and `run_cnt` (a link's has no `run_cnt`).
fn parse_prog_fdinfo(text: &str) -> Option<ProgStats> {
    let field = |key: &str| {
        let value = text
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))?;
        value.trim().parse().ok()
    };
    Some(ProgStats {
        id: field("prog_id")?,
        run_time_ns: field("run_time_ns")?,
        run_cnt: field("run_cnt")?,
    })
}

/// User + system CPU time of process `pid` (all its threads), in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // Fields after the command name (which may hold spaces) start at field 3; utime and
    // stime are fields 14 and 15, in clock ticks.
    let (_, rest) = stat.rsplit_once(')').context("unexpected /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |field: usize| -> Result<u64> {
        let text = fields.get(field - 3).context("short /proc/PID/stat")?;
        text.parse()
            .with_context(|| format!("bad /proc/PID/stat field {field}"))
    };
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(per_second > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok((ticks(14)? + ticks(15)?) as f64 / per_second as f64)
}

/// A `kB` line of /proc/PID/status, such as VmHWM.
pub(crate) fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .with_context(|| format!("no {key} in {path}"))?;
    let kib = value.trim().trim_end_matches("kB").trim();
    kib.parse().with_context(|| format!("bad {key} in {path}"))
}

/// kernel.bpf_stats_enabled set to 1, restored when dropped.
pub(super) struct BpfStats {
    old: String,
}

impl BpfStats {
    pub(super) fn enable() -> Result<Self> {
        let old =
            fs::read_to_string(BPF_STATS).with_context(|| format!("cannot read {BPF_STATS}"))?;
        fs::write(BPF_STATS, "1").with_context(|| format!("cannot write {BPF_STATS}"))?;
        Ok(Self { old })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(err) = fs::write(BPF_STATS, self.old.trim()) {
            eprintln!("bench: warning: cannot restore {BPF_STATS}: {err}");
        }
    }
}

/// closewait-trace's dwell times against churn's ground truth.
pub(super) struct Dwell {
    /// churn's truth lines.
    pub(super) truth: usize,
    /// closewait-trace's close events.
    pub(super) closes: usize,
    /// |measured - true| of each matched socket, in ns.
    pub(super) errors_ns: Vec<f64>,
}

/// Pairs closewait-trace's `close` events with churn's truth lines by (lport, rport); a tuple
/// that occurs more than once is paired in order.
pub(super) fn match_dwell(truth: &[Value], events: &[Value]) -> Dwell {
    let tuple = |v: &Value| Some((v.get("lport")?.as_u64()?, v.get("rport")?.as_u64()?));
    let mut measured: HashMap<_, VecDeque<f64>> = HashMap::new();
    let closes = events.iter().filter(|v| kind(v) == "close");
    let mut close_count = 0;
    for close in closes {
        if let (Some(t), Some(ms)) = (tuple(close), close.get("dwell_ms").and_then(Value::as_f64)) {
            measured.entry(t).or_default().push_back(ms);
            close_count += 1;
        }
    }
    let mut dwell = Dwell {
        truth: 0,
        closes: close_count,
        errors_ns: Vec::new(),
    };
    for line in truth {
        let (Some(t), Some(ns)) = (tuple(line), line.get("dwell_ns").and_then(Value::as_f64))
        else {
            continue;
        };
        dwell.truth += 1;
        if let Some(ms) = measured.get_mut(&t).and_then(VecDeque::pop_front) {
            dwell.errors_ns.push((ms * 1e6 - ns).abs());
        }
    }
    dwell
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_of_programs_only() {
        let prog = "prog_type:\t26\nprog_id:\t345\nrun_time_ns:\t900\nrun_cnt:\t3\n";
        let link = "link_type:\traw_tracepoint\nprog_id:\t345\n";
        let stats = parse_prog_fdinfo(prog).expect("a program");
        assert_eq!((stats.id, stats.run_time_ns, stats.run_cnt), (345, 900, 3));
        assert!(parse_prog_fdinfo(link).is_none());
    }

    #[test]
    fn dwell_matching() {
        let truth: Vec<Value> = [
            r#"{"lport":5000,"rport":47000,"dwell_ns":50000000}"#,
            r#"{"lport":5001,"rport":47000,"dwell_ns":51000000}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
        let events: Vec<Value> = [
            r#"{"event":"close","lport":5000,"rport":47000,"dwell_ms":50.002}"#,
            r#"{"event":"close","lport":6000,"rport":47000,"dwell_ms":1.0}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
        let dwell = match_dwell(&truth, &events);
        assert_eq!(
            (dwell.truth, dwell.closes, dwell.errors_ns.len()),
            (2, 2, 1)
        );
        assert!((dwell.errors_ns[0] - 2000.0).abs() < 1.0);
    }
}
