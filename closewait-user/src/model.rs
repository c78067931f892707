//! The read model: what is live now, for every output. The agent writes it
//! (reports as they are shown, counts after each batch, drop totals); the
//! outputs only read it and never reach into the tracker.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::Arc,
};

use crate::{
    enrich::{diagnosis::Cause, evidence::Direction, stacks, Context},
    output::format::endpoint,
    probe::Drops,
    tracking::{Bound, Counts, Report, Socket},
};

/// Per-socket lines a group gets in the text stream; after that only the
/// group's own line, when it grows past a power of two or changes cause.
pub const LINES_PER_GROUP: usize = 5;
/// Window of the growth rate.
const MINUTE_NS: u64 = 60_000_000_000;

/// What the kernel records of creation stacks now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StacksNow {
    /// Nothing (`--stacks off`, or the kernel cannot).
    #[default]
    Off,
    /// connect() within the per-CPU budget (`--stacks auto` before trouble).
    Budget,
    /// Every connect() and accept().
    Armed,
}

impl StacksNow {
    pub fn describe(self) -> &'static str {
        match self {
            StacksNow::Off => "off",
            StacksNow::Budget => "connect() within budget",
            StacksNow::Armed => "armed",
        }
    }
}

/// One report on its way to the outputs, with what enrichment found.
#[derive(Clone, Debug)]
pub struct Enriched {
    /// The tracker's key for the socket.
    pub id: u64,
    pub report: Report,
    /// When it is shown (CLOCK_MONOTONIC ns).
    pub at_ns: u64,
    /// Owners, creation stack, evidence and diagnosis, for reported sockets.
    pub ctx: Option<Arc<Context>>,
    /// Its group has had its share of per-socket lines: the text stream
    /// leaves this one out (set by [`Model::apply`]).
    pub quiet: bool,
}

/// A socket shown to the user (existing or stuck) and still in CLOSE_WAIT.
#[derive(Clone, Debug)]
pub struct Reported {
    pub socket: Socket,
    pub enter_ns: u64,
    pub bound: Bound,
    pub stuck: bool,
    pub ctx: Option<Arc<Context>>,
    /// Its group, once stuck: the group's own key, shared.
    group: Option<Arc<GroupKey>>,
    quiet: bool,
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

/// What makes stuck sockets one group: the owner, the code that created
/// them, and the other side (the remote endpoint of outgoing connections,
/// the local listening port of incoming ones).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub pid: Option<u32>,
    pub comm: Option<Arc<str>>,
    /// Innermost application frame of the creation stack (raw text).
    pub site: Option<String>,
    pub endpoint: String,
    /// The members' context was looked up (not, when the agent exited
    /// before the lookup finished): an unknown owner then means no process
    /// holds them, not that nobody asked.
    pub looked_up: bool,
}

impl GroupKey {
    fn of(socket: &Socket, ctx: Option<&Context>) -> GroupKey {
        let owner = ctx.and_then(|c| c.primary());
        let site = ctx
            .and_then(|c| c.creation.as_ref())
            .and_then(|c| c.stack.as_ref())
            .and_then(|stack| {
                stacks::app_frames(stack, 1)
                    .first()
                    .map(|f| stacks::frame_label(f))
            });
        let direction = ctx
            .and_then(|c| c.evidence.as_ref())
            .and_then(|e| e.direction);
        let endpoint = match direction {
            Some(Direction::Incoming) => format!("listening port {}", socket.lport),
            _ => endpoint(socket.raddr, socket.rport),
        };
        GroupKey {
            pid: owner.map(|o| o.pid),
            comm: owner.map(|o| o.comm.clone()),
            site,
            endpoint,
            looked_up: ctx.is_some(),
        }
    }
}

/// A group as the outputs show it.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub key: GroupKey,
    pub count: usize,
    /// Sockets that joined in the last minute.
    pub growth_per_min: usize,
    pub oldest_dwell_ns: u64,
    pub median_idle_before_fin_ms: Option<u64>,
    /// The most common cause among its members, with a member's summary and
    /// hint; `None` before any diagnosis.
    pub cause: Option<Cause>,
    pub summary: Option<String>,
    pub hint: Option<String>,
    pub findings: Vec<String>,
    /// Announced because it appeared or its cause changed (not only grew):
    /// the why and the hint are news.
    pub new_cause: bool,
}

