//! Diagnosis: why a socket is stuck, from its evidence. Pure functions, one
//! rule each, checked in a fixed order (the README's table).

use serde::{Deserialize, Serialize};

use super::evidence::{Direction, Evidence};

/// Shortest quiet time before the FIN that reads as an idle timeout.
pub const MIN_IDLE_MS: u64 = 500;
/// Descriptor use that earns a finding.
const FDS_HIGH: f64 = 0.9;

/// Cause codes: part of the interface (scripts rely on them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    NeverAccepted,
    EofNotClosed,
    UnreadData,
    IdleClosedByPeer,
    Unknown,
}

impl Cause {
    pub fn name(self) -> &'static str {
        match self {
            Cause::NeverAccepted => "never_accepted",
            Cause::EofNotClosed => "eof_not_closed",
            Cause::UnreadData => "unread_data",
            Cause::IdleClosedByPeer => "idle_closed_by_peer",
            Cause::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    pub cause: Cause,
    pub summary: String,
    pub hint: String,
    /// Secondary findings (e.g. the owner near its descriptor limit).
    pub findings: Vec<String>,
}

/// The rules, in order; the first that fits decides.
pub fn diagnose(e: &Evidence) -> Diagnosis {
    let (cause, summary, hint) = never_accepted(e)
        .or_else(|| eof_not_closed(e))
        .or_else(|| unread_data(e))
        .or_else(|| idle_closed_by_peer(e))
        .unwrap_or_else(|| {
            (
                Cause::Unknown,
                "no rule fits the evidence".to_string(),
                "see the evidence; the creation stack shows which code owns the socket".to_string(),
            )
        });
    Diagnosis {
        cause,
        summary,
        hint,
        findings: findings(e),
    }
}

type Rule = Option<(Cause, String, String)>;

/// Still in the accept queue (before the byte counts: a queued socket has
/// unread bytes too).
fn never_accepted(e: &Evidence) -> Rule {
    if e.accepted != Some(false) {
        return None;
    }
    let backlog = match (e.backlog, e.backlog_max) {
        (Some(n), Some(max)) => format!(" (accept queue {n}/{max})"),
        _ => String::new(),
    };
    Some((
        Cause::NeverAccepted,
        format!("still in its listener's accept queue{backlog}: the application is not calling accept()"),
        "check the accept loop: stalled, blocked, or out of file descriptors".to_string(),
    ))
}

fn eof_not_closed(e: &Evidence) -> Rule {
    (e.rqueue == Some(0)).then(|| {
        (
            Cause::EofNotClosed,
            "the application read EOF and never called close()".to_string(),
            "close the socket on the EOF and error paths (where read() returns 0)".to_string(),
        )
    })
}

fn unread_data(e: &Evidence) -> Rule {
    let unread = e.rqueue.filter(|&q| q > 1)?;
    Some((
        Cause::UnreadData,
        format!(
            "the peer sent data and closed; {} bytes were never read",
            unread - 1
        ),
        "the application stopped reading: a handler stuck, a worker pool exhausted, or a response body never read".to_string(),
    ))
}

fn idle_closed_by_peer(e: &Evidence) -> Rule {
    let idle = e.idle_before_fin_ms.filter(|&ms| ms >= MIN_IDLE_MS)?;
    if e.direction != Some(Direction::Outgoing) || e.rqueue != Some(1) {
        return None;
    }
    let secs = idle as f64 / 1000.0;
    Some((
        Cause::IdleClosedByPeer,
        format!("a pooled connection the server closed after {secs:.1} s idle; the pool never evicted it"),
        format!("set the pool's idle timeout below ~{} s, or validate connections on borrow", secs.floor().max(1.0)),
    ))
}

fn findings(e: &Evidence) -> Vec<String> {
    let mut out = Vec::new();
    if let (Some(open), Some(limit)) = (e.fds_open, e.fds_limit) {
        if limit > 0 && limit < u64::MAX && open as f64 >= FDS_HIGH * limit as f64 {
            out.push(format!(
                "owner at {:.0}% of its descriptor limit ({open} of {limit})",
                100.0 * open as f64 / limit as f64
            ));
        }
    }
    if let Some(t) = e.threads {
        if t.total > 0 && t.stopped == t.total {
            out.push(format!(
                "owner is stopped: all {} of its threads in state T (a signal or a debugger)",
                t.total
            ));
        } else if t.blocked > 0 && 2 * t.blocked >= t.total {
            out.push(format!(
                "{} of the owner's {} threads in uninterruptible sleep (D): blocked on I/O",
                t.blocked, t.total
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(rqueue: u32) -> Evidence {
        Evidence {
            rqueue: Some(rqueue),
            accepted: Some(true),
            direction: Some(Direction::Outgoing),
            idle_before_fin_ms: Some(1000),
            fds_open: Some(10),
            fds_limit: Some(1024),
            ..Evidence::default()
        }
    }

    #[test]
    fn idle_closed_by_peer_names_the_timeout() {
        let d = diagnose(&evidence(1));
        assert_eq!(d.cause, Cause::IdleClosedByPeer);
        assert!(d.summary.contains("1.0 s idle"), "{}", d.summary);
        assert!(d.hint.contains("below ~1 s"), "{}", d.hint);
        assert!(d.findings.is_empty());
    }

    #[test]
    fn idle_needs_an_outgoing_socket_and_a_real_gap() {
        let mut e = evidence(1);
        e.direction = Some(Direction::Incoming);
        assert_eq!(diagnose(&e).cause, Cause::Unknown);
        let mut e = evidence(1);
        e.idle_before_fin_ms = Some(MIN_IDLE_MS - 1);
        assert_eq!(diagnose(&e).cause, Cause::Unknown);
        e.idle_before_fin_ms = None;
        assert_eq!(diagnose(&e).cause, Cause::Unknown);
    }

    #[test]
    fn eof_not_closed_when_eof_was_read() {
        let d = diagnose(&evidence(0));
        assert_eq!(d.cause, Cause::EofNotClosed);
        assert!(d.hint.contains("close"), "{}", d.hint);
    }

    #[test]
    fn unread_data_counts_the_bytes_before_the_fin() {
        let d = diagnose(&evidence(301));
        assert_eq!(d.cause, Cause::UnreadData);
        assert!(d.summary.contains("300 bytes"), "{}", d.summary);
    }

    #[test]
    fn never_accepted_wins_over_unread_bytes() {
        let mut e = evidence(301);
        e.accepted = Some(false);
        e.backlog = Some(4);
        e.backlog_max = Some(16);
        let d = diagnose(&e);
        assert_eq!(d.cause, Cause::NeverAccepted);
        assert!(d.summary.contains("4/16"), "{}", d.summary);
    }

    #[test]
    fn unknown_without_evidence() {
        let d = diagnose(&Evidence::default());
        assert_eq!(d.cause, Cause::Unknown);
        assert!(!d.hint.is_empty());
    }

    #[test]
    fn a_stopped_or_blocked_owner_is_a_finding() {
        use crate::enrich::evidence::Threads;
        let mut e = evidence(1);
        e.threads = Some(Threads::of("SSS".chars()));
        assert!(diagnose(&e).findings.is_empty(), "sleeping is normal");
        e.threads = Some(Threads::of("TTt".chars()));
        assert_eq!(
            diagnose(&e).findings,
            ["owner is stopped: all 3 of its threads in state T (a signal or a debugger)"]
        );
        e.threads = Some(Threads::of("TTS".chars()));
        assert!(diagnose(&e).findings.is_empty(), "one thread still runs");
        e.threads = Some(Threads::of("DDSR".chars()));
        assert_eq!(
            diagnose(&e).findings,
            ["2 of the owner's 4 threads in uninterruptible sleep (D): blocked on I/O"]
        );
        e.threads = Some(Threads::of("DSSR".chars()));
        assert!(diagnose(&e).findings.is_empty(), "one in four is not news");
    }

    #[test]
    fn descriptor_pressure_is_a_finding() {
        let mut e = evidence(0);
        e.fds_open = Some(980);
        let d = diagnose(&e);
        assert_eq!(d.cause, Cause::EofNotClosed);
        assert_eq!(
            d.findings,
            ["owner at 96% of its descriptor limit (980 of 1024)"]
        );
        e.fds_limit = Some(u64::MAX);
        assert!(diagnose(&e).findings.is_empty(), "unlimited");
    }

    #[test]
    fn cause_names_match_serde() {
        for c in [
            Cause::NeverAccepted,
            Cause::EofNotClosed,
            Cause::UnreadData,
            Cause::IdleClosedByPeer,
            Cause::Unknown,
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), c.name());
        }
    }
}
