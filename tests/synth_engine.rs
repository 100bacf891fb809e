//! The diffusion engine end to end on the tiny random-weight models in
//! fixtures/models/tiny (real ONNX Runtime, CPU provider): inpainting keeps
//! every pixel outside the mask, outputs are byte-identical across batch
//! sizes, thread counts and lanes, providers fall through with admin-facing reasons,
//! and a model that disagrees with its manifest is refused.

#![allow(clippy::needless_range_loop)] // parallel arrays (input, mask, output) read clearer by index

use std::path::{Path, PathBuf};
use synthd::config::pipeline::{LoadedPipeline, ProviderKind, Synth};
use synthd::synth::condition::Sequence;
use synthd::synth::mask::{self, MaskSlice};
use synthd::synth::{Engine, EngineOptions, SeriesRequest, SliceGeometry, SliceInput, SynthError};

fn tiny(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/models/tiny/tiny-{kind}.onnx"))
}

fn synth(model: &Path, extra: &str) -> Synth {
    let text = format!(
        "name = \"t\"\n[synth]\nmodel = {:?}\nproviders = [\"cpu\"]\nsteps = 6\n{extra}\n",
        model.display().to_string()
    );
    let loaded = LoadedPipeline::parse(Path::new("/nonexistent/p.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    loaded.pipeline.synth.unwrap()
}

fn engine(model: &Path, extra: &str, threads: u32) -> Result<Engine, SynthError> {
    engine_with_lanes(model, extra, threads, 1)
}

/// The error text of an engine that `extra` makes refuse to start.
fn refusal(model: &Path, extra: &str) -> String {
    engine(model, extra, 1).err().expect("refused").to_string()
}

fn engine_with_lanes(model: &Path, extra: &str, threads: u32, lanes: u32) -> Result<Engine, SynthError> {
    let runtime = synthd::runtime::init(None).expect("ONNX Runtime (run scripts/bootstrap-onnxruntime.sh)");
    let cache = std::env::temp_dir().join("synthd-engine-test-cache");
    Engine::new(
        runtime,
        model,
        &synth(model, extra),
        EngineOptions {
            intra_op_threads: threads,
            cache_dir: cache,
            lanes,
        },
    )
}

/// A FAKE head phantom: a bright ellipse ("brain") on a zero background, with
/// texture so that percentiles and interpolation have something to do.
fn phantom(count: usize, rows: usize, cols: usize) -> Vec<SliceInput> {
    (0..count)
        .map(|z| {
            let values = (0..rows * cols)
                .map(|i| {
                    let (r, c) = ((i / cols) as f32, (i % cols) as f32);
                    let dy = (r - rows as f32 / 2.0) / (rows as f32 * 0.4);
                    let dx = (c - cols as f32 / 2.0) / (cols as f32 * 0.4);
                    if dy * dy + dx * dx < 1.0 {
                        600.0 + 200.0 * ((r * 0.7 + z as f32).sin() * (c * 0.3).cos())
                    } else {
                        0.0
                    }
                })
                .collect();
            SliceInput {
                id: format!("1.2.826.0.1.3680043.10.999.1.{z}"),
                rows,
                cols,
                values,
                geometry: SliceGeometry::axial(z as f64 * 3.0, 4.0),
                mask: None,
            }
        })
        .collect()
}

fn with_square_masks(mut slices: Vec<SliceInput>) -> Vec<SliceInput> {
    for s in &mut slices {
        let mut m = vec![0u8; s.rows * s.cols];
        for r in s.rows / 3..s.rows / 2 {
            for c in s.cols / 3..2 * s.cols / 3 {
                m[r * s.cols + c] = 1;
            }
        }
        s.mask = Some(m);
    }
    slices
}

fn request(slices: Vec<SliceInput>) -> SeriesRequest {
    SeriesRequest {
        slices,
        variant: 0,
        seed: 42,
        // Read only by models with seq:… slots (tiny-guided, tiny-contract).
        sequence: Some(Sequence::T1),
        ..SeriesRequest::default()
    }
}

fn bits(result: &synthd::synth::SeriesResult) -> Vec<Vec<u32>> {
    result
        .slices
        .iter()
        .map(|s| s.values.iter().map(|v| v.to_bits()).collect())
        .collect()
}

#[test]
fn conditioned_inpainting_keeps_every_pixel_outside_the_mask() {
    let engine = engine(&tiny("cond"), "batch = 4\nfeather_px = 2", 1).unwrap();
    assert_eq!(engine.provider(), ProviderKind::Cpu);
    let input = with_square_masks(phantom(5, 40, 48));
    let result = engine.inpaint_series(&request(input.clone())).unwrap();
    assert_eq!(result.slices.len(), 5);
    assert!(result.ort_seconds > 0.0 && result.total_seconds >= result.ort_seconds);
    assert_eq!(result.model_runs, 2 * 6, "two batches (4 + 1) × six steps");
    for (s, out) in input.iter().zip(&result.slices) {
        let mask = s.mask.as_ref().unwrap();
        assert_eq!(&out.mask, mask);
        let mut changed = 0;
        for i in 0..s.values.len() {
            if mask[i] == 0 {
                assert_eq!(
                    out.values[i].to_bits(),
                    s.values[i].to_bits(),
                    "pixel {i} outside the mask changed"
                );
            } else if out.values[i] != s.values[i] {
                changed += 1;
            }
        }
        assert!(
            changed > mask.iter().filter(|m| **m == 1).count() / 2,
            "the mask region was not synthesized"
        );
    }
}

#[test]
fn slices_the_mask_does_not_cut_skip_the_model_and_come_out_unchanged() {
    let engine = engine(&tiny("cond"), "batch = 4", 1).unwrap();
    let mut input = with_square_masks(phantom(5, 40, 48));
    for k in [0, 2, 4] {
        input[k].mask = Some(vec![0; 40 * 48]);
    }
    let result = engine.inpaint_series(&request(input.clone())).unwrap();
    assert_eq!(result.model_runs, 6, "one batch of the two cut slices × six steps");
    for k in [0, 2, 4] {
        let same = result.slices[k]
            .values
            .iter()
            .zip(&input[k].values)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "slice {k} changed");
    }
    // The cut slices come out as they do when every slice goes through the model.
    let all = engine
        .inpaint_series(&request(with_square_masks(phantom(5, 40, 48))))
        .unwrap();
    for k in [1, 3] {
        assert!(
            bits(&all)[k] == bits(&result)[k],
            "slice {k} depends on the others' masks"
        );
    }
}

#[test]
fn same_inputs_give_identical_bytes_across_batch_sizes_threads_and_lanes() {
    let input = with_square_masks(phantom(8, 32, 32));
    let reference = bits(
        &engine(&tiny("cond"), "batch = 1\nsampler = \"ddpm\"", 1)
            .unwrap()
            .inpaint_series(&request(input.clone()))
            .unwrap(),
    );
    for (batch, threads) in [(3, 1), (8, 1), (8, 2), (3, 2)] {
        let e = engine(&tiny("cond"), &format!("batch = {batch}\nsampler = \"ddpm\""), threads).unwrap();
        let got = bits(&e.inpaint_series(&request(input.clone())).unwrap());
        assert!(
            got == reference,
            "batch {batch}, {threads} threads differ from batch 1, 1 thread"
        );
    }
    // Lanes run whole batches side by side, in whatever order they finish.
    for (batch, lanes) in [(1, 3), (3, 2)] {
        let e = engine_with_lanes(&tiny("cond"), &format!("batch = {batch}\nsampler = \"ddpm\""), 0, lanes).unwrap();
        assert_eq!(e.lanes(), lanes as usize);
        let result = e.inpaint_series(&request(input.clone())).unwrap();
        assert!(
            bits(&result) == reference,
            "batch {batch}, {lanes} lanes differ from batch 1, 1 lane"
        );
        assert!(result.busiest_lane_ort_seconds > 0.0);
        assert!(result.busiest_lane_ort_seconds <= result.ort_seconds);
    }
    // A different seed or variant really changes the result.
    let e = engine(&tiny("cond"), "batch = 8\nsampler = \"ddpm\"", 1).unwrap();
    let mut other = request(input.clone());
    other.variant = 1;
    assert!(bits(&e.inpaint_series(&other).unwrap()) != reference);
}

#[test]
fn repaint_on_the_unconditional_model_keeps_outside_pixels_and_is_deterministic() {
    let e = engine(
        &tiny("uncond"),
        "batch = 2\njump_length = 2\njump_n_sample = 2\nsampler = \"ddim\"\neta = 0.5",
        1,
    )
    .unwrap();
    let input = with_square_masks(phantom(3, 32, 32));
    let first = e.inpaint_series(&request(input.clone())).unwrap();
    // Six steps with a jump back of two after steps 2 and 4: 6 + 2 + 2 runs per batch, two batches.
    assert_eq!(first.model_runs, 2 * 10);
    for (s, out) in input.iter().zip(&first.slices) {
        let mask = s.mask.as_ref().unwrap();
        for i in 0..s.values.len() {
            if mask[i] == 0 {
                assert_eq!(out.values[i].to_bits(), s.values[i].to_bits());
            }
        }
    }
    let second = e.inpaint_series(&request(input)).unwrap();
    assert!(bits(&first) == bits(&second));
}

#[test]
fn every_sampler_runs_and_stays_in_the_intensity_window() {
    for sampler in ["ddpm", "ddim", "dpm-solver++"] {
        let e = engine(&tiny("cond"), &format!("sampler = {sampler:?}"), 1).unwrap();
        let input = with_square_masks(phantom(2, 32, 32));
        let result = e.inpaint_series(&request(input.clone())).unwrap();
        let max = input[0].values.iter().copied().fold(f32::MIN, f32::max);
        for out in &result.slices {
            assert!(
                out.values
                    .iter()
                    .all(|v| v.is_finite() && *v >= -1e-3 && *v <= max + 1e-3),
                "{sampler}"
            );
        }
    }
}

#[test]
fn generated_masks_are_inside_the_brain_and_coherent_across_slices() {
    let slices = phantom(12, 40, 40);
    let views: Vec<MaskSlice> = slices
        .iter()
        .map(|s| MaskSlice {
            rows: s.rows,
            cols: s.cols,
            values: &s.values,
            geometry: s.geometry,
        })
        .collect();
    let brain = mask::brain_mask(&views);
    let masks = mask::generate(&views, 7, "series", 0, 1, [15.0, 20.0]);
    let again = mask::generate(&views, 7, "series", 0, 1, [15.0, 20.0]);
    assert_eq!(masks, again, "same seed, same mask");
    let per_slice: Vec<usize> = masks.iter().map(|m| m.iter().filter(|v| **v == 1).count()).collect();
    let touched: Vec<usize> = (0..masks.len()).filter(|&z| per_slice[z] > 0).collect();
    // A 15–20 mm blob with 3 mm slices spans several adjacent slices…
    assert!(touched.len() >= 3, "{per_slice:?}");
    assert!(
        touched.windows(2).all(|w| w[1] == w[0] + 1),
        "blob slices are contiguous: {per_slice:?}"
    );
    for z in 0..masks.len() {
        for i in 0..masks[z].len() {
            assert!(
                masks[z][i] == 0 || brain[z][i] == 1,
                "mask outside the brain at slice {z}"
            );
        }
    }
    // …and adjacent slices overlap in-plane, because the blob lives in patient space.
    for w in touched.windows(2) {
        let overlap = (0..masks[w[0]].len())
            .filter(|&i| masks[w[0]][i] == 1 && masks[w[1]][i] == 1)
            .count();
        assert!(overlap > 0, "slices {} and {} do not overlap", w[0], w[1]);
    }
    // The engine generates them too when no mask is given.
    let e = engine(&tiny("cond"), "[synth.mask]\ndiameter_mm = [15.0, 20.0]", 1).unwrap();
    let result = e.inpaint_series(&request(slices)).unwrap();
    assert!(result.slices.iter().any(|s| s.mask.contains(&1)));
}

#[test]
fn gpu_providers_fall_through_to_cpu_with_reasons_an_admin_can_act_on() {
    let e = engine(&tiny("cond"), "", 1);
    drop(e);
    let model = tiny("cond");
    let runtime = synthd::runtime::init(None).unwrap();
    let mut settings = synth(&model, "");
    settings.providers = vec![ProviderKind::Tensorrt, ProviderKind::Cuda, ProviderKind::Cpu];
    let options = EngineOptions {
        intra_op_threads: 1,
        cache_dir: std::env::temp_dir().join("synthd-engine-test-cache"),
        lanes: 1,
    };
    let e = Engine::new(runtime, &model, &settings, options.clone()).unwrap();
    assert_eq!(e.provider(), ProviderKind::Cpu);
    let reasons = e.provider_fallbacks();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].starts_with("TensorRT provider unavailable: "),
        "{}",
        reasons[0]
    );
    assert!(reasons[1].starts_with("CUDA provider unavailable: "), "{}", reasons[1]);
    assert!(reasons.iter().all(|r| r.contains("from providers")), "{reasons:?}");

    settings.require_gpu = true;
    let error = Engine::new(runtime, &model, &settings, options.clone())
        .err()
        .expect("require_gpu must fail here");
    let text = error.to_string();
    assert!(matches!(error, SynthError::GpuRequired { .. }), "{text}");
    assert!(
        text.contains("require_gpu = true") && text.contains("CUDA provider unavailable"),
        "{text}"
    );

    settings.providers = vec![ProviderKind::Cuda];
    settings.require_gpu = false;
    let error = Engine::new(runtime, &model, &settings, options)
        .err()
        .expect("no provider");
    assert!(matches!(error, SynthError::NoProvider { .. }), "{error}");
}

