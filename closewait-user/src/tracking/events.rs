//! From raw kernel records to the agent's view of a socket.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use closewait_common::{tcp_state, StateEvent, AF_INET, AF_INET6};

/// Address family as shown to the user: an IPv4-mapped IPv6 socket is IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

/// One TCP socket, as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Socket {
    /// Socket cookie; `None` when the attach mode gives none.
    pub cookie: Option<u64>,
    pub family: Family,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    /// Network namespace inode; `None` when unknown.
    pub netns: Option<u32>,
    /// Inode of the socket's file (`socket:[N]`); `None` when unknown.
    pub inode: Option<u64>,
}

impl Socket {
    /// Build from kernel-style fields. `family` is AF_INET or AF_INET6;
    /// addresses use the first 4 bytes for AF_INET.
    pub fn new(
        cookie: Option<u64>,
        family: u16,
        saddr: [u8; 16],
        lport: u16,
        daddr: [u8; 16],
        rport: u16,
        netns: Option<u32>,
    ) -> Socket {
        let (family, laddr, raddr) = normalize(family, saddr, daddr);
        Socket {
            cookie,
            family,
            laddr,
            lport,
            raddr,
            rport,
            netns,
            inode: None,
        }
    }

    /// The key the tracker files this socket under: the cookie when the
    /// attach mode has cookies, else a hash of the 4-tuple.
    pub fn id(&self, cookies: bool) -> u64 {
        match (cookies, self.cookie) {
            (true, Some(cookie)) => cookie,
            _ => {
                let mut h = DefaultHasher::new();
                (self.family, self.laddr, self.lport, self.raddr, self.rport).hash(&mut h);
                h.finish()
            }
        }
    }
}

fn normalize(family: u16, saddr: [u8; 16], daddr: [u8; 16]) -> (Family, IpAddr, IpAddr) {
    if family == AF_INET6 {
        let s = Ipv6Addr::from(saddr);
        let d = Ipv6Addr::from(daddr);
        match (s.to_ipv4_mapped(), d.to_ipv4_mapped()) {
            (Some(s4), Some(d4)) => (Family::V4, s4.into(), d4.into()),
            _ => (Family::V6, s.into(), d.into()),
        }
    } else {
        let v4 = |a: [u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
        debug_assert!(family == AF_INET || family == 0);
        (Family::V4, v4(saddr), v4(daddr))
    }
}

/// Which way a socket crossed CLOSE_WAIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Into CLOSE_WAIT, from `from`.
    Enter { from: u8 },
    /// Out of CLOSE_WAIT, into `to` (LAST_ACK, or CLOSE).
    Exit { to: u8 },
}

/// A decoded kernel event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub ts_ns: u64,
    pub transition: Transition,
    pub socket: Socket,
}

impl Observed {
    /// `None` for a record that is neither an entry nor an exit (the kernel
    /// filters those; this guards against a bad record).
    pub fn from_raw(ev: &StateEvent, cookies: bool) -> Option<Observed> {
        let transition = if ev.new_state == tcp_state::CLOSE_WAIT {
            Transition::Enter { from: ev.old_state }
        } else if ev.old_state == tcp_state::CLOSE_WAIT {
            Transition::Exit { to: ev.new_state }
        } else {
            return None;
        };
        let socket = Socket::new(
            cookies.then_some(ev.cookie),
            ev.family,
            ev.saddr,
            ev.sport,
            ev.daddr,
            ev.dport,
            (ev.netns != 0).then_some(ev.netns),
        );
        let socket = Socket {
            inode: (ev.inode != 0).then_some(ev.inode),
            ..socket
        };
        Some(Observed {
            ts_ns: ev.ts_ns,
            transition,
            socket,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(family: u16, saddr: [u8; 16], daddr: [u8; 16], old: u8, new: u8) -> StateEvent {
        let mut ev = StateEvent::zeroed();
        ev.family = family;
        ev.saddr = saddr;
        ev.daddr = daddr;
        ev.old_state = old;
        ev.new_state = new;
        ev.sport = 8080;
        ev.dport = 40000;
        ev.cookie = 77;
        ev.netns = 4026531840;
        ev.ts_ns = 5;
        ev
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    #[test]
    fn ipv4_event_decodes_to_enter() {
        let ev = raw(AF_INET, v4([10, 0, 0, 1]), v4([10, 0, 0, 2]), 1, 8);
        let o = Observed::from_raw(&ev, true).expect("an entry");
        assert_eq!(o.transition, Transition::Enter { from: 1 });
        assert_eq!(o.socket.family, Family::V4);
        assert_eq!(o.socket.laddr, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(o.socket.raddr, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!((o.socket.lport, o.socket.rport), (8080, 40000));
        assert_eq!(o.socket.cookie, Some(77));
        assert_eq!(o.socket.netns, Some(4026531840));
    }

    #[test]
    fn v4_mapped_ipv6_is_shown_as_ipv4() {
        let mapped = |a: [u8; 4]| Ipv4Addr::from(a).to_ipv6_mapped().octets();
        let ev = raw(
            AF_INET6,
            mapped([127, 0, 0, 1]),
            mapped([127, 0, 0, 9]),
            8,
            9,
        );
        let o = Observed::from_raw(&ev, true).expect("an exit");
        assert_eq!(o.transition, Transition::Exit { to: 9 });
        assert_eq!(o.socket.family, Family::V4);
        assert_eq!(o.socket.raddr, "127.0.0.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn real_ipv6_stays_ipv6() {
        let ev = raw(
            AF_INET6,
            Ipv6Addr::LOCALHOST.octets(),
            Ipv6Addr::LOCALHOST.octets(),
            1,
            8,
        );
        let o = Observed::from_raw(&ev, true).expect("an entry");
        assert_eq!(o.socket.family, Family::V6);
        assert_eq!(o.socket.laddr, IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn unrelated_transition_is_dropped() {
        let ev = raw(AF_INET, v4([1, 1, 1, 1]), v4([2, 2, 2, 2]), 1, 4);
        assert_eq!(Observed::from_raw(&ev, true), None);
    }

    #[test]
    fn id_is_cookie_or_tuple_hash() {
        let ev = raw(AF_INET, v4([10, 0, 0, 1]), v4([10, 0, 0, 2]), 1, 8);
        let with = Observed::from_raw(&ev, true).unwrap().socket;
        assert_eq!(with.id(true), 77);
        let without = Observed::from_raw(&ev, false).unwrap().socket;
        assert_eq!(without.cookie, None);
        // Same tuple, same id, whatever the cookie or netns.
        let mut other = ev;
        other.cookie = 99;
        let other = Observed::from_raw(&other, false).unwrap().socket;
        assert_eq!(without.id(false), other.id(false));
        let mut moved = ev;
        moved.dport = 40001;
        assert_ne!(
            without.id(false),
            Observed::from_raw(&moved, false).unwrap().socket.id(false)
        );
    }
}
