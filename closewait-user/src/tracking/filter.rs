//! The one filter: what the user asked to see (`--port`, `-4`/`-6`, `--pid`,
//! `--comm`). Applied before anything is shown or counted: the address part
//! to every event and scanned socket as it arrives, the owner part when the
//! socket's holders are known (the tracker admits a socket only then).

use super::events::{Family, Socket};

#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub ports: Vec<u16>,
    pub family: Option<Family>,
    pub owner: OwnerFilter,
}

/// Only sockets held by these processes; empty: all.
#[derive(Clone, Debug, Default)]
pub struct OwnerFilter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
}

impl Filter {
    /// The address part: ports and family.
    pub fn matches_socket(&self, s: &Socket) -> bool {
        (self.ports.is_empty() || self.ports.iter().any(|&p| p == s.lport || p == s.rport))
            && self.family.is_none_or(|f| f == s.family)
    }
}

impl OwnerFilter {
    /// Whether a socket's owners must be known before it may be counted.
    pub fn is_set(&self) -> bool {
        !self.pids.is_empty() || !self.comms.is_empty()
    }

    /// Whether any of the holders, as (pid, comm), is selected. A socket no
    /// process holds matches only when no owner filter is set.
    pub fn matches<'a>(&self, holders: impl IntoIterator<Item = (u32, &'a str)>) -> bool {
        if !self.is_set() {
            return true;
        }
        holders.into_iter().any(|(pid, comm)| {
            (self.pids.is_empty() || self.pids.contains(&pid))
                && (self.comms.is_empty() || self.comms.iter().any(|c| c == comm))
        })
    }

    /// Whether process (pid, comm) could hold a selected socket: lets the
    /// owner lookup skip the fds of every other process.
    pub fn may_hold(&self, pid: u32, comm: impl FnOnce() -> Option<String>) -> bool {
        if !self.is_set() {
            return true;
        }
        if !self.pids.is_empty() && !self.pids.contains(&pid) {
            return false;
        }
        self.comms.is_empty() || comm().is_some_and(|c| self.comms.contains(&c))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn socket() -> Socket {
        Socket {
            cookie: Some(1),
            family: Family::V4,
            laddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            lport: 8080,
            raddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            rport: 40000,
            netns: None,
            inode: None,
        }
    }

    #[test]
    fn by_port_and_family() {
        let s = socket();
        assert!(Filter::default().matches_socket(&s));
        let f = |ports: Vec<u16>, family| Filter {
            ports,
            family,
            owner: OwnerFilter::default(),
        };
        assert!(f(vec![8080], None).matches_socket(&s));
        assert!(f(vec![40000], None).matches_socket(&s));
        assert!(!f(vec![9090], None).matches_socket(&s));
        assert!(f(vec![], Some(Family::V4)).matches_socket(&s));
        assert!(!f(vec![], Some(Family::V6)).matches_socket(&s));
    }

    #[test]
    fn by_owner() {
        let none = OwnerFilter::default();
        assert!(none.matches([]));
        assert!(none.may_hold(1, || None));
        let api = OwnerFilter {
            pids: vec![],
            comms: vec!["api".into()],
        };
        assert!(api.matches([(5, "worker"), (6, "api")]));
        assert!(!api.matches([(5, "worker")]));
        assert!(!api.matches([]), "no holder: not selected");
        assert!(api.may_hold(9, || Some("api".into())));
        assert!(!api.may_hold(9, || Some("db".into())));
        let both = OwnerFilter {
            pids: vec![6],
            comms: vec!["api".into()],
        };
        assert!(both.matches([(6, "api")]));
        assert!(!both.matches([(5, "api")]));
        assert!(!both.may_hold(5, || panic!("comm not needed")));
    }
}
