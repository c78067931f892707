//! What closewait-trace said, socket by socket, and the audit of it against what the soak
//! knows is true. Pure: no processes, no kernel; unit-tested below.

use std::collections::{BTreeSet, HashMap};

use serde::Deserialize;
use serde_json::Value;

/// The fields of a `--json` line the soak needs; serde skips the rest (stacks, evidence).
#[derive(Deserialize)]
struct Line {
    event: String,
    cookie: Option<u64>,
    inode: Option<u64>,
    netns: Option<u64>,
    count: Option<u64>,
    new_state: Option<String>,
    /// A bool on `existing`, a count on `summary`.
    stuck: Option<Value>,
    lport: Option<u16>,
    rport: Option<u16>,
    creation: Option<Value>,
    /// A number on socket lines, percentiles on `summary`.
    dwell_ms: Option<Value>,
    dwell_bound: Option<String>,
}

/// What was said about one socket (by cookie).
#[derive(Debug, Default, Clone)]
pub struct Said {
    pub inode: Option<u64>,
    pub netns: Option<u64>,
    /// `existing` and `stuck` lines (a socket found at start-up that was not yet past the
    /// threshold has one of each).
    pub reports: u32,
    /// Reported more than once as stuck: two `stuck` lines, two `existing` lines, or a
    /// `stuck` line after an `existing` one that already said it was stuck.
    pub duplicate: bool,
    existing_stuck: bool,
    stuck_seen: bool,
    pub lport: Option<u16>,
    pub rport: Option<u16>,
    /// A report carried the creation record (and stack).
    pub created: bool,
    pub closes: u32,
    /// A close whose exit event was lost and found by reconciliation (`new_state` null).
    pub recovered_close: bool,
    /// A close line before any report.
    pub closed_unreported: bool,
    /// The last report's and close's dwell (ms) and bound, to tell a false
    /// report from a socket that truly sat in CLOSE_WAIT.
    pub reported_dwell: Option<(f64, String)>,
    pub closed_dwell: Option<(f64, String)>,
}

/// Every line of closewait-trace's JSON stream, folded.
#[derive(Debug, Default)]
pub struct Ledger {
    pub sockets: HashMap<u64, Said>,
    by_inode: HashMap<u64, u64>,
    /// Reports and closes without a cookie or inode (cannot be matched).
    pub unmatched: u64,
    /// Sum of the `lost` lines' counts, and how many such lines.
    pub lost: u64,
    pub lost_lines: u64,
    pub start: Option<Value>,
    pub summary: Option<Value>,
    /// Lines that were not JSON objects with an `event`.
    pub garbled: u64,
}

impl Ledger {
    pub fn record(&mut self, text: &str) {
        let Ok(line) = serde_json::from_str::<Line>(text) else {
            self.garbled += 1;
            return;
        };
        match line.event.as_str() {
            "existing" | "stuck" | "close" => self.socket_line(&line),
            "lost" => {
                self.lost += line.count.unwrap_or(0);
                self.lost_lines += 1;
            }
            "start" => self.start = serde_json::from_str(text).ok(),
            "summary" => self.summary = serde_json::from_str(text).ok(),
            _ => {}
        }
    }

    fn socket_line(&mut self, line: &Line) {
        let Some(cookie) = line.cookie else {
            self.unmatched += 1;
            return;
        };
        let said = self.sockets.entry(cookie).or_default();
        if said.inode.is_none() {
            if let Some(inode) = line.inode.filter(|&i| i != 0) {
                said.inode = Some(inode);
                self.by_inode.insert(inode, cookie);
            }
        }
        said.netns = said.netns.or(line.netns);
        said.lport = said.lport.or(line.lport);
        said.rport = said.rport.or(line.rport);
        said.created |= line.event != "close" && line.creation.is_some();
        let dwell_ms = line.dwell_ms.as_ref().and_then(Value::as_f64);
        let dwell = dwell_ms.zip(line.dwell_bound.clone());
        match line.event.as_str() {
            "close" => {
                said.closes += 1;
                said.closed_dwell = dwell;
                said.recovered_close |= line.new_state.is_none();
                said.closed_unreported |= said.reports == 0;
            }
            "existing" => {
                said.reported_dwell = dwell;
                said.duplicate |= said.reports > 0;
                said.existing_stuck = line.stuck == Some(Value::Bool(true));
                said.reports += 1;
            }
            _ => {
                said.reported_dwell = dwell;
                said.duplicate |= said.existing_stuck || said.stuck_seen;
                said.stuck_seen = true;
                said.reports += 1;
            }
        }
    }

