//! Formatting shared by the outputs: times, durations, endpoints.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

/// Maps kernel CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    mono_ns: u64,
    wall: SystemTime,
}

impl WallClock {
    pub fn new(mono_ns: u64, wall: SystemTime) -> WallClock {
        WallClock { mono_ns, wall }
    }

    pub fn at(&self, mono_ns: u64) -> SystemTime {
        if mono_ns >= self.mono_ns {
            self.wall + Duration::from_nanos(mono_ns - self.mono_ns)
        } else {
            self.wall - Duration::from_nanos(self.mono_ns - mono_ns)
        }
    }

    /// RFC 3339, UTC, milliseconds.
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        humantime::format_rfc3339_millis(self.at(mono_ns)).to_string()
    }

    /// HH:MM:SS.mmm (UTC), for the text stream.
    pub fn time_of_day(&self, mono_ns: u64) -> String {
        let ts = self.rfc3339(mono_ns);
        ts.get(11..23).unwrap_or(&ts).to_string()
    }
}

/// `1.2.3.4:80`, `[::1]:80`.
pub fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Milliseconds with microsecond precision.
pub fn ms(ns: u64) -> f64 {
    (ns / 1_000) as f64 / 1_000.0
}

/// A duration for people: `850us`, `12ms`, `5.00s`, `3m07s`, `2h05m`.
pub fn human_duration(ns: u64) -> String {
    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    match ns {
        n if n < MS => format!("{}us", n / US),
        n if n < S => format!("{}ms", n / MS),
        n if n < 60 * S => format!("{:.2}s", n as f64 / S as f64),
        n if n < 3600 * S => format!("{}m{:02}s", n / (60 * S), (n / S) % 60),
        n => format!("{}h{:02}m", n / (3600 * S), (n / (60 * S)) % 60),
    }
}

/// `1 network namespace`, `2 network namespaces`.
pub fn count_of(n: usize, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(850_000), "850us");
        assert_eq!(human_duration(12_300_000), "12ms");
        assert_eq!(human_duration(5 * S), "5.00s");
        assert_eq!(human_duration(187 * S), "3m07s");
        assert_eq!(human_duration(7500 * S), "2h05m");
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            endpoint(IpAddr::V4(Ipv4Addr::LOCALHOST), 80),
            "127.0.0.1:80"
        );
        assert_eq!(endpoint(IpAddr::V6(Ipv6Addr::LOCALHOST), 80), "[::1]:80");
    }

    #[test]
    fn singular_and_plural() {
        assert_eq!(
            count_of(1, "network namespace", "network namespaces"),
            "1 network namespace"
        );
        assert_eq!(count_of(0, "socket", "sockets"), "0 sockets");
        assert_eq!(count_of(2, "socket", "sockets"), "2 sockets");
    }

    #[test]
    fn wall_clock() {
        let c = WallClock::new(
            100 * S,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_514_400),
        );
        assert_eq!(c.rfc3339(101 * S), "2026-11-24T10:00:01.000Z");
        assert_eq!(c.time_of_day(99 * S), "09:59:59.000");
        assert_eq!(ms(1_234_567_891), 1234.567);
    }
}
