//! The live view's state and what it shows, kept apart from the terminal:
//! selection, sort, filter and rates here, turned into a [`Snapshot`] of
//! plain strings that [`super::draw`] lays out. Unit-tested without a
//! terminal, with a controlled clock.

use crate::{
    enrich::stacks,
    model::{GroupKey, Model},
    output::{
        format::{endpoint, human_duration},
        sanitize,
        text::group_sentence,
    },
    tracking::Bound,
};

/// Frames of a creation stack the detail pane shows.
const DETAIL_FRAMES: usize = 32;
/// Sockets of a group the detail pane lists.
const DETAIL_SOCKETS: usize = 200;
const S: u64 = 1_000_000_000;

/// A key, as the view understands it (the terminal layer maps its events).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    Enter,
    Esc,
    Backspace,
    Char(char),
    /// Ctrl-C.
    Interrupt,
}

/// What a key did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Quit,
    /// The view changed: redraw now.
    Changed,
    Unchanged,
}

/// Row order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    /// Most sockets first.
    Count,
    /// Fastest growing (joined in the last minute) first.
    Growth,
    /// Longest dwell first.
    Oldest,
}

impl Sort {
    fn next(self) -> Sort {
        match self {
            Sort::Count => Sort::Growth,
            Sort::Growth => Sort::Oldest,
            Sort::Oldest => Sort::Count,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Sort::Count => "count",
            Sort::Growth => "growth",
            Sort::Oldest => "oldest",
        }
    }
}

/// One group of stuck sockets, as a row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub key: GroupKey,
    pub count: usize,
    pub growth_per_min: usize,
    pub oldest_dwell_ns: u64,
    pub owner: String,
    pub endpoint: String,
    pub site: String,
    pub cause: String,
}

impl Row {
    fn matches(&self, needle: &str) -> bool {
        [&self.owner, &self.endpoint, &self.site, &self.cause]
            .iter()
            .any(|field| field.to_lowercase().contains(needle))
    }
}

/// The header: how the tool runs and what the host looks like now.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub attach: String,
    pub stacks: &'static str,
    pub threshold: String,
    pub in_close_wait: usize,
    pub stuck_now: usize,
    /// Per second over the last refresh interval; `None` before two samples.
    pub entered_per_s: Option<f64>,
    pub closed_per_s: Option<f64>,
    pub lost: u64,
}

/// A socket of the group the detail pane shows.
#[derive(Clone, Debug, PartialEq)]
pub struct SocketRow {
    pub endpoint: String,
    pub dwell: String,
    pub fd: Option<u32>,
    pub rqueue: Option<u32>,
}

/// The detail pane: one group's sockets, stack, evidence and hint.
#[derive(Clone, Debug, PartialEq)]
pub struct Detail {
    pub title: String,
    pub sockets: Vec<SocketRow>,
    /// More sockets than listed.
    pub more_sockets: usize,
    pub stack: Vec<String>,
    pub stack_truncated: bool,
    pub last_read: Vec<String>,
    pub why: Option<String>,
    pub hint: Option<String>,
    pub findings: Vec<String>,
}

/// Everything one frame shows, as text; equal snapshots draw the same.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub header: Header,
    /// The visible rows: filtered, sorted.
    pub rows: Vec<Row>,
    /// Groups before the filter.
    pub total_groups: usize,
    pub selected: usize,
    pub sort: Sort,
    pub filter: String,
    pub editing: bool,
    pub detail: Option<Detail>,
    /// The detail pane's first line shown.
    pub scroll: usize,
    /// The latest diagnostic the tool printed (stderr is held while the
    /// view is up).
    pub message: Option<String>,
}

/// Entries and closes per second, over at least one second.
#[derive(Debug, Default)]
struct Rates {
    sample: Option<(u64, u64, u64)>,
    entered: Option<f64>,
    closed: Option<f64>,
}

