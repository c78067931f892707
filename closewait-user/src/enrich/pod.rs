//! Kubernetes pods without the API server: the pod UID from the owner's
//! cgroup path as the kubelet lays it out, and the pod's name and namespace
//! from the kubelet's log directory, `/var/log/pods/<namespace>_<name>_<uid>/`.
//!
//! Layouts (cgroup v2, or v1's systemd hierarchy):
//! - systemd driver: `/kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid, '-' as '_'>.slice/cri-containerd-<id>.scope`
//!   (`crio-<id>.scope`, `docker-<id>.scope`); guaranteed pods sit right
//!   under `kubepods.slice`; kind and other nested nodes add a prefix
//!   (`/kubelet.slice/kubelet-kubepods.slice/...`);
//! - cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>`, or
//!   `/kubepods/pod<uid>/<id>`.
//!
//! A pod UID is a UUID, or 32 hex digits for a static pod (a hash of its
//! manifest).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

/// Where the kubelet keeps pod logs, unless set otherwise (tests).
pub const POD_LOGS: &str = "/var/log/pods";
/// How long an unknown UID is not looked up again.
const RETRY: Duration = Duration::from_secs(5);

/// The pod a process runs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub uid: String,
    /// From the log directory; `None` when it is not readable here.
    pub name: Option<String>,
    pub namespace: Option<String>,
}

/// The pod UID in a kubelet cgroup path, dashes restored.
pub fn pod_uid(cgroup: &str) -> Option<String> {
    let parts: Vec<&str> = cgroup.split('/').filter(|p| !p.is_empty()).collect();
    // From a kubepods component on ("pod" is a common word), that component
    // included: in a cgroup namespace of its own (containerd gives one to
    // every container on cgroup v2, this tool's DaemonSet pod included)
    // other processes' paths are relative to it, `/../../kubepods-
    // burstable-pod<uid>.slice/...` or `/../../pod<uid>/<id>`, so the
    // kubepods part may be the pod's own or missing.
    let from = match parts.iter().position(|p| p.contains("kubepods")) {
        Some(i) => i,
        None if parts.first() == Some(&"..") => 0,
        None => return None,
    };
    parts[from..].iter().find_map(|p| {
        let p = p.strip_suffix(".slice").unwrap_or(p);
        let at = p.rfind("pod")?;
        let before = &p[..at];
        if !(before.is_empty() || before.ends_with('-')) {
            return None;
        }
        let uid = p[at + 3..].replace('_', "-");
        is_uid(&uid).then_some(uid)
    })
}

fn is_uid(s: &str) -> bool {
    let hex = |part: &str, n: usize| part.len() == n && part.bytes().all(|b| b.is_ascii_hexdigit());
    let parts: Vec<&str> = s.split('-').collect();
    match parts.as_slice() {
        [a, b, c, d, e] => hex(a, 8) && hex(b, 4) && hex(c, 4) && hex(d, 4) && hex(e, 12),
        [whole] => hex(whole, 32),
        _ => false,
    }
}

/// `<namespace>_<name>_<uid>`: namespaces and pod names are DNS names,
/// which have no `_`.
fn parse_log_dir(name: &str) -> Option<(String, String, String)> {
    let (namespace, rest) = name.split_once('_')?;
    let (pod, uid) = rest.rsplit_once('_')?;
    (!namespace.is_empty() && !pod.is_empty() && is_uid(uid))
        .then(|| (namespace.to_string(), pod.to_string(), uid.to_string()))
}

/// Pod names by UID, from one log directory; unknown UIDs are looked up
/// again after [`RETRY`] (a pod that just started).
pub struct PodNames {
    dir: PathBuf,
    known: HashMap<String, (String, String)>,
    listed: Option<Instant>,
}

impl PodNames {
    pub fn new(dir: &Path) -> PodNames {
        PodNames {
            dir: dir.to_path_buf(),
            known: HashMap::new(),
            listed: None,
        }
    }

    /// The pod `uid` runs in, named where the log directory says.
    pub fn pod(&mut self, uid: &str) -> Pod {
        if !self.known.contains_key(uid) && self.listed.is_none_or(|t| t.elapsed() >= RETRY) {
            self.list();
        }
        let found = self.known.get(uid);
        Pod {
            uid: uid.to_string(),
            name: found.map(|(_, name)| name.clone()),
            namespace: found.map(|(ns, _)| ns.clone()),
        }
    }

