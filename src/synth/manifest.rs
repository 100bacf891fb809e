//! The model manifest: the sidecar `<stem>.toml` next to an ONNX denoiser (or
//! the same document as JSON in the ONNX metadata key `synthd.manifest`).
//! docs/model-contract.md is the reference for model authors; this file is
//! its parser. Unknown keys are errors so that a typo never silently falls
//! back to a default.

pub use super::condition::CondChannel;
use super::condition::{self, ClassSlot, Sequence, Task};
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
    /// The coded concept of each `label:<name>` plane (`[[labels]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<LabelConcept>,
}

/// What a `label:<name>` plane means, as the codes a DICOM SEG gives a
/// segment (Segmented Property Category / Type Code Sequence), so a study's
/// SEG maps onto planes by code, never by segment number or label text.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LabelConcept {
    pub plane: CondChannel,
    pub category: Code,
    #[serde(rename = "type")]
    pub property_type: Code,
}

/// A coded concept (PS3.3 Code Sequence Macro): scheme designator, code value, meaning.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Code {
    /// Coding Scheme Designator, e.g. "SCT".
    pub scheme: String,
    /// Code Value, e.g. "79654002".
    pub value: String,
    /// Code Meaning, e.g. "Edema".
    pub meaning: String,
}

impl Code {
    /// Same concept: scheme and value agree (the meaning is free text).
    pub fn same_concept(&self, scheme: &str, value: &str) -> bool {
        self.scheme.trim().eq_ignore_ascii_case(scheme.trim()) && self.value.trim() == value.trim()
    }
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
    /// Meaning of each `class_labels` slot (`task:…`, `seq:…`); empty = no
    /// `class_labels` input.
    #[serde(default)]
    pub class_labels: Vec<ClassSlot>,
    /// Overrides the vector synthd builds from the slot names (task and the
    /// series' sequence) for the conditional pass.
    #[serde(default)]
    pub class_label_default: Option<Vec<f32>>,
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
    pub supported: Vec<Sequence>,
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
        self.check_names().map_err(bad)
    }

    /// Planes, slots and `[[labels]]` agree: no name twice, one concept per
    /// label plane, every sequence slot among `sequences.supported`.
    fn check_names(&self) -> Result<(), String> {
        let cond = &self.inputs.cond;
        if let Some(twice) = cond.iter().enumerate().find(|(i, c)| cond[..*i].contains(c)) {
            return Err(format!("inputs.cond names `{}` twice", twice.1.name()));
        }
        let slots = &self.inputs.class_labels;
        if let Some(twice) = slots.iter().enumerate().find(|(i, s)| slots[..*i].contains(s)) {
            return Err(format!("inputs.class_labels names `{}` twice", twice.1.name()));
        }
        for plane in cond.iter().filter(|c| matches!(c, CondChannel::Label(_))) {
            match self.labels.iter().filter(|l| &l.plane == plane).count() {
                1 => {}
                0 => {
                    return Err(format!(
                        "inputs.cond has `{}` but no [[labels]] entry gives its codes (plane, category, type)",
                        plane.name()
                    ))
                }
                _ => return Err(format!("[[labels]] describes `{}` more than once", plane.name())),
            }
        }
        for (i, label) in self.labels.iter().enumerate() {
            let code = &label.property_type;
            if let Some(twin) = self.labels[..i]
                .iter()
                .find(|l| l.property_type.same_concept(&code.scheme, &code.value))
            {
                return Err(format!(
                    "[[labels]] `{}` and `{}` share the type code {} {}; a SEG segment must map onto one plane",
                    twin.plane.name(),
                    label.plane.name(),
                    code.scheme,
                    code.value
                ));
            }
            if !matches!(label.plane, CondChannel::Label(_)) || !cond.contains(&label.plane) {
                return Err(format!(
                    "[[labels]] plane `{}` is not a label:<name> plane of inputs.cond",
                    label.plane.name()
                ));
            }
        }
        for slot in slots {
            if let ClassSlot::Sequence(sequence) = slot {
                if !self.sequences.supported.contains(sequence) {
                    return Err(format!(
                        "inputs.class_labels has `{}` but sequences.supported does not list {sequence}",
                        slot.name()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The class-label vector of the conditional pass for `task` on a series
    /// of `sequence` (`class_label_default` when the manifest gives one).
    pub fn class_vector(&self, task: Task, sequence: Option<Sequence>) -> Result<Vec<f32>, String> {
        if let Some(default) = &self.inputs.class_label_default {
            return Ok(default.clone());
        }
        condition::class_vector(&self.inputs.class_labels, task, sequence)
    }

    /// The `label:<name>` planes of `cond`, in order, with their codes.
    pub fn label_planes(&self) -> Vec<&LabelConcept> {
        self.inputs
            .cond
            .iter()
            .filter_map(|c| self.labels.iter().find(|l| &l.plane == c))
            .collect()
    }

    /// Whether the model can be asked for `task`: a lesion needs label
    /// planes, and a model with task slots needs that task's slot.
    pub fn supports_task(&self, task: Task) -> Result<(), String> {
        let slots = &self.inputs.class_labels;
        let has_task_slots = slots.iter().any(|s| matches!(s, ClassSlot::Task(_)));
        if has_task_slots && !slots.contains(&ClassSlot::Task(task)) {
            return Err(format!(
                "the model has task slots but no `task:{}` in inputs.class_labels",
                task.name()
            ));
        }
        if task == Task::Lesion && self.label_planes().is_empty() {
            return Err("task = \"lesion\" needs a model with label:<name> cond planes; this one has none".into());
        }
        Ok(())
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
