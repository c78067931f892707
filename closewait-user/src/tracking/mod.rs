//! Tracking: from decoded kernel records and scans to reports. Pure: no I/O,
//! every method takes the current time, so tests drive it.

pub mod events;
pub mod filter;
pub mod tracker;

pub use events::{Family, Observed, Socket, Transition};
pub use filter::{Filter, OwnerFilter};
pub use tracker::{
    Bound, Counts, DwellBuckets, Found, Percentiles, Report, Totals, Tracker, DWELL_BUCKETS_S,
};
