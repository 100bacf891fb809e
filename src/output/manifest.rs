//! `outbox/<study>/manifest.jsonl`: one line per written instance, for data
//! scientists; only de-identified UIDs and numbers, never a patient value.
//! `manifest.csv` is the same table for spreadsheet users.

use serde::{Deserialize, Serialize};
use std::io;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceKind {
    /// The de-identified source instance.
    #[default]
    Source,
    Synthetic,
    Seg,
}

impl InstanceKind {
    /// The readable prefix of this kind's series folders, so that a person
    /// browsing the outbox tells the synthetic series from the de-identified
    /// one without opening files.
    pub fn folder_prefix(self) -> &'static str {
        match self {
            InstanceKind::Source => "deid",
            InstanceKind::Synthetic => "synthetic",
            InstanceKind::Seg => "seg",
        }
    }

    /// `<prefix>-<Series Instance UID>`: the series folder inside the study
    /// folder. The UID keeps folders unique; the prefix says what is inside.
    pub fn series_folder(self, series_instance_uid: &str) -> String {
        format!("{}-{series_instance_uid}", self.folder_prefix())
    }
}

/// One line of manifest.jsonl.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Path relative to the study folder.
    pub path: String,
    pub kind: InstanceKind,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    /// The de-identified source instance (for synthetic ones) or series (for a SEG).
    pub source_uid: String,
    pub pipeline: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Pixels inside the inpainting mask of this instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_voxels: Option<u64>,
    /// Seconds inside ONNX Runtime and in total for the series this instance belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ort_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_seconds: Option<f64>,
    /// The series' MR sequence as the pipeline's `[sequences]` decided it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<String>,
    /// Synthetic instances: the fidelity check's numbers (output/qc.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qc: Option<super::qc::Qc>,
    /// Synthetic instances: whether `qc` is within the pipeline's `[synth.qc]` limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qc_pass: Option<bool>,
    /// Source instances of a series the pipeline did not synthesize: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_synthesized: Option<String>,
}

/// Timings stay the last two columns (readers drop them to compare runs).
pub const CSV_HEADER: &str = "path,kind,sop_instance_uid,series_instance_uid,source_uid,pipeline,model_sha256,variant,seed,mask_voxels,sequence,qc_pass,fill_mean,fill_bias,not_synthesized,ort_seconds,total_seconds";

impl ManifestEntry {
    pub fn csv_row(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_default();
        let kind = match self.kind {
            InstanceKind::Source => "source",
            InstanceKind::Synthetic => "synthetic",
            InstanceKind::Seg => "seg",
        };
        [
            csv_field(&self.path),
            kind.to_string(),
            self.sop_instance_uid.clone(),
            self.series_instance_uid.clone(),
            self.source_uid.clone(),
            csv_field(&self.pipeline),
            opt(self.model_sha256.clone()),
            opt(self.variant.map(|v| v.to_string())),
            opt(self.seed.map(|v| v.to_string())),
            opt(self.mask_voxels.map(|v| v.to_string())),
            opt(self.sequence.clone()),
            opt(self.qc_pass.map(|v| v.to_string())),
            opt(self.qc.as_ref().map(|q| format!("{:.3}", q.fill_mean))),
            opt(self.qc.as_ref().and_then(|q| q.fill_bias).map(|v| format!("{v:.4}"))),
            csv_field(self.not_synthesized.as_deref().unwrap_or_default()),
            opt(self.ort_seconds.map(|v| format!("{v:.4}"))),
            opt(self.total_seconds.map(|v| format!("{v:.4}"))),
        ]
        .join(",")
    }
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// Rewrites `manifest.jsonl` (and `manifest.csv` when asked) for a study
/// folder from all its entries, durably. Entries are sorted by path so that
/// the file does not depend on processing order; a replay rewrites it whole
/// instead of appending, so it never holds duplicates.
pub fn write_manifest(study_dir: &Path, entries: &[ManifestEntry], csv: bool) -> io::Result<()> {
    let mut sorted: Vec<&ManifestEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    sorted.dedup_by(|a, b| a.path == b.path);
    let mut jsonl = Vec::new();
    for entry in &sorted {
        serde_json::to_writer(&mut jsonl, entry).map_err(io::Error::other)?;
        jsonl.push(b'\n');
    }
    crate::fsutil::write_atomic(&study_dir.join("manifest.jsonl"), &jsonl, 0o640)?;
    if csv {
        let mut text = String::from(CSV_HEADER);
        text.push('\n');
        for entry in &sorted {
            text.push_str(&entry.csv_row());
            text.push('\n');
        }
        crate::fsutil::write_atomic(&study_dir.join("manifest.csv"), text.as_bytes(), 0o640)?;
    }
    Ok(())
}

/// Reads the entries of an existing manifest (for merging follow-up jobs).
pub fn read_manifest(study_dir: &Path) -> io::Result<Vec<ManifestEntry>> {
    let path = study_dir.join("manifest.jsonl");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).map_err(io::Error::other))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> ManifestEntry {
        ManifestEntry {
            path: path.to_string(),
            kind: InstanceKind::Synthetic,
            sop_instance_uid: "2.25.1".into(),
            series_instance_uid: "2.25.2".into(),
            source_uid: "2.25.3".into(),
            pipeline: "p".into(),
            model_sha256: Some("ab".into()),
            variant: Some(0),
            seed: Some(42),
            mask_voxels: Some(10),
            ort_seconds: Some(0.5),
            total_seconds: Some(0.6),
            ..ManifestEntry::default()
        }
    }

    #[test]
    fn manifest_is_sorted_deduplicated_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        write_manifest(dir.path(), &[entry("b.dcm"), entry("a.dcm"), entry("b.dcm")], true).unwrap();
        let read = read_manifest(dir.path()).unwrap();
        assert_eq!(
            read.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            ["a.dcm", "b.dcm"]
        );
        let csv = std::fs::read_to_string(dir.path().join("manifest.csv")).unwrap();
        assert_eq!(csv.lines().count(), 3);
        assert!(csv.lines().nth(1).unwrap().starts_with("a.dcm,synthetic,2.25.1,"));
    }
}