fn copy_with_manifest(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let model = dir.join("tiny-cond.onnx");
    std::fs::copy(tiny("cond"), &model).unwrap();
    let manifest = std::fs::read_to_string(tiny("cond").with_extension("toml")).unwrap();
    std::fs::write(dir.join("tiny-cond.toml"), edit(manifest)).unwrap();
    model
}

#[test]
fn a_model_that_disagrees_with_its_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = copy_with_manifest(dir.path(), |m| m.replace("height = 32", "height = 64"));
    let error = engine(&model, "", 1).err().expect("geometry mismatch");
    let text = error.to_string();
    assert!(text.contains("tiny-cond.onnx disagrees with its manifest"), "{text}");
    assert!(
        text.contains("input `sample` axis 2 is 32; the manifest implies 64"),
        "{text}"
    );

    let model = copy_with_manifest(dir.path(), |m| {
        m.replace("cond = [\"masked_image\", \"mask\"]", "cond = []")
    });
    let text = engine(&model, "", 1).err().expect("cond mismatch").to_string();
    assert!(text.contains("`cond` input but inputs.cond is empty"), "{text}");

    let model = copy_with_manifest(dir.path(), |m| {
        let start = m.find("sha256 = \"").unwrap() + 10;
        format!("{}{}{}", &m[..start], "0".repeat(64), &m[start + 64..])
    });
    let text = engine(&model, "", 1).err().expect("sha mismatch").to_string();
    assert!(text.contains("sha256 of the file is"), "{text}");

    let model = copy_with_manifest(dir.path(), |m| m.replace("[output]", "[output]\nmystery = 1"));
    let text = engine(&model, "", 1).err().expect("unknown key").to_string();
    assert!(text.contains("unknown field `mystery`"), "{text}");

    let runtime = synthd::runtime::init(None).unwrap();
    synthd::synth::contract::validate_model(runtime, &tiny("cond"))
        .expect("the committed tiny model matches its manifest");
    synthd::synth::contract::validate_model(runtime, &tiny("uncond"))
        .expect("the committed tiny model matches its manifest");
}

