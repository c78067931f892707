//! Names of JIT-compiled code from the perf map a runtime publishes
//! (`/tmp/perf-PID.map`: one `START SIZE name` line per function, hex
//! numbers; the JVM with an agent, Node with --perf-basic-prof, Python 3.12
//! with -X perf).
//!
//! Read here rather than by blazesym, which can read them too: the file is
//! the traced process's to control, and this tool runs as root. It is
//! opened without following a final symlink and without blocking (a FIFO
//! would hang an open() for reading), must be a regular file, and at most
//! [`MAX_BYTES`] are read. The names are untrusted text like any other
//! symbol: outputs escape them.

use std::{collections::BTreeMap, io::Read, os::unix::fs::OpenOptionsExt};

/// Perf maps larger than this are read only this far.
pub const MAX_BYTES: u64 = 64 << 20;

/// A perf map: code ranges and their names.
#[derive(Debug, Default)]
pub struct PerfMap {
    /// By start address: (end, name). A later line for the same start wins
    /// (a runtime that reused the memory).
    ranges: BTreeMap<u64, (u64, String)>,
}

impl PerfMap {
    pub fn parse(text: &str) -> PerfMap {
        let mut ranges = BTreeMap::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, ' ');
            let (Some(start), Some(size), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
            let (Some(start), Some(size)) = (hex(start), hex(size)) else {
                continue;
            };
            let Some(end) = start.checked_add(size).filter(|_| size > 0) else {
                continue;
            };
            ranges.insert(start, (end, name.trim_end().to_string()));
        }
        PerfMap { ranges }
    }

    /// The name of the code at `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let (_, (end, name)) = self.ranges.range(..=addr).next_back()?;
        (addr < *end).then_some(name.as_str())
    }

    /// Process `pid`'s perf map, if it publishes one. The file is named
    /// after the pid the process sees itself as, in its own /tmp.
    pub fn of(pid: u32) -> Option<PerfMap> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let ns_pid = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or("");
        let ns_pid: u32 = ns_pid.parse().ok()?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
            .open(format!("/proc/{pid}/root/tmp/perf-{ns_pid}.map"))
            .ok()?;
        if !file.metadata().ok()?.is_file() {
            return None;
        }
        let mut bytes = Vec::new();
        file.take(MAX_BYTES).read_to_end(&mut bytes).ok()?;
        Some(PerfMap::parse(&String::from_utf8_lossy(&bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_looks_up_ranges() {
        let map = PerfMap::parse(
            "7f00 10 jit_fn one\n\
             0x8000 20 py::handler:/app/x.py\n\
             bogus line\n\
             9000 0 empty\n\
             7f00 8 reused\n",
        );
        assert_eq!(map.lookup(0x7f00), Some("reused"), "the later line wins");
        assert_eq!(map.lookup(0x7f08), None, "past the reused range");
        assert_eq!(map.lookup(0x801f), Some("py::handler:/app/x.py"));
        assert_eq!(map.lookup(0x8020), None);
        assert_eq!(map.lookup(0x9000), None, "empty ranges are skipped");
        assert_eq!(map.lookup(0x10), None);
    }

    #[test]
    fn a_fifo_or_a_symlink_is_not_read() {
        let pid = std::process::id();
        let path = format!("/tmp/perf-{pid}.map");
        let _ = std::fs::remove_file(&path);
        let c = std::ffi::CString::new(path.clone()).unwrap();
        // SAFETY: a valid path; the FIFO is removed below.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(PerfMap::of(pid).is_none(), "a FIFO: no hang, no map");
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        assert!(PerfMap::of(pid).is_none(), "a symlink is not followed");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "1000 10 ours\n").unwrap();
        let map = PerfMap::of(pid).expect("a regular file");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(map.lookup(0x1008), Some("ours"));
    }
}
