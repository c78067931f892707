//! The read model: what is live now, for every output. The agent writes it
//! (reports as they are shown, counts after each batch, drop totals); the
//! outputs only read it and never reach into the tracker.

use std::{collections::HashMap, sync::Arc};

use crate::{
    enrich::{stacks, Context},
    probe::Drops,
    tracking::{Bound, Counts, Report, Socket},
};

/// One report on its way to the outputs, with what enrichment found.
#[derive(Clone, Debug)]
pub struct Enriched {
    /// The tracker's key for the socket.
    pub id: u64,
    pub report: Report,
    /// When it is shown (CLOCK_MONOTONIC ns).
    pub at_ns: u64,
    /// Owners and creation stack, for reported sockets.
    pub ctx: Option<Arc<Context>>,
}

/// A socket shown to the user (existing or stuck) and still in CLOSE_WAIT.
#[derive(Clone, Debug)]
pub struct Reported {
    pub socket: Socket,
    pub enter_ns: u64,
    pub bound: Bound,
    pub stuck: bool,
    pub ctx: Option<Arc<Context>>,
}

/// A stuck socket as of some time.
#[derive(Clone, Debug)]
pub struct StuckView<'a> {
    pub id: u64,
    pub socket: &'a Socket,
    pub dwell_ns: u64,
    pub bound: Bound,
    pub ctx: Option<&'a Context>,
}

/// Stuck sockets sharing an owner and a creation site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub count: usize,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Innermost application frame of the creation stack (raw text).
    pub site: Option<String>,
}

#[derive(Debug, Default)]
pub struct Model {
    counts: Counts,
    drops: Drops,
    reported: HashMap<u64, Reported>,
}

impl Model {
    /// Take in a report as it is shown.
    pub fn apply(&mut self, e: &Enriched) {
        match &e.report {
            Report::Existing {
                socket,
                dwell_ns,
                stuck,
            } => {
                self.reported.insert(
                    e.id,
                    Reported {
                        socket: socket.clone(),
                        enter_ns: e.at_ns.saturating_sub(*dwell_ns),
                        bound: Bound::AtLeast,
                        stuck: *stuck,
                        ctx: e.ctx.clone(),
                    },
                );
            }
            Report::Stuck {
                socket,
                dwell_ns,
                bound,
            } => {
                let entry = self.reported.entry(e.id).or_insert_with(|| Reported {
                    socket: socket.clone(),
                    enter_ns: e.at_ns.saturating_sub(*dwell_ns),
                    bound: *bound,
                    stuck: true,
                    ctx: None,
                });
                entry.stuck = true;
                if e.ctx.is_some() {
                    entry.ctx = e.ctx.clone();
                }
            }
            Report::Close { .. } => {
                self.reported.remove(&e.id);
            }
            Report::Enter { .. } => {}
        }
    }

    /// What the tracker counted, after each batch.
    pub fn set_counts(&mut self, counts: Counts) {
        self.counts = counts;
    }

    pub fn set_drops(&mut self, drops: Drops) {
        self.drops = drops;
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    pub fn drops(&self) -> &Drops {
        &self.drops
    }

    /// The context found when a socket was reported, if it is still live.
    pub fn context(&self, id: u64) -> Option<Arc<Context>> {
        self.reported.get(&id).and_then(|r| r.ctx.clone())
    }

    /// Whether the socket was shown and is still in CLOSE_WAIT.
    pub fn is_reported(&self, id: u64) -> bool {
        self.reported.contains_key(&id)
    }

    /// Sockets stuck now, longest dwell first.
    pub fn still_stuck(&self, now_ns: u64) -> Vec<StuckView<'_>> {
        let mut out: Vec<StuckView> = self
            .reported
            .iter()
            .filter(|(_, r)| r.stuck)
            .map(|(id, r)| StuckView {
                id: *id,
                socket: &r.socket,
                dwell_ns: now_ns.saturating_sub(r.enter_ns),
                bound: r.bound,
                ctx: r.ctx.as_deref(),
            })
            .collect();
        out.sort_by(|a, b| b.dwell_ns.cmp(&a.dwell_ns).then(a.id.cmp(&b.id)));
        out
    }

