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
    #[error("cannot condition the model on this series: {0}")]
    Conditioning(String),
    #[error("the request is empty: give at least one slice")]
    EmptyRequest,
    #[error("pipeline setting {key}: {reason}")]
    Setting { key: &'static str, reason: String },
    #[error("engine thread failed: {0}")]
    Thread(String),
}

impl SynthError {
    /// The quarantine reason the daemon records for this failure: pixel data
    /// the engine cannot use is the input's fault, everything else the model's.
    pub fn reason_code(&self) -> crate::quarantine::ReasonCode {
        use crate::quarantine::ReasonCode;
        match self {
            SynthError::BadSlice { .. } | SynthError::EmptyRequest => ReasonCode::InvalidPixelData,
            _ => ReasonCode::ModelFailure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quarantine::ReasonCode;

    #[test]
    fn bad_pixels_and_model_faults_map_to_their_quarantine_reasons() {
        let bad = SynthError::BadSlice {
            index: 0,
            reason: "x".into(),
        };
        assert_eq!(bad.reason_code(), ReasonCode::InvalidPixelData);
        let run = SynthError::ModelRun {
            step: 1,
            timestep: 900,
            reason: "x".into(),
        };
        assert_eq!(run.reason_code(), ReasonCode::ModelFailure);
        assert!(run.to_string().contains("synthd validate"));
    }
}