#[derive(Clone, Debug, Default)]
struct GroupState {
    /// Its sockets' ids.
    members: HashSet<u64>,
    causes: BTreeMap<Cause, usize>,
    /// When members joined, within the last minute.
    joined: VecDeque<u64>,
    /// Per-socket lines shown.
    shown: usize,
    /// What the last group event said.
    announced_count: usize,
    announced_cause: Option<Cause>,
    /// Its creation site became known: announce it again (not as news of
    /// a cause).
    renamed: bool,
}

impl GroupState {
    fn cause(&self) -> Option<Cause> {
        // Most members; ties go to the first in rule order.
        self.causes
            .iter()
            .filter(|(_, &n)| n > 0)
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(c, _)| *c)
    }
}

#[derive(Debug, Default)]
pub struct Model {
    counts: Counts,
    drops: Drops,
    /// What the kernel records of creation stacks now (for the live view).
    stacks: StacksNow,
    /// Boxed, as the tracker's table is: doubling the table stays cheap.
    reported: HashMap<u64, Box<Reported>>,
    groups: HashMap<Arc<GroupKey>, GroupState>,
}

impl Model {
    /// Take in a report as it is shown; marks it `quiet` when its group has
    /// had its per-socket lines. Returns the group to announce, if it
    /// appeared, grew past a power of two or changed cause.
    pub fn apply(&mut self, e: &mut Enriched) -> Option<Group> {
        match &e.report {
            Report::Existing {
                socket,
                dwell_ns,
                stuck,
            } => {
                let reported = Reported {
                    socket: socket.clone(),
                    enter_ns: e.at_ns.saturating_sub(*dwell_ns),
                    bound: Bound::AtLeast,
                    stuck: false,
                    ctx: e.ctx.clone(),
                    group: None,
                    quiet: false,
                };
                self.reported.insert(e.id, Box::new(reported));
                if *stuck {
                    return self.join(e);
                }
                None
            }
            Report::Stuck {
                socket,
                dwell_ns,
                bound,
            } => {
                let entry = self.reported.entry(e.id).or_insert_with(|| {
                    Box::new(Reported {
                        socket: socket.clone(),
                        enter_ns: e.at_ns.saturating_sub(*dwell_ns),
                        bound: *bound,
                        stuck: false,
                        ctx: None,
                        group: None,
                        quiet: false,
                    })
                });
                if e.ctx.is_some() {
                    entry.ctx = e.ctx.clone();
                }
                self.join(e)
            }
            Report::Close { .. } => {
                if let Some(r) = self.reported.remove(&e.id) {
                    e.quiet = r.quiet;
                    if let Some(key) = r.group {
                        self.leave(e.id, &key, r.ctx.as_deref());
                    }
                }
                None
            }
            Report::Enter { .. } => None,
        }
    }

    /// A reported socket became stuck: into its group.
    fn join(&mut self, e: &mut Enriched) -> Option<Group> {
        let r = self.reported.get_mut(&e.id)?;
        if r.stuck {
            return None;
        }
        r.stuck = true;
        let key = GroupKey::of(&r.socket, r.ctx.as_deref());
        let key = self.settle(key);
        let r = self.reported.get_mut(&e.id)?;
        r.group = Some(Arc::clone(&key));
        let cause = cause_of(r.ctx.as_deref());
        let g = self.groups.entry(Arc::clone(&key)).or_default();
        g.members.insert(e.id);
        if let Some(c) = cause {
            *g.causes.entry(c).or_default() += 1;
        }
        while g.joined.front().is_some_and(|&t| t + MINUTE_NS < e.at_ns) {
            g.joined.pop_front();
        }
        g.joined.push_back(e.at_ns);
        e.quiet = g.shown >= LINES_PER_GROUP;
        if !e.quiet {
            g.shown += 1;
        }
        r.quiet = e.quiet;
        let cause = g.cause();
        let count = g.members.len();
        let grew = count.is_power_of_two() && count > g.announced_count;
        let new_cause = g.announced_count == 0 || cause != g.announced_cause;
        let renamed = std::mem::take(&mut g.renamed);
        if new_cause || grew || renamed {
            g.announced_count = count;
            g.announced_cause = cause;
            return Some(Group {
                new_cause,
                ..self.group(&key, e.at_ns)
            });
        }
        None
    }

