//! `synthd bench --pipeline FILE`: runs a pipeline's model and sampler on
//! synthetic slices and prints where the time goes. The final line is JSON
//! for scripts (scripts/bench-engine.sh compares it with bench/python_loop.py).

use crate::config::pipeline::LoadedPipeline;
use crate::synth::condition::{CondChannel, Sequence, Task};
use crate::synth::{Engine, EngineOptions, Manifest, SeriesRequest, SliceGeometry, SliceInput};
use anyhow::{anyhow, Context, Result};
use std::path::PathBuf;

pub struct BenchArgs {
    pub pipeline: PathBuf,
    pub batch: Option<u32>,
    pub steps: Option<u32>,
    /// Slices per measured request; default 4 batches.
    pub slices: Option<usize>,
    /// CPU intra-op threads per lane; 0 = all cores, shared out among the lanes.
    pub threads: u32,
    /// Model sessions side by side.
    pub lanes: u32,
    /// TensorRT engine/timing cache folder.
    pub cache_dir: Option<PathBuf>,
    /// Override the pipeline's provider list (e.g. "cuda").
    pub provider: Option<crate::config::pipeline::ProviderKind>,
    pub library: Option<PathBuf>,
    /// Measured runs; the fastest is reported (a shared machine's noise only ever adds time).
    pub repeat: u32,
}

pub fn run(args: &BenchArgs) -> Result<i32> {
    let loaded = LoadedPipeline::load(&args.pipeline).map_err(|problems| anyhow!("{problems}"))?;
    let mut synth = loaded.pipeline.synth.clone().ok_or_else(|| {
        anyhow!(
            "{}: the pipeline has no [synth] section; bench needs a model",
            args.pipeline.display()
        )
    })?;
    let model = loaded.model_path().context("pipeline model path")?;
    if let Some(batch) = args.batch {
        synth.batch = batch.max(1);
    }
    if let Some(steps) = args.steps {
        synth.steps = steps.max(1);
    }
    if let Some(provider) = args.provider {
        synth.providers = vec![provider];
    }
    let runtime = crate::runtime::init(args.library.as_deref()).context("stage=bench: loading ONNX Runtime")?;
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("synthd-bench-cache"));
    let engine = Engine::new(
        runtime,
        &model,
        &synth,
        EngineOptions {
            intra_op_threads: args.threads,
            cache_dir,
            lanes: args.lanes,
        },
    )
    .with_context(|| format!("stage=bench: starting the engine for {}", model.display()))?;
    let g = &engine.manifest().geometry;
    let (rows, cols) = (g.height as usize, g.width as usize);
    let slices = args.slices.unwrap_or(4 * synth.batch as usize).max(1);
    println!("model: {} (sha256 {})", model.display(), engine.model_sha256());
    println!(
        "provider: {} ({})",
        engine.provider().name(),
        if engine.provider_fallbacks().is_empty() {
            "first choice".to_string()
        } else {
            engine.provider_fallbacks().join("; ")
        }
    );
    println!(
        "sampler: {} steps {} batch {} slices {} of {rows}x{cols} lanes {} threads {}",
        synth.sampler.name(),
        synth.steps,
        synth.batch,
        slices,
        engine.lanes(),
        args.threads
    );
    let (sequence, components) = conditioning(engine.manifest(), synth.task);
    println!(
        "conditioning: task {} sequence {} components [{}]",
        synth.task.name(),
        sequence.map_or("none", |s| s.name()),
        components.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
    );
    let conditioned = |mut request: SeriesRequest| {
        request.sequence = sequence;
        request.components = components.clone();
        request
    };
    // Warm-up: the first runs allocate arenas (and build TensorRT engines).
    engine
        .inpaint_series(&conditioned(synthetic(synth.batch as usize, rows, cols, 1)))
        .context("stage=bench: warm-up run")?;
    let request = conditioned(synthetic(slices, rows, cols, 2));
    let mut best: Option<crate::synth::SeriesResult> = None;
    for _ in 0..args.repeat.max(1) {
        let result = engine.inpaint_series(&request).context("stage=bench: measured run")?;
        if best.as_ref().is_none_or(|b| result.total_seconds < b.total_seconds) {
            best = Some(result);
        }
    }
    let result = best.context("stage=bench: no measured run")?;
    for (step, seconds) in result.step_ort_seconds.iter().enumerate() {
        println!("step {step:>3}: onnxruntime {:>9.3} ms", seconds * 1e3);
    }
    // With several lanes, each one's wall time is the call's: the busiest
    // lane's time outside session.run is the overhead.
    let overhead = result.total_seconds / result.busiest_lane_ort_seconds.max(f64::MIN_POSITIVE);
    let throughput = slices as f64 / result.total_seconds;
    println!(
        "model runs: {} (io binding: {})",
        result.model_runs,
        engine.used_io_binding()
    );
    if engine.lanes() > 1 {
        println!(
            "time inside session.run: {:.4} s over {} lanes (busiest lane: {:.4} s)",
            result.ort_seconds,
            engine.lanes(),
            result.busiest_lane_ort_seconds
        );
    } else {
        println!("time inside session.run: {:.4} s", result.ort_seconds);
    }
    println!("total wall time: {:.4} s", result.total_seconds);
    // Per slice and sampler step: what a model author compares with a budget
    // (steps run per slice, whatever the batch).
    let ms_per_slice_step = result.ort_seconds * 1e3 / (slices as f64 * result.step_ort_seconds.len().max(1) as f64);
    println!(
        "onnxruntime per slice per step: {ms_per_slice_step:.3} ms (batch {})",
        synth.batch
    );
    println!("overhead ratio (wall / busiest lane's session.run): {overhead:.3}");
    println!("throughput: {throughput:.2} slices/s");
    let summary = serde_json::json!({
        "ort_seconds": result.ort_seconds,
        "total_seconds": result.total_seconds,
        "overhead_ratio": overhead,
        "ms_per_slice_step": ms_per_slice_step,
        "slices_per_second": throughput,
        "provider": engine.provider().name(),
        "steps": synth.steps,
        "batch": synth.batch,
        "slices": slices,
        "model_runs": result.model_runs,
        "repeat": args.repeat.max(1),
        "lanes": engine.lanes(),
        "io_binding": engine.used_io_binding(),
    });
    println!("{summary}");
    Ok(0)
}

