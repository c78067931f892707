//! Both outputs, rendered into memory from hand-made reports and models.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde_json::Value;

use super::{
    format::WallClock,
    json::Json,
    schema::{self, Event},
    text::{group_sentence, Text},
    Output, StartInfo,
};
use crate::{
    enrich::{stacks::Frame, Context},
    model::{
        tests::{context, diagnosed, socket, stuck, S},
        Enriched, Model,
    },
    probe::Drops,
    tracking::{Bound, Counts, Percentiles, Report, Totals},
};

fn clock() -> WallClock {
    // 2026-11-24T10:00:00Z at monotonic 100 s.
    WallClock::new(
        100 * S,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_514_400),
    )
}

fn text(f: impl FnOnce(&mut dyn Output)) -> String {
    let mut out = Text::new(Vec::new(), clock());
    f(&mut out);
    String::from_utf8(out.into_inner()).expect("utf-8")
}

fn json(f: impl FnOnce(&mut dyn Output)) -> Vec<Value> {
    let mut out = Json::new(Vec::new(), clock());
    f(&mut out);
    String::from_utf8(out.into_inner())
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

fn enriched(report: Report, at_ns: u64, ctx: Option<Context>) -> Enriched {
    Enriched {
        id: 1,
        report,
        at_ns,
        ctx: ctx.map(Arc::new),
        quiet: false,
    }
}

fn close(bound: Bound, to: Option<u8>) -> Report {
    Report::Close {
        socket: socket(51234),
        dwell_ns: 1_234_567_891,
        to,
        ts_ns: 101 * S,
        bound,
    }
}

fn start(netns_scanned: usize) -> StartInfo<'static> {
    StartInfo {
        attach: "tp_btf",
        stacks: "auto",
        threshold: Duration::from_secs(5),
        existing: 1,
        netns_scanned,
    }
}

#[test]
fn json_close_line_has_every_field() {
    let v = json(|o| {
        o.event(&enriched(close(Bound::Exact, Some(9)), 102 * S, None))
            .unwrap()
    });
    assert_eq!(v.len(), 1);
    let v = &v[0];
    assert_eq!(v["event"], "close");
    assert_eq!(v["ts"], "2026-11-24T10:00:01.000Z");
    assert_eq!(v["cookie"], 4242);
    assert_eq!(v["family"], "ipv4");
    assert_eq!(v["laddr"], "10.0.0.1");
    assert_eq!(v["lport"], 8080);
    assert_eq!(v["raddr"], "10.0.0.2");
    assert_eq!(v["rport"], 51234);
    assert_eq!(v["netns"], 4026531840u64);
    assert_eq!(v["inode"], 99);
    assert_eq!(v["dwell_ms"], 1234.567);
    assert_eq!(v["dwell_bound"], "exact");
    assert_eq!(v["lower_bound"], false);
    assert_eq!(v["new_state"], "LAST_ACK");
    assert!(v.get("pid").is_none(), "no owner fields without a context");
}

#[test]
fn dwell_bounds_in_json_and_text() {
    // Defect 4: a close found by reconciliation is an upper bound.
    let v = json(|o| {
        o.event(&enriched(close(Bound::AtMost, None), 102 * S, None))
            .unwrap();
        o.event(&enriched(close(Bound::AtLeast, Some(9)), 102 * S, None))
            .unwrap();
        o.event(&enriched(
            Report::Existing {
                socket: socket(1),
                dwell_ns: 3 * S,
                stuck: false,
            },
            100 * S,
            None,
        ))
        .unwrap();
    });
    assert_eq!(
        (
            &v[0]["dwell_bound"],
            &v[0]["lower_bound"],
            &v[0]["new_state"]
        ),
        (&"at_most".into(), &false.into(), &Value::Null)
    );
    assert_eq!(
        (&v[1]["dwell_bound"], &v[1]["lower_bound"]),
        (&"at_least".into(), &true.into())
    );
    assert_eq!(
        (&v[2]["dwell_bound"], &v[2]["lower_bound"]),
        (&"at_least".into(), &true.into())
    );
    assert_eq!(v[2]["dwell_ms"], 3000.0);
    let t = text(|o| {
        o.event(&enriched(close(Bound::AtMost, None), 102 * S, None))
            .unwrap();
        o.event(&enriched(close(Bound::AtLeast, Some(9)), 102 * S, None))
            .unwrap();
        o.event(&enriched(close(Bound::Exact, Some(9)), 102 * S, None))
            .unwrap();
    });
    let lines: Vec<&str> = t.lines().collect();
    assert!(lines[0].contains(" <=1.23s "), "{t}");
    assert!(lines[0].contains("-> closed (exit event missed)"), "{t}");
    assert!(lines[1].contains(" >=1.23s "), "{t}");
    assert!(lines[2].contains("   1.23s "), "{t}");
}

