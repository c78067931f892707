//! Which processes hold a socket. Found through `/proc/PID/fd` links
//! (`socket:[INODE]`), never from the task that ran when the socket changed
//! state: the move into CLOSE_WAIT runs in softirq context, where the current
//! task is whoever was interrupted.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use procfs::process::{FDTarget, Process};

/// One process holding a socket. Its text is shared (`Arc<str>`): one process
/// holding 10,000 stuck sockets keeps one copy of its command line, not 10,000.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub fd: u32,
    pub comm: Arc<str>,
    pub cmdline: Arc<str>,
    pub uid: Option<u32>,
    /// cgroup path (v2, or the systemd hierarchy on v1).
    pub cgroup: Option<Arc<str>>,
    /// Container id, where a runtime put one in the cgroup path.
    pub container_id: Option<Arc<str>>,
    /// The Kubernetes pod, from a kubelet cgroup path (`pod_uid`) and the
    /// kubelet's log directory (`pod`, `pod_namespace`); `None` outside pods.
    pub pod: Option<Arc<str>>,
    pub pod_namespace: Option<Arc<str>>,
    pub pod_uid: Option<Arc<str>>,
}

/// Socket inode -> the (pid, fd) pairs that hold it, from one walk of /proc.
/// Only inodes in `wanted` are kept, and only processes for which `may_hold`
/// is true have their fds read (an owner filter narrows the walk). Processes
/// that vanish mid-walk, or whose fds we may not read, are skipped.
pub fn find_holders(
    wanted: &HashSet<u64>,
    may_hold: impl Fn(&Process) -> bool,
) -> HashMap<u64, Vec<(u32, u32)>> {
    let mut found: HashMap<u64, Vec<(u32, u32)>> = HashMap::new();
    if wanted.is_empty() {
        return found;
    }
    let Ok(procs) = procfs::process::all_processes() else {
        return found;
    };
    for process in procs.flatten() {
        if !may_hold(&process) {
            continue;
        }
        let Ok(fds) = process.fd() else {
            continue;
        };
        let pid = process.pid() as u32;
        for fd in fds.flatten() {
            if let FDTarget::Socket(inode) = fd.target {
                if wanted.contains(&inode) {
                    found.entry(inode).or_default().push((pid, fd.fd as u32));
                }
            }
        }
    }
    for holders in found.values_mut() {
        holders.sort_unstable();
    }
    found
}

/// A process's command name, as the kernel keeps it (`/proc/PID/comm`).
pub fn comm(process: &Process) -> Option<String> {
    process.stat().ok().map(|s| s.comm)
}

/// Describe process `pid` holding the socket as `fd`. `None` if it is gone.
pub fn describe(pid: u32, fd: u32) -> Option<Owner> {
    let process = Process::new(pid as i32).ok()?;
    let comm = comm(&process)?;
    let cmdline = cmdline(&process);
    let uid = process.status().ok().map(|s| s.ruid);
    let cgroup = process.cgroups().ok().and_then(|groups| {
        let paths: Vec<(u32, String, String)> = groups
            .into_iter()
            .map(|g| (g.hierarchy, g.controllers.join(","), g.pathname))
            .collect();
        cgroup_path(&paths)
    });
    let container_id = cgroup.as_deref().and_then(container_id);
    let pod = cgroup.as_deref().and_then(super::pod::of_cgroup);
    Some(Owner {
        pid,
        fd,
        comm: comm.into(),
        cmdline: cmdline.into(),
        uid,
        cgroup: cgroup.map(Into::into),
        container_id: container_id.map(Into::into),
        pod: pod.as_ref().and_then(|p| p.name.as_deref().map(Into::into)),
        pod_namespace: pod
            .as_ref()
            .and_then(|p| p.namespace.as_deref().map(Into::into)),
        pod_uid: pod.map(|p| p.uid.into()),
    })
}

/// The process's parent pid, if it is still there.
pub fn parent_of(pid: u32) -> Option<u32> {
    let ppid = Process::new(pid as i32).ok()?.stat().ok()?.ppid;
    u32::try_from(ppid).ok()
}

