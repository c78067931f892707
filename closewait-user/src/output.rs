//! Everything the user reads: aligned text lines or JSON lines on stdout.
//! Diagnostics go to stderr elsewhere.

use std::{
    collections::HashMap,
    io::{self, Write},
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use closewait_common::tcp_state;
use serde_json::{json, Map, Value};

use crate::{
    context::Context,
    events::Socket,
    loader::Drops,
    owner::escape,
    stacks::{app_frames, frame_label},
    tracker::{Report, Summary},
};

/// Innermost application frames shown on a text line.
const TEXT_FRAMES: usize = 3;

/// Maps kernel CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    mono_ns: u64,
    wall: SystemTime,
}

impl WallClock {
    pub fn new(mono_ns: u64, wall: SystemTime) -> WallClock {
        WallClock { mono_ns, wall }
    }

    pub fn at(&self, mono_ns: u64) -> SystemTime {
        if mono_ns >= self.mono_ns {
            self.wall + Duration::from_nanos(mono_ns - self.mono_ns)
        } else {
            self.wall - Duration::from_nanos(self.mono_ns - mono_ns)
        }
    }
}

/// What the `start` line says.
pub struct StartInfo<'a> {
    pub attach: &'a str,
    /// Creation-stack mode: auto, on, off.
    pub stacks: &'a str,
    pub threshold: Duration,
    pub existing: usize,
    pub netns_scanned: usize,
}

pub struct Output<W: Write> {
    out: W,
    json: bool,
    clock: WallClock,
}