#[test]
fn text_lines_are_aligned() {
    let t = text(|o| {
        o.event(&stuck(1, 51234, None)).unwrap();
        o.event(&enriched(
            Report::Close {
                socket: socket(51234),
                dwell_ns: 12 * S,
                to: Some(9),
                ts_ns: 112 * S,
                bound: Bound::Exact,
            },
            112 * S,
            None,
        ))
        .unwrap();
    });
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines[0], "10:00:05.000 STUCK        5.00s  10.0.0.1:8080          10.0.0.2:51234         netns=4026531840 cookie=4242");
    assert_eq!(lines[1], "10:00:12.000 CLOSE       12.00s  10.0.0.1:8080          10.0.0.2:51234         -> LAST_ACK netns=4026531840 cookie=4242");
}

#[test]
fn start_line_says_namespace_in_the_singular_for_one() {
    // Defect 6.
    let one = text(|o| o.start(&start(1), 100 * S).unwrap());
    assert!(
        one.contains("1 already in CLOSE_WAIT in 1 network namespace)"),
        "{one}"
    );
    let two = text(|o| o.start(&start(2), 100 * S).unwrap());
    assert!(two.contains("in 2 network namespaces)"), "{two}");
    let v = json(|o| o.start(&start(2), 100 * S).unwrap());
    assert_eq!(v[0]["event"], "start");
    assert_eq!(v[0]["netns_scanned"], 2);
    assert_eq!(v[0]["stacks"], "auto");
    assert_eq!(v[0]["threshold_ms"], 5000);
}

#[test]
fn owner_and_stack_in_json_and_text() {
    let e = stuck(1, 51234, Some(Arc::new(context("api-server"))));
    let v = &json(|o| o.event(&e).unwrap())[0];
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
    let t = text(|o| o.event(&e).unwrap());
    let lines: Vec<&str> = t.lines().collect();
    assert!(
        lines[0].contains("pid=4242 comm=api-server fd=7 (+1 more)"),
        "{t}"
    );
    assert_eq!(
        lines[1].trim(),
        "created by connect() at pool::checkout (src/pool.rs:88) <- main (src/pool.rs:20)"
    );
}

fn hostile() -> Context {
    let mut ctx = context("evil\x1b[31mred\u{202e}");
    if let Some(stack) = ctx.creation.as_mut().and_then(|c| c.stack.as_mut()) {
        let stack = std::sync::Arc::make_mut(stack);
        stack.frames[0] = Frame {
            symbol: Some("leak\x1b]0;pwned\x07\u{2066}".into()),
            ..stack.frames[0].clone()
        };
    }
    // A perf map names JIT code whatever its runtime likes.
    let mut read = ctx.creation.as_ref().and_then(|c| c.stack.clone()).unwrap();
    std::sync::Arc::make_mut(&mut read).frames[0].symbol = Some("jit\x1b[2Jread\u{202e}".into());
    ctx.last_read = Some(read);
    ctx
}

#[test]
fn hostile_text_is_escaped_once_in_text_and_kept_valid_in_json() {
    let e = stuck(1, 51234, Some(Arc::new(hostile())));
    let t = text(|o| o.event(&e).unwrap());
    assert!(
        !t.contains('\x1b') && !t.contains('\u{202e}') && !t.contains('\u{2066}'),
        "{t:?}"
    );
    assert!(t.contains("comm=evil\\x1b[31mred\\u{202e}"), "{t}");
    // Defect 3: escaped once, not `\\x1b` or `\\u{1b}`.
    assert!(
        t.contains("at leak\\x1b]0;pwned\\x07\\u{2066} (src/pool.rs:88)"),
        "{t}"
    );
    assert!(!t.contains("\\\\"), "escaped twice: {t}");
    assert!(t.contains("read EOF at jit\\x1b[2Jread\\u{202e}"), "{t}");
    let v = &json(|o| o.event(&e).unwrap())[0];
    assert_eq!(v["comm"], "evil\x1b[31mred\u{202e}");
    assert_eq!(v["stack"][0]["symbol"], "leak\x1b]0;pwned\x07\u{2066}");
    assert_eq!(v["last_read"][0]["symbol"], "jit\x1b[2Jread\u{202e}");
}

