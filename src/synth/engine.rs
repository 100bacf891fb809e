//! The engine the output stage calls: one series in, inpainted slices out.
//!
//! Threads joined by bounded channels: a preparer (normalise, resample,
//! build masks and cond), one inference loop per lane (sampler steps over
//! its own ONNX Runtime session, whole batches at a time), and a finisher
//! (inverse mapping and composite). The inference loops never wait on
//! preparation or encoding while work is queued.

use super::condition::{CondChannel, Sequence, Task};
use super::contract;
use super::error::SynthError;
use super::inpaint::{self, Prepared};
use super::manifest::{self, Manifest};
use super::mask::{self, MaskSlice, SliceGeometry};
use super::scheduler::{self, NoiseSchedule};
use super::session::{EngineOptions, ModelSession};
use super::tensor::{self, Placement};
use crate::config::pipeline::{MaskSource, ProviderKind, Synth};
use crate::runtime::RuntimeInfo;
use crossbeam_channel::bounded;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One slice of a series, in real-world values (after Rescale Slope/Intercept).
#[derive(Debug, Clone)]
pub struct SliceInput {
    /// A stable id, normally the source SOP Instance UID: it seeds the noise.
    pub id: String,
    pub rows: usize,
    pub cols: usize,
    /// Row-major, rows × cols.
    pub values: Vec<f32>,
    pub geometry: SliceGeometry,
    /// 0 = keep, k ≥ 1 = paint (component k of the request's `components`
    /// under the lesion task); None = generate (all slices of a request are
    /// generated together so that the blobs are coherent across slices).
    pub mask: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Default)]
pub struct SeriesRequest {
    pub slices: Vec<SliceInput>,
    pub variant: u32,
    pub seed: u64,
    /// The series' MR sequence, for models with `seq:…` class-label slots.
    pub sequence: Option<Sequence>,
    /// What mask value k means under `synth.task = "lesion"`: the label
    /// plane `components[k − 1]` (e.g. `label:edema`). The healthy task
    /// leaves every label plane 0 whatever the components.
    pub components: Vec<CondChannel>,
}

