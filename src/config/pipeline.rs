//! Pipeline files (`pipelines/NAME.toml`): which series to take, how to
//! de-identify them, optionally what to synthesize, and what to write.
//!
//! A pipeline without `[synth]` is a de-identify-and-forward route.

use super::diagnostic::{Diagnostic, Diagnostics};
use super::ranges;
use crate::deid::DeidOption;
use crate::synth::condition::{CondChannel, Sequence, Task};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Lower-case letters, digits and dashes; names the route in logs and provenance.
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: String,
    #[serde(rename = "match", default)]
    pub selection: Selection,
    #[serde(default)]
    pub deid: DeidProfile,
    pub synth: Option<Synth>,
    /// How each series' MR sequence is decided from its own attributes.
    #[serde(default)]
    pub sequences: Option<SequenceRules>,
    #[serde(default)]
    pub output: Output,
}

/// `[sequences.<T1|T1c|T2|FLAIR>]`: how a series' sequence is decided from
/// its own (de-identified) attributes. Rules are tried in the order they
/// appear in the file; the first whose every given criterion holds wins. A
/// series no rule matches is not synthesized, with its reason: never guessed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceRules {
    #[serde(rename = "T1", default)]
    pub t1: Option<Spanned<SequenceRule>>,
    #[serde(rename = "T1c", default)]
    pub t1c: Option<Spanned<SequenceRule>>,
    #[serde(rename = "T2", default)]
    pub t2: Option<Spanned<SequenceRule>>,
    #[serde(rename = "FLAIR", default)]
    pub flair: Option<Spanned<SequenceRule>>,
}

impl SequenceRules {
    /// The rules in the order the file lists them.
    pub fn in_order(&self) -> Vec<(Sequence, &SequenceRule)> {
        let mut rules: Vec<(usize, Sequence, &SequenceRule)> = [
            (Sequence::T1, &self.t1),
            (Sequence::T1c, &self.t1c),
            (Sequence::T2, &self.t2),
            (Sequence::FLAIR, &self.flair),
        ]
        .into_iter()
        .filter_map(|(sequence, rule)| rule.as_ref().map(|r| (r.span().start, sequence, r.get_ref())))
        .collect();
        rules.sort_by_key(|(start, _, _)| *start);
        rules.into_iter().map(|(_, sequence, rule)| (sequence, rule)).collect()
    }
}

/// One sequence's criteria; each given one must hold (empty = not checked).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceRule {
    /// Case-insensitive globs on Series Description (0008,103E).
    #[serde(default)]
    pub series_description: Vec<String>,
    /// Scanning Sequence (0018,0020) codes (SE, IR, GR, EP, RM); any of them present.
    #[serde(default)]
    pub scanning_sequence: Vec<String>,
    /// Case-insensitive globs on Sequence Name (0018,0024).
    #[serde(default)]
    pub sequence_name: Vec<String>,
    /// true: Contrast/Bolus Agent (0018,0010) present and not empty; false: absent or empty.
    #[serde(default)]
    pub contrast: Option<bool>,
}

impl SequenceRule {
    pub fn is_empty(&self) -> bool {
        self.series_description.is_empty()
            && self.scanning_sequence.is_empty()
            && self.sequence_name.is_empty()
            && self.contrast.is_none()
    }
}

