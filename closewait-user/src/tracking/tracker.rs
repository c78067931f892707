//! The dwell state machine: which sockets sit in CLOSE_WAIT, since when, and
//! which passed the threshold. Pure: every method takes the current time
//! (CLOCK_MONOTONIC ns, the clock of `bpf_ktime_get_ns`), so tests drive it.
//!
//! With an owner filter (`--pid`, `--comm`) a socket is not counted or shown
//! until its holders are known: it waits as *pending* until [`Tracker::admit`]
//! says whether the filter selects it. Without one every socket is admitted
//! at once.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet},
};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::events::{Observed, Socket, Transition};

/// How a reported dwell relates to the true one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// Entry and exit both seen live.
    Exact,
    /// The entry was not seen (found by a scan): the true dwell is longer.
    AtLeast,
    /// The exit was not seen (found gone by a scan): the true dwell is shorter.
    AtMost,
}

/// What the tracker has to say; the outputs print it.
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
    /// Passed the threshold.
    Stuck {
        socket: Socket,
        dwell_ns: u64,
        bound: Bound,
    },
    /// Left CLOSE_WAIT. `to` is `None` when the exit was missed and found by
    /// reconciliation.
    Close {
        socket: Socket,
        dwell_ns: u64,
        to: Option<u8>,
        ts_ns: u64,
        bound: Bound,
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

    /// The bound of the dwell, for reports that carry one.
    pub fn bound(&self) -> Option<Bound> {
        match self {
            Report::Existing { .. } => Some(Bound::AtLeast),
            Report::Enter { .. } => None,
            Report::Stuck { bound, .. } | Report::Close { bound, .. } => Some(*bound),
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

/// Running totals of admitted sockets, for the summary.
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

/// Upper bounds (seconds) of the dwell histogram's buckets, 1 ms to past
/// an hour, doubling.
pub const DWELL_BUCKETS_S: [f64; 23] = {
    let mut b = [0.0; 23];
    let mut i = 0;
    let mut v = 0.001;
    while i < 23 {
        b[i] = v;
        v *= 2.0;
        i += 1;
    }
    b
};

/// Closed sockets' exact dwells by bucket of [`DWELL_BUCKETS_S`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DwellBuckets {
    /// Per bucket, not cumulative; what is above the last is only in
    /// `count`.
    pub counts: Vec<u64>,
    pub sum_s: f64,
    pub count: u64,
}

/// Counts for the read model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    pub totals: Totals,
    /// Admitted sockets in CLOSE_WAIT now, stuck or not.
    pub in_close_wait: usize,
    /// Dwell percentiles of sockets that closed with an exactly known dwell.
    pub dwell: Option<Percentiles>,
    /// The same dwells as histogram buckets (the metrics' histogram).
    pub dwell_buckets: DwellBuckets,
}

/// A socket still stuck (the read model keeps the list the outputs show;
/// this one checks the tracker in its tests).
#[cfg(test)]
#[derive(Clone, Debug, PartialEq)]
pub struct StuckSocket {
    pub id: u64,
    pub socket: Socket,
    pub dwell_ns: u64,
    pub bound: Bound,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percentiles {
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub count: u64,
}

/// How the tracker learned of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// Its entry event.
    Live { from: u8 },
    /// The start-up scan.
    Startup,
    /// A reconciliation scan (its entry event was lost).
    Recovered,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admission {
    Admitted,
    /// Waiting for the owner filter's verdict; `exit` holds an exit that
    /// came first: (time, new state or `None` if found by a scan).
    Pending {
        exit: Option<(u64, Option<u8>)>,
    },
}

struct Entry {
    socket: Socket,
    origin: Origin,
    enter_ns: u64,
    /// When the tracker learned of it (event time, or scan time).
    seen_ns: u64,
    /// The last time it was known to be in CLOSE_WAIT.
    confirmed_ns: u64,
    /// The entry time is exact (seen live), not estimated by a scan.
    exact_start: bool,
    /// Missing from this many scans in a row.
    absent: u8,
    /// A scan confirmed it after the loss that held it (see
    /// [`Tracker::note_loss`]): flagged when due, whatever was lost since.
    vouched: bool,
    /// Shown to the user (existing or stuck): its close is shown too.
    reported: bool,
    stuck: bool,
    admission: Admission,
}

struct ScanWindow {
    started_ns: u64,
    /// Sockets that left CLOSE_WAIT after the scan started: the scan may
    /// still list them, and they must not be re-added.
    exits: HashSet<u64>,
}

/// Scans in a row that must miss a socket before it counts as gone. A
/// sock_diag dump is not a snapshot: it walks the kernel's socket hash table
/// (shared by every network namespace) over several reads, and sockets that
/// other connections' churn moves meanwhile can be skipped. One dump's
/// absence is no proof; the same socket skipped three times is.
pub const ABSENT_SCANS: u8 = 3;

pub struct Tracker {
    threshold_ns: u64,
    /// Report every entry and exit, not only stuck sockets.
    all: bool,
    /// New sockets wait for [`Tracker::admit`] (an owner filter is set).
    gated: bool,
    /// Boxed: a hash table grows by doubling its slots, and under churn it
    /// grows even at a steady size (deleted slots are reclaimed by a
    /// rehash); with the entry in the slot each doubling would cost its
    /// full size per slot, with a box 8 bytes.
    table: HashMap<u64, Box<Entry>>,
    /// Sockets the owner filter turned down, still in CLOSE_WAIT.
    rejected: HashSet<u64>,
    /// Pending sockets not yet handed out by [`Tracker::take_unresolved`].
    unresolved: Vec<(u64, Socket)>,
    /// (deadline, id), soonest first. Stale items are skipped when popped.
    deadlines: BinaryHeap<Reverse<(u64, u64)>>,
    totals: Totals,
    /// Exact dwells of closed sockets, in microseconds.
    dwell_us: Histogram<u64>,
    scan: Option<ScanWindow>,
    /// Events were lost at this time: an entry not confirmed since may have
    /// left CLOSE_WAIT unseen, so it is not flagged before a scan confirms it.
    lost_at_ns: u64,
    /// Entries due to be flagged but waiting for that scan, with the loss
    /// that held them (a later loss does not hold them again, or a steady
    /// loss would hold them for good).
    held: HashMap<u64, u64>,
}

impl Tracker {
    pub fn new(threshold_ns: u64, all: bool, gated: bool) -> Tracker {
        Tracker {
            threshold_ns,
            all,
            gated,
            table: HashMap::new(),
            rejected: HashSet::new(),
            unresolved: Vec::new(),
            deadlines: BinaryHeap::new(),
            totals: Totals::default(),
            // 3 significant digits, growing as needed: a few KiB.
            dwell_us: Histogram::new(3).expect("3 significant figures is valid"),
            scan: None,
            lost_at_ns: 0,
            held: HashMap::new(),
        }
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Sockets currently in CLOSE_WAIT (admitted or pending).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Apply one kernel event.
    pub fn on_event(&mut self, id: u64, ev: Observed) -> Vec<Report> {
        match ev.transition {
            Transition::Enter { from } => {
                // A new socket under an id that was turned down (a reused
                // 4-tuple in tuple mode): judge it afresh.
                self.rejected.remove(&id);
                let origin = Origin::Live { from };
                self.insert(id, ev.socket, origin, ev.ts_ns, ev.ts_ns, true, ev.ts_ns)
            }
            Transition::Exit { to } => {
                if let Some(scan) = &mut self.scan {
                    scan.exits.insert(id);
                }
                if self.rejected.remove(&id) {
                    return Vec::new();
                }
                let Some(entry) = self.table.get_mut(&id) else {
                    return Vec::new();
                };
                if let Admission::Pending { exit } = &mut entry.admission {
                    *exit = Some((ev.ts_ns, Some(to)));
                    return Vec::new();
                }
                let entry = *self.table.remove(&id).expect("present");
                self.close(entry, ev.ts_ns, Some(to)).into_iter().collect()
            }
        }
    }

    /// Sockets that became pending since the last call: their owners must be
    /// looked up and [`Tracker::admit`] called for each.
    pub fn take_unresolved(&mut self) -> Vec<(u64, Socket)> {
        std::mem::take(&mut self.unresolved)
    }

    /// The owner filter's verdict on a pending socket. Admitted, it is
    /// counted and shown as if it had just arrived (an entry and exit that
    /// came while it waited are applied in order); turned down, it is
    /// forgotten and its exit ignored.
    pub fn admit(&mut self, id: u64, selected: bool, now_ns: u64) -> Vec<Report> {
        let Some(Admission::Pending { exit }) = self.table.get(&id).map(|e| e.admission) else {
            return Vec::new();
        };
        if !selected {
            self.table.remove(&id);
            if exit.is_none() {
                self.rejected.insert(id);
            }
            return Vec::new();
        }
        let mut out = self.admitted(id, now_ns);
        if let Some((ts_ns, to)) = exit {
            let entry = *self.table.remove(&id).expect("present");
            out.extend(self.close(entry, ts_ns, to));
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        id: u64,
        socket: Socket,
        origin: Origin,
        enter_ns: u64,
        seen_ns: u64,
        exact_start: bool,
        now_ns: u64,
    ) -> Vec<Report> {
        let admission = if self.gated {
            self.unresolved.push((id, socket.clone()));
            Admission::Pending { exit: None }
        } else {
            Admission::Admitted
        };
        self.table.insert(
            id,
            Box::new(Entry {
                socket,
                origin,
                enter_ns,
                seen_ns,
                confirmed_ns: seen_ns,
                exact_start,
                absent: 0,
                vouched: false,
                reported: false,
                stuck: false,
                admission,
            }),
        );
        match admission {
            Admission::Admitted => self.admitted(id, now_ns),
            Admission::Pending { .. } => Vec::new(),
        }
    }

    /// Count and announce a socket that was just admitted.
    fn admitted(&mut self, id: u64, now_ns: u64) -> Vec<Report> {
        let threshold_ns = self.threshold_ns;
        let Some(entry) = self.table.get_mut(&id) else {
            return Vec::new();
        };
        entry.admission = Admission::Admitted;
        let mut out = Vec::new();
        match entry.origin {
            Origin::Live { from } => {
                self.totals.entered += 1;
                if self.all {
                    out.push(Report::Enter {
                        socket: entry.socket.clone(),
                        from,
                        ts_ns: entry.enter_ns,
                    });
                }
            }
            Origin::Startup => {
                let age = now_ns.saturating_sub(entry.enter_ns);
                let stuck = age >= threshold_ns;
                self.totals.existing += 1;
                if stuck {
                    self.totals.stuck += 1;
                }
                entry.stuck = stuck;
                entry.reported = true;
                out.push(Report::Existing {
                    socket: entry.socket.clone(),
                    dwell_ns: age,
                    stuck,
                });
            }
            Origin::Recovered => {
                self.totals.entered += 1;
                self.totals.recovered_enters += 1;
            }
        }
        if !entry.stuck {
            self.deadlines
                .push(Reverse((entry.enter_ns.saturating_add(threshold_ns), id)));
        }
        out
    }

    /// Close an admitted entry at `end_ns`; `to` is `None` for an exit found
    /// by reconciliation.
    fn close(&mut self, entry: Entry, end_ns: u64, to: Option<u8>) -> Option<Report> {
        self.totals.closed += 1;
        let reconciled = to.is_none();
        if reconciled {
            self.totals.recovered_exits += 1;
        }
        let (bound, until_ns) = match (entry.exact_start, reconciled) {
            (true, false) => (Bound::Exact, end_ns),
            (false, false) => (Bound::AtLeast, end_ns),
            // Gone by the time the scan looked: no later than now.
            (true, true) => (Bound::AtMost, end_ns),
            // Neither end seen: only the time it was last known to be there
            // bounds it (from below).
            (false, true) => (Bound::AtLeast, entry.confirmed_ns),
        };
        let dwell_ns = until_ns.saturating_sub(entry.enter_ns);
        if bound == Bound::Exact {
            // Clamp to the histogram's range rather than fail.
            let _ = self.dwell_us.record((dwell_ns / 1_000).max(1));
        }
        (entry.reported || self.all).then_some(Report::Close {
            socket: entry.socket,
            dwell_ns,
            to,
            ts_ns: end_ns,
            bound,
        })
    }

    /// Flag every admitted socket whose dwell reached the threshold by `now_ns`.
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
            if entry.stuck
                || entry.admission != Admission::Admitted
                || entry.enter_ns.saturating_add(self.threshold_ns) > now_ns
            {
                continue; // flagged, pending (re-queued when admitted), or newer
            }
            if !entry.vouched && entry.confirmed_ns < self.lost_at_ns {
                // Its exit may be among the lost events.
                self.held.insert(id, self.lost_at_ns);
                continue;
            }
            entry.stuck = true;
            entry.reported = true;
            self.totals.stuck += 1;
            out.push(Report::Stuck {
                socket: entry.socket.clone(),
                dwell_ns: now_ns.saturating_sub(entry.enter_ns),
                bound: if entry.exact_start {
                    Bound::Exact
                } else {
                    Bound::AtLeast
                },
            });
        }
        out
    }

    /// Whether a socket is due to be flagged stuck by [`Tracker::poll_stuck`]
    /// at `now_ns`: the time to check for lost events first.
    pub fn is_due(&self, now_ns: u64) -> bool {
        self.deadlines
            .peek()
            .is_some_and(|&Reverse((deadline, _))| deadline <= now_ns)
    }

    /// Events were lost (the ring buffer was full): until a scan confirms
    /// them, the sockets the table holds now are not flagged stuck, since
    /// the exit of any of them may have been lost.
    pub fn note_loss(&mut self, now_ns: u64) {
        self.lost_at_ns = now_ns;
    }

    /// Whether a socket is missing from the last scan but not yet from
    /// [`ABSENT_SCANS`] of them: another scan soon settles it.
    pub fn has_absent(&self) -> bool {
        self.table.values().any(|e| e.absent > 0)
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
    /// - A socket the table holds from before the scan began, and
    ///   [`ABSENT_SCANS`] scans in a row did not list, left CLOSE_WAIT unseen:
    ///   it is closed here.
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
        self.rejected.retain(|id| listed.contains(id));
        let mut gone = Vec::new();
        for (id, entry) in &mut self.table {
            if listed.contains(id) {
                entry.confirmed_ns = entry.confirmed_ns.max(window.started_ns);
                entry.absent = 0;
                // Listed after all: an exit an earlier scan inferred was a skip.
                if let Admission::Pending { exit } = &mut entry.admission {
                    if exit.is_some_and(|(_, to)| to.is_none()) {
                        *exit = None;
                    }
                }
            } else if entry.seen_ns < window.started_ns {
                entry.absent = entry.absent.saturating_add(1);
                if entry.absent >= ABSENT_SCANS {
                    gone.push(*id);
                }
            }
        }
        // Dated now: the first scans that missed it may have skipped it.
        for id in gone {
            let Some(entry) = self.table.get_mut(&id) else {
                continue;
            };
            if let Admission::Pending { exit } = &mut entry.admission {
                exit.get_or_insert((now_ns, None));
                continue;
            }
            let entry = *self.table.remove(&id).expect("present");
            out.extend(self.close(entry, now_ns, None));
        }
        for (id, held_by) in std::mem::take(&mut self.held) {
            let Some(e) = self.table.get_mut(&id) else {
                continue;
            };
            if e.confirmed_ns >= held_by {
                e.vouched = true;
                let deadline = e.enter_ns.saturating_add(self.threshold_ns);
                self.deadlines.push(Reverse((deadline, id)));
            } else {
                self.held.insert(id, held_by);
            }
        }
        for f in found {
            if self.table.contains_key(&f.id)
                || self.rejected.contains(&f.id)
                || window.exits.contains(&f.id)
            {
                continue;
            }
            let age = f.age_ns.unwrap_or(0).min(now_ns);
            let origin = if startup {
                Origin::Startup
            } else {
                Origin::Recovered
            };
            let reports = self.insert(f.id, f.socket, origin, now_ns - age, now_ns, false, now_ns);
            out.extend(reports);
        }
        out
    }

    /// Totals, sockets in CLOSE_WAIT and dwell percentiles, for the read model.
    pub fn counts(&self) -> Counts {
        let h = &self.dwell_us;
        let dwell = (!h.is_empty()).then(|| Percentiles {
            p50_ns: h.value_at_quantile(0.50) * 1_000,
            p90_ns: h.value_at_quantile(0.90) * 1_000,
            p99_ns: h.value_at_quantile(0.99) * 1_000,
            max_ns: h.max() * 1_000,
            count: h.len(),
        });
        // Cumulative counts, differenced: hdrhistogram counts whole buckets
        // (0.1% wide here), so adjacent ranges would share the one at the
        // bound.
        let mut below = 0;
        let counts = DWELL_BUCKETS_S
            .iter()
            .map(|&bound| {
                let upto = if h.is_empty() {
                    0
                } else {
                    h.count_between(0, (bound * 1e6) as u64)
                };
                let n = upto.saturating_sub(below);
                below = below.max(upto);
                n
            })
            .collect();
        let dwell_buckets = DwellBuckets {
            counts,
            sum_s: h.mean() * h.len() as f64 / 1e6,
            count: h.len(),
        };
        Counts {
            dwell_buckets,
            totals: self.totals,
            in_close_wait: self
                .table
                .values()
                .filter(|e| e.admission == Admission::Admitted)
                .count(),
            dwell,
        }
    }

    /// Admitted sockets past the threshold, longest first.
    #[cfg(test)]
    pub fn still_stuck(&self, now_ns: u64) -> Vec<StuckSocket> {
        let mut out: Vec<StuckSocket> = self
            .table
            .iter()
            .filter(|(_, e)| e.stuck)
            .map(|(id, e)| StuckSocket {
                id: *id,
                socket: e.socket.clone(),
                dwell_ns: now_ns.saturating_sub(e.enter_ns),
                bound: if e.exact_start {
                    Bound::Exact
                } else {
                    Bound::AtLeast
                },
            })
            .collect();
        out.sort_by_key(|s| Reverse(s.dwell_ns));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::tracking::events::Family;

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

    fn found(id: u64, age_ns: u64) -> Found {
        Found {
            id,
            socket: sock(id as u16),
            age_ns: Some(age_ns),
        }
    }

    #[test]
    fn quick_close_is_silent_and_timed() {
        let mut t = Tracker::new(5 * S, false, false);
        assert_eq!(t.on_event(1, enter(1, 10 * S)), vec![]);
        assert_eq!(t.on_event(1, exit(1, 10 * S + 3 * MS, 9)), vec![]);
        assert!(t.poll_stuck(100 * S).is_empty());
        let c = t.counts();
        assert_eq!(c.totals.entered, 1);
        assert_eq!(c.totals.closed, 1);
        assert_eq!(c.totals.stuck, 0);
        let p = c.dwell.expect("one dwell");
        assert_eq!(p.count, 1);
        assert!((2_990_000..=3_010_000).contains(&p.max_ns), "{p:?}");
    }

    #[test]
    fn flagged_on_time_then_close_reported_with_dwell() {
        let mut t = Tracker::new(5 * S, false, false);
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
                bound: Bound::Exact,
            }]
        );
        assert!(t.poll_stuck(20 * S).is_empty(), "flagged once");
        let close = t.on_event(7, exit(7, 22 * S, 9));
        assert_eq!(
            close,
            vec![Report::Close {
                socket: sock(7),
                dwell_ns: 12 * S,
                to: Some(9),
                ts_ns: 22 * S,
                bound: Bound::Exact,
            }]
        );
        let c = t.counts();
        assert_eq!((c.totals.stuck, c.totals.closed), (1, 1));
        assert!(t.still_stuck(30 * S).is_empty());
    }

    #[test]
    fn all_mode_reports_every_entry_and_exit() {
        let mut t = Tracker::new(5 * S, true, false);
        assert!(matches!(
            t.on_event(1, enter(1, S)).as_slice(),
            [Report::Enter { from: 1, .. }]
        ));
        assert!(matches!(
            t.on_event(1, exit(1, 2 * S, 7)).as_slice(),
            [Report::Close { to: Some(7), .. }]
        ));
    }

    #[test]
    fn exit_of_unknown_socket_is_ignored() {
        let mut t = Tracker::new(5 * S, false, false);
        assert_eq!(t.on_event(3, exit(3, S, 9)), vec![]);
        assert_eq!(t.totals().closed, 0);
    }

    #[test]
    fn startup_scan_reports_existing_with_lower_bound() {
        let mut t = Tracker::new(5 * S, false, false);
        t.begin_scan(100 * S);
        let reports = t.finish_scan(vec![found(1, 60 * S), found(2, S)], 100 * S, true);
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
                bound: Bound::AtLeast,
            }]
        );
        let close = t.on_event(1, exit(1, 110 * S, 9));
        assert!(matches!(
            close.as_slice(),
            [Report::Close { dwell_ns, bound: Bound::AtLeast, .. }] if *dwell_ns == 70 * S
        ));
        let c = t.counts();
        assert_eq!(c.totals.existing, 2);
        assert_eq!(c.totals.stuck, 2);
        assert_eq!(c.dwell, None, "lower bounds stay out of the percentiles");
        assert_eq!(t.still_stuck(110 * S).len(), 1);
    }

    #[test]
    fn reconcile_recovers_missed_exit_and_missed_enter() {
        let mut t = Tracker::new(5 * S, false, false);
        t.on_event(1, enter(1, S));
        t.poll_stuck(7 * S); // socket 1 is stuck and reported
        t.begin_scan(10 * S);
        // The scans no longer list 1 (its exit was lost) and list 2 (its
        // entry was lost). 1 is gone after the third scan without it.
        t.finish_scan(vec![found(2, 2 * S)], 10 * S, false);
        assert!(t.has_absent());
        t.begin_scan(11 * S);
        t.finish_scan(vec![found(2, 3 * S)], 11 * S, false);
        t.begin_scan(12 * S);
        let reports = t.finish_scan(vec![found(2, 4 * S)], 12 * S, false);
        assert!(!t.has_absent());
        assert_eq!(
            reports,
            vec![Report::Close {
                socket: sock(1),
                dwell_ns: 11 * S,
                to: None,
                ts_ns: 12 * S,
                bound: Bound::AtMost,
            }],
            "a reconciled close of a socket seen entering: an upper bound"
        );
        assert_eq!(t.len(), 1);
        let s = t.totals();
        assert_eq!((s.recovered_exits, s.recovered_enters), (1, 1));
        // The recovered one is flagged when its (lower-bound) dwell reaches 5 s.
        assert!(t.poll_stuck(12 * S).is_empty());
        assert_eq!(t.poll_stuck(13 * S).len(), 1);
    }

    #[test]
    fn after_lost_events_nothing_is_flagged_before_a_scan_confirms_it() {
        let mut t = Tracker::new(5 * S, false, false);
        t.on_event(1, enter(1, S)); // its exit is lost
        t.on_event(2, enter(2, 2 * S)); // really stuck
        t.note_loss(3 * S);
        assert!(t.is_due(8 * S));
        assert_eq!(t.poll_stuck(8 * S), vec![], "held until a scan");
        t.begin_scan(9 * S);
        // A loss during the scan does not hold them again: a steady loss
        // would hold them for good.
        t.note_loss(9 * S + S / 2);
        t.finish_scan(vec![found(2, 7 * S)], 10 * S, false);
        let flagged = t.poll_stuck(10 * S);
        assert!(
            matches!(&flagged[..], [Report::Stuck { socket, .. }] if *socket == sock(2)),
            "{flagged:?}"
        );
        // 1 is gone after three scans without it, never flagged, so unreported.
        for at in [11, 12] {
            t.begin_scan(at * S);
            assert_eq!(t.finish_scan(vec![found(2, 8 * S)], at * S, false), vec![]);
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.poll_stuck(13 * S), vec![]);
        assert_eq!(t.totals().stuck, 1);
    }

    #[test]
    fn reconciled_close_of_a_scanned_socket_is_a_lower_bound() {
        let mut t = Tracker::new(5 * S, false, false);
        t.begin_scan(100 * S);
        t.finish_scan(vec![found(1, 10 * S)], 100 * S, true);
        t.begin_scan(110 * S);
        t.finish_scan(vec![found(1, 20 * S)], 110 * S, false); // still there
        t.begin_scan(120 * S);
        // One dump may skip a socket that is there: not gone yet.
        assert_eq!(t.finish_scan(vec![], 120 * S, false), vec![]);
        t.begin_scan(121 * S);
        t.finish_scan(vec![found(1, 31 * S)], 121 * S, false); // there after all
        for at in [130, 131] {
            t.begin_scan(at * S);
            assert_eq!(t.finish_scan(vec![], at * S, false), vec![]);
        }
        t.begin_scan(132 * S);
        let reports = t.finish_scan(vec![], 132 * S, false); // unseen 3 times
        assert_eq!(
            reports,
            vec![Report::Close {
                socket: sock(1),
                dwell_ns: 31 * S,
                to: None,
                ts_ns: 132 * S,
                bound: Bound::AtLeast,
            }],
            "entered >=10 s before the first scan, last seen at 121 s, gone by 132 s"
        );
    }

    #[test]
    fn reconcile_keeps_sockets_newer_than_the_scan() {
        let mut t = Tracker::new(5 * S, false, false);
        t.begin_scan(10 * S);
        t.on_event(5, enter(5, 11 * S)); // entered after the scan read the kernel
        t.finish_scan(vec![], 12 * S, false);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn reconcile_does_not_resurrect_a_socket_that_left_during_the_scan() {
        let mut t = Tracker::new(5 * S, false, false);
        t.on_event(4, enter(4, S));
        t.begin_scan(10 * S);
        t.on_event(4, exit(4, 11 * S, 9)); // the scan saw it still in CLOSE_WAIT
        t.finish_scan(vec![found(4, 9 * S)], 12 * S, false);
        assert_eq!(t.len(), 0);
        assert_eq!(t.totals().recovered_enters, 0);
    }

    #[test]
    fn percentiles_over_many_dwells() {
        let mut t = Tracker::new(5 * S, false, false);
        for i in 1..=100u64 {
            t.on_event(i, enter(i as u16, 0));
            t.on_event(i, exit(i as u16, i * MS, 9));
        }
        let p = t.counts().dwell.expect("dwells");
        let near = |got: u64, want: u64| got.abs_diff(want) <= want / 100 + 1_000;
        assert!(near(p.p50_ns, 50 * MS), "{p:?}");
        assert!(near(p.p90_ns, 90 * MS), "{p:?}");
        assert!(near(p.p99_ns, 99 * MS), "{p:?}");
        assert!(near(p.max_ns, 100 * MS), "{p:?}");
        // The same dwells in the metrics' buckets: 1 ms in the first, 2 in
        // (1, 2], 4 in (2, 4], ... 36 in (64, 128].
        let b = t.counts().dwell_buckets;
        assert_eq!(b.count, 100);
        assert_eq!(b.counts[..8], [1, 1, 2, 4, 8, 16, 32, 36], "{b:?}");
        assert_eq!(b.counts.iter().sum::<u64>(), 100);
        assert!((b.sum_s - 5.05).abs() < 0.01, "{b:?}");
    }

    // ----- the owner filter's gate -----

    #[test]
    fn gated_sockets_are_counted_and_shown_only_once_selected() {
        let mut t = Tracker::new(5 * S, true, true);
        assert_eq!(t.on_event(1, enter(1, S)), vec![], "pending: nothing yet");
        assert_eq!(t.on_event(2, enter(2, S)), vec![]);
        let unresolved: Vec<u64> = t.take_unresolved().into_iter().map(|(id, _)| id).collect();
        assert_eq!(unresolved, vec![1, 2]);
        assert!(t.take_unresolved().is_empty(), "handed out once");
        assert_eq!(t.counts().totals.entered, 0);
        assert_eq!(t.counts().in_close_wait, 0);

        // 1 is selected: its entry is shown with its own time.
        assert_eq!(
            t.admit(1, true, S + 300 * MS),
            vec![Report::Enter {
                socket: sock(1),
                from: 1,
                ts_ns: S,
            }]
        );
        // 2 is not: forgotten, its exit ignored, never counted.
        assert_eq!(t.admit(2, false, S + 300 * MS), vec![]);
        assert_eq!(t.on_event(2, exit(2, 2 * S, 9)), vec![]);
        assert!(matches!(
            t.on_event(1, exit(1, 2 * S, 9)).as_slice(),
            [Report::Close { bound: Bound::Exact, dwell_ns, .. }] if *dwell_ns == S
        ));
        let totals = t.totals();
        assert_eq!((totals.entered, totals.closed), (1, 1));
    }

    #[test]
    fn gated_socket_that_closed_while_pending_reports_both_in_order() {
        let mut t = Tracker::new(5 * S, true, true);
        t.on_event(1, enter(1, S));
        assert_eq!(t.on_event(1, exit(1, S + 200 * MS, 9)), vec![]);
        let reports = t.admit(1, true, S + 300 * MS);
        assert!(matches!(
            reports.as_slice(),
            [Report::Enter { .. }, Report::Close { to: Some(9), ts_ns, .. }] if *ts_ns == S + 200 * MS
        ));
        assert_eq!(t.len(), 0);
        assert_eq!(t.admit(1, true, 2 * S), vec![], "only pending sockets");
    }

    #[test]
    fn gated_socket_is_flagged_stuck_after_admission_even_if_late() {
        let mut t = Tracker::new(5 * S, false, true);
        t.on_event(1, enter(1, S));
        assert!(
            t.poll_stuck(7 * S).is_empty(),
            "pending sockets are not flagged"
        );
        t.admit(1, true, 7 * S);
        assert!(matches!(
            t.poll_stuck(7 * S).as_slice(),
            [Report::Stuck { dwell_ns, .. }] if *dwell_ns == 6 * S
        ));
        assert_eq!(t.totals().stuck, 1);
    }

    #[test]
    fn gated_scans_wait_for_the_verdict_and_skip_rejected_sockets() {
        let mut t = Tracker::new(5 * S, false, true);
        t.begin_scan(100 * S);
        assert_eq!(
            t.finish_scan(vec![found(1, 60 * S), found(2, 60 * S)], 100 * S, true),
            vec![]
        );
        assert_eq!(t.take_unresolved().len(), 2);
        assert!(matches!(
            t.admit(1, true, 100 * S).as_slice(),
            [Report::Existing { stuck: true, .. }]
        ));
        assert_eq!(t.admit(2, false, 100 * S), vec![]);
        assert_eq!(t.totals().existing, 1);
        // A later scan still lists 2: it stays turned down, not recovered.
        t.begin_scan(110 * S);
        t.finish_scan(vec![found(1, 70 * S), found(2, 70 * S)], 110 * S, false);
        assert!(t.take_unresolved().is_empty());
        assert_eq!(t.totals().recovered_enters, 0);
        assert_eq!(t.counts().in_close_wait, 1);
    }

    /// Hostile input: ring-buffer records of any bytes (a corrupt or
    /// mismatched kernel object) through the decoder, the event parser and
    /// the tracker, with scans and clock jumps in between: never a panic,
    /// and the counts stay consistent.
    mod fuzz {
        use closewait_common::{decode, StateEvent};
        use proptest::prelude::*;

        use super::*;

        /// A record: a real-looking event with fields from `bytes`, or the
        /// raw bytes themselves.
        fn record(raw: bool, bytes: &[u8], kind_ok: bool) -> Vec<u8> {
            if raw {
                return bytes.to_vec();
            }
            let mut ev = StateEvent::zeroed();
            let b = |i: usize| bytes.get(i).copied().unwrap_or(0);
            ev.old_state = b(0) % 14;
            ev.new_state = b(1) % 14;
            ev.family = if b(2) % 2 == 0 { 2 } else { 10 };
            ev.ts_ns = u64::from(b(3)) * 1_000_000_000 + u64::from(b(4)) * 1_000_000;
            ev.cookie = u64::from(b(5) % 8);
            ev.sport = u16::from(b(6));
            ev.dport = u16::from(b(7));
            ev.saddr[..4].copy_from_slice(&[127, 0, 0, b(8)]);
            // SAFETY: StateEvent is plain data.
            let mut out = unsafe {
                std::slice::from_raw_parts(
                    (&ev as *const StateEvent).cast::<u8>(),
                    StateEvent::SIZE,
                )
            }
            .to_vec();
            if !kind_ok {
                out[0] ^= 0xff;
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 2000,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn any_records_never_panic_and_counts_hold(
                records in prop::collection::vec(
                    (any::<bool>(), prop::collection::vec(any::<u8>(), 0..96), any::<bool>(), any::<u8>()),
                    0..64,
                ),
                cookies in any::<bool>(),
            ) {
                let mut t = Tracker::new(S, false, false);
                let mut entered = 0u64;
                for (raw, bytes, kind_ok, action) in &records {
                    let buf = record(*raw, bytes, *kind_ok);
                    let Ok(ev) = decode(&buf) else { continue };
                    let Some(obs) = Observed::from_raw(&ev, cookies) else { continue };
                    if matches!(obs.transition, Transition::Enter { .. }) {
                        entered += 1;
                    }
                    let id = obs.socket.id(cookies);
                    let ts = obs.ts_ns;
                    let _ = t.on_event(id, obs);
                    match action % 4 {
                        0 => { let _ = t.poll_stuck(ts.saturating_add(u64::from(*action) * S)); }
                        1 => {
                            t.begin_scan(ts);
                            let _ = t.finish_scan(vec![found(id, u64::from(*action) * MS)], ts, false);
                        }
                        _ => {}
                    }
                }
                let c = t.counts();
                let total = c.totals.entered + c.totals.existing;
                prop_assert!(c.totals.entered <= entered + c.totals.recovered_enters, "{c:?}");
                prop_assert!(c.in_close_wait as u64 <= total, "{c:?}");
                prop_assert!(c.totals.closed <= total, "{c:?}");
            }
        }
    }
}