impl<W: Write> Output<W> {
    pub fn new(out: W, json: bool, clock: WallClock) -> Output<W> {
        Output { out, json, clock }
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn start(&mut self, info: &StartInfo, now_ns: u64) -> io::Result<()> {
        if self.json {
            return self.line(json!({
                "event": "start",
                "ts": self.ts(now_ns),
                "version": env!("CARGO_PKG_VERSION"),
                "attach": info.attach,
                "stacks": info.stacks,
                "threshold_ms": info.threshold.as_millis() as u64,
                "existing": info.existing,
                "netns_scanned": info.netns_scanned,
            }));
        }
        writeln!(
            self.out,
            "closewait-trace: watching TCP CLOSE_WAIT ({}; stuck after {}; {} already in CLOSE_WAIT in {} network namespaces). Ctrl-C to stop.",
            info.attach,
            human_duration(info.threshold.as_nanos() as u64),
            info.existing,
            info.netns_scanned,
        )?;
        writeln!(
            self.out,
            "{:<12} {:<8} {:>9}  {:<22} {:<22} DETAILS",
            "TIME(UTC)", "EVENT", "DWELL", "LOCAL", "REMOTE"
        )
    }

    /// One event. `ctx` (owners, creation stack) accompanies reported
    /// sockets: existing, stuck, and their close.
    pub fn report(
        &mut self,
        report: &Report,
        now_ns: u64,
        ctx: Option<&Context>,
    ) -> io::Result<()> {
        let (event, socket, dwell, ts_ns) = match report {
            Report::Existing {
                socket, dwell_ns, ..
            } => ("existing", socket, Some(*dwell_ns), now_ns),
            Report::Enter { socket, ts_ns, .. } => ("enter", socket, None, *ts_ns),
            Report::Stuck {
                socket, dwell_ns, ..
            } => ("stuck", socket, Some(*dwell_ns), now_ns),
            Report::Close {
                socket,
                dwell_ns,
                ts_ns,
                ..
            } => ("close", socket, Some(*dwell_ns), *ts_ns),
        };
        if self.json {
            let mut obj = Map::new();
            obj.insert("event".into(), event.into());
            obj.insert("ts".into(), self.ts(ts_ns).into());
            socket_fields(&mut obj, socket);
            if let Some(d) = dwell {
                obj.insert("dwell_ms".into(), ms(d));
            }
            match report {
                Report::Existing { stuck, .. } => {
                    obj.insert("lower_bound".into(), true.into());
                    obj.insert("stuck".into(), (*stuck).into());
                }
                Report::Enter { from, .. } => {
                    obj.insert("old_state".into(), tcp_state::name(*from).into());
                }
                Report::Stuck { lower_bound, .. } => {
                    obj.insert("lower_bound".into(), (*lower_bound).into());
                }
                Report::Close {
                    to, lower_bound, ..
                } => {
                    obj.insert("new_state".into(), to.map(tcp_state::name).into());
                    obj.insert("lower_bound".into(), (*lower_bound).into());
                }
            }
            if let Some(ctx) = ctx {
                context_fields(&mut obj, ctx);
            }
            return self.line(Value::Object(obj));
        }
        let lower_bound = matches!(
            report,
            Report::Existing { .. }
                | Report::Stuck {
                    lower_bound: true,
                    ..
                }
                | Report::Close {
                    lower_bound: true,
                    ..
                }
        );
        let dwell = match dwell {
            Some(d) if lower_bound => format!(">={}", human_duration(d)),
            Some(d) => human_duration(d),
            None => "-".into(),
        };
        let details = match report {
            Report::Existing { stuck: true, .. } => "stuck ".to_string(),
            Report::Enter { from, .. } => format!("from {} ", tcp_state::name(*from)),
            Report::Close { to: Some(to), .. } => format!("-> {} ", tcp_state::name(*to)),
            Report::Close { to: None, .. } => "-> closed (exit event missed) ".to_string(),
            _ => String::new(),
        };
        let event = event.to_ascii_uppercase();
        let time = self.clock_time(ts_ns);
        let owner = ctx.map(owner_text).unwrap_or_default();
        writeln!(
            self.out,
            "{time:<12} {event:<8} {dwell:>9}  {:<22} {:<22} {details}{owner}{}",
            endpoint(socket.laddr, socket.lport),
            endpoint(socket.raddr, socket.rport),
            ids(socket),
        )?;
        // The creation site once per socket: on its first report.
        if let (Some(ctx), false) = (ctx, matches!(report, Report::Close { .. })) {
            if let Some(site) = creation_text(ctx) {
                writeln!(self.out, "{:<33}{site}", "")?;
            }
        }
        Ok(())
    }

    /// Events the kernel could not deliver since the last call.
    pub fn lost(&mut self, delta: &Drops, now_ns: u64) -> io::Result<()> {
        for (reason, count) in drop_reasons(delta) {
            if count == 0 {
                continue;
            }
            if self.json {
                self.line(json!({
                    "event": "lost",
                    "ts": self.ts(now_ns),
                    "count": count,
                    "reason": reason,
                }))?;
            } else {
                let time = self.clock_time(now_ns);
                writeln!(
                    self.out,
                    "{time:<12} {:<8} {:>9}  {count} events lost ({reason}); reconciling with the kernel's socket table",
                    "LOST", "-"
                )?;
            }
        }
        Ok(())
    }

    /// The end-of-run summary. `contexts`: owners and stacks of the sockets
    /// still stuck, by tracker id; the stuck ones are grouped by owner and
    /// creation site, largest group first.
    pub fn summary(
        &mut self,
        s: &Summary,
        contexts: &HashMap<u64, Arc<Context>>,
        drops: &Drops,
        ran: Duration,
        now_ns: u64,
    ) -> io::Result<()> {
        let lost = drops.events_lost();
        let t = &s.totals;
        let groups = group_stuck(s, contexts);
        if self.json {
            let still: Vec<Value> = s
                .still_stuck
                .iter()
                .map(|st| {
                    let mut obj = Map::new();
                    socket_fields(&mut obj, &st.socket);
                    obj.insert("dwell_ms".into(), ms(st.dwell_ns));
                    obj.insert("lower_bound".into(), st.lower_bound.into());
                    if let Some(ctx) = contexts.get(&st.id) {
                        context_fields(&mut obj, ctx);
                    }
                    Value::Object(obj)
                })
                .collect();
            let groups: Vec<Value> = groups
                .iter()
                .map(|g| json!({"count": g.count, "pid": g.pid, "comm": g.comm, "created_at": g.site}))
                .collect();
            let dwell = s.dwell.map(|p| {
                json!({"p50": ms(p.p50_ns), "p90": ms(p.p90_ns), "p99": ms(p.p99_ns), "max": ms(p.max_ns), "count": p.count})
            });
            let lost_by_reason: Map<String, Value> = drop_reasons(drops)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect();
            return self.line(json!({
                "event": "summary",
                "ts": self.ts(now_ns),
                "duration_ms": ran.as_millis() as u64,
                "entered": t.entered,
                "existing": t.existing,
                "closed": t.closed,
                "stuck": t.stuck,
                "still_stuck": s.still_stuck.len(),
                "in_close_wait": s.in_close_wait,
                "lost": lost,
                "lost_by_reason": lost_by_reason,
                "recovered_enters": t.recovered_enters,
                "recovered_exits": t.recovered_exits,
                "stacks_missed": drops.stack_failed,
                "dwell_ms": dwell,
                "stuck_groups": groups,
                "still_stuck_sockets": still,
            }));
        }
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
            ("still stuck now", s.still_stuck.len().to_string()),
            (
                "still in CLOSE_WAIT (any dwell)",
                s.in_close_wait.to_string(),
            ),
            ("events lost", lost.to_string()),
        ];
        for (name, value) in rows {
            writeln!(o, "  {name:<32} {value:>10}")?;
        }
        match s.dwell {
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
        if !groups.is_empty() {
            writeln!(o, "Stuck sockets by owner and creation site:")?;
            for g in &groups {
                writeln!(o, "  {}", g.sentence())?;
            }
        }
        if !s.still_stuck.is_empty() {
            writeln!(o, "Still stuck:")?;
            for st in &s.still_stuck {
                let dwell = if st.lower_bound {
                    format!(">={}", human_duration(st.dwell_ns))
                } else {
                    human_duration(st.dwell_ns)
                };
                let owner = contexts
                    .get(&st.id)
                    .map(|c| owner_text(c))
                    .unwrap_or_default();
                writeln!(
                    o,
                    "  {dwell:>9}  {:<22} {:<22} {owner}{}",
                    endpoint(st.socket.laddr, st.socket.lport),
                    endpoint(st.socket.raddr, st.socket.rport),
                    ids(&st.socket)
                )?;
            }
        }
        Ok(())
    }

    fn line(&mut self, v: Value) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, &v)?;
        self.out.write_all(b"\n")
    }

    fn ts(&self, mono_ns: u64) -> String {
        humantime::format_rfc3339_millis(self.clock.at(mono_ns)).to_string()
    }

    /// HH:MM:SS.mmm (UTC) for the text stream.
    fn clock_time(&self, mono_ns: u64) -> String {
        let ts = self.ts(mono_ns);
        ts.get(11..23).unwrap_or(&ts).to_string()
    }
}

