// Empty on purpose: the agent has a build-dependency on this crate so that
// cargo rebuilds the agent (and re-embeds the kernel object) when it changes.
#![no_std]
