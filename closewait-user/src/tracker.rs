//! The dwell state machine: which sockets sit in CLOSE_WAIT, since when, and
//! which passed the threshold. Pure: every method takes the current time
//! (CLOCK_MONOTONIC ns, the clock of `bpf_ktime_get_ns`), so tests drive it.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet},
};

use hdrhistogram::Histogram;

use crate::events::{Observed, Socket, Transition};

/// What the tracker has to say; the output module prints it.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// Found in CLOSE_WAIT by the start-up scan; `dwell_ns` is a lower bound.
    Existing {
        socket: Socket,
        dwell_ns: u64,
        stuck: bool,
    },
    /// Entered CLOSE_WAIT (only with `--all`).
    Enter {
        socket: Socket,
        from: u8,
        ts_ns: u64,
    },
    /// Passed the threshold. `lower_bound`: the dwell is a lower bound (a
    /// socket found by a scan).
    Stuck {
        socket: Socket,
        dwell_ns: u64,
        lower_bound: bool,
    },
    /// Left CLOSE_WAIT. `to` is `None` when the exit was missed and found by
    /// reconciliation.
    Close {
        socket: Socket,
        dwell_ns: u64,
        to: Option<u8>,
        ts_ns: u64,
        /// The dwell is a lower bound (a socket found by a scan).
        lower_bound: bool,
    },
}

impl Report {
    pub fn socket(&self) -> &Socket {
        match self {
            Report::Existing { socket, .. }
            | Report::Enter { socket, .. }
            | Report::Stuck { socket, .. }
            | Report::Close { socket, .. } => socket,
        }
    }
}

/// A socket in CLOSE_WAIT found by a sock_diag scan.
#[derive(Clone, Debug)]
pub struct Found {
    pub id: u64,
    pub socket: Socket,
    /// A lower bound on its time in CLOSE_WAIT, when known.
    pub age_ns: Option<u64>,
}

/// Running totals, for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Entries into CLOSE_WAIT seen live (or recovered by reconciliation).
    pub entered: u64,
    /// Found already in CLOSE_WAIT at start-up.
    pub existing: u64,
    /// Left CLOSE_WAIT.
    pub closed: u64,
    /// Flagged stuck (dwell reached the threshold).
    pub stuck: u64,
    /// Entries recovered by reconciliation after a missed event.
    pub recovered_enters: u64,
    /// Exits recovered by reconciliation after a missed event.
    pub recovered_exits: u64,
}

/// The summary at the end of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub totals: Totals,
    /// Sockets still in CLOSE_WAIT past the threshold, longest first.
    pub still_stuck: Vec<StuckSocket>,
    /// Sockets still in CLOSE_WAIT, stuck or not.
    pub in_close_wait: usize,
    /// Dwell percentiles of sockets that closed with an exactly known dwell.
    pub dwell: Option<Percentiles>,
}

/// A socket still stuck at the end.
#[derive(Clone, Debug, PartialEq)]
pub struct StuckSocket {
    pub id: u64,
    pub socket: Socket,
    pub dwell_ns: u64,
    /// The dwell is a lower bound.
    pub lower_bound: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percentiles {
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub count: u64,
}

struct Entry {
    socket: Socket,
    enter_ns: u64,
    /// When the tracker learned of it (event time, or scan time).
    seen_ns: u64,
    lower_bound: bool,
    /// Shown to the user (existing or stuck): its close is shown too.
    reported: bool,
    stuck: bool,
}

struct ScanWindow {
    started_ns: u64,
    /// Sockets that left CLOSE_WAIT after the scan started: the scan may
    /// still list them, and they must not be re-added.
    exits: HashSet<u64>,
}

pub struct Tracker {
    threshold_ns: u64,
    /// Report every entry and exit, not only stuck sockets.
    all: bool,
    table: HashMap<u64, Entry>,
    /// (deadline, id), soonest first. Stale items are skipped when popped.
    deadlines: BinaryHeap<Reverse<(u64, u64)>>,
    totals: Totals,
    /// Exact dwells of closed sockets, in microseconds.
    dwell_us: Histogram<u64>,
    scan: Option<ScanWindow>,
}

impl Tracker {
    pub fn new(threshold_ns: u64, all: bool) -> Tracker {
        Tracker {
            threshold_ns,
            all,
            table: HashMap::new(),
            deadlines: BinaryHeap::new(),
            totals: Totals::default(),
            // 3 significant digits, growing as needed: a few KiB.
            dwell_us: Histogram::new(3).expect("3 significant figures is valid"),
            scan: None,
        }
    }

