//! Intake: which inbox files are ready to take, what study each belongs to,
//! and which pipeline takes its series. Reads headers only (stops before
//! Pixel Data); de-identification is the deid stage's business.

pub mod header;
pub mod references;
pub mod scan;
pub mod select;
pub mod settle;

pub use header::{read_header, read_header_from, Header};
pub use scan::{classify, scan_inbox, Candidate, Entry};
pub use settle::Settler;
