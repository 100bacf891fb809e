//! The daemon's engine: one `Deidentifier` per pipeline, and for a pipeline
//! with `[synth]` its diffusion engine, run once a job's instances are all
//! written (`synthesize`, on the synth stage thread).

use super::engine::{Engine, SynthesisReport};
use crate::config::{Config, LoadedPipeline};
use crate::deid::{Deidentified, Deidentifier};
use crate::keyfile::SiteKey;
use crate::output::study::{write_study, SourceWrites, StudyContext};
use crate::quarantine::{ReasonCode, Rejection};
use crate::synth::{Engine as SynthEngine, EngineOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct DeidEngine {
    by_pipeline: HashMap<String, Deidentifier>,
    synthesis: HashMap<String, Synthesis>,
    key: SiteKey,
    /// `paths.state`, where QC flags are recorded for `synthd status`.
    state_dir: PathBuf,
}

/// A synthesizing pipeline: its definition and its loaded model.
struct Synthesis {
    pipeline: LoadedPipeline,
    pipeline_sha256: String,
    engine: SynthEngine,
}

impl DeidEngine {
    pub fn build(config: &Config, key: &SiteKey) -> Result<DeidEngine, String> {
        let mut by_pipeline = HashMap::new();
        let mut synthesis = HashMap::new();
        for pipeline in &config.pipelines {
            let deidentifier = Deidentifier::new(key.clone(), &pipeline.pipeline.deid)
                .map_err(|error| format!("pipeline {}: {error}", pipeline.file.display()))?;
            if let (Some(synth), Some(model)) = (&pipeline.pipeline.synth, pipeline.model_path()) {
                let runtime = crate::runtime::init(config.onnxruntime_library.as_deref())
                    .map_err(|error| format!("pipeline {}: {error}", pipeline.file.display()))?;
                let options = EngineOptions {
                    intra_op_threads: config.raw.runtime.intra_op_threads,
                    cache_dir: config.paths.state.join("provider-cache"),
                    lanes: config.raw.runtime.inference_lanes,
                };
                let engine = SynthEngine::new(runtime, &model, synth, options)
                    .map_err(|error| format!("pipeline {}: {error}", pipeline.file.display()))?;
                let problems = crate::output::series::check_pipeline(&pipeline.pipeline, engine.manifest());
                if !problems.is_empty() {
                    return Err(format!(
                        "pipeline {} and model {} disagree: {}",
                        pipeline.file.display(),
                        model.display(),
                        problems.join("; ")
                    ));
                }
                let bytes = std::fs::read(&pipeline.file)
                    .map_err(|error| format!("pipeline {}: {error}", pipeline.file.display()))?;
                let pipeline_sha256 = {
                    use sha2::Digest;
                    sha2::Sha256::digest(&bytes)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect()
                };
                synthesis.insert(
                    pipeline.name().to_string(),
                    Synthesis {
                        pipeline: pipeline.clone(),
                        pipeline_sha256,
                        engine,
                    },
                );
            }
            by_pipeline.insert(pipeline.name().to_string(), deidentifier);
        }
        Ok(DeidEngine {
            by_pipeline,
            synthesis,
            key: key.clone(),
            state_dir: config.paths.state.clone(),
        })
    }
}

/// The deid step for one claimed instance.
pub fn process_instance(deidentifier: &Deidentifier, path: &Path) -> Result<Deidentified, Rejection> {
    deidentifier.deidentify_file(path)
}

impl Engine for DeidEngine {
    type Item = Deidentified;

    fn deidentify(&self, pipeline: &str, path: &Path) -> Result<Deidentified, Rejection> {
        let deidentifier = self.by_pipeline.get(pipeline).ok_or_else(|| {
            Rejection::new(
                ReasonCode::NoMatchingPipeline,
                format!("pipeline {pipeline:?} is no longer configured (removed by a reload); requeue the input"),
            )
        })?;
        process_instance(deidentifier, path)
    }

    fn encode(&self, item: &Deidentified) -> Result<(PathBuf, Vec<u8>), Rejection> {
        let bytes = item
            .to_bytes()
            .map_err(|error| Rejection::new(ReasonCode::UnsupportedTransferSyntax, error.to_string()))?;
        Ok((crate::output::study::source_path(item), bytes))
    }
    fn provider(&self, pipeline: &str) -> Option<String> {
        let synthesis = self.synthesis.get(pipeline)?;
        Some(synthesis.engine.provider().name().to_string())
    }

    fn synthesizes(&self, pipeline: &str) -> bool {
        self.synthesis.contains_key(pipeline)
    }

    fn synthesize(&self, pipeline: &str, outbox: &Path, written: &[PathBuf]) -> Result<SynthesisReport, Rejection> {
        let Some(synthesis) = self.synthesis.get(pipeline) else {
            return Ok(SynthesisReport::default());
        };
        let mut instances = Vec::with_capacity(written.len());
        for relative in written {
            let object = dicom_object::open_file(outbox.join(relative)).map_err(|error| {
                Rejection::new(
                    ReasonCode::ModelFailure,
                    format!("cannot read a written de-identified instance back: {error}"),
                )
            })?;
            instances.push(Deidentified::from_written(object)?);
        }
        let context = StudyContext {
            key: &self.key,
            pipeline: &synthesis.pipeline,
            pipeline_sha256: synthesis.pipeline_sha256.clone(),
            engine: Some(&synthesis.engine),
        };
        let report = write_study(&context, &instances, outbox, SourceWrites::AlreadyWritten)
            .map_err(|error| Rejection::new(ReasonCode::ModelFailure, error.to_string()))?;
        for (n, (series, message)) in report.qc_flagged.iter().enumerate() {
            tracing::warn!(target: "daemon", pipeline, "series {series} flagged by QC: {message}");
            // `synthd status` counts these; a replay rewrites the same file.
            if let Err(error) = crate::output::qc::record_flag(&self.state_dir, pipeline, series, n, message) {
                tracing::warn!(target: "daemon", %error, "cannot record a QC flag for `synthd status`");
            }
        }
        // A quarantined series (SEG codes that match no plane, a failed
        // fidelity check) is recorded as the job's synthesis failure, with
        // its reason code; the other series stand.
        let quarantined: Vec<String> = report
            .quarantined_series
            .iter()
            .map(|(series, r)| format!("series {series}: {}", r.message))
            .collect();
        if let Some((_, first)) = report.quarantined_series.first() {
            return Err(Rejection::new(first.code, quarantined.join("; ")));
        }
        // The coordinator logs it, named by study and job.
        Ok(SynthesisReport {
            synthetic_series: report.synthetic_series,
            synthetic_instances: report.synthetic_instances,
            seg_instances: report.seg_instances,
            ort_seconds: report.ort_seconds,
            provider: synthesis.engine.provider().name(),
            skipped_series: report
                .skipped_series
                .iter()
                .map(|(series, reason)| format!("series {series}: {reason}"))
                .collect(),
        })
    }
}
