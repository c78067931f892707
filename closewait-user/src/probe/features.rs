//! What the running kernel offers, found by probing (program types, map
//! types, helpers, attach points), never by comparing version numbers:
//! distributions backport features, and configs turn them off. Each missing
//! piece is said in one line, with what the tool does instead.

use std::path::Path;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported, BpfHelper},
};

use super::VMLINUX_BTF;

/// A kernel feature the agent uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Feature {
    /// Kernel BTF (/sys/kernel/btf/vmlinux), which BTF tracepoints need.
    Btf,
    /// BTF tracepoints (`tp_btf`: tracing programs on a raw tracepoint).
    TpBtf,
    /// `bpf_get_socket_cookie` in tracing programs.
    SocketCookie,
    /// The BPF ring buffer (Linux 5.8+).
    Ringbuf,
    /// Stack trace maps and `bpf_get_stackid`: creation stacks.
    Stacks,
    /// Syscall tracepoints (`syscalls/sys_exit_accept4`): stacks of accept().
    SyscallTracepoints,
    /// `bpf_task_pt_regs` (Linux 5.15+): the user stack pointer at the
    /// syscall, to find the caller a frame-pointer walk skips.
    TaskRegs,
    /// Copies of the top of the user stack (with `bpf_task_pt_regs`) for
    /// the agent's unwinder: full stacks of code without frame pointers.
    StackCopy,
    /// The `sock:sock_recv_length` tracepoint (Linux 6.2+): the stack of the
    /// read that returned EOF on a socket in CLOSE_WAIT (`last_read`).
    RecvTracepoint,
}

impl Feature {
    /// The one line said when it is missing: what is missing, what happens
    /// instead.
    pub fn missing_line(self) -> &'static str {
        match self {
            Feature::Btf => "no kernel BTF (/sys/kernel/btf/vmlinux): using the classic tracepoint, which gives no socket cookies and no network namespace (sockets are keyed by address and port)",
            Feature::TpBtf => "no BTF tracepoints (tp_btf) on this kernel: using the classic tracepoint, which gives no socket cookies and no network namespace (sockets are keyed by address and port)",
            Feature::SocketCookie => "this kernel does not offer bpf_get_socket_cookie to tracing programs: using the classic tracepoint (sockets are keyed by address and port)",
            Feature::Ringbuf => "this kernel has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF, Linux 5.8+), which closewait-trace needs",
            Feature::Stacks => "no BPF stack trace maps on this kernel: creation stacks are off",
            Feature::SyscallTracepoints => "no syscall tracepoints (syscalls/sys_exit_accept4): accepted sockets get no creation stack",
            Feature::TaskRegs => "no bpf_task_pt_regs (Linux 5.15+): creation stacks miss the function that called connect() or accept() when the C library's wrapper sets up no frame",
            Feature::StackCopy => "no copies of the user stack: code built without frame pointers gets a creation stack cut short",
            Feature::RecvTracepoint => "no sock:sock_recv_length tracepoint (Linux 6.2+): sockets whose application read EOF get no last_read stack",
        }
    }
}

/// The outcome of the probes.
#[derive(Clone, Debug, Default)]
pub struct Features {
    missing: Vec<Feature>,
    /// Pretended missing (`--without`, for tests): never probed.
    pretend: Vec<Feature>,
}

impl Features {
    /// Probe the running kernel. `pretend` features count as missing
    /// whatever the kernel says (tests force each fallback with it).
    pub fn detect(pretend: &[Feature]) -> Features {
        let mut f = Features {
            missing: Vec::new(),
            pretend: pretend.to_vec(),
        };
        let btf = Path::new(VMLINUX_BTF).exists();
        f.check(Feature::Btf, || btf);
        // BTF tracepoints and the socket cookie in them are not probed here
        // but found by loading the program itself (Probe::load): aya's probe
        // for tracing programs tries an fentry attach, which kernels refuse
        // where tp_btf works (lockdown).
        f.check(Feature::Ringbuf, || {
            is_map_supported(MapType::RingBuf).unwrap_or(false)
        });
        f.check(Feature::Stacks, || {
            is_map_supported(MapType::StackTrace).unwrap_or(false)
                && is_helper_supported(ProgramType::TracePoint, BpfHelper::BPF_FUNC_get_stackid)
                    .unwrap_or(false)
        });
        f.check(Feature::TaskRegs, || {
            is_helper_supported(ProgramType::TracePoint, BpfHelper::BPF_FUNC_task_pt_regs)
                .unwrap_or(false)
        });
        f
    }

    fn check(&mut self, feature: Feature, probe: impl FnOnce() -> bool) {
        if self.pretend.contains(&feature) || !probe() {
            self.missing.push(feature);
        }
    }

    pub fn has(&self, feature: Feature) -> bool {
        !self.missing.contains(&feature) && !self.pretend.contains(&feature)
    }

    /// Whether `feature` is pretended missing (it is then not tried).
    pub fn pretends(&self, feature: Feature) -> bool {
        self.pretend.contains(&feature)
    }

    #[cfg(test)]
    pub fn missing(&self) -> &[Feature] {
        &self.missing
    }

    /// Whether a failed load of the BTF tracepoint program says the kernel
    /// refused `bpf_get_socket_cookie` there.
    pub fn is_cookie_refusal(message: &str) -> bool {
        message.contains("bpf_get_socket_cookie")
            && ["unknown func", "invalid func", "cannot use helper"]
                .iter()
                .any(|m| message.contains(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretended_features_are_missing_without_a_probe() {
        let mut f = Features {
            pretend: vec![Feature::Stacks],
            ..Features::default()
        };
        f.check(Feature::Stacks, || panic!("not probed"));
        assert!(!f.has(Feature::Stacks));
        assert_eq!(f.missing(), [Feature::Stacks]);
        f.check(Feature::Ringbuf, || true);
        assert!(f.has(Feature::Ringbuf));
        assert_eq!(f.missing(), [Feature::Stacks]);
    }

    #[test]
    fn recognizes_a_cookie_refusal() {
        assert!(Features::is_cookie_refusal(
            "the kernel refused the BTF tracepoint program (Invalid argument); verifier: program of this type cannot use helper bpf_get_socket_cookie#46"
        ));
        assert!(Features::is_cookie_refusal(
            "unknown func bpf_get_socket_cookie#46"
        ));
        assert!(!Features::is_cookie_refusal("invalid mem access 'scalar'"));
    }

    #[test]
    fn every_missing_line_is_one_line() {
        for f in [
            Feature::Btf,
            Feature::TpBtf,
            Feature::SocketCookie,
            Feature::Ringbuf,
            Feature::Stacks,
            Feature::SyscallTracepoints,
        ] {
            assert!(!f.missing_line().contains('\n'));
        }
    }

    #[test]
    fn probes_the_running_kernel_without_failing() {
        // Whatever this kernel has, probing answers; it never panics.
        let f = Features::detect(&[]);
        assert!(f.missing().len() <= 6);
    }
}
