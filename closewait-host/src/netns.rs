//! Network namespaces: entering one on a thread of our own, and named ones
//! (`ip netns add`) for tests and benchmarks.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    process::Command,
};

/// Where `ip netns add` bind-mounts the namespaces it creates.
pub const NAMED_NETNS_DIR: &str = "/run/netns";

/// Move the calling thread into the network namespace `file` refers to.
pub fn enter_file(file: &File) -> io::Result<()> {
    // SAFETY: `file` is an open descriptor for the duration of the call;
    // setns only reads it and changes the calling thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Run `f` on a new thread inside the namespace at `path` (the caller's
/// threads never change namespace). Sockets `f` creates belong to that
/// namespace and can be used from any thread afterwards.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_file(&File::open(path)?)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Inode of a namespace file such as `/proc/self/ns/net`.
pub fn inode(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

/// A named network namespace with loopback up, deleted when dropped.
#[derive(Debug)]
pub struct Named {
    name: String,
    inode: u64,
}

impl Named {
    /// `ip netns add NAME` and `ip -n NAME link set lo up`.
    pub fn create(name: &str) -> io::Result<Named> {
        ip(&["netns", "add", name])?;
        let mut netns = Named {
            name: name.to_string(),
            inode: 0,
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        netns.inode = inode(&netns.path())?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new(NAMED_NETNS_DIR).join(&self.name)
    }

    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// [`run_in`] this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        run_in(&self.path(), f)
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = ip(&["netns", "delete", &self.name]);
    }
}

/// Delete named namespaces `PREFIX<pid>...` whose creating process is gone
/// (left by a run that was killed).
pub fn remove_stale(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(NAMED_NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !Path::new("/proc").join(&pid).exists() {
            let _ = ip(&["netns", "delete", &name]);
        }
    }
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_namespace_has_an_inode() {
        assert!(inode(Path::new("/proc/self/ns/net")).unwrap() > 0);
    }

    #[test]
    fn run_in_our_own_namespace() {
        let got = run_in(Path::new("/proc/self/ns/net"), || 7);
        // setns into one's own namespace needs CAP_SYS_ADMIN; either way no panic.
        if let Ok(v) = got {
            assert_eq!(v, 7);
        }
        assert!(run_in(Path::new("/nonexistent/netns"), || ()).is_err());
    }
}
