//! Discovery: the network namespaces on the host and the sockets already in
//! CLOSE_WAIT in them (sock_diag), for the start-up scan, reconciliation and
//! owner lookups of sockets that had no file yet.

pub mod netns;
pub mod sock_diag;

pub use netns::{list_netns, NetNs};
pub use sock_diag::{scan_all, scan_close_wait, Listener, ScanError, ScanResult, ScannedSocket};