#[derive(Debug, Clone)]
pub struct SliceOutput {
    /// Same shape as the input; every pixel outside the mask is bit-identical to it.
    pub values: Vec<f32>,
    pub mask: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct SeriesResult {
    pub slices: Vec<SliceOutput>,
    /// Seconds inside `Session::run`, all batches and steps.
    pub ort_seconds: f64,
    /// Wall seconds for the whole call (shared by every request of an `inpaint_many`).
    pub total_seconds: f64,
    /// Seconds inside `Session::run` per sampler step, summed over batches.
    pub step_ort_seconds: Vec<f64>,
    pub model_runs: usize,
    /// Seconds inside `Session::run` of the busiest lane, for the whole call
    /// (shared like `total_seconds`): wall time over this is the overhead.
    pub busiest_lane_ort_seconds: f64,
}

pub struct Engine {
    /// One session per lane; the first one's provider serves them all.
    lanes: Vec<ModelSession>,
    manifest: Manifest,
    sha256: String,
    schedule: NoiseSchedule,
    synth: Synth,
    model: PathBuf,
}

impl Engine {
    pub fn new(
        runtime: &RuntimeInfo,
        model_path: &Path,
        synth: &Synth,
        options: EngineOptions,
    ) -> Result<Engine, SynthError> {
        let sidecar = manifest::Manifest::load_sidecar(model_path)?;
        let (manifest, manifest_path) = match sidecar {
            Some(found) => (found, manifest::sidecar_path(model_path)),
            None => {
                let probe = ort::session::Session::builder(&runtime.environment)
                    .and_then(|mut b| b.commit_from_file(model_path))
                    .map_err(|e| SynthError::ModelRead {
                        path: model_path.to_path_buf(),
                        reason: format!("ONNX Runtime cannot load it: {e}"),
                    })?;
                contract::find_manifest(model_path, Some(&probe))?
            }
        };
        let sha256 = manifest::sha256_file(model_path)?;
        if sha256 != manifest.model.sha256.to_ascii_lowercase() {
            return Err(SynthError::ContractMismatch {
                model: model_path.to_path_buf(),
                manifest: manifest_path,
                differences: format!(
                    "sha256 of the file is {sha256}, the manifest says {}",
                    manifest.model.sha256
                ),
            });
        }
        if manifest.inputs.sample_channels != 1 {
            return Err(SynthError::Setting {
                key: "synth.model",
                reason: format!(
                    "the model takes {} sample channels; synthd feeds single-channel slices (sample_channels = 1)",
                    manifest.inputs.sample_channels
                ),
            });
        }
        if synth.anchor != crate::config::pipeline::Anchor::None && manifest.inputs.cond.is_empty() {
            return Err(SynthError::Setting {
                key: "synth.anchor",
                reason: format!(
                    "{} is unconditioned (no cond inputs): its first estimate knows nothing of the known image; \
                     remove anchor or use a conditioned model",
                    model_path.display()
                ),
            });
        }
        if synth.guidance != 1.0 && manifest.inputs.class_labels.is_empty() {
            return Err(SynthError::Setting {
                key: "synth.guidance",
                reason: format!(
                    "{} needs a model with class_labels for classifier-free guidance, and {} has none; set guidance = 1.0",
                    synth.guidance,
                    model_path.display()
                ),
            });
        }
        manifest
            .supports_task(synth.task)
            .map_err(|reason| SynthError::Setting {
                key: "synth.task",
                reason: format!("{reason} ({})", model_path.display()),
            })?;
        let schedule = NoiseSchedule::new(&manifest.scheduler);
        scheduler::check(
            synth.sampler,
            &schedule,
            synth.steps as usize,
            scheduler::Spacing::of(synth),
        )
        .map_err(|reason| SynthError::Setting {
            key: "synth.steps_offset",
            reason,
        })?;
        let session = ModelSession::open(runtime, model_path, &manifest, synth, &options)?;
        let problems = session.differences(&manifest);
        // Further lanes use the provider the first one found, without the
        // fallback search (and its log lines) again.
        let mut lanes = vec![session];
        let same_provider = Synth {
            providers: vec![lanes[0].provider],
            ..synth.clone()
        };
        for _ in 1..options.lanes.max(1) {
            lanes.push(ModelSession::open_announced(
                runtime,
                model_path,
                &manifest,
                &same_provider,
                &options,
                false,
            )?);
        }
        if !problems.is_empty() {
            return Err(SynthError::ContractMismatch {
                model: model_path.to_path_buf(),
                manifest: manifest_path,
                differences: problems.join("; "),
            });
        }
        Ok(Engine {
            schedule,
            lanes,
            manifest,
            sha256,
            synth: synth.clone(),
            model: model_path.to_path_buf(),
        })
    }

    pub fn provider(&self) -> ProviderKind {
        self.lanes[0].provider
    }

    /// How many sessions run side by side.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Why each provider listed before the serving one could not serve.
    pub fn provider_fallbacks(&self) -> &[String] {
        &self.lanes[0].fallbacks
    }

    /// Bind inputs and outputs through ONNX Runtime's IO binding (on by
    /// default on GPU providers, off on the CPU where plain runs are cheaper).
    pub fn set_io_binding(&mut self, on: bool) {
        for lane in &mut self.lanes {
            lane.set_io_binding(on);
        }
    }