fn model_with_stuck() -> Model {
    let mut m = Model::default();
    let api = Arc::new(diagnosed("api-server", 1));
    m.apply(&mut stuck(1, 5432, Some(api.clone())));
    m.apply(&mut stuck(2, 5432, Some(api)));
    m.apply(&mut stuck(3, 3, Some(Arc::new(Context::default()))));
    m.set_counts(Counts {
        totals: Totals {
            entered: 10,
            existing: 1,
            closed: 9,
            stuck: 3,
            ..Totals::default()
        },
        in_close_wait: 3,
        dwell: Some(Percentiles {
            p50_ns: S / 1000,
            p90_ns: 2 * S / 1000,
            p99_ns: 3 * S / 1000,
            max_ns: 20 * S,
            count: 9,
        }),
        ..Counts::default()
    });
    m.set_drops(Drops {
        ringbuf_full: 3,
        read_failed: 0,
        stack_failed: 5,
        over_budget: 6,
        recursion_misses: 1,
        connects_evicted: 2,
    });
    m
}

#[test]
fn summary_groups_stuck_sockets_by_owner_and_site() {
    let m = model_with_stuck();
    let groups = m.groups(130 * S);
    assert_eq!(
        group_sentence(&groups[0]),
        "2 stuck sockets, pid 4242 (api-server), to 10.0.0.2:5432, created at pool::checkout (src/pool.rs:88): idle_closed_by_peer"
    );
    assert_eq!(
        group_sentence(&groups[1]),
        "1 stuck socket, owner unknown, to 10.0.0.2:3, creation site unknown: cause not known yet"
    );
    // Printed at exit before its lookup finished: said so, in a group of
    // its own.
    let mut m = m;
    m.apply(&mut stuck(4, 3, None));
    let groups = m.groups(130 * S);
    let unresolved = groups.iter().find(|g| !g.key.looked_up).expect("its group");
    assert_eq!(
        group_sentence(unresolved),
        "1 stuck socket, owner not looked up before exit, to 10.0.0.2:3, creation site unknown: cause not known yet"
    );
    let t = text(|o| o.summary(&m, Duration::from_secs(30), 130 * S).unwrap());
    assert!(
        t.contains("Stuck sockets by owner, creation site and peer:\n  2 stuck sockets, pid 4242"),
        "{t}"
    );
    assert!(
        t.contains("  flagged stuck                             3\n"),
        "{t}"
    );
    assert!(
        t.contains(
            "  creation stacks not recorded             13  (5 failed, 2 evicted from a full map, 6 over --stack-budget)\n"
        ),
        "{t}"
    );
    assert!(
        t.contains("p50 1ms  p90 2ms  p99 3ms  max 20.00s  (n=9)"),
        "{t}"
    );
    assert!(
        t.contains("Still stuck:\n     30.00s  10.0.0.1:8080"),
        "{t}"
    );
}

#[test]
fn summary_json() {
    let m = model_with_stuck();
    let v = &json(|o| o.summary(&m, Duration::from_secs(30), 130 * S).unwrap())[0];
    assert_eq!(v["event"], "summary");
    assert_eq!(
        (
            v["entered"].as_u64(),
            v["closed"].as_u64(),
            v["stuck"].as_u64()
        ),
        (Some(10), Some(9), Some(3))
    );
    assert_eq!(v["still_stuck"], 3);
    assert_eq!(v["lost"], 4, "stack failures are not lost events");
    assert_eq!(v["stacks_missed"], 7, "5 failed, 2 evicted");
    assert_eq!(v["stacks_over_budget"], 6);
    assert_eq!(v["lost_by_reason"]["ringbuf_full"], 3);
    assert_eq!(v["dwell_ms"]["p50"], 1.0);
    assert_eq!(v["dwell_ms"]["max"], 20000.0);
    assert_eq!(v["stuck_groups"][0]["count"], 2);
    assert_eq!(
        v["stuck_groups"][0]["created_at"],
        "pool::checkout (src/pool.rs:88)"
    );
    assert_eq!(v["still_stuck_sockets"].as_array().unwrap().len(), 3);
    assert_eq!(v["still_stuck_sockets"][0]["dwell_bound"], "exact");
}