impl Rates {
    fn observe(&mut self, now_ns: u64, entered: u64, closed: u64) {
        match self.sample {
            Some((at, e, c)) if now_ns >= at + S => {
                let secs = (now_ns - at) as f64 / S as f64;
                self.entered = Some(entered.saturating_sub(e) as f64 / secs);
                self.closed = Some(closed.saturating_sub(c) as f64 / secs);
                self.sample = Some((now_ns, entered, closed));
            }
            Some(_) => {}
            None => self.sample = Some((now_ns, entered, closed)),
        }
    }
}

/// The view's own state.
#[derive(Debug)]
pub struct View {
    attach: String,
    threshold_ns: u64,
    sort: Sort,
    /// Index into the visible rows, and the group it was on (kept across
    /// refreshes while that group exists).
    selected: usize,
    selected_key: Option<GroupKey>,
    filter: String,
    editing: bool,
    /// The group whose detail is open.
    open: Option<GroupKey>,
    scroll: usize,
    rates: Rates,
    /// Rows and detail lines of the last snapshot, for keys to move in.
    visible: Vec<GroupKey>,
    detail_lines: usize,
}

impl View {
    pub fn new(attach: &str, threshold_ns: u64) -> View {
        View {
            attach: attach.to_string(),
            threshold_ns,
            sort: Sort::Count,
            selected: 0,
            selected_key: None,
            filter: String::new(),
            editing: false,
            open: None,
            scroll: 0,
            rates: Rates::default(),
            visible: Vec::new(),
            detail_lines: 0,
        }
    }

    pub fn set_attach(&mut self, attach: &str) {
        self.attach = attach.to_string();
    }