    /// Whether any model run so far went through IO binding.
    pub fn used_io_binding(&self) -> bool {
        self.lanes.iter().any(ModelSession::used_io_binding)
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn model_sha256(&self) -> &str {
        &self.sha256
    }

    pub fn model_path(&self) -> &Path {
        &self.model
    }

    pub fn synth(&self) -> &Synth {
        &self.synth
    }

    pub fn inpaint_series(&self, request: &SeriesRequest) -> Result<SeriesResult, SynthError> {
        self.inpaint_many(std::slice::from_ref(request))
            .pop()
            .unwrap_or(Err(SynthError::EmptyRequest))
    }

    /// Several series at once: their slices share model batches (up to
    /// `synth.batch`), so short series do not leave batches half empty. Each
    /// request gets its own result; a bad request fails alone, a model failure
    /// fails the requests that had slices in flight or still queued.
    pub fn inpaint_many(&self, requests: &[SeriesRequest]) -> Vec<Result<SeriesResult, SynthError>> {
        let started = Instant::now();
        let checks: Vec<Result<(), SynthError>> = requests
            .iter()
            .map(|r| {
                check_request(r)
                    .and_then(|()| self.check_masks(r))
                    .and_then(|()| self.check_components(r))
            })
            .collect();
        let (h, w) = (
            self.manifest.geometry.height as usize,
            self.manifest.geometry.width as usize,
        );
        let batch = self.synth.batch.max(1) as usize;
        let steps = self.steps();
        let (to_infer, from_prepare) = bounded::<Vec<Prepared>>(self.lanes.len());
        let (to_finish, from_infer) = bounded::<(Vec<Prepared>, Vec<f32>)>(1);
        let mut timings: Vec<inpaint::Timing> = requests.iter().map(|_| inpaint::Timing::new(steps)).collect();
        let feather = self.synth.feather_px;
        let valid: Vec<usize> = (0..requests.len()).filter(|&r| checks[r].is_ok()).collect();
        let mut busiest_lane = 0.0f64;
        // A failing lane stops the others at their next batch: the requests
        // with slices in flight or queued fail together.
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (done, failure) = std::thread::scope(|scope| {
            let valid = &valid;
            let preparer = scope.spawn(move || {
                let mut pending = Vec::with_capacity(batch);
                // Slices the mask does not cut come out as they went in (the
                // composite copies every pixel outside the mask), so they skip
                // the model: on a typical series most slices are untouched.
                let mut untouched = Vec::new();
                for &r in valid {
                    let request = &requests[r];
                    let masks = self.masks(request);
                    let values: Vec<&[f32]> = request.slices.iter().map(|s| s.values.as_slice()).collect();
                    let norms = tensor::normalizations(&self.manifest.intensity, &values);
                    // Checked with the request: an unconditionable request fails there.
                    let class_labels = self.class_vector(request).unwrap_or_default();
                    for (i, (s, (slice_mask, norm))) in
                        request.slices.iter().zip(masks.into_iter().zip(norms)).enumerate()
                    {
                        if slice_mask.iter().all(|&m| m == 0) {
                            let values = s.values.clone();
                            untouched.push((
                                r,
                                i,
                                SliceOutput {
                                    values,
                                    mask: slice_mask,
                                },
                            ));
                            continue;
                        }
                        let placement = Placement::fit(s.rows, s.cols, s.geometry.pixel_spacing_mm, h, w);
                        let model_units: Vec<f32> = s.values.iter().map(|&v| norm.forward(v)).collect();
                        pending.push(Prepared {
                            request: r,
                            index: i,
                            id: s.id.clone(),
                            seed: request.seed,
                            variant: request.variant,
                            known: placement.to_grid(&model_units, norm.range[0]),
                            mask: placement.mask_to_grid(&slice_mask),
                            components: self.component_grid(request, &placement, &slice_mask),
                            component_planes: request.components.clone(),
                            class_labels: class_labels.clone(),
                            slice_mask,
                            norm,
                            placement,
                        });
                        if pending.len() == batch && to_infer.send(std::mem::take(&mut pending)).is_err() {
                            return untouched;
                        }
                    }
                }
                if !pending.is_empty() {
                    let _ = to_infer.send(pending);
                }
                untouched
            });
            let finisher = scope.spawn(move || {
                let mut done = Vec::new();
                for (batch, grids) in from_infer {
                    for (k, p) in batch.into_iter().enumerate() {
                        let s = &requests[p.request].slices[p.index];
                        let grid = &grids[k * h * w..(k + 1) * h * w];
                        dump::model_tensors(&p, s, grid);
                        let values = inpaint::composite(s, &p.slice_mask, &p.norm, &p.placement, grid, feather);
                        done.push((
                            p.request,
                            p.index,
                            SliceOutput {
                                values,
                                mask: p.slice_mask,
                            },
                        ));
                    }
                }
                done
            });
            let lanes: Vec<_> = self
                .lanes
                .iter()
                .map(|session| {
                    let (from_prepare, to_finish, stop) = (from_prepare.clone(), to_finish.clone(), &stop);
                    scope.spawn(move || self.infer(session, requests.len(), steps, &from_prepare, &to_finish, stop))
                })
                .collect();
            let mut failure: Option<SynthError> = None;
            for lane in lanes {
                match lane.join() {
                    Ok(report) => {
                        for (total, part) in timings.iter_mut().zip(report.timings) {
                            total.ort_seconds += part.ort_seconds;
                            total.runs += part.runs;
                            for (a, b) in total.per_step.iter_mut().zip(&part.per_step) {
                                *a += b;
                            }
                        }
                        busiest_lane = busiest_lane.max(report.ort_seconds);
                        failure = failure.or(report.failure);
                    }
                    Err(_) => {
                        failure = failure.or(Some(SynthError::Thread("an inference lane panicked".into())));
                    }
                }
            }
            drop(from_prepare);
            drop(to_finish);
            let prepared = preparer.join();
            let prepared_ok = prepared.is_ok();
            let mut done = finisher.join().unwrap_or_default();
            done.extend(prepared.unwrap_or_default());
            if !prepared_ok && failure.is_none() {
                failure = Some(SynthError::Thread("the preparer thread panicked".into()));
            }
            (done, failure)
        });
        let mut slices: Vec<Vec<Option<SliceOutput>>> = requests.iter().map(|r| vec![None; r.slices.len()]).collect();
        for (r, i, output) in done {
            slices[r][i] = Some(output);
        }
        let total_seconds = started.elapsed().as_secs_f64();
        let mut failure = failure;
        let failure_text = failure.as_ref().map(|e| e.to_string());
        checks
            .into_iter()
            .zip(slices)
            .zip(timings)
            .enumerate()
            .map(|(r, ((check, outputs), timing))| {
                check?;
                if outputs.iter().any(Option::is_none) {
                    // The first unfinished request gets the error itself, the
                    // others a pointer to it.
                    return Err(match failure.take() {
                        Some(error) => error,
                        None => SynthError::Thread(format!(
                            "request {r} was not finished: {}",
                            failure_text
                                .clone()
                                .unwrap_or_else(|| "an engine thread stopped early".into())
                        )),
                    });
                }
                Ok(SeriesResult {
                    slices: outputs.into_iter().flatten().collect(),
                    ort_seconds: timing.ort_seconds,
                    total_seconds,
                    step_ort_seconds: timing.per_step,
                    model_runs: timing.runs,
                    busiest_lane_ort_seconds: busiest_lane,
                })
            })
            .collect()
    }

    /// One lane's inference loop: whole batches from the preparer, denoised
    /// on this lane's session, handed to the finisher.
    fn infer(
        &self,
        session: &ModelSession,
        requests: usize,
        steps: usize,
        from_prepare: &crossbeam_channel::Receiver<Vec<Prepared>>,
        to_finish: &crossbeam_channel::Sender<(Vec<Prepared>, Vec<f32>)>,
        stop: &std::sync::atomic::AtomicBool,
    ) -> LaneReport {
        use std::sync::atomic::Ordering;
        let mut report = LaneReport {
            timings: (0..requests).map(|_| inpaint::Timing::new(steps)).collect(),
            ort_seconds: 0.0,
            failure: None,
        };
        for prepared in from_prepare.iter() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let mut timing = inpaint::Timing::new(steps);
            match inpaint::denoise(
                session,
                &self.manifest,
                &self.schedule,
                &self.synth,
                &prepared,
                &mut timing,
            ) {
                Ok(grids) => {
                    report.ort_seconds += timing.ort_seconds;
                    // Each request is charged its share of the batch's model time.
                    let share = 1.0 / prepared.len() as f64;
                    let mut counted = Vec::new();
                    for p in &prepared {
                        let t = &mut report.timings[p.request];
                        t.ort_seconds += timing.ort_seconds * share;
                        for (a, b) in t.per_step.iter_mut().zip(&timing.per_step) {
                            *a += b * share;
                        }
                        if !counted.contains(&p.request) {
                            counted.push(p.request);
                            t.runs += timing.runs;
                        }
                    }
                    if to_finish.send((prepared, grids)).is_err() {
                        break;
                    }
                }
                Err(error) => {
                    stop.store(true, Ordering::Relaxed);
                    report.failure = Some(error);
                    break;
                }
            }
        }
        report
    }