    /// Stuck sockets grouped by (pid, comm, creation site), largest first.
    pub fn groups(&self) -> Vec<Group> {
        type Key = (Option<u32>, Option<String>, Option<String>);
        let mut counts: HashMap<Key, usize> = HashMap::new();
        for r in self.reported.values().filter(|r| r.stuck) {
            let ctx = r.ctx.as_deref();
            let owner = ctx.and_then(|c| c.primary());
            let site = ctx
                .and_then(|c| c.creation.as_ref())
                .and_then(|c| c.stack.as_ref())
                .and_then(|stack| {
                    stacks::app_frames(stack, 1)
                        .first()
                        .map(|f| stacks::frame_label(f))
                });
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
        groups.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(a.pid.cmp(&b.pid))
                .then(a.site.cmp(&b.site))
        });
        groups
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::{
        enrich::{
            owner::Owner,
            stacks::{Frame, Stack},
            CreationContext,
        },
        tracking::Family,
    };

    pub const S: u64 = 1_000_000_000;

    pub fn socket(port: u16) -> Socket {
        Socket {
            cookie: Some(4242),
            family: Family::V4,
            laddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            lport: 8080,
            raddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            rport: port,
            netns: Some(4026531840),
            inode: Some(99),
        }
    }

    pub fn context(comm: &str) -> Context {
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

    pub fn stuck(id: u64, port: u16, ctx: Option<Arc<Context>>) -> Enriched {
        Enriched {
            id,
            report: Report::Stuck {
                socket: socket(port),
                dwell_ns: 5 * S,
                bound: Bound::Exact,
            },
            at_ns: 105 * S,
            ctx,
        }
    }

    #[test]
    fn stuck_sockets_come_and_go_with_their_reports() {
        let mut m = Model::default();
        let api = Arc::new(context("api-server"));
        m.apply(&stuck(1, 1, Some(api.clone())));
        m.apply(&stuck(2, 2, Some(api)));
        m.apply(&stuck(3, 3, None));
        let still = m.still_stuck(110 * S);
        assert_eq!(still.len(), 3);
        assert!(still.iter().all(|s| s.dwell_ns == 10 * S));
        assert_eq!(
            m.groups(),
            vec![
                Group {
                    count: 2,
                    pid: Some(4242),
                    comm: Some("api-server".into()),
                    site: Some("pool::checkout (src/pool.rs:88)".into()),
                },
                Group {
                    count: 1,
                    pid: None,
                    comm: None,
                    site: None,
                },
            ]
        );
        assert!(m.context(1).is_some());
        m.apply(&Enriched {
            id: 1,
            report: Report::Close {
                socket: socket(1),
                dwell_ns: 6 * S,
                to: Some(9),
                ts_ns: 106 * S,
                bound: Bound::Exact,
            },
            at_ns: 106 * S,
            ctx: None,
        });
        assert_eq!(m.still_stuck(110 * S).len(), 2);
        assert!(!m.is_reported(1));
    }

    #[test]
    fn existing_not_yet_stuck_is_not_in_the_stuck_list() {
        let mut m = Model::default();
        m.apply(&Enriched {
            id: 9,
            report: Report::Existing {
                socket: socket(9),
                dwell_ns: S,
                stuck: false,
            },
            at_ns: 100 * S,
            ctx: None,
        });
        assert!(m.is_reported(9));
        assert!(m.still_stuck(101 * S).is_empty());
        m.apply(&Enriched {
            id: 9,
            report: Report::Stuck {
                socket: socket(9),
                dwell_ns: 5 * S,
                bound: Bound::AtLeast,
            },
            at_ns: 104 * S,
            ctx: None,
        });
        let still = m.still_stuck(110 * S);
        assert_eq!(still.len(), 1);
        assert_eq!(still[0].bound, Bound::AtLeast);
        assert_eq!(still[0].dwell_ns, 11 * S, "the age found at start counts");
    }
}