    /// What to show now. Also samples the rates, so call it once per
    /// refresh.
    pub fn snapshot(&mut self, model: &Model, now_ns: u64, message: Option<String>) -> Snapshot {
        let counts = model.counts();
        self.rates
            .observe(now_ns, counts.totals.entered, counts.totals.closed);
        let groups = model.groups(now_ns);
        let total_groups = groups.len();
        let mut rows: Vec<Row> = groups
            .iter()
            .map(|g| Row {
                key: g.key.clone(),
                count: g.count,
                growth_per_min: g.growth_per_min,
                oldest_dwell_ns: g.oldest_dwell_ns,
                owner: owner(model, g),
                endpoint: g.key.endpoint.clone(),
                site: g
                    .key
                    .site
                    .as_deref()
                    .map_or_else(|| "-".to_string(), |s| sanitize::text(s).into_owned()),
                cause: g.cause.map_or("-", |c| c.name()).to_string(),
            })
            .collect();
        let needle = self.filter.to_lowercase();
        rows.retain(|r| needle.is_empty() || r.matches(&needle));
        match self.sort {
            Sort::Count => rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.key.cmp(&b.key))),
            Sort::Growth => rows.sort_by(|a, b| {
                b.growth_per_min
                    .cmp(&a.growth_per_min)
                    .then(b.count.cmp(&a.count))
                    .then(a.key.cmp(&b.key))
            }),
            Sort::Oldest => rows.sort_by(|a, b| {
                b.oldest_dwell_ns
                    .cmp(&a.oldest_dwell_ns)
                    .then(a.key.cmp(&b.key))
            }),
        }
        self.visible = rows.iter().map(|r| r.key.clone()).collect();
        // Stay on the same group when it moved; else on the same line.
        if let Some(i) = self
            .selected_key
            .as_ref()
            .and_then(|k| self.visible.iter().position(|v| v == k))
        {
            self.selected = i;
        }
        self.selected = self.selected.min(self.visible.len().saturating_sub(1));
        self.selected_key = self.visible.get(self.selected).cloned();
        if self
            .open
            .as_ref()
            .is_some_and(|k| !groups.iter().any(|g| &g.key == k))
        {
            // Its sockets all closed.
            self.open = None;
            self.scroll = 0;
        }
        let detail = self.open.as_ref().and_then(|key| {
            let g = groups.iter().find(|g| &g.key == key)?;
            Some(detail(model, g, now_ns))
        });
        self.detail_lines = detail.as_ref().map_or(0, detail_len);
        self.scroll = self.scroll.min(self.detail_lines.saturating_sub(1));
        Snapshot {
            header: Header {
                attach: self.attach.clone(),
                stacks: model.stacks().describe(),
                threshold: human_duration(self.threshold_ns),
                in_close_wait: counts.in_close_wait,
                stuck_now: model.stuck_now(),
                entered_per_s: self.rates.entered,
                closed_per_s: self.rates.closed,
                lost: model.drops().events_lost(),
            },
            rows,
            total_groups,
            selected: self.selected,
            sort: self.sort,
            filter: self.filter.clone(),
            editing: self.editing,
            detail,
            scroll: self.scroll,
            message,
        }
    }

    /// Apply a key. `page` is how many rows a page moves.
    pub fn on_key(&mut self, key: Key, page: usize) -> Outcome {
        if key == Key::Interrupt {
            return Outcome::Quit;
        }
        if self.editing {
            match key {
                Key::Enter => self.editing = false,
                Key::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Char(c) if !c.is_control() => self.filter.push(c),
                _ => return Outcome::Unchanged,
            }
            self.selected = 0;
            self.selected_key = None;
            return Outcome::Changed;
        }
        if self.open.is_some() {
            let last = self.detail_lines.saturating_sub(1);
            let scroll = match key {
                Key::Esc | Key::Char('h') => {
                    self.open = None;
                    self.scroll = 0;
                    return Outcome::Changed;
                }
                Key::Char('q') => return Outcome::Quit,
                Key::Up | Key::Char('k') => self.scroll.saturating_sub(1),
                Key::Down | Key::Char('j') => (self.scroll + 1).min(last),
                Key::PageUp => self.scroll.saturating_sub(page),
                Key::PageDown => (self.scroll + page).min(last),
                Key::Home | Key::Char('g') => 0,
                Key::End | Key::Char('G') => last,
                _ => return Outcome::Unchanged,
            };
            return self.move_to(scroll, true);
        }
        let last = self.visible.len().saturating_sub(1);
        let selected = match key {
            Key::Char('q') => return Outcome::Quit,
            Key::Up | Key::Char('k') => self.selected.saturating_sub(1),
            Key::Down | Key::Char('j') => (self.selected + 1).min(last),
            Key::PageUp => self.selected.saturating_sub(page),
            Key::PageDown => (self.selected + page).min(last),
            Key::Home | Key::Char('g') => 0,
            Key::End | Key::Char('G') => last,
            Key::Enter | Key::Char('l') => {
                let Some(key) = self.visible.get(self.selected) else {
                    return Outcome::Unchanged;
                };
                self.open = Some(key.clone());
                self.scroll = 0;
                return Outcome::Changed;
            }
            Key::Char('s') => {
                self.sort = self.sort.next();
                return Outcome::Changed;
            }
            Key::Char('/') => {
                self.editing = true;
                return Outcome::Changed;
            }
            Key::Esc if !self.filter.is_empty() => {
                self.filter.clear();
                return Outcome::Changed;
            }
            _ => return Outcome::Unchanged,
        };
        self.move_to(selected, false)
    }

    fn move_to(&mut self, to: usize, detail: bool) -> Outcome {
        let at = if detail {
            &mut self.scroll
        } else {
            &mut self.selected
        };
        if *at == to {
            return Outcome::Unchanged;
        }
        *at = to;
        if !detail {
            self.selected_key = self.visible.get(to).cloned();
        }
        Outcome::Changed
    }
}

/// `pid (comm)`, and the pod once known (`namespace/name`).
fn owner(model: &Model, g: &crate::model::Group) -> String {
    let key = &g.key;
    let who = match (key.pid, &key.comm) {
        (Some(pid), Some(comm)) => format!("{pid} ({})", sanitize::text(comm)),
        (Some(pid), None) => pid.to_string(),
        _ if !key.looked_up => return "not looked up".to_string(),
        _ => return "unknown".to_string(),
    };
    let pod = model
        .owner_of(key)
        .and_then(|o| Some((o.pod_namespace.as_deref()?, o.pod.as_deref()?)));
    match pod {
        Some((ns, pod)) => format!("{who} {}/{}", sanitize::text(ns), sanitize::text(pod)),
        None => who,
    }
}