    #[cfg(test)]
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Sockets currently in CLOSE_WAIT.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Apply one kernel event.
    pub fn on_event(&mut self, id: u64, ev: Observed) -> Option<Report> {
        match ev.transition {
            Transition::Enter { from } => {
                self.totals.entered += 1;
                let report = self.all.then(|| Report::Enter {
                    socket: ev.socket.clone(),
                    from,
                    ts_ns: ev.ts_ns,
                });
                self.insert(id, ev.socket, ev.ts_ns, ev.ts_ns, false, false);
                report
            }
            Transition::Exit { to } => {
                if let Some(scan) = &mut self.scan {
                    scan.exits.insert(id);
                }
                let entry = self.table.remove(&id)?;
                let dwell_ns = ev.ts_ns.saturating_sub(entry.enter_ns);
                self.totals.closed += 1;
                if !entry.lower_bound {
                    // Clamp to the histogram's range rather than fail.
                    let _ = self.dwell_us.record((dwell_ns / 1_000).max(1));
                }
                (entry.reported || self.all).then_some(Report::Close {
                    socket: entry.socket,
                    dwell_ns,
                    to: Some(to),
                    ts_ns: ev.ts_ns,
                    lower_bound: entry.lower_bound,
                })
            }
        }
    }

    fn insert(
        &mut self,
        id: u64,
        socket: Socket,
        enter_ns: u64,
        seen_ns: u64,
        lower_bound: bool,
        reported: bool,
    ) {
        self.deadlines
            .push(Reverse((enter_ns.saturating_add(self.threshold_ns), id)));
        self.table.insert(
            id,
            Entry {
                socket,
                enter_ns,
                seen_ns,
                lower_bound,
                reported,
                stuck: false,
            },
        );
    }

    /// Flag every socket whose dwell reached the threshold by `now_ns`.
    pub fn poll_stuck(&mut self, now_ns: u64) -> Vec<Report> {
        let mut out = Vec::new();
        while let Some(&Reverse((deadline, id))) = self.deadlines.peek() {
            if deadline > now_ns {
                break;
            }
            self.deadlines.pop();
            let Some(entry) = self.table.get_mut(&id) else {
                continue; // closed since
            };
            if entry.stuck || entry.enter_ns.saturating_add(self.threshold_ns) > now_ns {
                continue; // already flagged, or a newer socket under this id
            }
            entry.stuck = true;
            entry.reported = true;
            self.totals.stuck += 1;
            out.push(Report::Stuck {
                socket: entry.socket.clone(),
                dwell_ns: now_ns.saturating_sub(entry.enter_ns),
                lower_bound: entry.lower_bound,
            });
        }
        out
    }

    /// A sock_diag scan starts now. Call before the scan reads the kernel.
    pub fn begin_scan(&mut self, now_ns: u64) {
        self.scan = Some(ScanWindow {
            started_ns: now_ns,
            exits: HashSet::new(),
        });
    }

    /// Reconcile the table with a finished scan. Every event committed before
    /// the scan ended must have been applied first (drain the ring buffer).
    ///
    /// - A socket the table holds from before the scan began, and the scan
    ///   did not list, left CLOSE_WAIT unseen: it is closed here.
    /// - A socket the scan listed that the table lacks, and that did not
    ///   leave since the scan began, entered unseen: it is added with the
    ///   scan's lower-bound age. At start-up these are the `existing` sockets.
    pub fn finish_scan(&mut self, found: Vec<Found>, now_ns: u64, startup: bool) -> Vec<Report> {
        let window = self.scan.take().unwrap_or(ScanWindow {
            started_ns: now_ns,
            exits: HashSet::new(),
        });
        let mut out = Vec::new();
        let listed: HashSet<u64> = found.iter().map(|f| f.id).collect();
        let gone: Vec<u64> = self
            .table
            .iter()
            .filter(|(id, e)| e.seen_ns < window.started_ns && !listed.contains(id))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            let Some(entry) = self.table.remove(&id) else {
                continue;
            };
            self.totals.closed += 1;
            self.totals.recovered_exits += 1;
            if entry.reported || self.all {
                out.push(Report::Close {
                    dwell_ns: now_ns.saturating_sub(entry.enter_ns),
                    socket: entry.socket,
                    to: None,
                    ts_ns: now_ns,
                    lower_bound: true,
                });
            }
        }
        for f in found {
            if self.table.contains_key(&f.id) || window.exits.contains(&f.id) {
                continue;
            }
            let age = f.age_ns.unwrap_or(0).min(now_ns);
            let enter_ns = now_ns - age;
            if startup {
                let stuck = age >= self.threshold_ns;
                self.totals.existing += 1;
                if stuck {
                    self.totals.stuck += 1;
                }
                out.push(Report::Existing {
                    socket: f.socket.clone(),
                    dwell_ns: age,
                    stuck,
                });
                self.insert(f.id, f.socket, enter_ns, now_ns, true, true);
                if let Some(entry) = self.table.get_mut(&f.id) {
                    entry.stuck = stuck;
                }
            } else {
                self.totals.entered += 1;
                self.totals.recovered_enters += 1;
                self.insert(f.id, f.socket, enter_ns, now_ns, true, false);
            }
        }
        out
    }