    fn list(&mut self) {
        self.listed = Some(Instant::now());
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        self.known.clear();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some((ns, pod, uid)) = name.to_str().and_then(parse_log_dir) {
                self.known.insert(uid, (ns, pod));
            }
        }
    }
}

static POD_DIR: OnceLock<PathBuf> = OnceLock::new();
static NAMES: OnceLock<Mutex<PodNames>> = OnceLock::new();

/// Set the log directory once, before the first lookup (`--pod-logs`).
pub fn set_log_dir(dir: &Path) {
    let _ = POD_DIR.set(dir.to_path_buf());
}

/// The pod of a process in cgroup `cgroup`, if any.
pub fn of_cgroup(cgroup: &str) -> Option<Pod> {
    let uid = pod_uid(cgroup)?;
    let names = NAMES.get_or_init(|| {
        let dir = POD_DIR
            .get()
            .cloned()
            .unwrap_or_else(|| PathBuf::from(POD_LOGS));
        Mutex::new(PodNames::new(&dir))
    });
    let mut names = names.lock().ok()?;
    Some(names.pod(&uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    const ID: &str = "4c01db0b339c8ad5e2ed9cd0c9f1d5b2e1c2e3a7f1b3f3c1d2e3f4a5b6c7d8e9";

    #[test]
    fn pod_uid_from_every_kubelet_layout() {
        let us = UID.replace('-', "_");
        for path in [
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{us}.slice/cri-containerd-{ID}.scope"),
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{us}.slice/crio-{ID}.scope"),
            format!("/kubepods.slice/kubepods-pod{us}.slice/docker-{ID}.scope"),
            format!("/kubepods/burstable/pod{UID}/{ID}"),
            format!("/kubepods/pod{UID}/{ID}"),
            format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{us}.slice/cri-containerd-{ID}.scope"),
        ] {
            assert_eq!(pod_uid(&path).as_deref(), Some(UID), "{path}");
        }
        // Seen from a cgroup namespace of its own (another pod's view).
        for path in [
            format!("/../../kubepods-burstable-pod{us}.slice/cri-containerd-{ID}.scope"),
            format!("/../kubepods-pod{us}.slice/crio-{ID}.scope"),
            format!("/../../pod{UID}/{ID}"),
        ] {
            assert_eq!(pod_uid(&path).as_deref(), Some(UID), "{path}");
        }
        // A static pod's UID is a 32-digit hash.
        let hash = "3b2c1f9a8e7d6c5b4a39281716051423";
        assert_eq!(
            pod_uid(&format!("/kubepods/burstable/pod{hash}/{ID}")).as_deref(),
            Some(hash)
        );
    }

    #[test]
    fn no_pod_outside_kubepods_or_without_a_uid() {
        for path in [
            "/system.slice/docker-abc.scope".to_string(),
            format!("/user.slice/pod{UID}"),
            format!("/../user.slice/xpod{UID}"),
            "/kubepods.slice/kubepods-burstable.slice".to_string(),
            "/kubepods/burstable/podnotauid/x".to_string(),
            format!("/kubepods/burstable/xpod{UID}/x"),
            String::new(),
        ] {
            assert_eq!(pod_uid(&path), None, "{path}");
        }
    }

    #[test]
    fn names_from_the_log_directory() {
        assert_eq!(
            parse_log_dir(&format!("kube-system_coredns-5d78c9869d-abcde_{UID}")),
            Some((
                "kube-system".into(),
                "coredns-5d78c9869d-abcde".into(),
                UID.into()
            ))
        );
        assert_eq!(parse_log_dir("default_web"), None);
        assert_eq!(parse_log_dir(&format!("_web_{UID}")), None);
        let dir = std::env::temp_dir().join(format!("cwt-pods-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(format!("shop_checkout-7f9c_{UID}"))).unwrap();
        std::fs::create_dir_all(dir.join("not-a-pod")).unwrap();
        let mut names = PodNames::new(&dir);
        let pod = names.pod(UID);
        assert_eq!(pod.name.as_deref(), Some("checkout-7f9c"));
        assert_eq!(pod.namespace.as_deref(), Some("shop"));
        let other = "11111111-2222-3333-4444-555555555555";
        assert_eq!(names.pod(other).name, None, "unknown: uid only");
        assert_eq!(names.pod(other).uid, other);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