/// A dwell that changes once a second, not at every refresh.
pub fn coarse_dwell(ns: u64) -> String {
    if ns < 60 * S {
        format!("{}s", ns / S)
    } else {
        human_duration(ns)
    }
}

fn detail(model: &Model, g: &crate::model::Group, now_ns: u64) -> Detail {
    let members = model.members(&g.key, now_ns);
    let sockets = members
        .iter()
        .take(DETAIL_SOCKETS)
        .map(|m| {
            let s = m.socket;
            let owner = m.ctx.and_then(|c| c.primary());
            let bound = match m.bound {
                Bound::Exact => "",
                Bound::AtLeast => ">=",
                Bound::AtMost => "<=",
            };
            SocketRow {
                endpoint: format!(
                    "{} -> {}",
                    endpoint(s.laddr, s.lport),
                    endpoint(s.raddr, s.rport)
                ),
                dwell: format!("{bound}{}", coarse_dwell(m.dwell_ns)),
                fd: owner.map(|o| o.fd),
                rqueue: m.ctx.and_then(|c| c.evidence.as_ref()?.rqueue),
            }
        })
        .collect();
    let frames = |stack: &stacks::Stack| -> Vec<String> {
        stack
            .frames
            .iter()
            .take(DETAIL_FRAMES)
            .map(|f| sanitize::text(&stacks::frame_label(f)).into_owned())
            .collect()
    };
    // The first member with a stack speaks for the group (same site).
    let stack = members
        .iter()
        .find_map(|m| m.ctx?.creation.as_ref()?.stack.as_ref());
    let last_read = members.iter().find_map(|m| m.ctx?.last_read.as_ref());
    Detail {
        title: group_sentence(g),
        sockets,
        more_sockets: members.len().saturating_sub(DETAIL_SOCKETS),
        stack: stack.map(|s| frames(s)).unwrap_or_default(),
        stack_truncated: stack.is_some_and(|s| s.truncated),
        last_read: last_read.map(|s| frames(s)).unwrap_or_default(),
        why: g.summary.clone(),
        hint: g.hint.clone(),
        findings: g.findings.clone(),
    }
}

