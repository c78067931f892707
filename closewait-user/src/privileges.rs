//! Up-front privilege checks, so the user gets one clear line instead of an
//! EPERM from deep inside the loader.

use anyhow::{bail, Context as _};
use closewait_host::privileges::{effective_caps, has, CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN};

/// Fail unless the process may load and attach tracing programs.
pub fn check() -> anyhow::Result<()> {
    let caps = effective_caps().context("no CapEff in /proc/self/status")?;
    if !can_trace(caps) {
        bail!("closewait-trace needs root (or CAP_BPF and CAP_PERFMON, plus CAP_SYS_ADMIN to scan other network namespaces): run it with sudo");
    }
    if !has(caps, CAP_SYS_ADMIN) {
        eprintln!("closewait-trace: warning: without CAP_SYS_ADMIN only this network namespace is scanned for sockets already in CLOSE_WAIT");
    }
    Ok(())
}

fn can_trace(caps: u64) -> bool {
    has(caps, CAP_SYS_ADMIN) || (has(caps, CAP_BPF) && has(caps, CAP_PERFMON))
}

/// Lift the soft RLIMIT_NOFILE to the hard one: the maps, programs and
/// the namespace scan take descriptors, and services start with a soft
/// limit of 1024 (or less) under a much higher hard one.
pub fn raise_nofile() {
    if let Some(mut r) = nofile_limit().filter(|r| r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        // SAFETY: plain syscall with a valid struct; failure leaves the limit.
        let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    }
}

/// RLIMIT_NOFILE now (soft and hard).
pub fn nofile_limit() -> Option<libc::rlimit> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a valid struct.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0).then_some(r)
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it. Harmless
/// (and unneeded) on newer kernels.
pub fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct. Failure is not fatal: 5.11+
    // charges BPF memory to the cgroup instead, and on older kernels map
    // creation fails later with a clear error.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_or_bpf_plus_perfmon_can_trace() {
        assert!(can_trace(0x1ff_ffff_ffff));
        assert!(can_trace(1 << CAP_SYS_ADMIN));
        assert!(can_trace((1 << CAP_BPF) | (1 << CAP_PERFMON)));
        assert!(!can_trace(1 << CAP_BPF));
        assert!(!can_trace(0));
    }
}
