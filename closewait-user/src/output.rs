//! Everything the user reads: aligned text lines or JSON lines on stdout.
//! Diagnostics go to stderr elsewhere.

use std::{
    io::{self, Write},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use closewait_common::tcp_state;
use serde_json::{json, Map, Value};

use crate::{
    events::Socket,
    loader::Drops,
    tracker::{Report, Summary},
};

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

    pub fn report(&mut self, report: &Report, now_ns: u64) -> io::Result<()> {
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
        writeln!(
            self.out,
            "{time:<12} {event:<8} {dwell:>9}  {:<22} {:<22} {details}{}",
            endpoint(socket.laddr, socket.lport),
            endpoint(socket.raddr, socket.rport),
            ids(socket),
        )
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

    pub fn summary(
        &mut self,
        s: &Summary,
        drops: &Drops,
        ran: Duration,
        now_ns: u64,
    ) -> io::Result<()> {
        let lost = drops.ringbuf_full + drops.read_failed + drops.recursion_misses;
        let t = &s.totals;
        if self.json {
            let still: Vec<Value> = s
                .still_stuck
                .iter()
                .map(|(socket, dwell, lower_bound)| {
                    let mut obj = Map::new();
                    socket_fields(&mut obj, socket);
                    obj.insert("dwell_ms".into(), ms(*dwell));
                    obj.insert("lower_bound".into(), (*lower_bound).into());
                    Value::Object(obj)
                })
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
                "dwell_ms": dwell,
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
        if !s.still_stuck.is_empty() {
            writeln!(o, "Still stuck:")?;
            for (socket, dwell, lower_bound) in &s.still_stuck {
                let dwell = if *lower_bound {
                    format!(">={}", human_duration(*dwell))
                } else {
                    human_duration(*dwell)
                };
                writeln!(
                    o,
                    "  {dwell:>9}  {:<22} {:<22} {}",
                    endpoint(socket.laddr, socket.lport),
                    endpoint(socket.raddr, socket.rport),
                    ids(socket)
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
        tracker::{Percentiles, Totals},
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
            o.report(&r, 102 * S).unwrap();
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
            )
            .unwrap();
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "10:00:05.000 STUCK        5.00s  10.0.0.1:8080          10.0.0.2:51234         netns=4026531840 cookie=4242");
        assert_eq!(lines[1], "10:00:12.000 CLOSE       12.00s  10.0.0.1:8080          10.0.0.2:51234         -> LAST_ACK netns=4026531840 cookie=4242");
    }

    #[test]
    fn lower_bound_dwell_is_marked() {
        let stuck = Report::Stuck {
            socket: socket(),
            dwell_ns: 5 * S,
            lower_bound: true,
        };
        let text = render(false, |o| o.report(&stuck, 105 * S).unwrap());
        assert!(text.contains(" >=5.00s "), "{text}");
        let json = render(true, |o| o.report(&stuck, 105 * S).unwrap());
        let v: Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(v["lower_bound"], true);
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
            still_stuck: vec![(socket(), 20 * S, false)],
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
            recursion_misses: 1,
        };
        let text = render(true, |o| {
            o.summary(&summary, &drops, Duration::from_secs(30), 130 * S)
                .unwrap()
        });
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
        assert_eq!(v["lost"], 4);
        assert_eq!(v["lost_by_reason"]["ringbuf_full"], 3);
        assert_eq!(v["dwell_ms"]["p50"], 1.0);
        assert_eq!(v["dwell_ms"]["max"], 20000.0);
        assert_eq!(v["still_stuck_sockets"][0]["rport"], 51234);
        let text = render(false, |o| {
            o.summary(&summary, &drops, Duration::from_secs(30), 130 * S)
                .unwrap()
        });
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
