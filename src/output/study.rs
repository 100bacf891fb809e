//! Writing one de-identified study into the outbox: the de-identified source
//! series, and for a pipeline with `[synth]`, every variant of every selected
//! series as a synthetic series, its mask as a SEG, a preview, and the
//! study's manifest. Used alike by `synthd process` and the daemon.

use super::manifest::{self, InstanceKind, ManifestEntry};
use super::{encode, OutputError};
use crate::config::pipeline::LoadedPipeline;
use crate::deid::Deidentified;
use crate::fsutil;
use crate::keyfile::SiteKey;
use crate::synth::Engine;
use dicom_object::DefaultDicomObject;
use std::path::{Path, PathBuf};

/// What a study produced, for logs and summaries (counts only, no PHI).
#[derive(Debug, Default, Clone)]
pub struct StudyReport {
    pub study_dir: PathBuf,
    pub source_instances: usize,
    pub synthetic_series: usize,
    pub synthetic_instances: usize,
    pub seg_instances: usize,
    pub previews: usize,
    /// Series not synthesized: (de-identified Series Instance UID, reason), e.g.
    /// colour images, or a sequence no `[sequences]` rule matches.
    pub skipped_series: Vec<(String, String)>,
    /// Series quarantined with a reason code (SEG codes that match no
    /// plane, a failed fidelity check under `on_fail = "quarantine"`).
    pub quarantined_series: Vec<(String, crate::quarantine::Rejection)>,
    /// Series written although their fidelity check failed (`on_fail = "flag"`), with the numbers.
    pub qc_flagged: Vec<(String, String)>,
    pub ort_seconds: f64,
    pub synth_seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("the model failed: {0}")]
    Model(String),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Whether `write_study` writes the de-identified sources, or they are
/// already in the outbox (the daemon writes each as soon as it is ready).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceWrites {
    Write,
    AlreadyWritten,
}

/// How a study's outputs are made.
pub struct StudyContext<'a> {
    pub key: &'a SiteKey,
    pub pipeline: &'a LoadedPipeline,
    /// sha256 of the pipeline file, recorded in provenance.
    pub pipeline_sha256: String,
    pub engine: Option<&'a Engine>,
}

/// Where a de-identified source instance goes, relative to the outbox:
/// `<study>/deid-<series>/<sop>.dcm`, named only by new UIDs.
pub fn source_path(instance: &Deidentified) -> PathBuf {
    Path::new(&instance.study_uid)
        .join(InstanceKind::Source.series_folder(&instance.series_uid))
        .join(format!("{}.dcm", instance.sop_instance_uid))
}

/// Writes everything for one study (all instances share a de-identified
/// Study Instance UID). Files are written durably; the manifest is rewritten
/// whole, merged with what a previous job of the same study wrote.
pub fn write_study(
    context: &StudyContext<'_>,
    instances: &[Deidentified],
    outbox: &Path,
    sources: SourceWrites,
) -> Result<StudyReport, StudyError> {
    let Some(first) = instances.first() else {
        return Ok(StudyReport::default());
    };
    let study_dir = outbox.join(&first.study_uid);
    let mut report = StudyReport {
        study_dir: study_dir.clone(),
        ..StudyReport::default()
    };
    let pipeline = &context.pipeline.pipeline;
    let pipeline_name = context.pipeline.name().to_string();
    let mut entries = manifest::read_manifest(&study_dir).map_err(|source| StudyError::Write {
        path: study_dir.join("manifest.jsonl"),
        source,
    })?;

    let synthesize = pipeline.synth.is_some() && context.engine.is_some();
    if pipeline.output.deidentified_source || !synthesize {
        for instance in instances {
            let relative = Path::new(&InstanceKind::Source.series_folder(&instance.series_uid))
                .join(format!("{}.dcm", instance.sop_instance_uid));
            if sources == SourceWrites::Write {
                write_object(&study_dir.join(&relative), instance.object())?;
            }
            report.source_instances += 1;
            entries.push(ManifestEntry {
                path: relative.display().to_string(),
                kind: InstanceKind::Source,
                sop_instance_uid: instance.sop_instance_uid.clone(),
                series_instance_uid: instance.series_uid.clone(),
                source_uid: instance.sop_instance_uid.clone(),
                pipeline: pipeline_name.clone(),
                model_sha256: None,
                variant: None,
                seed: None,
                ..ManifestEntry::default()
            });
        }
    }

    if let (Some(synth), Some(engine)) = (&pipeline.synth, context.engine) {
        super::series::synthesize_study(context, engine, synth, instances, &study_dir, &mut entries, &mut report);
        // The reason a series was not synthesized goes on its source rows.
        let reasons = report
            .skipped_series
            .iter()
            .map(|(uid, reason)| (uid, reason.clone()))
            .chain(report.quarantined_series.iter().map(|(uid, r)| (uid, r.to_string())));
        for (uid, reason) in reasons {
            for entry in entries
                .iter_mut()
                .filter(|e| e.kind == InstanceKind::Source && &e.series_instance_uid == uid)
            {
                entry.not_synthesized = Some(reason.clone());
            }
        }
    }
    manifest::write_manifest(&study_dir, &entries, pipeline.output.csv).map_err(|source| StudyError::Write {
        path: study_dir.join("manifest.jsonl"),
        source,
    })?;
    Ok(report)
}

pub(super) fn write_object(path: &Path, object: &DefaultDicomObject) -> Result<(), StudyError> {
    let bytes = encode(object)?;
    if let Some(parent) = path.parent() {
        fsutil::create_private_dir(parent).map_err(|source| StudyError::Write {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    fsutil::write_atomic(path, &bytes, 0o640)
        .map(drop)
        .map_err(|source| StudyError::Write {
            path: path.to_path_buf(),
            source,
        })
}
