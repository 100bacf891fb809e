//! An ONNX Runtime session for the denoiser on the first execution provider
//! that works, in the pipeline's order. Every provider is registered with
//! error-on-failure, so a provider that cannot serve is reported, never
//! silently replaced by ONNX Runtime's own CPU fallback.

use super::contract::{self, TimestepInput};
use super::error::SynthError;
use super::manifest::{Manifest, TimestepDtype};
use crate::config::pipeline::{ProviderKind, Synth};
use crate::runtime::{self, RuntimeInfo};
use ort::ep;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::value::Tensor;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Settings that come from the daemon config rather than the pipeline.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// CPU intra-op threads; 0 = all cores (shared out among the lanes).
    pub intra_op_threads: u32,
    /// Where TensorRT keeps its engine and timing caches (under `paths.state`).
    pub cache_dir: PathBuf,
    /// Sessions that run side by side, each on its own batches (at least 1).
    pub lanes: u32,
}

impl EngineOptions {
    /// Intra-op threads for each lane's session: the configured count, or
    /// with 0 and several lanes, the cores shared out among them.
    pub fn threads_per_lane(&self) -> u32 {
        let lanes = self.lanes.max(1);
        if self.intra_op_threads != 0 || lanes == 1 {
            return self.intra_op_threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        (cores / lanes).max(1)
    }
}

/// Input and output buffers for one batch, made once and reused every step
/// so that the step loop allocates nothing: the sample tensor is refilled in
/// place, `cond` and `class_labels` are constant for the batch.
pub struct BatchBuffers {
    /// Model batch size (2N under classifier-free guidance).
    pub n: usize,
    sample: Tensor<f32>,
    cond: Option<ort::value::DynValue>,
    labels: Option<ort::value::DynValue>,
    /// The last run's output, flat [n·C_out·H·W].
    pub output: Vec<f32>,
    /// On GPU providers: cond and class_labels are bound (copied to the
    /// device) once per batch; only x_t and the timestep move each step.
    binding: Option<ort::session::IoBinding>,
}

pub struct ModelSession {
    session: Mutex<Session>,
    pub provider: ProviderKind,
    /// Why each provider before `provider` could not serve.
    pub fallbacks: Vec<String>,
    timestep: TimestepInput,
    output_name: String,
    manifest: Manifest,
    io_binding: bool,
    /// Set once a run has gone through IO binding (tests and bench read it).
    bound_runs: std::sync::atomic::AtomicBool,
}

impl ModelSession {
    pub fn open(
        runtime: &RuntimeInfo,
        model: &Path,
        manifest: &Manifest,
        synth: &Synth,
        options: &EngineOptions,
    ) -> Result<ModelSession, SynthError> {
        Self::open_announced(runtime, model, manifest, synth, options, true)
    }

    /// Like [`Self::open`]; `announce` = false opens another lane's session
    /// without logging the provider choice again.
    pub fn open_announced(
        runtime: &RuntimeInfo,
        model: &Path,
        manifest: &Manifest,
        synth: &Synth,
        options: &EngineOptions,
        announce: bool,
    ) -> Result<ModelSession, SynthError> {
        let mut reasons = Vec::new();
        let mut skipped: Vec<(ProviderKind, String)> = Vec::new();
        for &kind in &synth.providers {
            if kind == ProviderKind::Cpu && synth.require_gpu {
                return Err(SynthError::GpuRequired {
                    model: model.to_path_buf(),
                    reasons: joined(&reasons),
                });
            }
            let attempt = if runtime::compiled_in(kind) {
                build(runtime, model, manifest, synth, options, kind)
            } else {
                Err("not included in this ONNX Runtime build".to_string())
            };
            match attempt {
                Ok(session) => {
                    if announce {
                        announce_choice(kind, &skipped);
                    }
                    let timestep = contract::timestep_input(session.inputs());
                    let output_name = session
                        .outputs()
                        .first()
                        .map(|o| o.name().to_string())
                        .unwrap_or_default();
                    return Ok(ModelSession {
                        session: Mutex::new(session),
                        provider: kind,
                        fallbacks: reasons,
                        timestep,
                        output_name,
                        manifest: manifest.clone(),
                        io_binding: kind != ProviderKind::Cpu,
                        bound_runs: std::sync::atomic::AtomicBool::new(false),
                    });
                }
                Err(raw) => {
                    reasons.push(runtime::explain(kind, &raw));
                    skipped.push((kind, runtime::brief(kind, &raw)));
                }
            }
        }
        if synth.require_gpu {
            return Err(SynthError::GpuRequired {
                model: model.to_path_buf(),
                reasons: joined(&reasons),
            });
        }
        Err(SynthError::NoProvider {
            model: model.to_path_buf(),
            reasons: joined(&reasons),
        })
    }