#[test]
fn bad_slices_are_errors_not_panics() {
    let e = engine(&tiny("cond"), "", 1).unwrap();
    let mut input = with_square_masks(phantom(2, 32, 32));
    input[1].values.pop();
    let error = e.inpaint_series(&request(input)).unwrap_err();
    assert!(matches!(error, SynthError::BadSlice { index: 1, .. }), "{error}");
    let mut input = with_square_masks(phantom(1, 32, 32));
    input[0].values[3] = f32::NAN;
    assert!(matches!(
        e.inpaint_series(&request(input)).unwrap_err(),
        SynthError::BadSlice { index: 0, .. }
    ));
    assert!(matches!(
        e.inpaint_series(&request(Vec::new())).unwrap_err(),
        SynthError::EmptyRequest
    ));
}

#[test]
fn guidance_without_class_labels_is_a_clear_setting_error() {
    let text = refusal(&tiny("cond"), "guidance = 3.0");
    assert!(
        text.contains("synth.guidance") && text.contains("set guidance = 1.0"),
        "{text}"
    );
}

#[test]
fn a_steps_offset_past_the_last_training_timestep_is_a_clear_setting_error() {
    // Six "leading" steps of T = 1000 end at t = 830; 170 more is t = 1000.
    let text = refusal(&tiny("cond"), "steps_offset = 170");
    assert!(
        text.contains("synth.steps_offset") && text.contains("t = 1000") && text.contains("at most 169"),
        "{text}"
    );
    assert!(engine(&tiny("cond"), "steps_offset = 169", 1).is_ok());
}