/// Which series a pipeline takes. Read from the original header, before
/// de-identification removes what selection needs (Series Description).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// Modality codes such as "MR"; empty = any.
    #[serde(default)]
    pub modality: Vec<String>,
    /// SOP Class UIDs; empty = any.
    #[serde(default)]
    pub sop_classes: Vec<String>,
    /// Case-insensitive glob patterns (`*`, `?`) on Series Description; empty = any.
    #[serde(default)]
    pub series_description: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeidProfile {
    /// Annex E options applied on top of the Basic Profile.
    #[serde(default)]
    pub options: Vec<DeidOption>,
    /// Prefix of the keyed PatientID / PatientName pseudonyms.
    #[serde(default = "default_pseudonym_prefix")]
    pub pseudonym_prefix: String,
    /// Inclusive range of the per-patient date shift, in days, for
    /// retain-longitudinal-modified-dates.
    #[serde(default = "default_date_shift_days")]
    pub date_shift_days: [i32; 2],
    /// Accept instances that declare Burned In Annotation = YES.
    #[serde(default)]
    pub accept_burned_in: bool,
    /// Accept instances of modalities that often carry burned-in text (US, SC,
    /// XC, ES, OT) when Burned In Annotation is absent.
    #[serde(default)]
    pub accept_burned_in_unknown: bool,
    /// A pixel signature file (`deid::signatures`) for the Clean Pixel Data
    /// Option: matching images are blanked there and declared clean. Relative
    /// to the pipeline file; resolved when the pipeline is loaded.
    #[serde(default)]
    pub clean_pixel_data: Option<PathBuf>,
    /// What to do with an image whose Burned In Annotation (0028,0301) is
    /// absent, by Modality (Secondary Capture SOP classes count as "SC";
    /// "default" for the rest), over [`BurnedInPolicy::default_for`].
    #[serde(default)]
    pub burned_in_unknown: std::collections::BTreeMap<String, BurnedInPolicy>,
}

/// The policy for an image that does not say whether it carries burned-in text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BurnedInPolicy {
    /// Take it as it is.
    Accept,
    /// Blank it by a matching pixel signature; quarantine it when none matches.
    Clean,
    /// Quarantine it.
    Quarantine,
}

impl BurnedInPolicy {
    /// Cross-sectional modalities accept; those that are often screens,
    /// photographs or scanned documents, and images that name no modality,
    /// need a signature.
    pub fn default_for(modality: &str) -> BurnedInPolicy {
        match modality {
            "" | "US" | "SC" | "OT" | "XC" | "ES" | "GM" | "SM" | "DOC" => BurnedInPolicy::Clean,
            _ => BurnedInPolicy::Accept,
        }
    }
}

impl DeidProfile {
    /// The policy for an image of `modality` without Burned In Annotation.
    pub fn burned_in_policy(&self, modality: &str) -> BurnedInPolicy {
        if self.accept_burned_in_unknown {
            return BurnedInPolicy::Accept;
        }
        self.burned_in_unknown
            .get(modality)
            .or_else(|| self.burned_in_unknown.get("default"))
            .copied()
            .unwrap_or_else(|| BurnedInPolicy::default_for(modality))
    }
}

impl Default for DeidProfile {
    fn default() -> Self {
        DeidProfile {
            options: Vec::new(),
            pseudonym_prefix: default_pseudonym_prefix(),
            date_shift_days: default_date_shift_days(),
            accept_burned_in: false,
            accept_burned_in_unknown: false,
            clean_pixel_data: None,
            burned_in_unknown: Default::default(),
        }
    }
}

fn default_pseudonym_prefix() -> String {
    "ANON".to_string()
}

fn default_date_shift_days() -> [i32; 2] {
    [-365, -1]
}

/// `[synth] anchor`: what sets a fill's in-mask mean brightness.
///
/// A sample's brightness is decided by its first, noisiest steps, where an
/// under-trained model is least sure; the model's first x̂₀ estimate (one
/// call at the first timestep, from pure noise) is its best guess of the
/// region given the known image (the mean of its posterior, as an x̂₀
/// trained on squared error is). `first-estimate` shifts each slice's
/// sample so that its in-mask mean equals that guess's: the sample keeps
/// its own structure and texture, its brightness stops depending on where
/// the trajectory drifted. It costs no extra model run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Anchor {
    /// The sample as the sampler ends it.
    #[default]
    None,
    FirstEstimate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SamplerKind {
    Ddpm,
    Ddim,
    #[serde(rename = "dpm-solver++")]
    DpmSolverPlusPlus,
}

