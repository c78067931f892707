//! Host-side helpers that the agent, the benchmark, the kernel tests and
//! xtask all need, written once: the monotonic clock, duration parsing,
//! network namespaces, tracefs, privilege checks, and running other
//! programs. Std and libc only, so
//! xtask can use it before the BPF toolchain is installed.

pub mod clock;
pub mod command;
pub mod duration;
pub mod netns;
pub mod privileges;
pub mod tracefs;