/// Lines the detail pane has (as [`super::draw`] lays it out).
fn detail_len(d: &Detail) -> usize {
    super::draw::detail_lines(d).len()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        model::tests::{diagnosed, stuck},
        model::Enriched,
        tracking::Report,
    };

    const NOW: u64 = 130 * S;

    /// Groups: 3 sockets of api-server to :5432 (joined at 105 s), 1 of
    /// worker to :6000 joined at `late` with an older dwell.
    fn model() -> Model {
        let mut m = Model::default();
        let api = Arc::new(diagnosed("api-server", 1));
        for id in 1..=3 {
            m.apply(&mut stuck(id, 5432, Some(api.clone())));
        }
        let worker = Arc::new(diagnosed("worker", 0));
        let mut e = stuck(4, 6000, Some(worker));
        if let Report::Stuck { dwell_ns, .. } = &mut e.report {
            *dwell_ns = 90 * S;
        }
        e.at_ns = 120 * S;
        m.apply(&mut e);
        m
    }

    fn owners(s: &Snapshot) -> Vec<&str> {
        s.rows.iter().map(|r| r.owner.as_str()).collect()
    }

    #[test]
    fn rows_sort_by_count_growth_and_oldest() {
        let m = model();
        let mut v = View::new("tp_btf", 5 * S);
        let s = v.snapshot(&m, NOW, None);
        assert_eq!(owners(&s), ["4242 (api-server)", "4242 (worker)"]);
        assert_eq!(s.rows[0].count, 3);
        assert_eq!(s.rows[0].site, "pool::checkout (src/pool.rs:88)");
        assert_eq!(s.rows[0].cause, "idle_closed_by_peer");
        assert_eq!(s.rows[1].cause, "eof_not_closed");
        assert_eq!(v.on_key(Key::Char('s'), 10), Outcome::Changed);
        let s = v.snapshot(&m, NOW, None);
        assert_eq!(s.sort, Sort::Growth);
        assert_eq!(owners(&s)[0], "4242 (api-server)", "3 joined this minute");
        v.on_key(Key::Char('s'), 10);
        let s = v.snapshot(&m, NOW, None);
        assert_eq!(s.sort, Sort::Oldest);
        assert_eq!(owners(&s)[0], "4242 (worker)", "in CLOSE_WAIT for 100 s");
        v.on_key(Key::Char('s'), 10);
        assert_eq!(v.snapshot(&m, NOW, None).sort, Sort::Count);
    }

    #[test]
    fn growth_is_what_joined_in_the_last_minute() {
        let m = model();
        let mut v = View::new("tp_btf", 5 * S);
        // The api-server sockets joined at 105 s, the worker's at 120 s.
        let growth = |v: &mut View, now| -> Vec<usize> {
            v.snapshot(&m, now, None)
                .rows
                .iter()
                .map(|r| r.growth_per_min)
                .collect()
        };
        assert_eq!(growth(&mut v, NOW), [3, 1]);
        assert_eq!(growth(&mut v, 170 * S), [0, 1]);
        assert_eq!(growth(&mut v, 190 * S), [0, 0]);
    }

    #[test]
    fn selection_moves_stays_on_its_group_and_opens_it() {
        let mut m = model();
        let mut v = View::new("tp_btf", 5 * S);
        v.snapshot(&m, NOW, None);
        assert_eq!(v.on_key(Key::Up, 10), Outcome::Unchanged, "at the top");
        assert_eq!(v.on_key(Key::Char('j'), 10), Outcome::Changed);
        assert_eq!(v.on_key(Key::Down, 10), Outcome::Unchanged, "at the end");
        assert_eq!(v.snapshot(&m, NOW, None).selected, 1);
        // The worker's group grows past the other: the selection follows it.
        let worker = Arc::new(diagnosed("worker", 0));
        for id in 5..=8 {
            m.apply(&mut stuck(id, 6000, Some(worker.clone())));
        }
        let s = v.snapshot(&m, NOW, None);
        assert_eq!(s.selected, 0);
        assert_eq!(s.rows[0].owner, "4242 (worker)");
        assert_eq!(v.on_key(Key::Enter, 10), Outcome::Changed);
        let s = v.snapshot(&m, NOW, None);
        let d = s.detail.expect("open");
        assert!(d.title.starts_with("5 stuck sockets, pid 4242 (worker)"));
        assert_eq!(d.sockets.len(), 5);
        assert_eq!(
            d.sockets[0].dwell, "1m40s",
            "longest first: {:?}",
            d.sockets
        );
        assert_eq!(d.sockets[0].endpoint, "10.0.0.1:8080 -> 10.0.0.2:6000");
        assert_eq!(d.sockets[0].fd, Some(7));
        assert_eq!(d.sockets[0].rqueue, Some(0));
        assert_eq!(
            d.stack,
            ["pool::checkout (src/pool.rs:88)", "main (src/pool.rs:20)"]
        );
        assert!(d.hint.is_some() && d.why.is_some());
        assert_eq!(v.on_key(Key::Down, 10), Outcome::Changed, "scrolls");
        assert_eq!(v.on_key(Key::Esc, 10), Outcome::Changed);
        assert!(v.snapshot(&m, NOW, None).detail.is_none());
        assert_eq!(v.on_key(Key::Char('q'), 10), Outcome::Quit);
        assert_eq!(v.on_key(Key::Interrupt, 10), Outcome::Quit);
    }

    #[test]
    fn an_open_group_that_empties_closes_its_detail() {
        let mut m = model();
        let mut v = View::new("tp_btf", 5 * S);
        v.snapshot(&m, NOW, None);
        v.on_key(Key::Down, 10);
        v.on_key(Key::Enter, 10);
        assert!(v.snapshot(&m, NOW, None).detail.is_some());
        m.apply(&mut Enriched {
            id: 4,
            report: Report::Close {
                socket: crate::model::tests::socket(6000),
                dwell_ns: 100 * S,
                to: Some(9),
                ts_ns: NOW,
                bound: Bound::Exact,
            },
            at_ns: NOW,
            ctx: None,
            quiet: false,
        });
        let s = v.snapshot(&m, NOW, None);
        assert!(s.detail.is_none());
        assert_eq!(s.rows.len(), 1);
        assert_eq!(s.selected, 0, "clamped to the rows left");
    }

    #[test]
    fn slash_filters_by_text_and_esc_clears() {
        let m = model();
        let mut v = View::new("tp_btf", 5 * S);
        v.snapshot(&m, NOW, None);
        assert_eq!(v.on_key(Key::Char('/'), 10), Outcome::Changed);
        for c in "WORK".chars() {
            v.on_key(Key::Char(c), 10);
        }
        let s = v.snapshot(&m, NOW, None);
        assert!(s.editing);
        assert_eq!(owners(&s), ["4242 (worker)"], "case-insensitive");
        assert_eq!(s.total_groups, 2);
        // While editing, q is text, not quit.
        assert_eq!(v.on_key(Key::Char('q'), 10), Outcome::Changed);
        assert!(v.snapshot(&m, NOW, None).rows.is_empty());
        v.on_key(Key::Backspace, 10);
        v.on_key(Key::Enter, 10);
        let s = v.snapshot(&m, NOW, None);
        assert!(!s.editing);
        assert_eq!(s.filter, "WORK");
        assert_eq!(owners(&s), ["4242 (worker)"]);
        // By port, by cause.
        v.on_key(Key::Esc, 10);
        v.on_key(Key::Char('/'), 10);
        for c in ":5432".chars() {
            v.on_key(Key::Char(c), 10);
        }
        assert_eq!(owners(&v.snapshot(&m, NOW, None)), ["4242 (api-server)"]);
        v.on_key(Key::Esc, 10);
        assert_eq!(v.snapshot(&m, NOW, None).rows.len(), 2, "cleared");
    }

    #[test]
    fn rates_are_per_second_over_at_least_a_second() {
        let mut r = Rates::default();
        r.observe(10 * S, 100, 50);
        assert_eq!(r.entered, None);
        r.observe(10 * S + S / 2, 150, 60);
        assert_eq!(r.entered, None, "half a second is not enough");
        r.observe(12 * S, 300, 70);
        assert_eq!((r.entered, r.closed), (Some(100.0), Some(10.0)));
        r.observe(13 * S, 300, 70);
        assert_eq!((r.entered, r.closed), (Some(0.0), Some(0.0)));
    }

    #[test]
    fn names_from_other_processes_are_escaped() {
        let mut m = Model::default();
        let evil = Arc::new(diagnosed("evil\u{1b}[2J\u{202e}", 1));
        m.apply(&mut stuck(1, 5432, Some(evil)));
        let mut v = View::new("tp_btf", 5 * S);
        let s = v.snapshot(&m, NOW, None);
        assert_eq!(s.rows[0].owner, "4242 (evil\\x1b[2J\\u{202e})");
    }

    #[test]
    fn the_owner_names_its_pod_once_known() {
        let mut ctx = diagnosed("api-server", 1);
        for o in &mut ctx.owners {
            o.pod = Some("checkout-7f9c".into());
            o.pod_namespace = Some("shop".into());
        }
        let mut m = Model::default();
        m.apply(&mut stuck(1, 5432, Some(Arc::new(ctx))));
        let mut v = View::new("tp_btf", 5 * S);
        let s = v.snapshot(&m, NOW, None);
        assert_eq!(s.rows[0].owner, "4242 (api-server) shop/checkout-7f9c");
    }

    #[test]
    fn header_counts_and_dwell() {
        let m = model();
        let mut v = View::new("tp_btf", 5 * S);
        let s = v.snapshot(&m, NOW, None);
        assert_eq!(s.header.stuck_now, 4);
        assert_eq!(s.header.threshold, "5.00s");
        assert_eq!(s.header.stacks, "off");
        assert_eq!(coarse_dwell(25 * S + S / 3), "25s");
        assert_eq!(coarse_dwell(100 * S), "1m40s");
    }
}