impl SamplerKind {
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "ddpm",
            SamplerKind::Ddim => "ddim",
            SamplerKind::DpmSolverPlusPlus => "dpm-solver++",
        }
    }
}

impl SamplerKind {
    /// diffusers' default `timestep_spacing` for the scheduler this sampler
    /// reproduces, so that a pipeline without the key samples as before.
    pub fn default_spacing(self) -> TimestepSpacing {
        match self {
            SamplerKind::Ddpm | SamplerKind::Ddim => TimestepSpacing::Leading,
            SamplerKind::DpmSolverPlusPlus => TimestepSpacing::Linspace,
        }
    }
}

/// Which training timesteps a sampler visits, as diffusers'
/// `timestep_spacing` (Lin et al. 2024, "Common Diffusion Noise Schedules and
/// Sample Steps are Flawed", table 2). For T training steps and n sampler steps:
/// "linspace" rounds n evenly spaced points of [0, T−1] and so starts at
/// T−1; "leading" takes multiples of ⌊T/n⌋ from 0 (plus `steps_offset`), so
/// it never starts at T−1; "trailing" counts down from T−1 by T/n.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestepSpacing {
    Linspace,
    Leading,
    Trailing,
}

impl TimestepSpacing {
    pub fn name(self) -> &'static str {
        match self {
            TimestepSpacing::Linspace => "linspace",
            TimestepSpacing::Leading => "leading",
            TimestepSpacing::Trailing => "trailing",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Tensorrt,
    Cuda,
    Cpu,
}

impl ProviderKind {
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Tensorrt => "tensorrt",
            ProviderKind::Cuda => "cuda",
            ProviderKind::Cpu => "cpu",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Synth {
    /// The ONNX denoiser; its manifest is the sidecar `<stem>.toml`.
    pub model: Spanned<PathBuf>,
    /// What the model paints: healthy tissue (the default) or a lesion.
    #[serde(default)]
    pub task: Task,
    #[serde(default = "default_sampler")]
    pub sampler: SamplerKind,
    #[serde(default = "default_steps", deserialize_with = "ranges::u32_in::<1, 1000, _>")]
    pub steps: u32,
    /// diffusers' `timestep_spacing`; unset = that scheduler's diffusers
    /// default ("leading" for ddpm and ddim, "linspace" for dpm-solver++).
    #[serde(default)]
    pub timestep_spacing: Option<TimestepSpacing>,
    /// diffusers' `steps_offset`: added to every timestep under "leading"
    /// spacing (diffusers ignores it for the others, so it is refused there).
    #[serde(default, deserialize_with = "ranges::u32_in::<0, 999, _>")]
    pub steps_offset: u32,
    /// DDIM's eta: 0 = deterministic DDIM, 1 = DDPM-like.
    #[serde(default, deserialize_with = "ranges::unit_interval")]
    pub eta: f32,
    /// Classifier-free guidance weight; 1 = no guidance.
    #[serde(default = "default_guidance", deserialize_with = "ranges::guidance")]
    pub guidance: f32,
    #[serde(default = "default_one", deserialize_with = "ranges::u32_in::<1, 1000, _>")]
    pub variants: u32,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_batch", deserialize_with = "ranges::u32_in::<1, 256, _>")]
    pub batch: u32,
    /// Execution providers in order of preference.
    #[serde(default = "default_providers")]
    pub providers: Vec<ProviderKind>,
    #[serde(default)]
    pub require_gpu: bool,
    /// TensorRT half precision.
    #[serde(default)]
    pub fp16: bool,
    /// RePaint resampling for unconditional models.
    #[serde(default = "default_one", deserialize_with = "ranges::u32_in::<1, 100, _>")]
    pub jump_length: u32,
    #[serde(default = "default_one", deserialize_with = "ranges::u32_in::<1, 100, _>")]
    pub jump_n_sample: u32,
    /// Width in pixels of the blend at the mask edge; 0 = hard edge.
    #[serde(default, deserialize_with = "ranges::u32_in::<0, 64, _>")]
    pub feather_px: u32,
    /// Where each slice's fill takes its in-mask mean from (conditioned
    /// models): the sample itself, or the model's first estimate.
    #[serde(default)]
    pub anchor: Anchor,
    #[serde(default)]
    pub mask: MaskSpec,
    /// Generated lesions (task = "lesion", mask source "generated").
    #[serde(default)]
    pub lesion: Option<LesionSpec>,
    /// The fidelity check on every synthetic series.
    #[serde(default)]
    pub qc: QcSpec,
}

/// `[synth.lesion]`: generated multi-component lesions, defined in patient
/// space once per study and variant, drawn on every selected series.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LesionSpec {
    /// Lesions per study and variant.
    #[serde(default = "default_one", deserialize_with = "ranges::u32_in::<1, 8, _>")]
    pub count: u32,
    /// How far each boundary departs from a sphere, as a fraction of its radius (0 = spheres).
    #[serde(default = "default_irregularity", deserialize_with = "ranges::unit_interval")]
    pub irregularity: f32,
    /// Innermost first: the first component's `size_mm` is its diameter, each
    /// next one's the thickness of its shell around the ones inside.
    pub components: Vec<LesionComponent>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LesionComponent {
    /// The model's label plane for this component, e.g. "label:necrosis".
    pub plane: CondChannel,
    /// [low, high] millimetres, drawn per lesion.
    #[serde(deserialize_with = "ranges::diameter_mm")]
    pub size_mm: [f32; 2],
}

fn default_irregularity() -> f32 {
    0.25
}

/// `[synth.qc]`: limits of the fidelity check.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QcSpec {
    /// Largest accepted |fill mean − reference mean| / |reference mean|
    /// (reference: the original under a healthy-over-healthy fill, else the
    /// ring of surrounding tissue). Not applied to lesion fills.
    #[serde(default = "default_fill_bias", deserialize_with = "ranges::unit_interval")]
    pub max_fill_bias: f32,
    #[serde(default)]
    pub on_fail: QcAction,
}

impl Default for QcSpec {
    fn default() -> Self {
        QcSpec {
            max_fill_bias: default_fill_bias(),
            on_fail: QcAction::Flag,
        }
    }
}

fn default_fill_bias() -> f32 {
    0.05
}

/// What a series that fails the check becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QcAction {
    /// Written, marked `qc_pass = false` and counted.
    #[default]
    Flag,
    /// Not written to the outbox; quarantined with `synthesis-qc-failed`.
    Quarantine,
}