/// Every event kind, written by the JSON output and read back into the
/// schema: the same value, and exactly the keys the README lists.
#[test]
fn every_event_kind_round_trips() {
    let ctx = Some(hostile());
    let reports = [
        Report::Existing {
            socket: socket(1),
            dwell_ns: 3 * S,
            stuck: true,
        },
        Report::Enter {
            socket: socket(2),
            from: 1,
            ts_ns: 100 * S,
        },
        Report::Stuck {
            socket: socket(3),
            dwell_ns: 5 * S,
            bound: Bound::AtLeast,
        },
        close(Bound::AtMost, None),
        close(Bound::Exact, Some(7)),
    ];
    let m = model_with_stuck();
    let mut out = Json::new(Vec::new(), clock());
    out.start(&start(3), 100 * S).unwrap();
    for r in &reports {
        out.event(&enriched(r.clone(), 105 * S, ctx.clone()))
            .unwrap();
        out.event(&enriched(r.clone(), 105 * S, None)).unwrap();
    }
    out.lost(
        &Drops {
            ringbuf_full: 2,
            ..Drops::default()
        },
        105 * S,
    )
    .unwrap();
    for g in m.groups(106 * S) {
        out.group(&g, 106 * S).unwrap();
    }
    out.summary(&m, Duration::from_secs(1), 106 * S).unwrap();
    let text = String::from_utf8(out.into_inner()).unwrap();
    let mut kinds = Vec::new();
    for line in text.lines() {
        let event: Event = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(serde_json::to_string(&event).unwrap(), line, "round trip");
        let v: Value = serde_json::from_str(line).unwrap();
        kinds.push(v["event"].as_str().unwrap().to_string());
        if let Event::Stuck(s) = &event {
            assert_eq!(s.dwell.dwell_bound, Bound::AtLeast);
        }
    }
    kinds.dedup();
    assert_eq!(
        kinds,
        ["start", "existing", "enter", "stuck", "close", "lost", "group", "summary"]
    );
    // A context-less event reads back without one.
    let line = text.lines().nth(2).unwrap();
    match serde_json::from_str::<Event>(line).unwrap() {
        Event::Existing(e) => assert_eq!(e.context, None),
        other => panic!("{other:?}"),
    }
    let _: schema::Summary = match serde_json::from_str(text.lines().last().unwrap()).unwrap() {
        Event::Summary(s) => s,
        other => panic!("{other:?}"),
    };
}

#[test]
fn groups_have_one_line_and_a_hint_and_quiet_sockets_print_nothing() {
    let mut m = Model::default();
    let ctx = Arc::new(diagnosed("pool", 1));
    let mut out = Text::new(Vec::new(), clock());
    for id in 1..=64 {
        let mut e = stuck(id, 5432, Some(ctx.clone()));
        let group = m.apply(&mut e);
        out.event(&e).unwrap();
        if let Some(g) = group {
            out.group(&g, e.at_ns).unwrap();
        }
    }
    let t = String::from_utf8(out.into_inner()).unwrap();
    let stuck_lines = t.lines().filter(|l| l.contains(" STUCK ")).count();
    let group_lines: Vec<&str> = t.lines().filter(|l| l.contains(" GROUP ")).collect();
    assert_eq!(stuck_lines, crate::model::LINES_PER_GROUP);
    assert_eq!(group_lines.len(), 7, "1, 2, 4 ... 64: {t}");
    assert!(
        group_lines[6].contains("64x  64 stuck sockets, pid 4242 (pool), to 10.0.0.2:5432"),
        "{t}"
    );
    assert!(
        t.contains("why: a pooled connection the server closed after 1.0 s idle"),
        "{t}"
    );
    assert!(
        t.contains("hint: set the pool's idle timeout below ~1 s"),
        "{t}"
    );
    // The summary lists 5 sockets, then says how many more.
    let summary = text(|o| o.summary(&m, Duration::from_secs(1), 110 * S).unwrap());
    assert!(summary.contains("  and 59 more in 1 group\n"), "{summary}");
    assert!(summary.lines().count() < 30, "{summary}");
}

#[test]
fn json_carries_evidence_diagnosis_and_group_events() {
    let mut m = Model::default();
    let mut e = stuck(1, 5432, Some(Arc::new(diagnosed("pool", 1))));
    let group = m.apply(&mut e).expect("a new group");
    let v = json(|o| {
        o.event(&e).unwrap();
        o.group(&group, e.at_ns).unwrap();
    });
    assert_eq!(v[0]["evidence"]["rqueue"], 1);
    assert_eq!(v[0]["evidence"]["direction"], "outgoing");
    assert_eq!(v[0]["evidence"]["idle_before_fin_ms"], 1001);
    assert_eq!(v[0]["diagnosis"]["cause"], "idle_closed_by_peer");
    assert!(v[0]["diagnosis"]["hint"]
        .as_str()
        .unwrap()
        .contains("idle timeout"));
    assert_eq!(v[1]["event"], "group");
    assert_eq!(v[1]["count"], 1);
    assert_eq!(v[1]["cause"], "idle_closed_by_peer");
    assert_eq!(v[1]["endpoint"], "10.0.0.2:5432");
    assert_eq!(v[1]["created_at"], "pool::checkout (src/pool.rs:88)");
    assert_eq!(v[1]["median_idle_before_fin_ms"], 1001);
}
