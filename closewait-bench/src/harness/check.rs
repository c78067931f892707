//! Whether every step produced numbers: the checks of a run, smoke or full. They never look
//! at timings (the budget in the report does, and fails nothing).

use std::collections::BTreeMap;

use anyhow::{anyhow, ensure, Context as _, Result};

use super::{
    measure::Dwell,
    plan::{Config, Plan},
    run::{Results, Round, Rss, Sample, Startup},
    stats::total_runs,
};

impl Results {
    /// Steps that failed or produced no numbers (never timings).
    pub(super) fn problems(
        &self,
        plan: &Plan,
        unavailable: &BTreeMap<Config, String>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |step: &str, result: Result<()>| {
            if let Err(err) = result {
                problems.push(format!("{step}: {err:#}"));
            }
        };
        let wanted = |configs: &[Config]| -> Vec<Config> {
            let available = |c: &&Config| !unavailable.contains_key(c);
            configs.iter().filter(available).copied().collect()
        };
        check(
            "throughput",
            check_rounds(&self.throughput, &wanted(&Config::ALL), false),
        );
        check(
            "bpf cost",
            check_rounds(&self.bpf_cost, &wanted(&Config::TRACERS), true),
        );
        check("agent CPU", check_cpu(&self.cpu));
        check("dwell accuracy", check_dwell(&self.dwell));
        check("start-up", check_startup(&self.startup, plan));
        check("memory", check_rss(&self.rss, plan));
        check(
            "recv-heavy",
            check_rounds(&self.recv, &super::run::RECV_CONFIGS, false),
        );
        problems
    }
}

fn check_rounds(rounds: &Result<Vec<Round>>, configs: &[Config], bpf_runs: bool) -> Result<()> {
    let rounds = rounds.as_ref().map_err(|e| anyhow!("{e:#}"))?;
    ensure!(!rounds.is_empty(), "no rounds");
    for (i, round) in rounds.iter().enumerate() {
        for config in configs {
            let name = config.name();
            let sample = round.samples.get(config);
            let sample = sample.with_context(|| format!("round {}: no {name} sample", i + 1))?;
            ensure!(sample.rate > 0.0, "round {}: {name}: zero rate", i + 1);
            let runs = total_runs(sample);
            ensure!(
                !bpf_runs || runs > 0,
                "round {}: {name}: no BPF runs",
                i + 1
            );
        }
    }
    Ok(())
}

fn check_cpu(samples: &Result<Vec<Sample>>) -> Result<()> {
    let samples = samples.as_ref().map_err(|e| anyhow!("{e:#}"))?;
    ensure!(!samples.is_empty(), "no runs");
    for sample in samples {
        ensure!(sample.rate > 0.0, "zero rate");
        ensure!(sample.cpu_s.is_some(), "no CPU time");
    }
    Ok(())
}

fn check_dwell(dwell: &Result<Dwell>) -> Result<()> {
    let dwell = dwell.as_ref().map_err(|e| anyhow!("{e:#}"))?;
    ensure!(dwell.truth > 0, "churn wrote no truth lines");
    ensure!(
        !dwell.errors_ns.is_empty(),
        "no close event matched a truth line"
    );
    Ok(())
}

fn check_startup(startup: &Result<Startup>, plan: &Plan) -> Result<()> {
    let startup = startup.as_ref().map_err(|e| anyhow!("{e:#}"))?;
    let wanted = u64::from(plan.startup_park);
    ensure!(
        startup.parked >= wanted,
        "churn parked {} sockets",
        startup.parked
    );
    ensure!(!startup.runs.is_empty(), "no start line");
    for run in &startup.runs {
        let existing = run.existing;
        ensure!(
            existing >= wanted,
            "start line: existing {existing} < {wanted}"
        );
        let diagnosed = run.diagnosed;
        if run.evidence {
            ensure!(
                diagnosed == existing,
                "{diagnosed} of {existing} existing reports had a diagnosis"
            );
        } else {
            ensure!(diagnosed == 0, "--no-evidence diagnosed {diagnosed}");
        }
    }
    Ok(())
}

fn check_rss(rss: &Result<Rss>, plan: &Plan) -> Result<()> {
    let rss = rss.as_ref().map_err(|e| anyhow!("{e:#}"))?;
    let wanted = u64::from(plan.rss_park);
    ensure!(rss.parked >= wanted, "churn parked {} sockets", rss.parked);
    ensure!(rss.hwm_kib > 0, "no VmHWM");
    ensure!(rss.in_close_wait > 0, "summary: in_close_wait 0");
    Ok(())
}
