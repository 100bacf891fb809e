//! The seam between the daemon and the stages it wires together. The daemon
//! moves files and records states; what happens to an instance's bytes is
//! the engine's business (de-identification now, synthesis slotting in
//! between `deidentify` and `encode` later).

use crate::quarantine::Rejection;
use std::path::{Path, PathBuf};

pub trait Engine: Send + Sync + 'static {
    /// One de-identified instance, in memory, on its way to the writer.
    type Item: Send + 'static;

    /// De-identifies the claimed file at `path` for the named pipeline.
    fn deidentify(&self, pipeline: &str, path: &Path) -> Result<Self::Item, Rejection>;

    /// The output's path relative to the outbox and its encoded bytes.
    /// Deterministic: the same item always gives the same path and bytes.
    fn encode(&self, item: &Self::Item) -> Result<(PathBuf, Vec<u8>), Rejection>;
}
