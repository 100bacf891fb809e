//! Quarantine: where inputs go that synthd cannot process, each with a
//! `reason.json` (machine-readable code, a message without PHI, the stage,
//! the time).

use crate::fsutil;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// Why an input was quarantined or refused. The kebab-case names are the
/// stable, machine-readable codes admins filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReasonCode {
    NotDicom,
    ZeroBytes,
    Truncated,
    NoFileMeta,
    UnsupportedTransferSyntax,
    ConflictingDuplicate,
    ResidualPhi,
    BurnedInAnnotation,
    BurnedInAnnotationUnknown,
    NoMatchingPipeline,
    NotARegularFile,
    ModelFailure,
    InvalidPixelData,
    InvalidUid,
}

impl ReasonCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::NotDicom => "not-dicom",
            ReasonCode::ZeroBytes => "zero-bytes",
            ReasonCode::Truncated => "truncated",
            ReasonCode::NoFileMeta => "no-file-meta",
            ReasonCode::UnsupportedTransferSyntax => "unsupported-transfer-syntax",
            ReasonCode::ConflictingDuplicate => "conflicting-duplicate",
            ReasonCode::ResidualPhi => "residual-phi",
            ReasonCode::BurnedInAnnotation => "burned-in-annotation",
            ReasonCode::BurnedInAnnotationUnknown => "burned-in-annotation-unknown",
            ReasonCode::NoMatchingPipeline => "no-matching-pipeline",
            ReasonCode::NotARegularFile => "not-a-regular-file",
            ReasonCode::ModelFailure => "model-failure",
            ReasonCode::InvalidPixelData => "invalid-pixel-data",
            ReasonCode::InvalidUid => "invalid-uid",
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pipeline stage that made the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Ingest,
    Deid,
    Synth,
    Output,
}

/// A decision not to process an input: a code and a message that must never
/// contain a patient value (say which attribute, never its value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    pub code: ReasonCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ReasonCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

/// The content of `reason.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub code: ReasonCode,
    pub message: String,
    pub stage: Stage,
    /// UTC, RFC 3339.
    pub time: String,
    /// The input's file name inside the quarantine folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// Writes `dir/reason.json` durably (temp file, fsync, rename, fsync dir).
pub fn write_reason(dir: &Path, rejection: &Rejection, stage: Stage, file: Option<&str>) -> std::io::Result<PathBuf> {
    fsutil::create_private_dir(dir)?;
    let path = dir.join("reason.json");
    fsutil::write_atomic(&path, &reason_json(rejection, stage, file)?, 0o640)?;
    Ok(path)
}

fn reason_json(rejection: &Rejection, stage: Stage, file: Option<&str>) -> std::io::Result<Vec<u8>> {
    let reason = Reason {
        code: rejection.code,
        message: rejection.message.clone(),
        stage,
        time: now_rfc3339(),
        file: file.map(str::to_string),
    };
    let mut json = serde_json::to_vec_pretty(&reason).map_err(std::io::Error::other)?;
    json.push(b'\n');
    Ok(json)
}

/// Whether a quarantine copy is fsynced on its own, or joins a batch run's
/// one [`fsutil::sync_filesystem`] at the end (four fsyncs per refused file
/// dominated runs over many small, often refused, files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Immediate,
    AtEndOfRun,
}

/// Quarantines a file a batch command could not handle: a copy as
/// `dir/q-<keyed hash of its path>/input.dcm` beside `reason.json`. The
/// input's own name may carry PHI, so it is not used.
pub fn quarantine_copy(
    key: &crate::keyfile::SiteKey,
    path: &Path,
    quarantine_dir: &Path,
    rejection: &Rejection,
    stage: Stage,
    durability: Durability,
) -> std::io::Result<PathBuf> {
    let digest = crate::phi::keyed_digest(key, "synthd/quarantine", &[path.as_os_str().as_encoded_bytes()]);
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let dir = quarantine_dir.join(format!("q-{name}"));
    fsutil::create_private_dir(&dir)?;
    let write = if durability == Durability::Immediate {
        fsutil::write_atomic
    } else {
        fsutil::write_replace
    };
    if std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_file())
        .unwrap_or(false)
    {
        write(&dir.join("input.dcm"), &std::fs::read(path)?, 0o640)?;
    }
    write(
        &dir.join("reason.json"),
        &reason_json(rejection, stage, Some("input.dcm"))?,
        0o640,
    )?;
    Ok(dir)
}

pub fn read_reason(dir: &Path) -> std::io::Result<Reason> {
    let bytes = std::fs::read(dir.join("reason.json"))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_json_round_trips_with_kebab_codes() {
        let dir = tempfile::tempdir().unwrap();
        let rejection = Rejection::new(ReasonCode::ConflictingDuplicate, "second copy differs");
        let path = write_reason(&dir.path().join("job"), &rejection, Stage::Ingest, Some("a.dcm")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"code\": \"conflicting-duplicate\""), "{text}");
        assert!(text.contains("\"stage\": \"ingest\""), "{text}");
        let reason = read_reason(&dir.path().join("job")).unwrap();
        assert_eq!(reason.code, ReasonCode::ConflictingDuplicate);
    }
}
