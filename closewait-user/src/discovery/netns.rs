//! Which network namespaces exist on the host: every one a process or
//! thread is in (`/proc/PID/ns/net`, `/proc/PID/task/TID/ns/net`), and those
//! `ip netns add` bind-mounted under `/run/netns` with no process in them.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use closewait_host::netns::NAMED_NETNS_DIR;

/// A network namespace to scan.
#[derive(Debug, Clone)]
pub struct NetNs {
    /// Inode number of the namespace (`stat().st_ino` of its ns file).
    pub inode: u32,
    /// A file that refers to the namespace (`/proc/PID/ns/net`, ...).
    pub path: PathBuf,
}

/// All distinct network namespaces on the host, deduplicated by inode and
/// sorted by it. Unreadable entries (process exited, permission) are skipped
/// silently. `/run/netns` paths are preferred: they cannot be recycled like a
/// PID.
pub fn list_netns() -> Vec<NetNs> {
    let mut collector = Collector::new();
    if let Ok(named) = fs::read_dir(NAMED_NETNS_DIR) {
        for entry in named.flatten() {
            collector.add(entry.path());
        }
    }
    let processes = procfs::process::all_processes();
    if let Err(err) = &processes {
        // Said once: every reconciliation scan would repeat it.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            eprintln!("closewait-trace: warning: cannot list processes to find their network namespaces ({err}): scanning only the ones found otherwise");
        });
    }
    if let Ok(processes) = processes {
        for process in processes.flatten() {
            let pid = process.pid();
            collector.add(PathBuf::from(format!("/proc/{pid}/ns/net")));
            let Ok(tasks) = process.tasks() else {
                continue;
            };
            for task in tasks.flatten() {
                // The thread-group leader's task entry is /proc/PID/ns/net.
                if task.tid != pid {
                    collector.add(PathBuf::from(format!(
                        "/proc/{pid}/task/{}/ns/net",
                        task.tid
                    )));
                }
            }
        }
    }
    collector.finish()
}

/// Deduplicates namespace files by inode.
struct Collector {
    /// Device of nsfs; files on any other device are not namespaces (e.g. a
    /// stale, unmounted file left in /run/netns).
    nsfs_dev: Option<u64>,
    seen: HashSet<u64>,
    found: Vec<NetNs>,
}

impl Collector {
    fn new() -> Self {
        let nsfs_dev = fs::metadata("/proc/self/ns/net").ok().map(|m| m.dev());
        Self {
            nsfs_dev,
            seen: HashSet::new(),
            found: Vec::new(),
        }
    }

    /// Records the namespace `path` refers to, unless unreadable or known.
    fn add(&mut self, path: PathBuf) {
        let Ok(meta) = fs::metadata(Path::new(&path)) else {
            return;
        };
        if self.nsfs_dev.is_some_and(|dev| dev != meta.dev()) {
            return;
        }
        let Ok(inode) = u32::try_from(meta.ino()) else {
            return;
        };
        if self.seen.insert(meta.ino()) {
            self.found.push(NetNs { inode, path });
        }
    }

    fn finish(mut self) -> Vec<NetNs> {
        self.found.sort_by_key(|ns| ns.inode);
        self.found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_own_namespace_once() {
        let own = fs::metadata("/proc/self/ns/net").unwrap().ino();
        let all = list_netns();
        assert!(all.iter().any(|ns| u64::from(ns.inode) == own));
        let mut inodes: Vec<u32> = all.iter().map(|ns| ns.inode).collect();
        inodes.dedup();
        assert_eq!(inodes.len(), all.len(), "sorted and deduplicated");
    }
}