#[test]
fn every_sampler_runs_with_every_timestep_spacing() {
    let input = with_square_masks(phantom(2, 32, 32));
    for sampler in ["ddpm", "ddim", "dpm-solver++"] {
        for spacing in ["linspace", "leading", "trailing"] {
            let extra = format!("sampler = \"{sampler}\"\ntimestep_spacing = \"{spacing}\"");
            let result = engine(&tiny("cond"), &extra, 1)
                .unwrap()
                .inpaint_series(&request(input.clone()))
                .unwrap_or_else(|e| panic!("{sampler} {spacing}: {e}"));
            assert!(result.slices.iter().all(|s| s.values.iter().all(|v| v.is_finite())));
        }
    }
}

#[test]
fn guidance_and_learned_variance_run_as_a_doubled_batch_and_stay_deterministic() {
    let input = with_square_masks(phantom(5, 32, 32));
    let run = |extra: &str| {
        let e = engine(&tiny("guided"), extra, 1).unwrap();
        assert!(e.manifest().output.learned_variance);
        e.inpaint_series(&request(input.clone())).unwrap()
    };
    let guided_b2 = run("sampler = \"ddpm\"\nguidance = 3.0\nbatch = 2");
    let guided_b5 = run("sampler = \"ddpm\"\nguidance = 3.0\nbatch = 5");
    let unguided = run("sampler = \"ddpm\"\nguidance = 1.0\nbatch = 5");
    assert!(
        bits(&guided_b2) == bits(&guided_b5),
        "guided output depends on the batch size"
    );
    assert!(bits(&guided_b5) != bits(&unguided), "guidance had no effect");
    assert_eq!(
        guided_b2.model_runs,
        3 * 6,
        "three batches (2 + 2 + 1), one doubled run per step"
    );
    for (s, out) in input.iter().zip(&guided_b5.slices) {
        let mask = s.mask.as_ref().unwrap();
        for i in 0..s.values.len() {
            if mask[i] == 0 {
                assert_eq!(out.values[i].to_bits(), s.values[i].to_bits());
            }
        }
    }
}