/// What the bench feeds a conditioned model: the first sequence it
/// supports (when it has sequence slots) and, under the lesion task, its
/// first label plane for the mask (value 1).
fn conditioning(manifest: &Manifest, task: Task) -> (Option<Sequence>, Vec<CondChannel>) {
    let sequence = manifest.sequences.supported.first().copied();
    let components = match task {
        Task::Lesion => manifest
            .label_planes()
            .iter()
            .take(1)
            .map(|l| l.plane.clone())
            .collect(),
        Task::Healthy => Vec::new(),
    };
    (sequence, components)
}

/// FAKE slices: a textured disc with a square mask in the middle, already at
/// the model's size so that the figures measure the sampler loop.
fn synthetic(count: usize, rows: usize, cols: usize, salt: u32) -> SeriesRequest {
    let slices = (0..count)
        .map(|z| {
            let values = (0..rows * cols)
                .map(|i| {
                    let (r, c) = ((i / cols) as f32, (i % cols) as f32);
                    let dy = r / rows as f32 - 0.5;
                    let dx = c / cols as f32 - 0.5;
                    if dx * dx + dy * dy < 0.16 {
                        500.0 + 100.0 * (r * 0.3 + z as f32).sin()
                    } else {
                        0.0
                    }
                })
                .collect();
            let mask = (0..rows * cols)
                .map(|i| {
                    u8::from(
                        (rows / 3..2 * rows / 3).contains(&(i / cols))
                            && (cols / 3..2 * cols / 3).contains(&(i % cols)),
                    )
                })
                .collect();
            SliceInput {
                id: format!("bench.{salt}.{z}"),
                rows,
                cols,
                values,
                geometry: SliceGeometry::axial(z as f64, 1.0),
                mask: Some(mask),
            }
        })
        .collect();
    SeriesRequest {
        slices,
        variant: 0,
        seed: 1,
        ..SeriesRequest::default()
    }
}
