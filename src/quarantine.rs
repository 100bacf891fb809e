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
    /// No longer given: an invalid UID that is present is remapped. Kept so
    /// that reasons recorded by earlier versions still read.
    InvalidUid,
    /// A study's SEG has a segment whose code matches no label plane of the model.
    SegCodesUnmatched,
    /// A synthetic series failed its fidelity check (`[synth.qc] on_fail = "quarantine"`).
    SynthesisQcFailed,
    /// A required UID other than the study's (SOP Instance, Series) is missing.
    MissingUid,
    /// The instance belongs to no study (no Study Instance UID), e.g. a Color Palette.
    NoStudy,
}

impl ReasonCode {
    /// Every code (metrics report each from zero, so the first quarantine
    /// of a kind shows as an increase). Add a new variant here too.
    pub const ALL: [ReasonCode; 14] = [
        ReasonCode::NotDicom,
        ReasonCode::ZeroBytes,
        ReasonCode::Truncated,
        ReasonCode::NoFileMeta,
        ReasonCode::UnsupportedTransferSyntax,
        ReasonCode::ConflictingDuplicate,
        ReasonCode::ResidualPhi,
        ReasonCode::BurnedInAnnotation,
        ReasonCode::BurnedInAnnotationUnknown,
        ReasonCode::NoMatchingPipeline,
        ReasonCode::NotARegularFile,
        ReasonCode::ModelFailure,
        ReasonCode::InvalidPixelData,
        ReasonCode::InvalidUid,
    ];

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
            ReasonCode::SegCodesUnmatched => "seg-codes-unmatched",
            ReasonCode::SynthesisQcFailed => "synthesis-qc-failed",
            ReasonCode::MissingUid => "missing-uid",
            ReasonCode::NoStudy => "no-study",
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
    /// Which input it was, so an admin can find it among those dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputRecord>,
}

/// The quarantined input as it was found: its path relative to the input
/// root (or the inbox), size and SHA-256. Only in `reason.json`, beside the
/// original itself, which already holds every identifier the name might
/// carry; logs name the input by the keyed folder only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRecord {
    pub path: String,
    /// Bytes; absent for an input that is not a regular file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl InputRecord {
    /// `relative` named, with the size and digest of `bytes` when the input
    /// was read.
    pub fn new(relative: &Path, bytes: Option<&[u8]>) -> InputRecord {
        InputRecord {
            path: relative.to_string_lossy().into_owned(),
            size: bytes.map(|b| b.len() as u64),
            sha256: bytes.map(sha256_hex),
        }
    }

    /// `path` relative to the first of `roots` it lies under (a root that
    /// is the file itself gives its file name), else `path` as given.
    pub fn relative_to(path: &Path, roots: &[PathBuf]) -> PathBuf {
        for root in roots {
            if path == root {
                return path.file_name().map_or_else(|| path.to_path_buf(), PathBuf::from);
            }
            if let Ok(relative) = path.strip_prefix(root) {
                return relative.to_path_buf();
            }
        }
        path.to_path_buf()
    }
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes `dir/reason.json` durably (temp file, fsync, rename, fsync dir).
pub fn write_reason(
    dir: &Path,
    rejection: &Rejection,
    stage: Stage,
    file: Option<&str>,
    input: Option<InputRecord>,
) -> std::io::Result<PathBuf> {
    fsutil::create_private_dir(dir)?;
    let path = dir.join("reason.json");
    fsutil::write_atomic(&path, &reason_json(rejection, stage, file, input)?, 0o640)?;
    Ok(path)
}