    /// What was said about the socket with this inode.
    pub fn by_inode(&self, inode: u64) -> Option<&Said> {
        self.sockets.get(self.by_inode.get(&inode)?)
    }

    /// How many of `fresh` (sockets leaked while tracing) the stream owes a
    /// creation record: all but those the kernel closed under their owner
    /// (`vanished`) before any report, which need not have been reported.
    pub fn owed_creation<'a>(
        &self,
        fresh: impl IntoIterator<Item = &'a u64>,
        vanished: &BTreeSet<u64>,
    ) -> usize {
        fresh
            .into_iter()
            .filter(|&i| {
                let reported = self.by_inode(*i).is_some_and(|s| s.reports > 0);
                reported || !vanished.contains(i)
            })
            .count()
    }

    /// How many of `inodes` were reported with their creation record.
    pub fn with_creation<'a>(&self, inodes: impl IntoIterator<Item = &'a u64>) -> usize {
        let said = inodes.into_iter().filter_map(|&i| self.by_inode(i));
        said.filter(|s| s.created).count()
    }

    /// How many of `inodes` were reported (stuck or existing), and how many of them closed.
    pub fn progress<'a>(&self, inodes: impl IntoIterator<Item = &'a u64>) -> (usize, usize) {
        let mut reported = 0;
        let mut closed = 0;
        for said in inodes.into_iter().filter_map(|&i| self.by_inode(i)) {
            reported += usize::from(said.reports > 0);
            closed += usize::from(said.closes > 0);
        }
        (reported, closed)
    }

    /// The ledger against the truth: `open` are sockets still in CLOSE_WAIT (each must be
    /// reported once and not closed), `closed` sockets the kernel closed (each reported once
    /// and closed once), `netns` the namespaces the soak owns (any other report there is
    /// false).
    /// `vanished` are sockets the kernel closed under their owner (a reset): reported or
    /// not (they may have come and gone while events were lost), but closed once if reported.
    pub fn audit<'a>(
        &self,
        open: impl IntoIterator<Item = &'a u64>,
        closed: impl IntoIterator<Item = &'a u64>,
        vanished: impl IntoIterator<Item = &'a u64>,
        netns: &BTreeSet<u64>,
    ) -> Audit {
        let mut audit = Audit::default();
        let mut known = BTreeSet::new();
        for &inode in open {
            known.insert(inode);
            audit.open += 1;
            match self.by_inode(inode) {
                None => audit.open_unreported += 1,
                Some(said) => {
                    audit.open_reported_twice += u64::from(said.duplicate);
                    audit.open_closed += u64::from(said.closes > 0);
                }
            }
        }
        for &inode in closed {
            known.insert(inode);
            audit.closed += 1;
            match self.by_inode(inode) {
                None => audit.closed_unreported += 1,
                Some(said) => {
                    audit.closed_unreported += u64::from(said.reports == 0);
                    audit.closed_reported_twice += u64::from(said.duplicate);
                    audit.closed_not_closed += u64::from(said.closes == 0);
                    audit.closed_twice += u64::from(said.closes > 1);
                    audit.recovered_closes += u64::from(said.recovered_close);
                }
            }
        }
        for &inode in vanished {
            known.insert(inode);
            audit.vanished += 1;
            match self.by_inode(inode) {
                None => audit.vanished_unreported += 1,
                Some(said) => {
                    audit.closed_reported_twice += u64::from(said.duplicate);
                    audit.closed_not_closed += u64::from(said.closes == 0);
                    audit.closed_twice += u64::from(said.closes > 1);
                }
            }
        }
        for (cookie, said) in &self.sockets {
            let ours = said.netns.is_some_and(|ns| netns.contains(&ns));
            let known = said.inode.is_some_and(|i| known.contains(&i));
            if ours && !known && said.reports > 0 {
                audit.false_reports += 1;
                if audit.examples.len() < 5 {
                    audit.examples.push(format!(
                        "not a leaker's: cookie {cookie}, inode {:?}, ports {:?} -> {:?}, {} \
                         reports ({}), {} closes ({}{})",
                        said.inode,
                        said.lport,
                        said.rport,
                        said.reports,
                        dwell_text(&said.reported_dwell),
                        said.closes,
                        dwell_text(&said.closed_dwell),
                        if said.recovered_close {
                            ", exit found by a scan"
                        } else {
                            ""
                        }
                    ));
                }
            }
            audit.close_before_report += u64::from(said.closed_unreported);
        }
        audit.unmatched = self.unmatched;
        audit.garbled = self.garbled;
        audit
    }
}

