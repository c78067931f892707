//! Which processes hold a socket. Found through `/proc/PID/fd` links
//! (`socket:[INODE]`), never from the task that ran when the socket changed
//! state: the move into CLOSE_WAIT runs in softirq context, where the current
//! task is whoever was interrupted.

use std::{
    collections::{HashMap, HashSet},
    fs,
};

/// One process holding a socket.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Owner {
    pub pid: u32,
    pub fd: u32,
    pub comm: String,
    pub cmdline: String,
    pub uid: Option<u32>,
    /// cgroup path (v2, or the systemd hierarchy on v1).
    pub cgroup: Option<String>,
    /// Container id, where a runtime put one in the cgroup path.
    pub container_id: Option<String>,
}

/// Socket inode -> the (pid, fd) pairs that hold it, from one walk of /proc.
/// Only inodes in `wanted` are kept. Processes that vanish mid-walk, or whose
/// fds we may not read, are skipped.
pub fn find_holders(wanted: &HashSet<u64>) -> HashMap<u64, Vec<(u32, u32)>> {
    let mut found: HashMap<u64, Vec<(u32, u32)>> = HashMap::new();
    if wanted.is_empty() {
        return found;
    }
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for proc_entry in procs.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd_entry in fds.flatten() {
            let Some(fd) = fd_entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(target) = fs::read_link(fd_entry.path()) else {
                continue;
            };
            if let Some(inode) = target.to_str().and_then(socket_inode) {
                if wanted.contains(&inode) {
                    found.entry(inode).or_default().push((pid, fd));
                }
            }
        }
    }
    for holders in found.values_mut() {
        holders.sort_unstable();
    }
    found
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Describe process `pid` holding the socket as `fd`. `None` if it is gone.
pub fn describe(pid: u32, fd: u32) -> Option<Owner> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let comm = comm.strip_suffix('\n').unwrap_or(&comm).to_string();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| cmdline(&raw))
        .unwrap_or_default();
    let uid = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| real_uid(&s));
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|s| cgroup_path(&s));
    let container_id = cgroup.as_deref().and_then(container_id);
    Some(Owner {
        pid,
        fd,
        comm,
        cmdline,
        uid,
        cgroup,
        container_id,
    })
}

/// NUL-separated argv -> one line, arguments separated by spaces.
fn cmdline(raw: &[u8]) -> String {
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

fn real_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The cgroup v2 path (`0::/path`), else the v1 systemd hierarchy's, else the
/// first hierarchy's.
fn cgroup_path(text: &str) -> Option<String> {
    let path_of = |line: &str| line.splitn(3, ':').nth(2).map(str::to_string);
    text.lines()
        .find(|l| l.starts_with("0::"))
        .or_else(|| text.lines().find(|l| l.contains(":name=systemd:")))
        .or_else(|| text.lines().next())
        .and_then(path_of)
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

/// Make text from another process safe for a terminal: control characters
/// become `\xNN` (or `\u{N}`), and backslashes are doubled so the result is
/// unambiguous.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() && (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_socket_links() {
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("pipe:[4242]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }

    #[test]
    fn cmdline_and_uid() {
        assert_eq!(
            cmdline(b"/usr/bin/api\0--port\08080\0"),
            "/usr/bin/api --port 8080"
        );
        assert_eq!(cmdline(b""), "");
        assert_eq!(
            real_uid("Name:\tx\nUid:\t1000\t1001\t1000\t1000\n"),
            Some(1000)
        );
        assert_eq!(real_uid("Name:\tx\n"), None);
    }

    #[test]
    fn cgroup_v2_v1_and_garbage() {
        assert_eq!(
            cgroup_path("0::/system.slice/api.service\n").as_deref(),
            Some("/system.slice/api.service")
        );
        let v1 = "12:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n";
        assert_eq!(cgroup_path(v1).as_deref(), Some("/docker/abc"));
        assert_eq!(cgroup_path("").as_deref(), None);
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
    fn escapes_terminal_control_characters() {
        assert_eq!(escape("api-server"), "api-server");
        assert_eq!(escape("evil\x1b[31mred"), "evil\\x1b[31mred");
        assert_eq!(escape("a\\b\n\t"), "a\\\\b\\x0a\\x09");
        assert_eq!(escape("bell\u{7}\u{9b}"), "bell\\x07\\x9b");
        assert_eq!(escape("naïve"), "naïve");
    }

    #[test]
    fn finds_our_own_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd;
        let fd = listener.as_raw_fd() as u32;
        let link = fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        let inode = socket_inode(link.to_str().unwrap()).unwrap();
        let holders = find_holders(&HashSet::from([inode]));
        assert_eq!(holders.get(&inode), Some(&vec![(std::process::id(), fd)]));
        let me = describe(std::process::id(), fd).expect("we exist");
        assert!(!me.comm.is_empty());
        assert!(me.cmdline.contains("closewait"), "{}", me.cmdline);
    }
}