    /// The group a socket with `key` joins. One leak's sockets created
    /// before capture was armed have no creation site, the later ones have
    /// one: those without join the largest group of the same owner and
    /// peer that has a site, and the first with a site names the group of
    /// those without (which is announced again with its site).
    fn settle(&mut self, key: GroupKey) -> Arc<GroupKey> {
        if let Some((known, _)) = self.groups.get_key_value(&key) {
            return Arc::clone(known);
        }
        let same_but_site = |k: &GroupKey| {
            k.pid == key.pid
                && k.comm == key.comm
                && k.endpoint == key.endpoint
                && k.looked_up == key.looked_up
        };
        if key.site.is_none() {
            let largest = self
                .groups
                .iter()
                .filter(|(k, _)| k.site.is_some() && same_but_site(k))
                .max_by(|a, b| a.1.members.len().cmp(&b.1.members.len()).then(b.0.cmp(a.0)))
                .map(|(k, _)| Arc::clone(k));
            return largest.unwrap_or_else(|| Arc::new(key));
        }
        let siteless = GroupKey {
            site: None,
            ..key.clone()
        };
        let key = Arc::new(key);
        if let Some(mut state) = self.groups.remove(&siteless) {
            for id in &state.members {
                if let Some(r) = self.reported.get_mut(id) {
                    r.group = Some(Arc::clone(&key));
                }
            }
            state.renamed = true;
            self.groups.insert(Arc::clone(&key), state);
        }
        key
    }

    fn leave(&mut self, id: u64, key: &GroupKey, ctx: Option<&Context>) {
        let Some(g) = self.groups.get_mut(key) else {
            return;
        };
        if !g.members.remove(&id) {
            return;
        }
        if let Some(c) = cause_of(ctx) {
            if let Some(n) = g.causes.get_mut(&c) {
                *n = n.saturating_sub(1);
            }
        }
        if g.members.is_empty() {
            self.groups.remove(key);
        }
    }

    /// A group as of `now_ns`, from its members.
    fn group(&self, key: &GroupKey, now_ns: u64) -> Group {
        let empty = GroupState::default();
        let state = self.groups.get(key).unwrap_or(&empty);
        let members: Vec<&Reported> = state
            .members
            .iter()
            .filter_map(|id| self.reported.get(id).map(|r| &**r))
            .collect();
        let cause = state.cause();
        let sample = members
            .iter()
            .filter_map(|r| r.ctx.as_deref())
            .find(|c| c.cause.is_some() && c.cause == cause)
            .and_then(Context::diagnosis);
        let mut idle: Vec<u64> = members
            .iter()
            .filter_map(|r| r.ctx.as_deref()?.evidence.as_ref()?.idle_before_fin_ms)
            .collect();
        idle.sort_unstable();
        Group {
            key: key.clone(),
            count: state.members.len(),
            growth_per_min: state
                .joined
                .iter()
                .filter(|&&t| t + MINUTE_NS >= now_ns)
                .count(),
            oldest_dwell_ns: members
                .iter()
                .map(|r| now_ns.saturating_sub(r.enter_ns))
                .max()
                .unwrap_or(0),
            median_idle_before_fin_ms: idle.get(idle.len() / 2).copied(),
            cause,
            summary: sample.as_ref().map(|d| d.summary.clone()),
            hint: sample.as_ref().map(|d| d.hint.clone()),
            findings: sample.map(|d| d.findings).unwrap_or_default(),
            new_cause: false,
        }
    }

    /// What the tracker counted, after each batch.
    pub fn set_counts(&mut self, counts: Counts) {
        self.counts = counts;
    }

    pub fn set_drops(&mut self, drops: Drops) {
        self.drops = drops;
    }

    pub fn set_stacks(&mut self, stacks: StacksNow) {
        self.stacks = stacks;
    }

    pub fn stacks(&self) -> StacksNow {
        self.stacks
    }

    /// Sockets stuck now.
    pub fn stuck_now(&self) -> usize {
        self.reported.values().filter(|r| r.stuck).count()
    }

    /// A member's primary owner (members of a group share their owner):
    /// the first found, without sorting the members.
    pub fn owner_of(&self, key: &GroupKey) -> Option<&crate::enrich::owner::Owner> {
        let state = self.groups.get(key)?;
        state
            .members
            .iter()
            .find_map(|id| self.reported.get(id)?.ctx.as_deref()?.primary())
    }

    /// The stuck sockets of group `key`, longest dwell first.
    pub fn members(&self, key: &GroupKey, now_ns: u64) -> Vec<StuckView<'_>> {
        let Some(state) = self.groups.get(key) else {
            return Vec::new();
        };
        let mut out: Vec<StuckView> = state
            .members
            .iter()
            .filter_map(|id| Some(view(*id, self.reported.get(id)?, now_ns)))
            .collect();
        out.sort_by(|a, b| b.dwell_ns.cmp(&a.dwell_ns).then(a.id.cmp(&b.id)));
        out
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
            .map(|(id, r)| view(*id, r, now_ns))
            .collect();
        out.sort_by(|a, b| b.dwell_ns.cmp(&a.dwell_ns).then(a.id.cmp(&b.id)));
        out
    }

    /// Every group of stuck sockets, largest first.
    pub fn groups(&self, now_ns: u64) -> Vec<Group> {
        let mut groups: Vec<Group> = self.groups.keys().map(|k| self.group(k, now_ns)).collect();
        groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.key.cmp(&b.key)));
        groups
    }
}

