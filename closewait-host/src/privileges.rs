//! Who we are: effective uid and capabilities, from /proc/self/status.

use std::fs;

pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_uid(&s))
        == Some(0)
}

/// The effective capability set (`CapEff`), if /proc says.
pub fn effective_caps() -> Option<u64> {
    parse_cap_eff(&fs::read_to_string("/proc/self/status").ok()?)
}

/// Whether `cap` is in the set `caps`.
pub fn has(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

/// "Uid:\t<real>\t<effective>\t<saved>\t<fs>" -> effective.
fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let status =
            "Name:\tx\nUid:\t1000\t0\t0\t0\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
        assert_eq!(effective_uid("Name: x\n"), None);
        assert!(has(1 << CAP_BPF, CAP_BPF));
        assert!(!has(1 << CAP_BPF, CAP_PERFMON));
    }
}
