//! The JSON stream's schema: one `Event` per line, tagged by `event`. The
//! README's field tables describe these types; the JSON output builds them
//! and serde writes them.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::{
    enrich::{diagnosis::Diagnosis, evidence::Evidence, owner::Owner, stacks::Frame, Context},
    model,
    tracking::{Bound, Socket},
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Start(Start),
    Existing(Existing),
    Enter(Enter),
    Stuck(Stuck),
    Close(Close),
    Lost(Lost),
    Group(GroupEvent),
    Summary(Summary),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Start {
    pub ts: String,
    pub version: String,
    pub attach: String,
    pub stacks: String,
    pub threshold_ms: u64,
    pub existing: u64,
    pub netns_scanned: usize,
}

/// The fields every socket event carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SocketFields {
    pub cookie: Option<u64>,
    pub family: String,
    pub laddr: String,
    pub lport: u16,
    pub raddr: String,
    pub rport: u16,
    pub netns: Option<u32>,
    pub inode: Option<u64>,
}

/// A dwell and how it relates to the true one. `lower_bound` is kept for
/// scripts written before `dwell_bound`: true exactly when `at_least`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dwell {
    pub dwell_ms: f64,
    pub dwell_bound: Bound,
    pub lower_bound: bool,
}

/// Who holds a reported socket and which code created it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContextFields {
    pub pid: Option<u32>,
    pub comm: Option<Arc<str>>,
    pub fd: Option<u32>,
    pub cmdline: Option<Arc<str>>,
    pub uid: Option<u32>,
    pub cgroup: Option<Arc<str>>,
    pub container_id: Option<Arc<str>>,
    pub pod: Option<Arc<str>>,
    pub pod_namespace: Option<Arc<str>>,
    pub pod_uid: Option<Arc<str>>,
    pub owners: Vec<Owner>,
    pub creation: Option<Creation>,
    pub stack: Option<Vec<Frame>>,
    pub stack_truncated: Option<bool>,
    /// Why it is stuck: on `existing` and `stuck` (and the summary's list).
    pub evidence: Option<Evidence>,
    pub diagnosis: Option<Diagnosis>,
    /// The first read that returned EOF in CLOSE_WAIT (frames like `stack`).
    pub last_read: Option<Vec<Frame>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Creation {
    pub kind: String,
    pub pid: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Existing {
    pub ts: String,
    #[serde(flatten)]
    pub socket: SocketFields,
    #[serde(flatten)]
    pub dwell: Dwell,
    pub stuck: bool,
    #[serde(flatten)]
    pub context: Option<ContextFields>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Enter {
    pub ts: String,
    #[serde(flatten)]
    pub socket: SocketFields,
    pub old_state: String,
    #[serde(flatten)]
    pub context: Option<ContextFields>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stuck {
    pub ts: String,
    #[serde(flatten)]
    pub socket: SocketFields,
    #[serde(flatten)]
    pub dwell: Dwell,
    #[serde(flatten)]
    pub context: Option<ContextFields>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Close {
    pub ts: String,
    #[serde(flatten)]
    pub socket: SocketFields,
    #[serde(flatten)]
    pub dwell: Dwell,
    /// `None` (JSON null) when the exit was found by reconciliation.
    pub new_state: Option<String>,
    #[serde(flatten)]
    pub context: Option<ContextFields>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lost {
    pub ts: String,
    pub count: u64,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub ts: String,
    pub duration_ms: u64,
    pub entered: u64,
    pub existing: u64,
    pub closed: u64,
    pub stuck: u64,
    pub still_stuck: usize,
    pub in_close_wait: usize,
    pub lost: u64,
    pub lost_by_reason: LostByReason,
    pub recovered_enters: u64,
    pub recovered_exits: u64,
    pub stacks_missed: u64,
    pub stacks_over_budget: u64,
    pub dwell_ms: Option<Percentiles>,
    pub stuck_groups: Vec<Group>,
    pub still_stuck_sockets: Vec<StillStuck>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LostByReason {
    pub ringbuf_full: u64,
    pub recursion: u64,
    pub read_failed: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub count: u64,
}

/// A group of stuck sockets: same owner, creation site and other side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub count: usize,
    pub growth_per_min: usize,
    pub oldest_dwell_ms: f64,
    pub median_idle_before_fin_ms: Option<u64>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub created_at: Option<String>,
    /// `a.b.c.d:port` (outgoing: the remote side) or `listening port N`.
    pub endpoint: String,
    pub cause: Option<String>,
    pub summary: Option<String>,
    pub hint: Option<String>,
    pub findings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupEvent {
    pub ts: String,
    #[serde(flatten)]
    pub group: Group,
}

impl Group {
    pub fn new(g: &model::Group) -> Group {
        Group {
            count: g.count,
            growth_per_min: g.growth_per_min,
            oldest_dwell_ms: super::format::ms(g.oldest_dwell_ns),
            median_idle_before_fin_ms: g.median_idle_before_fin_ms,
            pid: g.key.pid,
            comm: g.key.comm.as_deref().map(str::to_string),
            created_at: g.key.site.clone(),
            endpoint: g.key.endpoint.clone(),
            cause: g.cause.map(|c| c.name().to_string()),
            summary: g.summary.clone(),
            hint: g.hint.clone(),
            findings: g.findings.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StillStuck {
    #[serde(flatten)]
    pub socket: SocketFields,
    #[serde(flatten)]
    pub dwell: Dwell,
    #[serde(flatten)]
    pub context: Option<ContextFields>,
}

impl SocketFields {
    /// `ctx` supplies the inode when the event had none (a socket that
    /// entered CLOSE_WAIT before it was accepted).
    pub fn new(s: &Socket, ctx: Option<&Context>) -> SocketFields {
        SocketFields {
            cookie: s.cookie,
            family: s.family.name().to_string(),
            laddr: s.laddr.to_string(),
            lport: s.lport,
            raddr: s.raddr.to_string(),
            rport: s.rport,
            netns: s.netns,
            inode: s.inode.or(ctx.and_then(|c| c.inode)),
        }
    }
}

impl Dwell {
    pub fn new(dwell_ns: u64, bound: Bound) -> Dwell {
        Dwell {
            dwell_ms: super::format::ms(dwell_ns),
            dwell_bound: bound,
            lower_bound: bound == Bound::AtLeast,
        }
    }
}

impl ContextFields {
    pub fn new(ctx: &Context) -> ContextFields {
        let primary = ctx.primary();
        let creation = ctx.creation.as_ref();
        let stack = creation.and_then(|c| c.stack.as_ref());
        ContextFields {
            pid: primary.map(|o| o.pid),
            comm: primary.map(|o| o.comm.clone()),
            fd: primary.map(|o| o.fd),
            cmdline: primary.map(|o| o.cmdline.clone()),
            uid: primary.and_then(|o| o.uid),
            cgroup: primary.and_then(|o| o.cgroup.clone()),
            container_id: primary.and_then(|o| o.container_id.clone()),
            pod: primary.and_then(|o| o.pod.clone()),
            pod_namespace: primary.and_then(|o| o.pod_namespace.clone()),
            pod_uid: primary.and_then(|o| o.pod_uid.clone()),
            owners: ctx.owners.clone(),
            creation: creation.map(|c| Creation {
                kind: c.kind.to_string(),
                pid: c.pid,
            }),
            stack: stack.map(|s| s.frames.clone()),
            stack_truncated: stack.map(|s| s.truncated),
            evidence: ctx.evidence.clone(),
            diagnosis: ctx.diagnosis(),
            last_read: ctx.last_read.as_ref().map(|s| s.frames.clone()),
        }
    }
}
