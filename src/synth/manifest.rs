//! The model manifest: the sidecar `<stem>.toml` next to an ONNX denoiser (or
//! the same document as JSON in the ONNX metadata key `synthd.manifest`).
//! docs/model-contract.md is the reference for model authors; this file is
//! its parser. Unknown keys are errors so that a typo never silently falls
//! back to a default.

use super::error::SynthError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The ONNX metadata_props key that may carry the manifest as JSON.
pub const METADATA_KEY: &str = "synthd.manifest";

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub model: ModelInfo,
    pub scheduler: SchedulerConfig,
    pub inputs: Inputs,
    pub output: OutputSpec,
    pub geometry: Geometry,
    pub intensity: Intensity,
    pub sequences: Sequences,
    pub recommended: Recommended,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    /// The ONNX file name, relative to the manifest.
    pub file: String,
    /// Lower-case hex SHA-256 of the ONNX file.
    pub sha256: String,
    pub licence: String,
    pub training_data: String,
}

/// diffusers scheduler config keys (the subset synthd reads).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    #[serde(default = "default_train_timesteps")]
    pub num_train_timesteps: u32,
    #[serde(default = "default_beta_schedule")]
    pub beta_schedule: BetaSchedule,
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    /// Overrides `beta_schedule` when present (diffusers' `trained_betas`).
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default = "default_prediction")]
    pub prediction_type: PredictionType,
    #[serde(default = "default_variance")]
    pub variance_type: VarianceType,
    #[serde(default = "default_true")]
    pub clip_sample: bool,
    #[serde(default = "default_clip_range")]
    pub clip_sample_range: f64,
}

