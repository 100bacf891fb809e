//! The daemon's engine: one `Deidentifier` per pipeline. A pipeline's
//! `[synth]` table is not run here yet; the synth stage slots in between
//! `deidentify` and `encode` (see ARCHITECTURE.md).

use super::engine::Engine;
use crate::config::Config;
use crate::deid::{Deidentified, Deidentifier};
use crate::keyfile::SiteKey;
use crate::quarantine::{ReasonCode, Rejection};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct DeidEngine {
    by_pipeline: HashMap<String, Deidentifier>,
}

impl DeidEngine {
    pub fn build(config: &Config, key: &SiteKey) -> Result<DeidEngine, String> {
        let mut by_pipeline = HashMap::new();
        for pipeline in &config.pipelines {
            let deidentifier = Deidentifier::new(key.clone(), &pipeline.pipeline.deid)
                .map_err(|error| format!("pipeline {}: {error}", pipeline.file.display()))?;
            if pipeline.pipeline.synth.is_some() {
                tracing::warn!(target: "daemon", pipeline = pipeline.name(), "the daemon does not run [synth] yet; this pipeline's series are de-identified and forwarded");
            }
            by_pipeline.insert(pipeline.name().to_string(), deidentifier);
        }
        Ok(DeidEngine { by_pipeline })
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
        Ok((item.relative_path(), bytes))
    }
}