/// Stuck sockets sharing an owner and a creation site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub count: usize,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Innermost application frame of the creation stack.
    pub site: Option<String>,
}

impl Group {
    /// "17 stuck sockets, pid 4242 (api-server), created at pool::checkout (src/pool.rs:88)"
    pub fn sentence(&self) -> String {
        let noun = if self.count == 1 { "socket" } else { "sockets" };
        let owner = match (self.pid, &self.comm) {
            (Some(pid), Some(comm)) => format!("pid {pid} ({})", escape(comm)),
            (Some(pid), None) => format!("pid {pid}"),
            _ => "owner unknown".to_string(),
        };
        let site = match &self.site {
            Some(site) => format!("created at {}", escape(site)),
            None => "creation site unknown".to_string(),
        };
        format!("{} stuck {noun}, {owner}, {site}", self.count)
    }
}

/// Group the still-stuck sockets by (pid, comm, creation site), largest first.
pub fn group_stuck(s: &Summary, contexts: &HashMap<u64, Arc<Context>>) -> Vec<Group> {
    // (pid, comm, site) -> count
    type Key = (Option<u32>, Option<String>, Option<String>);
    let mut counts: HashMap<Key, usize> = HashMap::new();
    for st in &s.still_stuck {
        let ctx = contexts.get(&st.id);
        let owner = ctx.and_then(|c| c.primary());
        let site = ctx
            .and_then(|c| c.creation.as_ref())
            .and_then(|c| c.stack.as_ref())
            .and_then(|stack| app_frames(stack, 1).first().map(|f| frame_label(f)));
        *counts
            .entry((owner.map(|o| o.pid), owner.map(|o| o.comm.clone()), site))
            .or_default() += 1;
    }
    let mut groups: Vec<Group> = counts
        .into_iter()
        .map(|((pid, comm, site), count)| Group {
            count,
            pid,
            comm,
            site,
        })
        .collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.pid.cmp(&b.pid)));
    groups
}