fn reason_json(
    rejection: &Rejection,
    stage: Stage,
    file: Option<&str>,
    input: Option<InputRecord>,
) -> std::io::Result<Vec<u8>> {
    let reason = Reason {
        code: rejection.code,
        message: rejection.message.clone(),
        stage,
        time: now_rfc3339(),
        file: file.map(str::to_string),
        input,
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
/// `dir/q-<keyed hash of its path>/input.dcm` beside `reason.json`, which
/// records `relative` (the input's path under its input root), size and
/// SHA-256. The input's own name may carry PHI, so it names no folder.
pub fn quarantine_copy(
    key: &crate::keyfile::SiteKey,
    path: &Path,
    relative: &Path,
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
    let is_file = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_file())
        .unwrap_or(false);
    let bytes = if is_file { Some(std::fs::read(path)?) } else { None };
    if let Some(bytes) = &bytes {
        write(&dir.join("input.dcm"), bytes, 0o640)?;
    }
    let input = InputRecord::new(relative, bytes.as_deref());
    write(
        &dir.join("reason.json"),
        &reason_json(rejection, stage, bytes.is_some().then_some("input.dcm"), Some(input))?,
        0o640,
    )?;
    Ok(dir)
}

/// The default quarantine of a batch command: `OUTPUT-quarantine` beside
/// `OUTPUT`, never inside it (the output folder is what gets shared, and a
/// quarantined original keeps every identifier).
pub fn beside(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
    output.with_file_name(format!("{name}-quarantine"))
}

/// Moves the quarantine entries (`q-*` folders with a `reason.json`) that an
/// earlier synthd left in `OUTPUT/quarantine/` into `quarantine_dir`, and
/// removes that folder once empty: they hold originals with identifiers,
/// which must not stay in a folder that gets shared. Returns how many moved.
pub fn move_out_of_output(output: &Path, quarantine_dir: &Path) -> std::io::Result<usize> {
    let legacy = output.join("quarantine");
    let Ok(entries) = std::fs::read_dir(&legacy) else {
        return Ok(0);
    };
    let mut moved = 0;
    for entry in entries {
        let entry = entry?;
        let is_entry =
            entry.file_name().to_string_lossy().starts_with("q-") && entry.path().join("reason.json").is_file();
        if !is_entry {
            continue;
        }
        fsutil::create_private_dir(quarantine_dir)?;
        let target = quarantine_dir.join(entry.file_name());
        if target.exists() {
            std::fs::remove_dir_all(entry.path())?; // the same input, quarantined again since
        } else {
            std::fs::rename(entry.path(), &target)?;
        }
        moved += 1;
    }
    if moved > 0 {
        fsutil::fsync_dir(quarantine_dir)?;
        let _ = std::fs::remove_dir(&legacy); // only when empty
        fsutil::fsync_dir(output)?;
    }
    Ok(moved)
}

/// Whether `inner` is `outer` or lies under it, through symlinks: each is
/// resolved as far as it exists, the rest taken as written.
pub fn is_within(inner: &Path, outer: &Path) -> bool {
    resolved(inner).starts_with(resolved(outer))
}

fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |acc: PathBuf, part| acc.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
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
        let path = write_reason(&dir.path().join("job"), &rejection, Stage::Ingest, Some("a.dcm"), None).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"code\": \"conflicting-duplicate\""), "{text}");
        assert!(text.contains("\"stage\": \"ingest\""), "{text}");
        let reason = read_reason(&dir.path().join("job")).unwrap();
        assert_eq!(reason.code, ReasonCode::ConflictingDuplicate);
    }

    #[test]
    fn a_quarantine_copy_names_its_input_by_relative_path_size_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        crate::keyfile::generate(&dir.path().join("k")).unwrap();
        let key = crate::keyfile::SiteKey::read(&dir.path().join("k")).unwrap();
        let input = dir.path().join("in").join("sub");
        std::fs::create_dir_all(&input).unwrap();
        std::fs::write(input.join("x.dcm"), b"abc").unwrap();
        let relative = InputRecord::relative_to(&input.join("x.dcm"), &[dir.path().join("in")]);
        assert_eq!(relative, Path::new("sub/x.dcm"));
        let rejection = Rejection::new(ReasonCode::NotDicom, "no preamble");
        let copy = quarantine_copy(
            &key,
            &input.join("x.dcm"),
            &relative,
            &dir.path().join("q"),
            &rejection,
            Stage::Deid,
            Durability::AtEndOfRun,
        )
        .unwrap();
        let reason = read_reason(&copy).unwrap();
        let recorded = reason.input.unwrap();
        assert_eq!(recorded.path, "sub/x.dcm");
        assert_eq!(recorded.size, Some(3));
        // SHA-256 of "abc" (FIPS 180-2, appendix B.1).
        assert_eq!(
            recorded.sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(reason.file.as_deref(), Some("input.dcm"));
        assert_eq!(std::fs::read(copy.join("input.dcm")).unwrap(), b"abc");
    }

    #[test]
    fn within_follows_what_exists_and_takes_the_rest_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::os::unix::fs::symlink(&out, dir.path().join("link")).unwrap();
        assert!(is_within(&dir.path().join("link/quarantine"), &out));
        assert!(is_within(&out.join("a/b"), &out));
        assert!(!is_within(&beside(&out), &out));
        assert_eq!(beside(&out), dir.path().join("out-quarantine"));
    }
}