/// argv as one line, arguments separated by spaces. procfs reads cmdline as
/// UTF-8 and fails on anything else; a hostile process can put any bytes
/// there, so fall back to the raw file, decoded lossily.
fn cmdline(process: &Process) -> String {
    if let Ok(args) = process.cmdline() {
        return args.join(" ");
    }
    std::fs::read(format!("/proc/{}/cmdline", process.pid()))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(String::from_utf8_lossy)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The cgroup v2 path (hierarchy 0), else the v1 systemd hierarchy's, else
/// the first hierarchy's. Entries: (hierarchy, controllers, path).
fn cgroup_path(groups: &[(u32, String, String)]) -> Option<String> {
    groups
        .iter()
        .find(|(h, c, _)| *h == 0 && c.is_empty())
        .or_else(|| groups.iter().find(|(_, c, _)| c == "name=systemd"))
        .or_else(|| groups.first())
        .map(|(_, _, path)| path.clone())
}

/// A container id (64 hex digits) that a runtime put in the cgroup path:
/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `libpod-<id>.scope`, or a bare `<id>` component (cgroupfs driver:
/// `/docker/<id>`, `/kubepods/.../<id>`). The innermost match wins.
pub fn container_id(path: &str) -> Option<String> {
    path.rsplit('/').find_map(|component| {
        let c = component.strip_suffix(".scope").unwrap_or(component);
        if c.contains("conmon") {
            return None; // podman/CRI-O's monitor process, not the container
        }
        let id = [
            "docker-",
            "cri-containerd-",
            "crio-",
            "libpod-",
            "containerd-",
        ]
        .iter()
        .find_map(|prefix| c.strip_prefix(prefix))
        .unwrap_or(c);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

#[cfg(test)]
mod tests {
    use std::os::{fd::AsRawFd, unix::fs::MetadataExt};

    use super::*;

    #[test]
    fn cgroup_v2_v1_and_garbage() {
        let e = |h: u32, c: &str, p: &str| (h, c.to_string(), p.to_string());
        assert_eq!(
            cgroup_path(&[e(0, "", "/system.slice/api.service")]).as_deref(),
            Some("/system.slice/api.service")
        );
        let v1 = [
            e(12, "cpu,cpuacct", "/docker/abc"),
            e(1, "name=systemd", "/docker/abc"),
        ];
        assert_eq!(cgroup_path(&v1).as_deref(), Some("/docker/abc"));
        assert_eq!(cgroup_path(&[]).as_deref(), None);
    }

    #[test]
    fn container_ids_from_runtimes() {
        let id = "4f1d8a0c2b9e7d6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";
        for path in [
            format!("/system.slice/docker-{id}.scope"),
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-{id}.scope"),
            format!("/machine.slice/libpod-{id}.scope/container"),
            format!("/kubepods/besteffort/pod0a1b/{id}"),
            format!("/docker/{id}"),
            format!("/kubepods.slice/crio-{id}.scope"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(id), "{path}");
        }
        assert_eq!(
            container_id("/user.slice/user-0.slice/session-3.scope"),
            None
        );
        assert_eq!(
            container_id(&format!("/machine.slice/crio-conmon-{id}.scope")),
            None
        );
        assert_eq!(container_id("/docker/not-a-container-id"), None);
    }

    #[test]
    fn finds_our_own_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.as_raw_fd() as u32;
        let inode = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino();
        let holders = find_holders(&HashSet::from([inode]), |_| true);
        // Ours; a child another test thread is forking may hold it too for
        // a moment (between fork and exec every fd is inherited).
        let ours = holders.get(&inode).expect("held");
        assert!(ours.contains(&(std::process::id(), fd)), "{ours:?}");
        let me = describe(std::process::id(), fd).expect("we exist");
        assert!(!me.comm.is_empty());
        assert!(me.cmdline.contains("closewait"), "{}", me.cmdline);
        assert_eq!(me.uid, Some(unsafe { libc::getuid() }));
        // A walk narrowed to other processes does not read ours.
        let me = std::process::id() as i32;
        let others = find_holders(&HashSet::from([inode]), |p| p.pid() != me);
        let others = others.get(&inode).cloned().unwrap_or_default();
        assert!(
            others.iter().all(|&(pid, _)| pid != me as u32),
            "{others:?}"
        );
    }

    #[test]
    fn our_parent_is_our_parent() {
        let ppid = std::os::unix::process::parent_id();
        assert_eq!(parent_of(std::process::id()), Some(ppid));
        assert_eq!(parent_of(u32::MAX), None);
    }
}