impl Synth {
    /// The timestep spacing in effect: the pipeline's, else the sampler's default.
    pub fn spacing(&self) -> TimestepSpacing {
        self.timestep_spacing.unwrap_or(self.sampler.default_spacing())
    }

    /// The sampler as provenance names it: "ddim", with the spacing added
    /// only when it is not the default, so default outputs are unchanged.
    pub fn sampler_label(&self) -> String {
        let spacing = self.spacing();
        match (spacing == self.sampler.default_spacing(), self.steps_offset) {
            (true, 0) => self.sampler.name().to_string(),
            (_, 0) => format!("{} ({} spacing)", self.sampler.name(), spacing.name()),
            (_, offset) => format!(
                "{} ({} spacing, steps_offset {offset})",
                self.sampler.name(),
                spacing.name()
            ),
        }
    }
}

fn default_sampler() -> SamplerKind {
    SamplerKind::Ddim
}
fn default_steps() -> u32 {
    25
}
fn default_guidance() -> f32 {
    1.0
}
fn default_one() -> u32 {
    1
}
fn default_batch() -> u32 {
    8
}
fn default_providers() -> Vec<ProviderKind> {
    vec![ProviderKind::Tensorrt, ProviderKind::Cuda, ProviderKind::Cpu]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskSource {
    /// Seeded ellipsoids placed inside the brain, in patient space.
    Generated,
    /// A segment of a DICOM SEG in the same study.
    Seg,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaskSpec {
    #[serde(default = "default_mask_source")]
    pub source: MaskSource,
    /// Number of generated ellipsoids per variant.
    #[serde(default = "default_one", deserialize_with = "ranges::u32_in::<1, 16, _>")]
    pub count: u32,
    /// Range of generated ellipsoid diameters, in millimetres.
    #[serde(default = "default_diameter_mm", deserialize_with = "ranges::diameter_mm")]
    pub diameter_mm: [f32; 2],
    /// For `source = "seg"`: the Segment Label to use; empty = the first segment.
    #[serde(default)]
    pub segment_label: String,
    /// For `source = "seg"` under the healthy task: grow the SEG's region by
    /// this many millimetres in each slice before painting, so the lesion's
    /// partial-volume edge just outside the segment is replaced too. 0..=10.
    #[serde(default, deserialize_with = "ranges::dilate_mm")]
    pub dilate_mm: f32,
}

impl Default for MaskSpec {
    fn default() -> Self {
        MaskSpec {
            source: default_mask_source(),
            count: 1,
            diameter_mm: default_diameter_mm(),
            segment_label: String::new(),
            dilate_mm: 0.0,
        }
    }
}

fn default_mask_source() -> MaskSource {
    MaskSource::Generated
}
fn default_diameter_mm() -> [f32; 2] {
    [8.0, 20.0]
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Write the de-identified source series beside the synthetic one.
    #[serde(default = "default_true")]
    pub deidentified_source: bool,
    /// Write the inpainting mask as a DICOM SEG referencing the synthetic series.
    #[serde(default = "default_true")]
    pub seg: bool,
    /// Write a PNG contact sheet per synthetic series.
    #[serde(default)]
    pub preview: bool,
    /// Also write `manifest.csv` beside `manifest.jsonl`.
    #[serde(default)]
    pub csv: bool,
    /// `[[destinations]]` of synthd.toml that receive every DICOM output
    /// (de-identified series, synthetic series, SEG) over C-STORE.
    #[serde(default)]
    pub destinations: Vec<Spanned<String>>,
}

impl Default for Output {
    fn default() -> Self {
        Output {
            deidentified_source: true,
            seg: true,
            preview: false,
            csv: false,
            destinations: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// A pipeline read from its file, with paths resolved against the file's folder.
#[derive(Debug, Clone)]
pub struct LoadedPipeline {
    pub file: PathBuf,
    pub source: String,
    pub pipeline: Pipeline,
}

impl LoadedPipeline {
    pub fn name(&self) -> &str {
        self.pipeline.name.get_ref()
    }

    /// The model path, resolved against the pipeline file's folder.
    pub fn model_path(&self) -> Option<PathBuf> {
        self.pipeline
            .synth
            .as_ref()
            .map(|synth| resolve(&self.file, synth.model.get_ref()))
    }

    /// Reads and checks a pipeline file. Every problem found is returned, each
    /// naming the file, line and key.
    pub fn load(file: &Path) -> Result<LoadedPipeline, Diagnostics> {
        let source = std::fs::read_to_string(file).map_err(|error| {
            Diagnostics(vec![Diagnostic::whole_file(
                file,
                format!("cannot read pipeline file: {error}"),
            )])
        })?;
        LoadedPipeline::parse(file, source)
    }

    pub fn parse(file: &Path, source: String) -> Result<LoadedPipeline, Diagnostics> {
        let mut pipeline: Pipeline =
            toml::from_str(&source).map_err(|error| Diagnostics(vec![Diagnostic::from_toml(file, &source, &error)]))?;
        if let Some(signatures) = &mut pipeline.deid.clean_pixel_data {
            *signatures = resolve(file, signatures);
        }
        let loaded = LoadedPipeline {
            file: file.to_path_buf(),
            source,
            pipeline,
        };
        let problems = loaded.check();
        if problems.is_empty() {
            Ok(loaded)
        } else {
            Err(problems)
        }
    }

    fn check(&self) -> Diagnostics {
        let mut problems = Diagnostics::default();
        let name = &self.pipeline.name;
        let valid_name = !name.get_ref().is_empty()
            && name
                .get_ref()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_name {
            problems.push(Diagnostic::at_span(
                &self.file,
                &self.source,
                name.span(),
                "expected a name of lower-case letters, digits and dashes, such as \"brain-mri-inpaint\"",
            ));
        }
        let [low, high] = self.pipeline.deid.date_shift_days;
        if low > high || low.abs() > 36_500 || high.abs() > 36_500 {
            problems.push(Diagnostic::whole_file(
                &self.file,
                format!(
                    "`deid.date_shift_days` = [{low}, {high}]: expected [low, high] with low <= high, within ±36500 days"
                ),
            ));
        }
        problems.extend(self.check_sequences());
        if let Some(signatures) = &self.pipeline.deid.clean_pixel_data {
            if let Err(errors) = crate::deid::signatures::SignatureSet::load(signatures) {
                problems.extend(errors);
            }
        }
        for modality in self.pipeline.deid.burned_in_unknown.keys() {
            let valid = modality == "default"
                || (!modality.is_empty() && modality.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()));
            if !valid {
                problems.push(Diagnostic::whole_file(
                    &self.file,
                    format!(
                        "`deid.burned_in_unknown.{modality}`: expected a Modality code such as US or SC, or default"
                    ),
                ));
            }
        }
        if let Some(synth) = &self.pipeline.synth {
            let model = resolve(&self.file, synth.model.get_ref());
            if !model.is_file() {
                problems.push(Diagnostic::at_span(
                    &self.file,
                    &self.source,
                    synth.model.span(),
                    format!(
                        "model file {} not found; expected a path to an ONNX model, relative to this pipeline file",
                        model.display()
                    ),
                ));
            }
            if synth.steps_offset != 0 && synth.spacing() != TimestepSpacing::Leading {
                problems.push(Diagnostic::whole_file(
                    &self.file,
                    format!(
                        "`synth.steps_offset` = {} applies only to timestep_spacing = \"leading\" (diffusers ignores it for \"{}\"): remove it or set timestep_spacing = \"leading\"",
                        synth.steps_offset,
                        synth.spacing().name()
                    ),
                ));
            }
            problems.extend(self.check_task(synth));
            if synth.providers.is_empty() {
                problems.push(Diagnostic::whole_file(
                    &self.file,
                    "`synth.providers` is empty: expected a list such as [\"tensorrt\", \"cuda\", \"cpu\"]",
                ));
            }
        }
        problems
    }
}

impl LoadedPipeline {
    /// The task's settings agree: a generated lesion needs `[synth.lesion]`
    /// with label:<name> components.
    fn check_task(&self, synth: &Synth) -> Diagnostics {
        let mut problems = Diagnostics::default();
        let whole = |message: String| Diagnostic::whole_file(&self.file, message);
        let generated_lesion = synth.task == Task::Lesion && synth.mask.source == MaskSource::Generated;
        if synth.mask.dilate_mm > 0.0 && (synth.mask.source != MaskSource::Seg || synth.task != Task::Healthy) {
            problems.push(whole(
                "`synth.mask.dilate_mm` grows a SEG's region for the healthy task only: set source = \"seg\" and \
                 task = \"healthy\", or remove it (generated masks and lesion components are drawn to size)"
                    .into(),
            ));
        }
        match &synth.lesion {
            None if generated_lesion => problems.push(whole(
                "`synth.task` = \"lesion\" with generated masks needs a [synth.lesion] table (components, sizes in mm)"
                    .into(),
            )),
            Some(lesion) if lesion.components.is_empty() => problems.push(whole(
                "`synth.lesion.components` is empty: list the components innermost first, e.g. \
                 { plane = \"label:necrosis\", size_mm = [4.0, 10.0] }"
                    .into(),
            )),
            Some(lesion) => {
                if let Some(c) = lesion
                    .components
                    .iter()
                    .find(|c| !matches!(c.plane, CondChannel::Label(_)))
                {
                    problems.push(whole(format!(
                        "`synth.lesion.components` plane `{}`: expected a label:<name> plane",
                        c.plane.name()
                    )));
                }
            }
            None => {}
        }
        problems
    }

    /// `[sequences]` rules name at least one criterion, and description or
    /// contrast criteria need the clean-descriptors option.
    fn check_sequences(&self) -> Diagnostics {
        let mut problems = Diagnostics::default();
        let whole = |message: String| Diagnostic::whole_file(&self.file, message);
        let Some(rules) = &self.pipeline.sequences else {
            return problems;
        };
        let cleaned = self.pipeline.deid.options.contains(&DeidOption::CleanDescriptors);
        for (sequence, rule) in rules.in_order() {
            if rule.is_empty() {
                problems.push(whole(format!(
                    "`sequences.{sequence}` has no criterion: give series_description, scanning_sequence, sequence_name or contrast"
                )));
            }
            if !cleaned && (!rule.series_description.is_empty() || rule.contrast.is_some()) {
                problems.push(whole(format!(
                    "`sequences.{sequence}` reads Series Description / Contrast/Bolus Agent, which de-identification removes \
                     unless [deid] options include \"clean-descriptors\"; add it or use scanning_sequence / sequence_name"
                )));
            }
        }
        problems
    }
}

/// Resolves `path` against the folder of `file` unless it is absolute.
pub fn resolve(file: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        file.parent().unwrap_or(Path::new(".")).join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LoadedPipeline, Diagnostics> {
        LoadedPipeline::parse(Path::new("p.toml"), text.to_string())
    }

    #[test]
    fn deid_only_pipeline_has_defaults() {
        let loaded = parse("name = \"route\"\n[deid]\noptions = [\"clean-descriptors\"]\n").unwrap();
        assert!(loaded.pipeline.synth.is_none());
        assert_eq!(loaded.pipeline.deid.options, vec![DeidOption::CleanDescriptors]);
        assert!(loaded.pipeline.output.deidentified_source);
    }

    #[test]
    fn unknown_option_is_rejected_with_its_line() {
        let error = parse("name = \"route\"\n[deid]\noptions = [\"keep-everything\"]\n").unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("p.toml:3:"), "{text}");
        assert!(text.contains("deid.options"), "{text}");
    }

    #[test]
    fn steps_out_of_range_are_rejected() {
        let error = parse("name = \"x\"\n[synth]\nmodel = \"m.onnx\"\nsteps = 0\n").unwrap_err();
        assert!(error.to_string().contains("between 1 and 1000"), "{error}");
    }

    #[test]
    fn timestep_spacing_defaults_to_the_samplers_diffusers_default() {
        // toml directly: these checks need no model file.
        let spacing = |text: &str| -> TimestepSpacing {
            let pipeline: Pipeline = toml::from_str(text).unwrap();
            pipeline.synth.unwrap().spacing()
        };
        let base = "name = \"x\"\n[synth]\nmodel = \"m.onnx\"\n";
        assert_eq!(spacing(base), TimestepSpacing::Leading);
        assert_eq!(
            spacing(&format!("{base}sampler = \"ddpm\"\n")),
            TimestepSpacing::Leading
        );
        assert_eq!(
            spacing(&format!("{base}sampler = \"dpm-solver++\"\n")),
            TimestepSpacing::Linspace
        );
        assert_eq!(
            spacing(&format!(
                "{base}sampler = \"dpm-solver++\"\ntimestep_spacing = \"trailing\"\n"
            )),
            TimestepSpacing::Trailing
        );
    }

    #[test]
    fn unknown_timestep_spacing_names_the_choices() {
        let error = parse("name = \"x\"\n[synth]\nmodel = \"m.onnx\"\ntimestep_spacing = \"trailng\"\n").unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("p.toml:4:"), "{text}");
        assert!(
            text.contains("`synth.timestep_spacing`")
                && text.contains("`trailng`")
                && text.contains("`linspace`, `leading`, `trailing`"),
            "{text}"
        );
    }

    #[test]
    fn steps_offset_outside_leading_spacing_is_refused() {
        let error = parse("name = \"x\"\n[synth]\nmodel = \"m.onnx\"\nsampler = \"dpm-solver++\"\nsteps_offset = 1\n")
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("`synth.steps_offset` = 1 applies only to timestep_spacing = \"leading\""),
            "{error}"
        );
    }

    #[test]
    fn task_defaults_to_healthy_and_unknown_tasks_name_the_choices() {
        let pipeline: Pipeline = toml::from_str("name = \"x\"\n[synth]\nmodel = \"m.onnx\"\n").unwrap();
        assert_eq!(pipeline.synth.unwrap().task, Task::Healthy);
        let error = parse("name = \"x\"\n[synth]\nmodel = \"m.onnx\"\ntask = \"injury\"\n").unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("p.toml:4:") && text.contains("`healthy` or `lesion`"),
            "{text}"
        );
    }

    #[test]
    fn lesion_and_sequence_settings_are_checked_before_anything_runs() {
        let lesion = parse("name = \"x\"\n[synth]\nmodel = \"m.onnx\"\ntask = \"lesion\"\n").unwrap_err();
        assert!(lesion.to_string().contains("needs a [synth.lesion] table"), "{lesion}");
        let plane = parse(
            "name = \"x\"\n[synth]\nmodel = \"m.onnx\"\ntask = \"lesion\"\n[synth.lesion]\n\
             components = [{ plane = \"mask\", size_mm = [4.0, 8.0] }]\n",
        )
        .unwrap_err();
        assert!(
            plane
                .to_string()
                .contains("plane `mask`: expected a label:<name> plane"),
            "{plane}"
        );
        let uncleaned = parse("name = \"x\"\n[sequences.T1]\nseries_description = [\"*T1*\"]\n").unwrap_err();
        assert!(
            uncleaned
                .to_string()
                .contains("`sequences.T1` reads Series Description")
                && uncleaned.to_string().contains("clean-descriptors"),
            "{uncleaned}"
        );
        let empty = parse("name = \"x\"\n[sequences.FLAIR]\n").unwrap_err();
        assert!(
            empty.to_string().contains("`sequences.FLAIR` has no criterion"),
            "{empty}"
        );
        let unknown = parse("name = \"x\"\n[sequences.DWI]\nscanning_sequence = [\"EP\"]\n").unwrap_err();
        assert!(unknown.to_string().contains("DWI"), "{unknown}");
        let fine = parse(
            "name = \"x\"\n[deid]\noptions = [\"clean-descriptors\"]\n\
             [sequences.FLAIR]\nscanning_sequence = [\"IR\"]\n[sequences.T1]\nseries_description = [\"*T1*\"]\n",
        )
        .unwrap();
        let order: Vec<Sequence> = fine
            .pipeline
            .sequences
            .as_ref()
            .unwrap()
            .in_order()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(order, [Sequence::FLAIR, Sequence::T1], "file order");
    }

    #[test]
    fn bad_name_is_rejected() {
        let error = parse("name = \"Brain MRI\"\n").unwrap_err();
        assert!(error.to_string().contains("lower-case"), "{error}");
    }
}