fn default_train_timesteps() -> u32 {
    1000
}
fn default_beta_schedule() -> BetaSchedule {
    BetaSchedule::Linear
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_prediction() -> PredictionType {
    PredictionType::Epsilon
}
fn default_variance() -> VarianceType {
    VarianceType::FixedSmall
}
fn default_true() -> bool {
    true
}
fn default_clip_range() -> f64 {
    1.0
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            num_train_timesteps: default_train_timesteps(),
            beta_schedule: default_beta_schedule(),
            beta_start: default_beta_start(),
            beta_end: default_beta_end(),
            trained_betas: None,
            prediction_type: default_prediction(),
            variance_type: default_variance(),
            clip_sample: true,
            clip_sample_range: 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The model predicts the added noise ε.
    Epsilon,
    /// The model predicts x₀.
    Sample,
    /// The model predicts v = √ᾱ ε − √(1−ᾱ) x₀ (Salimans & Ho 2022).
    VPrediction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    FixedSmall,
    FixedLarge,
    Learned,
    LearnedRange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestepDtype {
    Float32,
    Int64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    pub sample_channels: u32,
    pub timestep_dtype: TimestepDtype,
    /// Meaning of each `cond` channel in order; empty = no `cond` input.
    #[serde(default)]
    pub cond: Vec<CondChannel>,
    /// Meaning of each `class_labels` slot; empty = no `class_labels` input.
    #[serde(default)]
    pub class_labels: Vec<String>,
    /// The label vector used for conditional passes; absent = all ones for a
    /// single slot, else the first slot set (a one-hot of slot 0).
    #[serde(default)]
    pub class_label_default: Option<Vec<f32>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CondChannel {
    /// The known image in model intensity units, zero inside the mask.
    MaskedImage,
    /// 1 where the model must inpaint, 0 where the image is known.
    Mask,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// The output has 2C channels: the prediction, then the variance channel(s).
    #[serde(default)]
    pub learned_variance: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Geometry {
    pub height: u32,
    pub width: u32,
    pub pixel_spacing_mm: [f64; 2],
    pub orientation: String,
    #[serde(default)]
    pub skull_stripped: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IntensityMethod {
    /// Clip to the [lower, upper] percentiles, then map linearly to `range`.
    Percentile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IntensityScope {
    /// Statistics over the non-zero voxels of the whole series.
    Volume,
    /// Statistics over the non-zero pixels of each slice.
    Slice,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Intensity {
    pub method: IntensityMethod,
    pub scope: IntensityScope,
    pub lower_percentile: f64,
    pub upper_percentile: f64,
    pub range: [f32; 2],
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Sequences {
    pub supported: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recommended {
    pub sampler: crate::config::pipeline::SamplerKind,
    pub steps: u32,
    pub guidance: f32,
    pub batch: u32,
    /// DDIM η; absent = 0 (deterministic DDIM).
    #[serde(default)]
    pub eta: Option<f32>,
}

/// The sidecar manifest path of a model: `<dir>/<stem>.toml`.
pub fn sidecar_path(model: &Path) -> PathBuf {
    model.with_extension("toml")
}

impl Manifest {
    /// Parses a TOML manifest and checks the values serde cannot.
    pub fn from_toml(path: &Path, text: &str) -> Result<Manifest, SynthError> {
        let manifest: Manifest = toml::from_str(text).map_err(|error| SynthError::Manifest {
            path: path.to_path_buf(),
            reason: format!(
                "{}; see docs/model-contract.md for the layout",
                error.to_string().trim()
            ),
        })?;
        manifest.check(path)?;
        Ok(manifest)
    }

    /// Parses the JSON form carried in the ONNX metadata key `synthd.manifest`.
    pub fn from_json(path: &Path, text: &str) -> Result<Manifest, SynthError> {
        let manifest: Manifest = serde_json::from_str(text).map_err(|error| SynthError::Manifest {
            path: path.to_path_buf(),
            reason: format!("metadata key {METADATA_KEY}: {error}; see docs/model-contract.md"),
        })?;
        manifest.check(path)?;
        Ok(manifest)
    }

    /// Reads the sidecar `<stem>.toml` of `model`.
    pub fn load_sidecar(model: &Path) -> Result<Option<Manifest>, SynthError> {
        let path = sidecar_path(model);
        match std::fs::read_to_string(&path) {
            Ok(text) => Manifest::from_toml(&path, &text).map(Some),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(SynthError::Manifest {
                path,
                reason: format!("cannot read: {error}"),
            }),
        }
    }

    fn check(&self, path: &Path) -> Result<(), SynthError> {
        let bad = |reason: String| SynthError::Manifest {
            path: path.to_path_buf(),
            reason,
        };
        let s = &self.scheduler;
        if s.num_train_timesteps < 2 {
            return Err(bad("scheduler.num_train_timesteps must be at least 2".into()));
        }
        if let Some(betas) = &s.trained_betas {
            if betas.len() != s.num_train_timesteps as usize || betas.iter().any(|b| !(*b > 0.0 && *b < 1.0)) {
                return Err(bad(format!(
                    "scheduler.trained_betas must hold num_train_timesteps ({}) values in (0, 1)",
                    s.num_train_timesteps
                )));
            }
        } else if !(s.beta_start > 0.0 && s.beta_start < s.beta_end && s.beta_end < 1.0) {
            return Err(bad("scheduler: expected 0 < beta_start < beta_end < 1".into()));
        }
        if s.clip_sample_range <= 0.0 {
            return Err(bad("scheduler.clip_sample_range must be positive".into()));
        }
        if self.model.sha256.len() != 64 || !self.model.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(
                "model.sha256 must be 64 hex digits (sha256sum of the ONNX file)".into()
            ));
        }
        let learned = matches!(s.variance_type, VarianceType::Learned | VarianceType::LearnedRange);
        if learned != self.output.learned_variance {
            return Err(bad(format!(
                "scheduler.variance_type = {:?} but output.learned_variance = {}; a learned variance needs a 2C-channel output",
                s.variance_type, self.output.learned_variance
            )));
        }
        if self.inputs.sample_channels == 0 || self.geometry.height == 0 || self.geometry.width == 0 {
            return Err(bad(
                "inputs.sample_channels and geometry.height/width must be positive".into()
            ));
        }
        let i = &self.intensity;
        if !(0.0 <= i.lower_percentile && i.lower_percentile < i.upper_percentile && i.upper_percentile <= 100.0) {
            return Err(bad(
                "intensity: expected 0 <= lower_percentile < upper_percentile <= 100".into(),
            ));
        }
        if i.range[0] >= i.range[1] {
            return Err(bad("intensity.range must be [low, high] with low < high".into()));
        }
        if let Some(default) = &self.inputs.class_label_default {
            if default.len() != self.inputs.class_labels.len() {
                return Err(bad(
                    "inputs.class_label_default must have one value per class_labels slot".into(),
                ));
            }
        }
        Ok(())
    }

    /// The conditional label vector for classifier-free guidance's conditional pass.
    pub fn conditional_labels(&self) -> Vec<f32> {
        if let Some(default) = &self.inputs.class_label_default {
            return default.clone();
        }
        let mut labels = vec![0.0; self.inputs.class_labels.len()];
        if let Some(first) = labels.first_mut() {
            *first = 1.0;
        }
        labels
    }

    /// Output channels the graph must produce.
    pub fn output_channels(&self) -> u32 {
        self.inputs.sample_channels * if self.output.learned_variance { 2 } else { 1 }
    }
}

/// Lower-case hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, SynthError> {
    let read_error = |error: std::io::Error| SynthError::ModelRead {
        path: path.to_path_buf(),
        reason: error.to_string(),
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).map_err(read_error)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>())
}