#[test]
fn io_binding_path_gives_the_same_bytes_as_plain_runs() {
    // The GPU providers use IO binding; on this machine the same code path
    // runs on the CPU provider and must not change a single bit.
    let input = with_square_masks(phantom(3, 32, 32));
    for (model, extra) in [
        ("cond", "batch = 2"),
        ("guided", "batch = 2\nguidance = 2.0\nsampler = \"ddpm\""),
    ] {
        let plain = engine(&tiny(model), extra, 1).unwrap();
        let mut bound = engine(&tiny(model), extra, 1).unwrap();
        bound.set_io_binding(true);
        let a = plain.inpaint_series(&request(input.clone())).unwrap();
        let b = bound.inpaint_series(&request(input.clone())).unwrap();
        assert!(
            bound.used_io_binding() && !plain.used_io_binding(),
            "{model}: the binding path did not run"
        );
        assert!(bits(&a) == bits(&b), "{model}: IO binding changed the output");
    }
}

#[test]
fn several_series_share_batches_without_changing_any_result() {
    let series = |salt: usize, count: usize| {
        let mut slices = with_square_masks(phantom(count, 32, 32));
        for s in &mut slices {
            s.id = format!("{}.{salt}", s.id);
            for v in &mut s.values {
                *v *= 1.0 + salt as f32 * 0.1;
            }
        }
        SeriesRequest {
            slices,
            variant: salt as u32,
            seed: 42,
            ..SeriesRequest::default()
        }
    };
    let requests = vec![series(1, 2), series(2, 3), series(3, 1)];
    let e = engine(&tiny("cond"), "batch = 4", 1).unwrap();
    let together = e.inpaint_many(&requests);
    for (request, result) in requests.iter().zip(&together) {
        let alone = e.inpaint_series(request).unwrap();
        assert!(
            bits(result.as_ref().unwrap()) == bits(&alone),
            "a series changed when batched with others"
        );
    }
    // A bad request fails alone.
    let mut bad = requests.clone();
    bad[1].slices[0].values.truncate(10);
    let results = e.inpaint_many(&bad);
    assert!(results[0].is_ok() && results[2].is_ok());
    assert!(matches!(results[1], Err(SynthError::BadSlice { index: 0, .. })));
}