    /// Every way the session's graph disagrees with `manifest`.
    pub fn differences(&self, manifest: &Manifest) -> Vec<String> {
        let session = self.lock();
        contract::differences(session.inputs(), session.outputs(), manifest)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Use IO binding (the default on GPU providers; settable so that the
    /// path is also exercised on the CPU).
    pub fn set_io_binding(&mut self, on: bool) {
        self.io_binding = on;
    }

    /// Buffers for a model batch of `n` (cond [n·K·H·W] and labels [n·L] given whole).
    pub fn buffers(&self, n: usize, cond: Option<&[f32]>, labels: Option<&[f32]>) -> Result<BatchBuffers, SynthError> {
        let fail = |e: ort::Error| SynthError::ModelRun {
            step: 0,
            timestep: -1,
            reason: format!("cannot allocate input tensors: {e}"),
        };
        let g = &self.manifest.geometry;
        let (h, w) = (g.height as usize, g.width as usize);
        let c = self.manifest.inputs.sample_channels as usize;
        let sample = Tensor::from_array(([n, c, h, w], vec![0.0f32; n * c * h * w])).map_err(fail)?;
        let cond = cond
            .map(|cond| {
                let k = self.manifest.inputs.cond.len();
                Tensor::from_array(([n, k, h, w], cond.to_vec())).map(|t| t.into_dyn())
            })
            .transpose()
            .map_err(fail)?;
        let labels = labels
            .map(|labels| {
                let l = self.manifest.inputs.class_labels.len();
                Tensor::from_array(([n, l], labels.to_vec())).map(|t| t.into_dyn())
            })
            .transpose()
            .map_err(fail)?;
        let binding = if self.io_binding {
            match self.bind(cond.as_ref(), labels.as_ref()) {
                Ok(binding) => Some(binding),
                Err(error) => {
                    // Plain runs give the same numbers, only with more copies.
                    tracing::warn!(
                        stage = "synth",
                        provider = self.provider.name(),
                        "IO binding unavailable, using plain runs: {error}"
                    );
                    None
                }
            }
        } else {
            None
        };
        Ok(BatchBuffers {
            n,
            sample,
            cond,
            labels,
            binding,
            output: Vec::with_capacity(n * self.manifest.output_channels() as usize * h * w),
        })
    }

    /// Whether any run so far went through IO binding.
    pub fn used_io_binding(&self) -> bool {
        self.bound_runs.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn bind(
        &self,
        cond: Option<&ort::value::DynValue>,
        labels: Option<&ort::value::DynValue>,
    ) -> ort::Result<ort::session::IoBinding> {
        let session = self.lock();
        let mut binding = session.create_binding()?;
        if let Some(cond) = cond {
            binding.bind_input(contract::COND, cond)?;
        }
        if let Some(labels) = labels {
            binding.bind_input(contract::CLASS_LABELS, labels)?;
        }
        // CUDA-pinned host memory for the output when on a GPU: the sampler
        // reads it on the host without a pageable staging copy.
        let device = if self.provider == ProviderKind::Cpu {
            AllocationDevice::CPU
        } else {
            AllocationDevice::CUDA_PINNED
        };
        let memory = MemoryInfo::new(device, 0, AllocatorType::Device, MemoryType::CPUOutput)?;
        binding.bind_output_to_device(self.output_name.as_str(), &memory)?;
        Ok(binding)
    }

    /// Runs the model once on `x` (repeated to fill the batch, for guidance's
    /// doubled batch); the output lands in `buffers.output`. Returns the
    /// seconds spent in `Session::run` alone.
    pub fn run(&self, buffers: &mut BatchBuffers, x: &[f32], timestep: i64, step: usize) -> Result<f64, SynthError> {
        let fail = |reason: String| SynthError::ModelRun { step, timestep, reason };
        let n = buffers.n;
        {
            let (_, data) = buffers.sample.extract_tensor_mut();
            for chunk in data.chunks_mut(x.len()) {
                chunk.copy_from_slice(&x[..chunk.len()]);
            }
        }
        let timestep_value = match (self.timestep.dtype, self.timestep.scalar) {
            (TimestepDtype::Float32, false) => {
                Tensor::from_array(([n], vec![timestep as f32; n])).map(|t| t.into_dyn())
            }
            (TimestepDtype::Float32, true) => {
                Tensor::from_array((Vec::<usize>::new(), vec![timestep as f32])).map(|t| t.into_dyn())
            }
            (TimestepDtype::Int64, false) => Tensor::from_array(([n], vec![timestep; n])).map(|t| t.into_dyn()),
            (TimestepDtype::Int64, true) => {
                Tensor::from_array((Vec::<usize>::new(), vec![timestep])).map(|t| t.into_dyn())
            }
        }
        .map_err(|e| fail(e.to_string()))?;
        if let Some(binding) = buffers.binding.as_mut() {
            binding
                .bind_input(contract::SAMPLE, &buffers.sample)
                .map_err(|e| fail(e.to_string()))?;
            binding
                .bind_input(contract::TIMESTEP, &timestep_value)
                .map_err(|e| fail(e.to_string()))?;
            let mut session = self.lock();
            let started = Instant::now();
            let outputs = session.run_binding(binding).map_err(|e| fail(e.to_string()))?;
            self.bound_runs.store(true, std::sync::atomic::Ordering::Relaxed);
            let seconds = started.elapsed().as_secs_f64();
            let (_, data) = outputs[self.output_name.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(|e| fail(e.to_string()))?;
            return self.take_output(&mut buffers.output, n, data).map(|()| seconds);
        }
        let mut values: Vec<(&str, ort::session::SessionInputValue<'_>)> = Vec::with_capacity(4);
        values.push((contract::SAMPLE, (&buffers.sample).into()));
        values.push((contract::TIMESTEP, (&timestep_value).into()));
        if let Some(cond) = &buffers.cond {
            values.push((contract::COND, cond.into()));
        }
        if let Some(labels) = &buffers.labels {
            values.push((contract::CLASS_LABELS, labels.into()));
        }
        let mut session = self.lock();
        let started = Instant::now();
        let outputs = session.run(values).map_err(|e| fail(e.to_string()))?;
        let seconds = started.elapsed().as_secs_f64();
        let (_, data) = outputs[self.output_name.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| fail(e.to_string()))?;
        self.take_output(&mut buffers.output, n, data).map(|()| seconds)
    }

    fn take_output(&self, output: &mut Vec<f32>, n: usize, data: &[f32]) -> Result<(), SynthError> {
        let g = &self.manifest.geometry;
        let expected = n * self.manifest.output_channels() as usize * (g.height * g.width) as usize;
        if data.len() != expected {
            return Err(SynthError::OutputShape {
                expected,
                actual: data.len(),
            });
        }
        output.clear();
        output.extend_from_slice(data);
        Ok(())
    }
}

/// One short line per provider skipped, each said once per process (every
/// pipeline's engine tries the same providers), then which one serves.
fn announce_choice(kind: ProviderKind, skipped: &[(ProviderKind, String)]) {
    static SAID: Mutex<Vec<(ProviderKind, String)>> = Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for (skipped_kind, brief) in skipped {
        if said.iter().any(|(k, b)| k == skipped_kind && b == brief) {
            continue;
        }
        said.push((*skipped_kind, brief.clone()));
        tracing::info!(
            stage = "synth",
            provider = skipped_kind.name(),
            "{} not used: {brief} (`synthd doctor` says how to enable it)",
            runtime::ort_name(*skipped_kind)
        );
    }
    let fallbacks: Vec<&str> = skipped.iter().map(|(k, _)| k.name()).collect();
    if fallbacks.is_empty() {
        tracing::info!(
            stage = "synth",
            provider = kind.name(),
            "{} serves the denoiser",
            runtime::ort_name(kind)
        );
    } else {
        tracing::info!(
            stage = "synth",
            provider = kind.name(),
            skipped = %fallbacks.join(","),
            "{} serves the denoiser",
            runtime::ort_name(kind)
        );
    }
}

fn joined(reasons: &[String]) -> String {
    if reasons.is_empty() {
        "no earlier provider was listed".to_string()
    } else {
        reasons.join("; ")
    }
}

/// Shapes for TensorRT optimisation profiles: "sample:NxCxHxW,timestep:N,...".
fn profile_shapes(manifest: &Manifest, n: usize) -> String {
    let g = &manifest.geometry;
    let (h, w) = (g.height, g.width);
    let mut shapes = vec![format!(
        "{}:{n}x{}x{h}x{w}",
        contract::SAMPLE,
        manifest.inputs.sample_channels
    )];
    shapes.push(format!("{}:{n}", contract::TIMESTEP));
    if !manifest.inputs.cond.is_empty() {
        shapes.push(format!("{}:{n}x{}x{h}x{w}", contract::COND, manifest.inputs.cond.len()));
    }
    if !manifest.inputs.class_labels.is_empty() {
        shapes.push(format!(
            "{}:{n}x{}",
            contract::CLASS_LABELS,
            manifest.inputs.class_labels.len()
        ));
    }
    shapes.join(",")
}

fn build(
    runtime: &RuntimeInfo,
    model: &Path,
    manifest: &Manifest,
    synth: &Synth,
    options: &EngineOptions,
    kind: ProviderKind,
) -> Result<Session, String> {
    let dispatch = match kind {
        ProviderKind::Tensorrt => {
            let cache = options.cache_dir.join("tensorrt");
            std::fs::create_dir_all(&cache)
                .map_err(|e| format!("cannot create TensorRT cache folder {}: {e}", cache.display()))?;
            // Guidance doubles the batch; the profile must cover both.
            let batch = synth.batch as usize;
            let max = if synth.guidance != 1.0 { 2 * batch } else { batch };
            ep::TensorRT::default()
                .with_fp16(synth.fp16)
                .with_engine_cache(true)
                .with_engine_cache_path(cache.display())
                .with_timing_cache(true)
                .with_timing_cache_path(cache.display())
                .with_profile_min_shapes(profile_shapes(manifest, 1))
                .with_profile_opt_shapes(profile_shapes(manifest, max))
                .with_profile_max_shapes(profile_shapes(manifest, max))
                .build()
                .error_on_failure()
        }
        ProviderKind::Cuda => ep::CUDA::default().build().error_on_failure(),
        // ort's CPU default disables the memory arena; ONNX Runtime's own
        // default (and Python's) enables it, and every step would otherwise
        // allocate its activations afresh.
        ProviderKind::Cpu => ep::CPU::default().with_arena_allocator(true).build().error_on_failure(),
    };
    let builder = Session::builder(&runtime.environment).map_err(|e| e.to_string())?;
    let builder = builder
        .with_intra_threads(options.threads_per_lane() as usize)
        .map_err(|e| e.to_string())?
        .with_inter_threads(1)
        .map_err(|e| e.to_string())?
        .with_execution_providers([dispatch])
        .map_err(|e| e.to_string())?;
    let mut builder = builder;
    builder.commit_from_file(model).map_err(|e| e.to_string())
}
