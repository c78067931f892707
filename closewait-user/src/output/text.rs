//! The default stream: aligned lines for people, then a summary. Every text
//! that comes from another process goes through [`sanitize::text`] here, once.

use std::{
    io::{self, Write},
    time::Duration,
};

use closewait_common::tcp_state;

use super::{
    format::{count_of, endpoint, human_duration, WallClock},
    sanitize, Output, StartInfo,
};
use crate::{
    enrich::{stacks, Context},
    model::{Enriched, Group, Model},
    probe::Drops,
    tracking::{Bound, Report, Socket},
};

/// Innermost application frames shown on a text line.
const TEXT_FRAMES: usize = 3;
/// Sockets the summary's still-stuck list shows (longest dwell first).
const SUMMARY_SOCKETS: usize = 5;

pub struct Text<W: Write> {
    out: W,
    clock: WallClock,
}

impl<W: Write> Text<W> {
    pub fn new(out: W, clock: WallClock) -> Text<W> {
        Text { out, clock }
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Output for Text<W> {
    fn start(&mut self, info: &StartInfo, _now_ns: u64) -> io::Result<()> {
        writeln!(
            self.out,
            "closewait-trace: watching TCP CLOSE_WAIT ({}; stuck after {}; {} already in CLOSE_WAIT in {}). Ctrl-C to stop.",
            info.attach,
            human_duration(info.threshold.as_nanos() as u64),
            info.existing,
            count_of(info.netns_scanned, "network namespace", "network namespaces"),
        )?;
        writeln!(
            self.out,
            "{:<12} {:<8} {:>9}  {:<22} {:<22} DETAILS",
            "TIME(UTC)", "EVENT", "DWELL", "LOCAL", "REMOTE"
        )
    }

    fn event(&mut self, e: &Enriched) -> io::Result<()> {
        if e.quiet {
            return Ok(()); // its group's line speaks for it
        }
        let (event, dwell, ts_ns) = match &e.report {
            Report::Existing { dwell_ns, .. } => ("EXISTING", Some(*dwell_ns), e.at_ns),
            Report::Enter { ts_ns, .. } => ("ENTER", None, *ts_ns),
            Report::Stuck { dwell_ns, .. } => ("STUCK", Some(*dwell_ns), e.at_ns),
            Report::Close {
                dwell_ns, ts_ns, ..
            } => ("CLOSE", Some(*dwell_ns), *ts_ns),
        };
        let dwell = match (dwell, e.report.bound()) {
            (Some(d), Some(bound)) => bounded(d, bound),
            _ => "-".into(),
        };
        let details = match &e.report {
            Report::Existing { stuck: true, .. } => "stuck ".to_string(),
            Report::Enter { from, .. } => format!("from {} ", tcp_state::name(*from)),
            Report::Close { to: Some(to), .. } => format!("-> {} ", tcp_state::name(*to)),
            Report::Close { to: None, .. } => "-> closed (exit event missed) ".to_string(),
            _ => String::new(),
        };
        let ctx = e.ctx.as_deref();
        let socket = e.report.socket();
        writeln!(
            self.out,
            "{:<12} {event:<8} {dwell:>9}  {:<22} {:<22} {details}{}{}",
            self.clock.time_of_day(ts_ns),
            endpoint(socket.laddr, socket.lport),
            endpoint(socket.raddr, socket.rport),
            ctx.map(owner_text).unwrap_or_default(),
            ids(socket),
        )?;
        // The creation site once per socket: on its first report.
        if let (Some(ctx), false) = (ctx, matches!(e.report, Report::Close { .. })) {
            if let Some(site) = creation_text(ctx) {
                writeln!(self.out, "{:<33}{site}", "")?;
            }
            if let Some(read) = last_read_text(ctx) {
                writeln!(self.out, "{:<33}{read}", "")?;
            }
        }
        Ok(())
    }

    fn group(&mut self, g: &Group, now_ns: u64) -> io::Result<()> {
        writeln!(
            self.out,
            "{:<12} {:<8} {:>9}  {}",
            self.clock.time_of_day(now_ns),
            "GROUP",
            format!("{}x", g.count),
            group_sentence(g),
        )?;
        // The why and the hint when they are news, not at every doubling.
        if let (true, Some(why)) = (g.new_cause, why_text(g)) {
            writeln!(self.out, "{:<33}{why}", "")?;
        }
        Ok(())
    }

    fn lost(&mut self, delta: &Drops, now_ns: u64) -> io::Result<()> {
        for (reason, count) in delta.by_reason() {
            if count > 0 {
                writeln!(
                    self.out,
                    "{:<12} {:<8} {:>9}  {count} events lost ({reason}); reconciling with the kernel's socket table",
                    self.clock.time_of_day(now_ns),
                    "LOST",
                    "-"
                )?;
            }
        }
        Ok(())
    }

    fn summary(&mut self, model: &Model, ran: Duration, now_ns: u64) -> io::Result<()> {
        let counts = model.counts();
        let t = &counts.totals;
        let still = model.still_stuck(now_ns);
        let o = &mut self.out;
        writeln!(o)?;
        writeln!(
            o,
            "Summary ({} traced)",
            human_duration(ran.as_nanos() as u64)
        )?;
        let rows: [(&str, String); 7] = [
            ("entered CLOSE_WAIT", t.entered.to_string()),
            ("already in CLOSE_WAIT at start", t.existing.to_string()),
            ("closed", t.closed.to_string()),
            ("flagged stuck", t.stuck.to_string()),
            ("still stuck now", still.len().to_string()),
            (
                "still in CLOSE_WAIT (any dwell)",
                counts.in_close_wait.to_string(),
            ),
            ("events lost", model.drops().events_lost().to_string()),
        ];
        for (name, value) in rows {
            writeln!(o, "  {name:<32} {value:>10}")?;
        }
        let drops = model.drops();
        if drops.stacks_missed() > 0 || drops.over_budget > 0 {
            writeln!(
                o,
                "  {:<32} {:>10}  ({} failed, {} evicted from a full map, {} over --stack-budget)",
                "creation stacks not recorded",
                drops.stacks_missed() + drops.over_budget,
                drops.stack_failed,
                drops.connects_evicted,
                drops.over_budget
            )?;
        }
        match counts.dwell {
            Some(p) => writeln!(
                o,
                "  {:<32} p50 {}  p90 {}  p99 {}  max {}  (n={})",
                "dwell of closed sockets",
                human_duration(p.p50_ns),
                human_duration(p.p90_ns),
                human_duration(p.p99_ns),
                human_duration(p.max_ns),
                p.count
            )?,
            None => writeln!(o, "  {:<32} {:>10}", "dwell of closed sockets", "-")?,
        }
        let groups = model.groups(now_ns);
        if !groups.is_empty() {
            writeln!(o, "Stuck sockets by owner, creation site and peer:")?;
            for g in &groups {
                writeln!(o, "  {}", group_sentence(g))?;
                if let Some(why) = why_text(g) {
                    writeln!(o, "      {why}")?;
                }
            }
        }
        if !still.is_empty() {
            writeln!(o, "Still stuck:")?;
            for st in still.iter().take(SUMMARY_SOCKETS) {
                writeln!(
                    o,
                    "  {:>9}  {:<22} {:<22} {}{}",
                    bounded(st.dwell_ns, st.bound),
                    endpoint(st.socket.laddr, st.socket.lport),
                    endpoint(st.socket.raddr, st.socket.rport),
                    st.ctx.map(owner_text).unwrap_or_default(),
                    ids(st.socket)
                )?;
            }
            if still.len() > SUMMARY_SOCKETS {
                writeln!(
                    o,
                    "  and {} more in {}",
                    still.len() - SUMMARY_SOCKETS,
                    count_of(groups.len(), "group", "groups")
                )?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// `5.00s`, `>=5.00s` (at least), `<=5.00s` (at most).
fn bounded(dwell_ns: u64, bound: Bound) -> String {
    let prefix = match bound {
        Bound::Exact => "",
        Bound::AtLeast => ">=",
        Bound::AtMost => "<=",
    };
    format!("{prefix}{}", human_duration(dwell_ns))
}

/// "17 stuck sockets, pid 4242 (api-server), to 10.0.0.2:5432, created at
/// pool::checkout (src/pool.rs:88): idle_closed_by_peer"
pub fn group_sentence(g: &Group) -> String {
    let k = &g.key;
    let owner = match (k.pid, &k.comm) {
        (Some(pid), Some(comm)) => format!("pid {pid} ({})", sanitize::text(comm)),
        (Some(pid), None) => format!("pid {pid}"),
        _ if !k.looked_up => "owner not looked up before exit".to_string(),
        _ => "owner unknown".to_string(),
    };
    let site = match &k.site {
        Some(site) => format!("created at {}", sanitize::text(site)),
        None => "creation site unknown".to_string(),
    };
    let peer = if k.endpoint.starts_with("listening") {
        format!("on {}", k.endpoint)
    } else {
        format!("to {}", k.endpoint)
    };
    let cause = g.cause.map_or("cause not known yet", |c| c.name());
    format!(
        "{} stuck {}, {owner}, {peer}, {site}: {cause}",
        g.count,
        if g.count == 1 { "socket" } else { "sockets" }
    )
}

/// "why: <summary>; hint: <hint> [findings]"
fn why_text(g: &Group) -> Option<String> {
    let summary = g.summary.as_ref()?;
    let mut text = format!("why: {summary}");
    if let Some(hint) = &g.hint {
        text.push_str(&format!("; hint: {hint}"));
    }
    for finding in &g.findings {
        text.push_str(&format!("; {finding}"));
    }
    Some(text)
}

/// `pid=4242 comm=api-server fd=7 ` (escaped).
fn owner_text(ctx: &Context) -> String {
    match ctx.primary() {
        Some(o) => {
            let more = match ctx.owners.len() {
                0 | 1 => String::new(),
                n => format!(" (+{} more)", n - 1),
            };
            let pod = match (&o.pod_namespace, &o.pod, &o.pod_uid) {
                (Some(ns), Some(name), _) => {
                    format!("pod={}/{} ", sanitize::text(ns), sanitize::text(name))
                }
                (_, _, Some(uid)) => format!("pod_uid={} ", sanitize::text(uid)),
                _ => String::new(),
            };
            format!(
                "pid={} comm={} fd={}{more} {pod}",
                o.pid,
                sanitize::text(&o.comm),
                o.fd
            )
        }
        None => "pid=? ".to_string(),
    }
}

/// `created by connect() at a (f.c:1) <- b (f.c:9)` (escaped).
fn creation_text(ctx: &Context) -> Option<String> {
    let c = ctx.creation.as_ref()?;
    let Some(stack) = &c.stack else {
        return Some(format!("created by {}() (stack not captured)", c.kind));
    };
    let frames: Vec<String> = stacks::app_frames(stack, TEXT_FRAMES)
        .into_iter()
        .map(stacks::frame_label)
        .collect();
    let mut text = format!("created by {}() at ", c.kind);
    if frames.is_empty() {
        text.push_str("(no application frames)");
    } else {
        text.push_str(&sanitize::text(&frames.join(" <- ")));
    }
    if stack.truncated {
        text.push_str(" [stack cut short]");
    }
    Some(text)
}

/// `read EOF at handler (app.c:40) <- serve (app.c:90)` (escaped): where the
/// application read EOF and went on without close().
fn last_read_text(ctx: &Context) -> Option<String> {
    let stack = ctx.last_read.as_ref()?;
    let frames: Vec<String> = stacks::app_frames(stack, TEXT_FRAMES)
        .into_iter()
        .map(stacks::frame_label)
        .collect();
    if frames.is_empty() {
        return None;
    }
    Some(format!(
        "read EOF at {}",
        sanitize::text(&frames.join(" <- "))
    ))
}

fn ids(s: &Socket) -> String {
    let mut out = Vec::new();
    if let Some(netns) = s.netns {
        out.push(format!("netns={netns}"));
    }
    if let Some(cookie) = s.cookie {
        out.push(format!("cookie={cookie}"));
    }
    out.join(" ")
}
