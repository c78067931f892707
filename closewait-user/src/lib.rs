//! closewait-trace's agent as a library: the binary (`main.rs`) parses the
//! command line and calls [`agent::run`]. Modules by pipeline stage:
//!
//! - [`probe`]: load the kernel program, attach, ring buffer, drop counters.
//! - [`discovery`]: network namespaces and sock_diag scans.
//! - [`tracking`]: decode records, the one filter, the pure dwell tracker.
//! - [`enrich`]: owners via /proc, creation stacks, on their own thread.
//! - [`model`]: the read model of what is live now.
//! - [`output`]: text and JSON, which read the reports and the model.
//! - [`agent`]: the event loop that wires them together.

pub mod agent;
pub mod cli;
pub mod discovery;
pub mod enrich;
pub mod model;
pub mod output;
pub mod privileges;
pub mod probe;
pub mod tracking;