    pub fn summary(&self, now_ns: u64) -> Summary {
        let mut still_stuck: Vec<StuckSocket> = self
            .table
            .iter()
            .filter(|(_, e)| e.stuck)
            .map(|(id, e)| StuckSocket {
                id: *id,
                socket: e.socket.clone(),
                dwell_ns: now_ns.saturating_sub(e.enter_ns),
                lower_bound: e.lower_bound,
            })
            .collect();
        still_stuck.sort_by_key(|s| std::cmp::Reverse(s.dwell_ns));
        let h = &self.dwell_us;
        let dwell = (!h.is_empty()).then(|| Percentiles {
            p50_ns: h.value_at_quantile(0.50) * 1_000,
            p90_ns: h.value_at_quantile(0.90) * 1_000,
            p99_ns: h.value_at_quantile(0.99) * 1_000,
            max_ns: h.max() * 1_000,
            count: h.len(),
        });
        Summary {
            totals: self.totals,
            still_stuck,
            in_close_wait: self.table.len(),
            dwell,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::events::Family;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    fn sock(port: u16) -> Socket {
        Socket {
            cookie: Some(port as u64),
            family: Family::V4,
            laddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            lport: 8080,
            raddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            rport: port,
            netns: Some(1),
            inode: None,
        }
    }

    fn enter(port: u16, ts_ns: u64) -> Observed {
        Observed {
            ts_ns,
            transition: Transition::Enter { from: 1 },
            socket: sock(port),
        }
    }

    fn exit(port: u16, ts_ns: u64, to: u8) -> Observed {
        Observed {
            ts_ns,
            transition: Transition::Exit { to },
            socket: sock(port),
        }
    }

    #[test]
    fn quick_close_is_silent_and_timed() {
        let mut t = Tracker::new(5 * S, false);
        assert_eq!(t.on_event(1, enter(1, 10 * S)), None);
        assert_eq!(t.on_event(1, exit(1, 10 * S + 3 * MS, 9)), None);
        assert!(t.poll_stuck(100 * S).is_empty());
        let s = t.summary(100 * S);
        assert_eq!(s.totals.entered, 1);
        assert_eq!(s.totals.closed, 1);
        assert_eq!(s.totals.stuck, 0);
        let p = s.dwell.expect("one dwell");
        assert_eq!(p.count, 1);
        assert!((2_990_000..=3_010_000).contains(&p.max_ns), "{p:?}");
    }

    #[test]
    fn flagged_on_time_then_close_reported_with_dwell() {
        let mut t = Tracker::new(5 * S, false);
        t.on_event(7, enter(7, 10 * S));
        assert!(
            t.poll_stuck(15 * S - 1).is_empty(),
            "not before the threshold"
        );
        let stuck = t.poll_stuck(15 * S + 2 * MS);
        assert_eq!(
            stuck,
            vec![Report::Stuck {
                socket: sock(7),
                dwell_ns: 5 * S + 2 * MS,
                lower_bound: false,
            }]
        );
        assert!(t.poll_stuck(20 * S).is_empty(), "flagged once");
        let close = t.on_event(7, exit(7, 22 * S, 9));
        assert_eq!(
            close,
            Some(Report::Close {
                socket: sock(7),
                dwell_ns: 12 * S,
                to: Some(9),
                ts_ns: 22 * S,
                lower_bound: false
            })
        );
        let s = t.summary(30 * S);
        assert_eq!((s.totals.stuck, s.totals.closed), (1, 1));
        assert!(s.still_stuck.is_empty());
    }

    #[test]
    fn all_mode_reports_every_entry_and_exit() {
        let mut t = Tracker::new(5 * S, true);
        assert!(matches!(
            t.on_event(1, enter(1, S)),
            Some(Report::Enter { from: 1, .. })
        ));
        assert!(matches!(
            t.on_event(1, exit(1, 2 * S, 7)),
            Some(Report::Close { to: Some(7), .. })
        ));
    }

    #[test]
    fn exit_of_unknown_socket_is_ignored() {
        let mut t = Tracker::new(5 * S, false);
        assert_eq!(t.on_event(3, exit(3, S, 9)), None);
        assert_eq!(t.totals().closed, 0);
    }

    #[test]
    fn startup_scan_reports_existing_with_lower_bound() {
        let mut t = Tracker::new(5 * S, false);
        t.begin_scan(100 * S);
        let found = vec![
            Found {
                id: 1,
                socket: sock(1),
                age_ns: Some(60 * S),
            },
            Found {
                id: 2,
                socket: sock(2),
                age_ns: Some(S),
            },
        ];
        let reports = t.finish_scan(found, 100 * S, true);
        assert_eq!(
            reports,
            vec![
                Report::Existing {
                    socket: sock(1),
                    dwell_ns: 60 * S,
                    stuck: true
                },
                Report::Existing {
                    socket: sock(2),
                    dwell_ns: S,
                    stuck: false
                },
            ]
        );
        // The young one is flagged when it reaches the threshold, the old
        // one is not flagged twice.
        assert_eq!(
            t.poll_stuck(104 * S),
            vec![Report::Stuck {
                socket: sock(2),
                dwell_ns: 5 * S,
                lower_bound: true,
            }]
        );
        let close = t.on_event(1, exit(1, 110 * S, 9));
        assert!(matches!(
            close,
            Some(Report::Close { dwell_ns, lower_bound: true, .. }) if dwell_ns == 70 * S
        ));
        let s = t.summary(110 * S);
        assert_eq!(s.totals.existing, 2);
        assert_eq!(s.totals.stuck, 2);
        assert_eq!(s.dwell, None, "lower bounds stay out of the percentiles");
        assert_eq!(s.still_stuck.len(), 1);
    }

    #[test]
    fn reconcile_recovers_missed_exit_and_missed_enter() {
        let mut t = Tracker::new(5 * S, false);
        t.on_event(1, enter(1, S));
        t.poll_stuck(7 * S); // socket 1 is stuck and reported
        t.begin_scan(10 * S);
        // The scan no longer lists 1 (its exit was lost) and lists 2 (its
        // entry was lost).
        let reports = t.finish_scan(
            vec![Found {
                id: 2,
                socket: sock(2),
                age_ns: Some(2 * S),
            }],
            10 * S,
            false,
        );
        assert!(matches!(
            reports.as_slice(),
            [Report::Close {
                to: None,
                lower_bound: true,
                ..
            }]
        ));
        assert_eq!(t.len(), 1);
        let s = t.totals();
        assert_eq!((s.recovered_exits, s.recovered_enters), (1, 1));
        // The recovered one is flagged when its (lower-bound) dwell reaches 5 s.
        assert!(t.poll_stuck(12 * S).is_empty());
        assert_eq!(t.poll_stuck(13 * S).len(), 1);
    }

    #[test]
    fn reconcile_keeps_sockets_newer_than_the_scan() {
        let mut t = Tracker::new(5 * S, false);
        t.begin_scan(10 * S);
        t.on_event(5, enter(5, 11 * S)); // entered after the scan read the kernel
        t.finish_scan(vec![], 12 * S, false);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn reconcile_does_not_resurrect_a_socket_that_left_during_the_scan() {
        let mut t = Tracker::new(5 * S, false);
        t.on_event(4, enter(4, S));
        t.begin_scan(10 * S);
        t.on_event(4, exit(4, 11 * S, 9)); // the scan saw it still in CLOSE_WAIT
        t.finish_scan(
            vec![Found {
                id: 4,
                socket: sock(4),
                age_ns: Some(9 * S),
            }],
            12 * S,
            false,
        );
        assert_eq!(t.len(), 0);
        assert_eq!(t.totals().recovered_enters, 0);
    }

    #[test]
    fn percentiles_over_many_dwells() {
        let mut t = Tracker::new(5 * S, false);
        for i in 1..=100u64 {
            t.on_event(i, enter(i as u16, 0));
            t.on_event(i, exit(i as u16, i * MS, 9));
        }
        let p = t.summary(S).dwell.expect("dwells");
        let near = |got: u64, want: u64| got.abs_diff(want) <= want / 100 + 1_000;
        assert!(near(p.p50_ns, 50 * MS), "{p:?}");
        assert!(near(p.p90_ns, 90 * MS), "{p:?}");
        assert!(near(p.p99_ns, 99 * MS), "{p:?}");
        assert!(near(p.max_ns, 100 * MS), "{p:?}");
    }
}