/// Owner and creation fields of a reported socket, for JSON.
fn context_fields(obj: &mut Map<String, Value>, ctx: &Context) {
    if let Some(inode) = ctx.inode {
        obj.insert("inode".into(), inode.into());
    }
    let primary = ctx.primary();
    obj.insert("pid".into(), primary.map(|o| o.pid).into());
    obj.insert("comm".into(), primary.map(|o| o.comm.clone()).into());
    obj.insert("fd".into(), primary.map(|o| o.fd).into());
    obj.insert("cmdline".into(), primary.map(|o| o.cmdline.clone()).into());
    obj.insert("uid".into(), primary.and_then(|o| o.uid).into());
    obj.insert(
        "cgroup".into(),
        primary.and_then(|o| o.cgroup.clone()).into(),
    );
    obj.insert(
        "container_id".into(),
        primary.and_then(|o| o.container_id.clone()).into(),
    );
    obj.insert(
        "owners".into(),
        serde_json::to_value(&ctx.owners).unwrap_or(Value::Null),
    );
    let creation = ctx.creation.as_ref();
    obj.insert(
        "creation".into(),
        creation.map_or(Value::Null, |c| json!({"kind": c.kind, "pid": c.pid})),
    );
    let stack = creation.and_then(|c| c.stack.as_ref());
    obj.insert(
        "stack".into(),
        stack.map_or(Value::Null, |st| {
            serde_json::to_value(&st.frames).unwrap_or(Value::Null)
        }),
    );
    obj.insert(
        "stack_truncated".into(),
        stack.map(|st| st.truncated).into(),
    );
}

/// ` pid=4242 comm=api-server fd=7` (escaped), for text lines.
fn owner_text(ctx: &Context) -> String {
    match ctx.primary() {
        Some(o) => {
            let more = match ctx.owners.len() {
                0 | 1 => String::new(),
                n => format!(" (+{} more)", n - 1),
            };
            format!("pid={} comm={} fd={}{more} ", o.pid, escape(&o.comm), o.fd)
        }
        None => "pid=? ".to_string(),
    }
}

/// `created by connect() at a (f.c:1) <- b (f.c:9)`, for text lines.
fn creation_text(ctx: &Context) -> Option<String> {
    let c = ctx.creation.as_ref()?;
    let Some(stack) = &c.stack else {
        return Some(format!("created by {}() (stack not captured)", c.kind));
    };
    let frames: Vec<String> = app_frames(stack, TEXT_FRAMES)
        .into_iter()
        .map(frame_label)
        .collect();
    let mut text = format!("created by {}() at ", c.kind);
    if frames.is_empty() {
        text.push_str("(no application frames)");
    } else {
        text.push_str(&escape(&frames.join(" <- ")));
    }
    if stack.truncated {
        text.push_str(" [stack cut short]");
    }
    Some(text)
}