fn view(id: u64, r: &Reported, now_ns: u64) -> StuckView<'_> {
    StuckView {
        id,
        socket: &r.socket,
        dwell_ns: now_ns.saturating_sub(r.enter_ns),
        bound: r.bound,
        ctx: r.ctx.as_deref(),
    }
}

fn cause_of(ctx: Option<&Context>) -> Option<Cause> {
    ctx.and_then(|c| c.cause)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::enrich::{diagnosis::diagnose, evidence::Evidence};
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
            comm: comm.into(),
            cmdline: format!("/usr/bin/{comm} --serve").into(),
            uid: Some(1000),
            cgroup: Some("/system.slice/api.service".into()),
            container_id: None,
            pod: None,
            pod_namespace: None,
            pod_uid: None,
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
                stack: Some(Arc::new(Stack {
                    frames: vec![
                        frame(0x1000, "pool::checkout", 88),
                        frame(0x2000, "main", 20),
                    ],
                    truncated: false,
                })),
            }),
            inode: None,
            evidence: None,
            cause: None,
            last_read: None,
            report: true,
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
            quiet: false,
        }
    }

    /// `context(comm)` with evidence that diagnoses as `rqueue` says.
    pub fn diagnosed(comm: &str, rqueue: u32) -> Context {
        let evidence = Evidence {
            rqueue: Some(rqueue),
            accepted: Some(true),
            direction: Some(Direction::Outgoing),
            idle_before_fin_ms: Some(1000 + u64::from(rqueue)),
            ..Evidence::default()
        };
        Context {
            cause: Some(diagnose(&evidence).cause),
            evidence: Some(evidence),
            ..context(comm)
        }
    }

    fn close(id: u64, port: u16) -> Enriched {
        Enriched {
            id,
            report: Report::Close {
                socket: socket(port),
                dwell_ns: 6 * S,
                to: Some(9),
                ts_ns: 106 * S,
                bound: Bound::Exact,
            },
            at_ns: 106 * S,
            ctx: None,
            quiet: false,
        }
    }

    #[test]
    fn stuck_sockets_come_and_go_with_their_reports() {
        let mut m = Model::default();
        let api = Arc::new(diagnosed("api-server", 1));
        // Same owner, code and peer: one group.
        assert!(
            m.apply(&mut stuck(1, 5432, Some(api.clone()))).is_some(),
            "appears"
        );
        assert!(
            m.apply(&mut stuck(2, 5432, Some(api))).is_some(),
            "2 is a power of two"
        );
        assert!(
            m.apply(&mut stuck(3, 6000, None)).is_some(),
            "another group"
        );
        let still = m.still_stuck(110 * S);
        assert_eq!(still.len(), 3);
        assert!(still.iter().all(|s| s.dwell_ns == 10 * S));
        let groups = m.groups(110 * S);
        assert_eq!(groups.len(), 2);
        let g = &groups[0];
        assert_eq!(g.count, 2);
        assert_eq!(g.key.pid, Some(4242));
        assert_eq!(g.key.endpoint, "10.0.0.2:5432");
        assert_eq!(
            g.key.site.as_deref(),
            Some("pool::checkout (src/pool.rs:88)")
        );
        assert_eq!(g.cause, Some(Cause::IdleClosedByPeer));
        assert!(g.hint.as_deref().unwrap().contains("idle timeout"));
        assert_eq!(g.oldest_dwell_ns, 10 * S);
        assert_eq!(g.median_idle_before_fin_ms, Some(1001));
        assert_eq!(g.growth_per_min, 2);
        assert_eq!(groups[1].cause, None, "no diagnosis");
        assert_eq!(m.stuck_now(), 3);
        let members = m.members(&g.key, 110 * S);
        assert_eq!(members.iter().map(|s| s.id).collect::<Vec<_>>(), [1, 2]);
        assert!(m.context(1).is_some());
        m.apply(&mut close(1, 5432));
        assert_eq!(m.still_stuck(110 * S).len(), 2);
        assert!(!m.is_reported(1));
        assert_eq!(m.groups(110 * S)[0].count, 1);
        m.apply(&mut close(3, 6000));
        assert_eq!(m.groups(110 * S).len(), 1, "an emptied group goes away");
    }

    #[test]
    fn groups_are_announced_at_powers_of_two_and_quiet_after_five_lines() {
        let mut m = Model::default();
        let ctx = Arc::new(diagnosed("pool", 1));
        let mut announced = Vec::new();
        let mut quiet = 0;
        for id in 1..=100 {
            let mut e = stuck(id, 5432, Some(ctx.clone()));
            if let Some(g) = m.apply(&mut e) {
                assert_eq!(g.new_cause, g.count == 1, "the cause is news once");
                announced.push(g.count);
            }
            quiet += usize::from(e.quiet);
        }
        assert_eq!(announced, [1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(quiet, 100 - LINES_PER_GROUP);
        // A quiet socket's close is quiet too.
        let mut c = close(100, 5432);
        m.apply(&mut c);
        assert!(c.quiet);
    }

    #[test]
    fn a_change_of_cause_is_announced() {
        let mut m = Model::default();
        m.apply(&mut stuck(1, 5432, Some(Arc::new(diagnosed("pool", 0)))));
        let g = m.apply(&mut stuck(2, 5432, Some(Arc::new(diagnosed("pool", 1)))));
        assert_eq!(g.map(|g| g.count), Some(2));
        // Now 2 idle_closed_by_peer against 1 eof_not_closed: a new cause.
        let g = m.apply(&mut stuck(3, 5432, Some(Arc::new(diagnosed("pool", 1)))));
        assert_eq!(g.and_then(|g| g.cause), Some(Cause::IdleClosedByPeer));
    }

    /// `ctx` without its creation record (made before capture was armed).
    fn siteless(ctx: &Context) -> Arc<Context> {
        Arc::new(Context {
            creation: None,
            ..ctx.clone()
        })
    }

    #[test]
    fn sockets_without_a_site_join_the_group_of_the_same_owner_and_peer() {
        let api = diagnosed("api-server", 1);
        // Before arming, then after: the first with a site names the group.
        let mut m = Model::default();
        m.apply(&mut stuck(1, 5432, Some(siteless(&api))));
        m.apply(&mut stuck(2, 5432, Some(siteless(&api))));
        let g = m.apply(&mut stuck(3, 5432, Some(Arc::new(api.clone()))));
        let g = g.expect("announced again with its site");
        assert_eq!(g.count, 3);
        assert!(!g.new_cause, "the cause is the same");
        assert_eq!(
            g.key.site.as_deref(),
            Some("pool::checkout (src/pool.rs:88)")
        );
        m.apply(&mut stuck(4, 5432, Some(siteless(&api))));
        let groups = m.groups(110 * S);
        assert_eq!(groups.len(), 1, "{groups:?}");
        assert_eq!(groups[0].count, 4);
        // Members leave the renamed group.
        for id in 1..=4 {
            m.apply(&mut close(id, 5432));
        }
        assert!(m.groups(110 * S).is_empty());
        // A site first, then none: joins it. Another peer does not.
        let mut m = Model::default();
        m.apply(&mut stuck(1, 5432, Some(Arc::new(api.clone()))));
        m.apply(&mut stuck(2, 5432, Some(siteless(&api))));
        m.apply(&mut stuck(3, 6000, Some(siteless(&api))));
        let groups = m.groups(110 * S);
        assert_eq!(groups.len(), 2, "{groups:?}");
        assert_eq!((groups[0].count, groups[0].key.site.is_some()), (2, true));
        assert_eq!((groups[1].count, groups[1].key.site.is_none()), (1, true));
    }

    #[test]
    fn existing_not_yet_stuck_is_not_in_the_stuck_list() {
        let mut m = Model::default();
        m.apply(&mut Enriched {
            id: 9,
            report: Report::Existing {
                socket: socket(9),
                dwell_ns: S,
                stuck: false,
            },
            at_ns: 100 * S,
            ctx: None,
            quiet: false,
        });
        assert!(m.is_reported(9));
        assert!(m.still_stuck(101 * S).is_empty());
        m.apply(&mut Enriched {
            id: 9,
            report: Report::Stuck {
                socket: socket(9),
                dwell_ns: 5 * S,
                bound: Bound::AtLeast,
            },
            at_ns: 104 * S,
            ctx: None,
            quiet: false,
        });
        let still = m.still_stuck(110 * S);
        assert_eq!(still.len(), 1);
        assert_eq!(still[0].bound, Bound::AtLeast);
        assert_eq!(still[0].dwell_ns, 11 * S, "the age found at start counts");
    }
}
