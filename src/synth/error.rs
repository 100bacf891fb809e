//! Engine failures. Each message names the file or stage and says what to do
//! next; none carries a patient value (the engine never sees one).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("model manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error(
        "model {model} disagrees with its manifest {manifest}: {differences}; re-export the model or fix the manifest"
    )]
    ContractMismatch {
        model: PathBuf,
        manifest: PathBuf,
        differences: String,
    },
    #[error("cannot read model {path}: {reason}")]
    ModelRead { path: PathBuf, reason: String },
    #[error("no execution provider could serve {model}: {reasons}")]
    NoProvider { model: PathBuf, reasons: String },
    #[error("require_gpu = true but {model} is served by the CPU: {reasons}; fix the GPU setup above or set require_gpu = false")]
    GpuRequired { model: PathBuf, reasons: String },
    #[error("model run failed at step {step} (timestep {timestep}): {reason}; check the model with `synthd validate`")]
    ModelRun { step: usize, timestep: i64, reason: String },
    #[error("model output has {actual} values where {expected} were expected; the graph's output shape disagrees with the manifest")]
    OutputShape { expected: usize, actual: usize },
    #[error("model produced non-finite values at step {step}; the model or its intensity normalisation is broken")]
    NonFinite { step: usize },
    #[error("slice {index} of the request: {reason}")]
    BadSlice { index: usize, reason: String },
    #[error("the request is empty: give at least one slice")]
    EmptyRequest,
    #[error("pipeline setting {key}: {reason}")]
    Setting { key: &'static str, reason: String },
    #[error("engine thread failed: {0}")]
    Thread(String),
}

impl SynthError {
    /// The quarantine reason the daemon records for this failure.
    pub fn reason_code(&self) -> crate::quarantine::ReasonCode {
        crate::quarantine::ReasonCode::ModelFailure
    }
}