    fn steps(&self) -> usize {
        self.synth.steps as usize
    }

    /// With `mask.source = "seg"` every slice must come with its mask.
    fn check_masks(&self, request: &SeriesRequest) -> Result<(), SynthError> {
        if self.synth.mask.source != MaskSource::Seg {
            return Ok(());
        }
        match request.slices.iter().position(|s| s.mask.is_none()) {
            Some(index) => Err(SynthError::BadSlice {
                index,
                reason:
                    "no mask given, and the pipeline takes masks from a DICOM SEG ([synth.mask] source = \"seg\"); \
                         pass the SEG segment as the slice mask (all zeros where it does not cut the slice)"
                        .into(),
            }),
            None => Ok(()),
        }
    }

    /// The request's class-label vector (task from the pipeline, sequence
    /// from the request); empty for a model without `class_labels`.
    fn class_vector(&self, request: &SeriesRequest) -> Result<Vec<f32>, SynthError> {
        self.manifest
            .class_vector(self.synth.task, request.sequence)
            .map_err(SynthError::Conditioning)
    }

    /// Under the lesion task every mask value must name a label plane of the model.
    fn check_components(&self, request: &SeriesRequest) -> Result<(), SynthError> {
        self.class_vector(request)?;
        if self.synth.task != Task::Lesion {
            return Ok(());
        }
        if request.components.is_empty() {
            return Err(SynthError::Conditioning(
                "task = \"lesion\" needs labelled components (mask value k paints components[k − 1])".into(),
            ));
        }
        if let Some(unknown) = request
            .components
            .iter()
            .find(|c| !matches!(c, CondChannel::Label(_)) || !self.manifest.inputs.cond.contains(c))
        {
            return Err(SynthError::Conditioning(format!(
                "component `{}` is not a label plane of the model (it has {})",
                unknown.name(),
                self.manifest
                    .label_planes()
                    .iter()
                    .map(|l| l.plane.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let most = request.components.len();
        for (index, s) in request.slices.iter().enumerate() {
            if let Some(value) = s
                .mask
                .as_ref()
                .and_then(|m| m.iter().copied().find(|&v| v as usize > most))
            {
                return Err(SynthError::BadSlice {
                    index,
                    reason: format!("mask value {value} names no component ({most} given)"),
                });
            }
        }
        Ok(())
    }

    /// The component of each grid pixel (0 = none, k = components[k − 1]);
    /// empty under the healthy task, whose label planes are all 0. A grid
    /// pixel two components reach keeps the one listed first (components
    /// are exclusive: list the innermost first).
    fn component_grid(&self, request: &SeriesRequest, placement: &Placement, slice_mask: &[u8]) -> Vec<u8> {
        if self.synth.task != Task::Lesion || request.components.is_empty() {
            return Vec::new();
        }
        let mut grid = vec![0u8; placement.grid_height * placement.grid_width];
        for k in 1..=request.components.len() as u8 {
            let only: Vec<u8> = slice_mask.iter().map(|&v| u8::from(v == k)).collect();
            if !only.contains(&1) {
                continue;
            }
            for (cell, m) in grid.iter_mut().zip(placement.mask_to_grid(&only)) {
                if *cell == 0 && m != 0.0 {
                    *cell = k;
                }
            }
        }
        grid
    }

    /// Given masks, or generated ones for the whole series at once.
    fn masks(&self, request: &SeriesRequest) -> Vec<Vec<u8>> {
        if request.slices.iter().all(|s| s.mask.is_some()) {
            return request
                .slices
                .iter()
                .map(|s| s.mask.clone().unwrap_or_default())
                .collect();
        }
        let views: Vec<MaskSlice> = request
            .slices
            .iter()
            .map(|s| MaskSlice {
                rows: s.rows,
                cols: s.cols,
                values: &s.values,
                geometry: s.geometry,
            })
            .collect();
        let series_key: String = request
            .slices
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>()
            .join("\\");
        let spec = &self.synth.mask;
        let generated = mask::generate(
            &views,
            request.seed,
            &series_key,
            request.variant,
            spec.count,
            spec.diameter_mm,
        );
        request
            .slices
            .iter()
            .zip(generated)
            .map(|(s, g)| s.mask.clone().unwrap_or(g))
            .collect()
    }
}

/// What one inference lane did during an `inpaint_many` call.
struct LaneReport {
    timings: Vec<inpaint::Timing>,
    ort_seconds: f64,
    failure: Option<SynthError>,
}

fn check_request(request: &SeriesRequest) -> Result<(), SynthError> {
    if request.slices.is_empty() {
        return Err(SynthError::EmptyRequest);
    }
    for (index, s) in request.slices.iter().enumerate() {
        let bad = |reason: String| SynthError::BadSlice { index, reason };
        if s.rows == 0 || s.cols == 0 || s.values.len() != s.rows * s.cols {
            return Err(bad(format!(
                "{} values for {} rows × {} columns; the pixel data does not match the slice size",
                s.values.len(),
                s.rows,
                s.cols
            )));
        }
        if s.values.iter().any(|v| !v.is_finite()) {
            return Err(bad(
                "pixel values are not all finite; check Rescale Slope/Intercept".into()
            ));
        }
        if let Some(m) = &s.mask {
            if m.len() != s.values.len() {
                return Err(bad(format!(
                    "the mask has {} values for {} pixels",
                    m.len(),
                    s.values.len()
                )));
            }
        }
        let [dr, dc] = s.geometry.pixel_spacing_mm;
        if !(dr > 0.0 && dc > 0.0) {
            return Err(bad("pixel spacing must be positive".into()));
        }
    }
    Ok(())
}

/// Debug builds only: with `SYNTHD_DUMP_TENSORS=<dir>` set, every inpainted
/// slice's model-space input (known image and mask on the grid), initial
/// noise, denoised grid, normalisation and placement are written as
/// `<dir>/<request>-<index>.json`, so what the model was fed and what it
/// made of it can be compared with the Python training code and a reference
/// sampler (fixtures/models/reference_fill.py).
mod dump {
    use super::{Prepared, SliceInput};

    #[cfg(debug_assertions)]
    pub fn model_tensors(p: &Prepared, slice: &SliceInput, denoised: &[f32]) {
        let Some(dir) = std::env::var_os("SYNTHD_DUMP_TENSORS") else {
            return;
        };
        // x_T as `inpaint::denoise` draws it first, so a reference sampler can
        // start from the same noise.
        let mut initial_noise = vec![0.0f32; p.known.len()];
        let mut rng = crate::synth::noise::slice_rng(p.seed, &p.id, p.variant, "sampler");
        crate::synth::noise::fill_normal(&mut rng, &mut initial_noise);
        let record = serde_json::json!({
            "id": p.id,
            "origin_mm": slice.geometry.origin_mm,
            "lower": p.norm.lower,
            "upper": p.norm.upper,
            "range": p.norm.range,
            "placement": {
                "rows": p.placement.rows, "cols": p.placement.cols,
                "zoom": p.placement.zoom,
            },
            "known": p.known,
            "mask": p.mask,
            "initial_noise": initial_noise,
            "denoised": denoised,
        });
        let path = std::path::Path::new(&dir).join(format!("{}-{}.json", p.request, p.index));
        if let Err(e) = std::fs::write(&path, record.to_string()) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the tensor dump");
        }
    }

    #[cfg(not(debug_assertions))]
    pub fn model_tensors(_: &Prepared, _: &SliceInput, _: &[f32]) {}
}