/// "dwell 5012.3 ms exact", for an example.
fn dwell_text(dwell: &Option<(f64, String)>) -> String {
    match dwell {
        Some((ms, bound)) => format!("dwell {ms:.1} ms {bound}"),
        None => "no dwell".into(),
    }
}

/// The soak's verdict on the stream; every field but the totals and `recovered_closes` must
/// be 0.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Audit {
    pub open: u64,
    pub open_unreported: u64,
    pub open_reported_twice: u64,
    pub open_closed: u64,
    pub closed: u64,
    pub closed_unreported: u64,
    pub closed_reported_twice: u64,
    pub closed_not_closed: u64,
    pub closed_twice: u64,
    pub recovered_closes: u64,
    /// Sockets the kernel closed under their owner, and how many of them were never
    /// reported (gone before the tracer could see them: not a problem).
    pub vanished: u64,
    pub vanished_unreported: u64,
    /// Sockets in the soak's namespaces reported though no leaker held them.
    pub false_reports: u64,
    pub close_before_report: u64,
    pub unmatched: u64,
    /// Lines that did not parse (the stream's schema and the soak's disagree).
    pub garbled: u64,
    /// A few of the false reports, to start debugging from.
    pub examples: Vec<String>,
}

impl Audit {
    /// What is wrong, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut say = |n: u64, what: &str| {
            if n > 0 {
                out.push(format!("{n} {what}"));
            }
        };
        say(
            self.open_unreported,
            "sockets still in CLOSE_WAIT were never reported",
        );
        say(
            self.open_reported_twice,
            "sockets still in CLOSE_WAIT were reported twice",
        );
        say(
            self.open_closed,
            "sockets still in CLOSE_WAIT were reported closed",
        );
        say(
            self.closed_unreported,
            "closed sockets were never reported while stuck",
        );
        say(
            self.closed_reported_twice,
            "closed sockets were reported stuck twice",
        );
        say(
            self.closed_not_closed,
            "sockets the kernel closed were never reported closed",
        );
        say(self.closed_twice, "sockets were reported closed twice");
        say(
            self.false_reports,
            "sockets no leaker held were reported stuck (false reports)",
        );
        say(
            self.close_before_report,
            "sockets were reported closed before being reported",
        );
        say(self.unmatched, "socket lines had no cookie");
        say(self.garbled, "lines of the stream did not parse");
        out.extend(self.examples.iter().cloned());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(event: &str, cookie: u64, inode: u64, netns: u64) -> String {
        format!(
            r#"{{"event":"{event}","ts":"x","cookie":{cookie},"inode":{inode},"netns":{netns},"new_state":"LAST_ACK","creation":{{"kind":"accept"}},"stack":[{{"symbol":"s"}}]}}"#
        )
    }

    fn ledger(lines: &[String]) -> Ledger {
        let mut ledger = Ledger::default();
        for l in lines {
            ledger.record(l);
        }
        ledger
    }

    #[test]
    fn a_clean_run_audits_clean() {
        let ledger = ledger(&[
            line("existing", 1, 11, 7),
            line("stuck", 2, 12, 7),
            line("close", 2, 12, 7),
            r#"{"event":"lost","ts":"x","count":5,"reason":"ringbuf_full"}"#.to_owned(),
            r#"{"event":"close","ts":"x","cookie":3,"inode":13,"netns":7,"new_state":null}"#
                .to_owned(),
            line("stuck", 3, 13, 7),
            line("stuck", 4, 14, 99),
        ]);
        let audit = ledger.audit(&[11], &[12], &[], &BTreeSet::from([7]));
        // Cookie 3 closed before its report: counted; cookie 4 is in another namespace.
        assert_eq!(audit.close_before_report, 1);
        assert_eq!(
            audit.false_reports, 1,
            "13 is in our namespace and no leaker's"
        );
        assert_eq!(ledger.lost, 5);
        assert_eq!(ledger.progress(&[11, 12, 14]), (3, 1));
        assert_eq!(ledger.with_creation(&[11, 12, 13, 99]), 3);
        // 99 was never reported: owed unless the kernel closed it under its owner;
        // 13 was reported, so owed even though it vanished later.
        assert_eq!(ledger.owed_creation(&[11, 12, 13, 99], &BTreeSet::new()), 4);
        assert_eq!(
            ledger.owed_creation(&[11, 12, 13, 99], &BTreeSet::from([13, 99])),
            3
        );
        let clean = ledger.audit(&[11], &[12], &[13, 17], &BTreeSet::from([7]));
        assert_eq!((clean.vanished, clean.vanished_unreported), (2, 1));
        assert_eq!(
            clean.problems(),
            vec!["1 sockets were reported closed before being reported"]
        );
    }

    #[test]
    fn a_false_report_says_how_its_dwell_was_known() {
        let ledger = ledger(&[
            r#"{"event":"stuck","ts":"x","cookie":5,"inode":15,"netns":7,"lport":40000,"rport":8080,"dwell_ms":5000.5,"dwell_bound":"exact"}"#.to_owned(),
            r#"{"event":"close","ts":"x","cookie":5,"inode":15,"netns":7,"new_state":null,"dwell_ms":5900.0,"dwell_bound":"at_most"}"#.to_owned(),
        ]);
        let audit = ledger.audit(&[], &[], &[], &BTreeSet::from([7]));
        assert_eq!(
            audit.examples,
            vec![
                "not a leaker's: cookie 5, inode Some(15), ports Some(40000) -> Some(8080), 1 \
                 reports (dwell 5000.5 ms exact), 1 closes (dwell 5900.0 ms at_most, exit \
                 found by a scan)"
            ]
        );
    }

    #[test]
    fn every_way_to_be_wrong_is_counted() {
        let ledger = ledger(&[
            line("stuck", 1, 11, 7),
            line("stuck", 1, 11, 7),
            line("existing", 2, 12, 7),
            line("close", 2, 12, 7),
            line("stuck", 3, 13, 7),
            line("close", 3, 13, 7),
            line("close", 3, 13, 7),
            line("stuck", 4, 14, 7),
            r#"{"event":"stuck","ts":"x"}"#.to_owned(),
            "not json".to_owned(),
        ]);
        let audit = ledger.audit(&[11, 12, 15], &[13, 14, 16], &[], &BTreeSet::from([7]));
        let want = Audit {
            open: 3,
            open_unreported: 1,
            open_reported_twice: 1,
            open_closed: 1,
            closed: 3,
            closed_unreported: 1,
            closed_reported_twice: 0,
            closed_not_closed: 1,
            closed_twice: 1,
            recovered_closes: 0,
            vanished: 0,
            vanished_unreported: 0,
            false_reports: 0,
            close_before_report: 0,
            unmatched: 1,
            garbled: 1,
            examples: vec![],
        };
        assert_eq!(audit, want);
        assert_eq!(audit.problems().len(), 8, "{:?}", audit.problems());
    }

    #[test]
    fn stuck_after_existing_is_a_duplicate_only_if_existing_said_stuck() {
        let existing = |cookie: u64, stuck: bool| {
            format!(
                r#"{{"event":"existing","cookie":{cookie},"inode":{cookie},"netns":7,"stuck":{stuck}}}"#
            )
        };
        let ledger = ledger(&[
            existing(1, false),
            line("stuck", 1, 1, 7),
            existing(2, true),
            line("stuck", 2, 2, 7),
            existing(3, true),
        ]);
        let audit = ledger.audit(&[1, 2, 3], &[], &[], &BTreeSet::from([7]));
        assert_eq!(audit.open_reported_twice, 1, "{audit:?}");
        assert!(!ledger.by_inode(1).unwrap().duplicate);
        assert_eq!(
            ledger.with_creation(&[1, 2, 3]),
            2,
            "the stuck lines had it"
        );
    }

    #[test]
    fn the_summary_and_start_lines_are_kept_whole() {
        let ledger = ledger(&[
            r#"{"event":"start","existing":3}"#.to_owned(),
            r#"{"event":"summary","in_close_wait":0,"lost":2,"stuck":100000,"dwell_ms":{"p50":0.004}}"#.to_owned(),
        ]);
        assert_eq!(ledger.start.unwrap()["existing"], 3);
        assert_eq!(ledger.summary.unwrap()["lost"], 2);
    }
}
