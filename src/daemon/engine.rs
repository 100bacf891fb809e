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

    /// The execution provider serving the named pipeline's model, if it has one.
    fn provider(&self, _pipeline: &str) -> Option<String> {
        None
    }

    /// Whether the named pipeline has study-level work after its instances
    /// are written (synthesis).
    fn synthesizes(&self, _pipeline: &str) -> bool {
        false
    }

    /// The study-level work: reads the written de-identified instances
    /// (paths relative to the outbox) and writes what the pipeline derives
    /// from them. Deterministic, so a replay after a crash rewrites the
    /// same files.
    fn synthesize(&self, _pipeline: &str, _outbox: &Path, _written: &[PathBuf]) -> Result<SynthesisReport, Rejection> {
        Ok(SynthesisReport::default())
    }
}

/// What a study's synthesis wrote, for the coordinator's log line (which
/// names the study and job the engine does not know).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SynthesisReport {
    pub synthetic_series: usize,
    pub synthetic_instances: usize,
    pub seg_instances: usize,
    pub ort_seconds: f64,
    /// The execution provider that ran the model.
    pub provider: &'static str,
    /// Series not synthesized, with the reason (e.g. colour images).
    pub skipped_series: Vec<String>,
}