#[test]
fn the_engine_can_be_shared_between_stage_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Engine>();
}

#[test]
fn the_first_estimate_anchor_shifts_each_fill_by_one_value_and_needs_a_conditioned_model() {
    let input = with_square_masks(phantom(3, 40, 48));
    let plain = engine(&tiny("cond"), "", 1).unwrap();
    let anchored = engine(&tiny("cond"), "anchor = \"first-estimate\"", 1).unwrap();
    let plain = plain.inpaint_series(&request(input.clone())).unwrap();
    let anchored = anchored.inpaint_series(&request(input.clone())).unwrap();
    let range = input[0].values.iter().fold(0.0f32, |m, v| m.max(*v));
    for ((s, a), b) in input.iter().zip(&anchored.slices).zip(&plain.slices) {
        let mask = s.mask.as_ref().unwrap();
        // Values at the window's ends were clipped there (the tiny model's
        // output is random and often past them): no shift shows through.
        let inside: Vec<usize> = (0..mask.len()).filter(|&i| mask[i] == 1).collect();
        let values = || inside.iter().flat_map(|&i| [a.values[i], b.values[i]]);
        let (low, high) = (values().fold(f32::MAX, f32::min), values().fold(f32::MIN, f32::max));
        let clipped = |v: f32| v <= low + 1e-3 * range || v >= high - 1e-3 * range;
        let shifts: Vec<f32> = inside
            .iter()
            .filter(|&&i| !clipped(a.values[i]) && !clipped(b.values[i]))
            .map(|&i| a.values[i] - b.values[i])
            .collect();
        assert!(shifts.len() * 4 >= inside.len(), "most of the fill is clipped");
        // One shift on the model grid is one shift on the slice (bilinear
        // weights sum to 1); where a grid value met the clip, less of it
        // shows, never more, never the other way.
        let full = shifts
            .iter()
            .copied()
            .fold(0.0f32, |m, d| if d.abs() > m.abs() { d } else { m });
        assert!(full.abs() > 1e-3 * range, "the anchor moved nothing");
        let tolerance = 1e-4 * range;
        let whole = shifts.iter().filter(|d| (**d - full).abs() < tolerance).count();
        assert!(
            whole * 2 > shifts.len(),
            "{whole} of {} pixels moved by {full}",
            shifts.len()
        );
        assert!(shifts.iter().all(|d| d * full.signum() >= -tolerance), "{shifts:?}");
        for i in (0..mask.len()).filter(|&i| mask[i] == 0) {
            assert_eq!(a.values[i].to_bits(), s.values[i].to_bits());
        }
    }
    let text = refusal(&tiny("uncond"), "anchor = \"first-estimate\"");
    assert!(
        text.contains("synth.anchor") && text.contains("unconditioned"),
        "{text}"
    );
}