fn drop_reasons(d: &Drops) -> [(&'static str, u64); 3] {
    [
        ("ringbuf_full", d.ringbuf_full),
        ("recursion", d.recursion_misses),
        ("read_failed", d.read_failed),
    ]
}

fn socket_fields(obj: &mut Map<String, Value>, s: &Socket) {
    obj.insert("cookie".into(), s.cookie.into());
    obj.insert("family".into(), s.family.name().into());
    obj.insert("laddr".into(), s.laddr.to_string().into());
    obj.insert("lport".into(), s.lport.into());
    obj.insert("raddr".into(), s.raddr.to_string().into());
    obj.insert("rport".into(), s.rport.into());
    obj.insert("netns".into(), s.netns.into());
    obj.insert("inode".into(), s.inode.into());
}

fn ids(s: &Socket) -> String {
    let mut out = String::new();
    if let Some(netns) = s.netns {
        out.push_str(&format!("netns={netns} "));
    }
    if let Some(cookie) = s.cookie {
        out.push_str(&format!("cookie={cookie}"));
    }
    out.trim_end().to_string()
}

/// `1.2.3.4:80`, `[::1]:80`.
pub fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Milliseconds as a JSON number with microsecond precision.
fn ms(ns: u64) -> Value {
    let us = ns / 1_000;
    json!(us as f64 / 1_000.0)
}

/// A duration for people: `850us`, `12ms`, `5.00s`, `3m07s`, `2h05m`.
pub fn human_duration(ns: u64) -> String {
    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    match ns {
        n if n < MS => format!("{}us", n / US),
        n if n < S => format!("{}ms", n / MS),
        n if n < 60 * S => format!("{:.2}s", n as f64 / S as f64),
        n if n < 3600 * S => format!("{}m{:02}s", n / (60 * S), (n / S) % 60),
        n => format!("{}h{:02}m", n / (3600 * S), (n / (60 * S)) % 60),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::{
        events::Family,
        tracker::{Percentiles, StuckSocket, Totals},
    };

    const S: u64 = 1_000_000_000;

    fn clock() -> WallClock {
        // 2026-11-24T10:00:00Z at monotonic 100 s.
        WallClock::new(
            100 * S,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_514_400),
        )
    }

    fn socket() -> Socket {
        Socket {
            cookie: Some(4242),
            family: Family::V4,
            laddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            lport: 8080,
            raddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            rport: 51234,
            netns: Some(4026531840),
            inode: Some(99),
        }
    }

    fn render(json: bool, f: impl FnOnce(&mut Output<Vec<u8>>)) -> String {
        let mut out = Output::new(Vec::new(), json, clock());
        f(&mut out);
        String::from_utf8(out.into_inner()).expect("utf-8")
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(850_000), "850us");
        assert_eq!(human_duration(12_300_000), "12ms");
        assert_eq!(human_duration(5 * S), "5.00s");
        assert_eq!(human_duration(187 * S), "3m07s");
        assert_eq!(human_duration(7500 * S), "2h05m");
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            endpoint(IpAddr::V4(Ipv4Addr::LOCALHOST), 80),
            "127.0.0.1:80"
        );
        assert_eq!(endpoint(IpAddr::V6(Ipv6Addr::LOCALHOST), 80), "[::1]:80");
    }

    #[test]
    fn json_close_line_has_every_field() {
        let text = render(true, |o| {
            let r = Report::Close {
                socket: socket(),
                dwell_ns: 1_234_567_891,
                to: Some(9),
                ts_ns: 101 * S,
                lower_bound: false,
            };
            o.report(&r, 102 * S, None).unwrap();
        });
        let v: Value = serde_json::from_str(text.trim()).expect("one JSON object");
        assert_eq!(text.lines().count(), 1);
        assert_eq!(v["event"], "close");
        assert_eq!(v["ts"], "2026-11-24T10:00:01.000Z");
        assert_eq!(v["cookie"], 4242);
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["laddr"], "10.0.0.1");
        assert_eq!(v["lport"], 8080);
        assert_eq!(v["raddr"], "10.0.0.2");
        assert_eq!(v["rport"], 51234);
        assert_eq!(v["netns"], 4026531840u64);
        assert_eq!(v["dwell_ms"], 1234.567);
        assert_eq!(v["new_state"], "LAST_ACK");
    }

    #[test]
    fn json_existing_and_missed_close() {
        let text = render(true, |o| {
            o.report(
                &Report::Existing {
                    socket: socket(),
                    dwell_ns: 3 * S,
                    stuck: false,
                },
                100 * S,
                None,
            )
            .unwrap();
            o.report(
                &Report::Close {
                    socket: socket(),
                    dwell_ns: 9 * S,
                    to: None,
                    ts_ns: 100 * S,
                    lower_bound: true,
                },
                100 * S,
                None,
            )
            .unwrap();
        });
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["event"], "existing");
        assert_eq!(lines[0]["dwell_ms"], 3000.0);
        assert_eq!(lines[0]["lower_bound"], true);
        assert_eq!(lines[1]["new_state"], Value::Null);
    }

    #[test]
    fn text_lines_are_aligned() {
        let text = render(false, |o| {
            o.report(
                &Report::Stuck {
                    socket: socket(),
                    dwell_ns: 5 * S,
                    lower_bound: false,
                },
                105 * S,
                None,
            )
            .unwrap();
            o.report(
                &Report::Close {
                    socket: socket(),
                    dwell_ns: 12 * S,
                    to: Some(9),
                    ts_ns: 112 * S,
                    lower_bound: false,
                },
                112 * S,
                None,
            )
            .unwrap();
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "10:00:05.000 STUCK        5.00s  10.0.0.1:8080          10.0.0.2:51234         netns=4026531840 cookie=4242");
        assert_eq!(lines[1], "10:00:12.000 CLOSE       12.00s  10.0.0.1:8080          10.0.0.2:51234         -> LAST_ACK netns=4026531840 cookie=4242");
    }

    #[test]
    fn lower_bound_dwell_is_marked() {
        let stuck = stuck_report(true);
        let text = render(false, |o| o.report(&stuck, 105 * S, None).unwrap());
        assert!(text.contains(" >=5.00s "), "{text}");
        let json = render(true, |o| o.report(&stuck, 105 * S, None).unwrap());
        let v: Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(v["lower_bound"], true);
    }

    fn stuck_report(lower_bound: bool) -> Report {
        Report::Stuck {
            socket: socket(),
            dwell_ns: 5 * S,
            lower_bound,
        }
    }

    fn context(comm: &str) -> Context {
        use crate::{
            context::CreationContext,
            owner::Owner,
            stacks::{Frame, Stack},
        };
        let owner = |pid, fd| Owner {
            pid,
            fd,
            comm: comm.to_string(),
            cmdline: format!("/usr/bin/{comm} --serve"),
            uid: Some(1000),
            cgroup: Some("/system.slice/api.service".to_string()),
            container_id: None,
        };
        let frame = |addr, symbol: &str, line| Frame {
            addr,
            symbol: Some(symbol.to_string()),
            file: Some("src/pool.rs".to_string()),
            line: Some(line),
            module: Some("/usr/bin/api".to_string()),
        };
        Context {
            owners: vec![owner(4242, 7), owner(4243, 7)],
            creation: Some(CreationContext {
                kind: "connect",
                pid: 4242,
                stack: Some(Stack {
                    frames: vec![
                        frame(0x1000, "pool::checkout", 88),
                        frame(0x2000, "main", 20),
                    ],
                    truncated: false,
                }),
            }),
            inode: None,
        }
    }

    #[test]
    fn owner_and_stack_in_json_and_text() {
        let ctx = context("api-server");
        let stuck = stuck_report(false);
        let json = render(true, |o| o.report(&stuck, 105 * S, Some(&ctx)).unwrap());
        let v: Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["comm"], "api-server");
        assert_eq!(v["fd"], 7);
        assert_eq!(v["uid"], 1000);
        assert_eq!(v["cgroup"], "/system.slice/api.service");
        assert_eq!(v["container_id"], Value::Null);
        assert_eq!(v["owners"].as_array().unwrap().len(), 2);
        assert_eq!(v["creation"]["kind"], "connect");
        assert_eq!(v["stack"][0]["symbol"], "pool::checkout");
        assert_eq!(v["stack"][0]["line"], 88);
        assert_eq!(v["stack_truncated"], false);
        let text = render(false, |o| o.report(&stuck, 105 * S, Some(&ctx)).unwrap());
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("pid=4242 comm=api-server fd=7 (+1 more)"),
            "{text}"
        );
        assert_eq!(
            lines[1].trim(),
            "created by connect() at pool::checkout (src/pool.rs:88) <- main (src/pool.rs:20)"
        );
    }

    #[test]
    fn hostile_process_names_are_escaped_in_text() {
        let ctx = context("evil\x1b[31mred");
        let stuck = stuck_report(false);
        let text = render(false, |o| o.report(&stuck, 105 * S, Some(&ctx)).unwrap());
        assert!(!text.contains('\x1b'), "raw ESC in {text:?}");
        assert!(text.contains("comm=evil\\x1b[31mred"), "{text}");
        // JSON escapes control characters itself.
        let json = render(true, |o| o.report(&stuck, 105 * S, Some(&ctx)).unwrap());
        assert!(!json.contains('\x1b'));
        let v: Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(v["comm"], "evil\x1b[31mred");
    }

    #[test]
    fn summary_groups_stuck_sockets_by_owner_and_site() {
        let st = |id| StuckSocket {
            id,
            socket: socket(),
            dwell_ns: 20 * S,
            lower_bound: false,
        };
        let summary = Summary {
            totals: Totals::default(),
            still_stuck: vec![st(1), st(2), st(3)],
            in_close_wait: 3,
            dwell: None,
        };
        let api = Arc::new(context("api-server"));
        let contexts: HashMap<u64, Arc<Context>> = HashMap::from([
            (1, api.clone()),
            (2, api),
            (3, Arc::new(Context::default())),
        ]);
        let groups = group_stuck(&summary, &contexts);
        assert_eq!(groups.len(), 2);
        assert_eq!(
            groups[0].sentence(),
            "2 stuck sockets, pid 4242 (api-server), created at pool::checkout (src/pool.rs:88)"
        );
        assert_eq!(
            groups[1].sentence(),
            "1 stuck socket, owner unknown, creation site unknown"
        );
        let text = render(false, |o| {
            o.summary(
                &summary,
                &contexts,
                &Drops::default(),
                Duration::from_secs(30),
                130 * S,
            )
            .unwrap()
        });
        assert!(
            text.contains("Stuck sockets by owner and creation site:\n  2 stuck sockets, pid 4242"),
            "{text}"
        );
    }

    #[test]
    fn summary_json_and_text() {
        let summary = Summary {
            totals: Totals {
                entered: 10,
                existing: 1,
                closed: 9,
                stuck: 2,
                ..Totals::default()
            },
            still_stuck: vec![StuckSocket {
                id: 1,
                socket: socket(),
                dwell_ns: 20 * S,
                lower_bound: false,
            }],
            in_close_wait: 2,
            dwell: Some(Percentiles {
                p50_ns: S / 1000,
                p90_ns: 2 * S / 1000,
                p99_ns: 3 * S / 1000,
                max_ns: 20 * S,
                count: 9,
            }),
        };
        let drops = Drops {
            ringbuf_full: 3,
            read_failed: 0,
            stack_failed: 5,
            recursion_misses: 1,
        };
        let summarize = |json| {
            render(json, |o| {
                let contexts = HashMap::new();
                o.summary(
                    &summary,
                    &contexts,
                    &drops,
                    Duration::from_secs(30),
                    130 * S,
                )
                .unwrap()
            })
        };
        let text = summarize(true);
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["event"], "summary");
        assert_eq!(
            (
                v["entered"].as_u64(),
                v["closed"].as_u64(),
                v["stuck"].as_u64()
            ),
            (Some(10), Some(9), Some(2))
        );
        assert_eq!(v["still_stuck"], 1);
        assert_eq!(v["lost"], 4, "stack failures are not lost events");
        assert_eq!(v["stacks_missed"], 5);
        assert_eq!(v["lost_by_reason"]["ringbuf_full"], 3);
        assert_eq!(v["dwell_ms"]["p50"], 1.0);
        assert_eq!(v["dwell_ms"]["max"], 20000.0);
        assert_eq!(v["still_stuck_sockets"][0]["rport"], 51234);
        let text = summarize(false);
        assert!(
            text.contains("  flagged stuck                             2\n"),
            "{text}"
        );
        assert!(
            text.contains("p50 1ms  p90 2ms  p99 3ms  max 20.00s  (n=9)"),
            "{text}"
        );
        assert!(
            text.contains("Still stuck:\n     20.00s  10.0.0.1:8080"),
            "{text}"
        );
    }
}
