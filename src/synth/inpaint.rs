//! Inpainting on model grids. Conditioned models see the known image and the
//! mask through `cond` every step; unconditional models get RePaint
//! (Lugmayr et al. 2022): after every step the known region is replaced by
//! the forward-noised original, with `jump_length`/`jump_n_sample` resampling.
//! Either way the composite keeps every pixel outside the mask exactly.

use super::engine::SliceInput;
use super::error::SynthError;
use super::manifest::{CondChannel, Manifest};
use super::mask::feather_weights;
use super::noise::{fill_normal, slice_rng};
use super::scheduler::{self, NoiseSchedule};
use super::session::ModelSession;
use super::tensor::{Normalization, Placement};
use crate::config::pipeline::{Anchor, Synth};
use rand_chacha::ChaCha20Rng;

/// One slice ready for the model: known image and mask on the H×W grid,
/// plus what the finisher needs to map it back.
pub struct Prepared {
    /// Which request of the call, and which slice of that request.
    pub request: usize,
    pub index: usize,
    pub id: String,
    pub seed: u64,
    pub variant: u32,
    /// The mask at the slice's own size (1 = inpaint).
    pub slice_mask: Vec<u8>,
    pub norm: Normalization,
    pub placement: Placement,
    /// The slice in model units, resampled into the grid, padding at range low.
    pub known: Vec<f32>,
    /// 1 = inpaint, on the grid.
    pub mask: Vec<f32>,
    /// The lesion component of each grid pixel (0 = none, k = the request's
    /// components[k − 1]); empty = every label plane 0 (healthy task).
    pub components: Vec<u8>,
    /// Which label plane each component fills, by component number − 1.
    pub component_planes: Vec<CondChannel>,
    /// The class-label vector of the conditional pass (empty without slots).
    pub class_labels: Vec<f32>,
}

/// Time inside ONNX Runtime.
pub struct Timing {
    pub ort_seconds: f64,
    pub per_step: Vec<f64>,
    pub runs: usize,
}

impl Timing {
    pub fn new(steps: usize) -> Timing {
        Timing {
            ort_seconds: 0.0,
            per_step: vec![0.0; steps],
            runs: 0,
        }
    }
}

/// Runs the sampler over one batch; returns the denoised grids [n·H·W].
pub fn denoise(
    session: &ModelSession,
    manifest: &Manifest,
    schedule: &NoiseSchedule,
    synth: &Synth,
    batch: &[Prepared],
    timing: &mut Timing,
) -> Result<Vec<f32>, SynthError> {
    let hw = (manifest.geometry.height * manifest.geometry.width) as usize;
    let n = batch.len();
    let mut rngs: Vec<ChaCha20Rng> = batch
        .iter()
        .map(|p| slice_rng(p.seed, &p.id, p.variant, "sampler"))
        .collect();
    let draw = |rngs: &mut [ChaCha20Rng]| {
        let mut noise = vec![0.0f32; n * hw];
        for (k, rng) in rngs.iter_mut().enumerate() {
            fill_normal(rng, &mut noise[k * hw..(k + 1) * hw]);
        }
        noise
    };
    let mut x = draw(&mut rngs);
    let known: Vec<f32> = batch.iter().flat_map(|p| p.known.iter().copied()).collect();
    let mask: Vec<f32> = batch.iter().flat_map(|p| p.mask.iter().copied()).collect();
    let conditioned = !manifest.inputs.cond.is_empty();
    let cond = conditioned.then(|| build_cond(manifest, batch, hw));
    let guided = synth.guidance != 1.0;
    let slots = manifest.inputs.class_labels.len();
    let labels: Option<Vec<f32>> = (slots != 0).then(|| {
        // Each slice its own vector: slices of several series (sequences) share batches.
        let mut labels: Vec<f32> = batch
            .iter()
            .flat_map(|p| {
                let mut v = p.class_labels.clone();
                v.resize(slots, 0.0);
                v
            })
            .collect();
        if guided {
            // Classifier-free guidance: the second half of a 2N batch is unconditional.
            labels.extend(std::iter::repeat_n(0.0, n * slots));
        }
        labels
    });
    // Classifier-free guidance doubles the batch: the same x and cond twice.
    let model_n = if guided { 2 * n } else { n };
    let cond = cond.map(|c| {
        if guided {
            [c.as_slice(), c.as_slice()].concat()
        } else {
            c
        }
    });
    let mut buffers = session.buffers(model_n, cond.as_deref(), labels.as_deref())?;
    let eta = synth.eta as f64;
    let steps = synth.steps as usize;
    let mut sampler = scheduler::build(synth.sampler, schedule, steps, eta, scheduler::Spacing::of(synth));
    let timesteps = sampler.timesteps().to_vec();
    let steps = timesteps.len();
    let learned = manifest.output.learned_variance;
    let (jump_length, jump_n_sample) = (synth.jump_length as usize, synth.jump_n_sample as usize);
    let mut jumps_done = vec![0usize; steps + 1];
    let mut first_estimate_means: Option<Vec<f64>> = None;
    let mut index = 0;
    while index < steps {
        let t = timesteps[index];
        let seconds = session.run(&mut buffers, &x, t, index)?;
        crate::metrics::onnx_batch(session.provider.name(), seconds);
        timing.ort_seconds += seconds;
        let slot = index.min(timing.per_step.len().saturating_sub(1));
        timing.per_step[slot] += seconds;
        timing.runs += 1;
        // The common case (no guidance, no learned variance) reads the output in place.
        let (prediction, variance) = if guided || learned {
            let (p, v) = split_output(&buffers.output, n, hw, learned, guided.then_some(synth.guidance));
            (std::borrow::Cow::Owned(p), v)
        } else {
            (std::borrow::Cow::Borrowed(buffers.output.as_slice()), None)
        };
        if prediction.iter().any(|v| !v.is_finite()) {
            return Err(SynthError::NonFinite { step: index });
        }
        if conditioned && synth.anchor == Anchor::FirstEstimate && first_estimate_means.is_none() {
            let estimate = first_estimate(schedule, t, &x, &prediction);
            first_estimate_means = Some(masked_means(&estimate, &mask, hw));
        }
        let noise = sampler.is_stochastic(index).then(|| draw(&mut rngs));
        sampler.step(index, &prediction, variance.as_deref(), &mut x, noise.as_deref());
        let reached = index + 1;
        if !conditioned {
            // RePaint: the known region at the new noise level, q(x_{t−1} | x₀).
            let alpha_bar = schedule.alpha_bar(sampler.previous_timestep(index));
            let eps = draw(&mut rngs);
            for i in 0..x.len() {
                if mask[i] == 0.0 {
                    x[i] = (alpha_bar.sqrt() * known[i] as f64 + (1.0 - alpha_bar).sqrt() * eps[i] as f64) as f32;
                }
            }
            if jump_length > 0
                && jump_n_sample > 1
                && reached < steps
                && reached >= jump_length
                && reached % jump_length == 0
                && jumps_done[reached] + 1 < jump_n_sample
            {
                jumps_done[reached] += 1;
                // Back in time: x_to ~ q(x_to | x_from) = N(√(ᾱ_to/ᾱ_from) x, (1 − ᾱ_to/ᾱ_from) I).
                let back = reached - jump_length;
                let ratio = schedule.alpha_bar(timesteps[back]) / schedule.alpha_bar(timesteps[reached]);
                let eps = draw(&mut rngs);
                for i in 0..x.len() {
                    x[i] = (ratio.sqrt() * x[i] as f64 + (1.0 - ratio).sqrt() * eps[i] as f64) as f32;
                }
                sampler.reset();
                index = back;
                continue;
            }
        }
        index = reached;
    }
    if let Some(targets) = first_estimate_means {
        anchor_means(&mut x, &mask, hw, &targets);
    }
    Ok(x)
}

/// x̂₀ at timestep `t` from the model's output, clipped as the scheduler
/// clips it.
fn first_estimate(schedule: &NoiseSchedule, t: i64, x: &[f32], output: &[f32]) -> Vec<f64> {
    let linear = scheduler::Linear::new(schedule.config.prediction_type, schedule.alpha_bar(t));
    let clip = scheduler::x0_clip(&schedule.config);
    x.iter()
        .zip(output)
        .map(|(&x, &m)| linear.x0_clipped(x as f64, m as f64, clip))
        .collect()
}

/// Each slice's mean of `values` weighted by its grid mask (0 where the mask is empty).
fn masked_means<T: Copy + Into<f64>>(values: &[T], mask: &[f32], hw: usize) -> Vec<f64> {
    values
        .chunks(hw)
        .zip(mask.chunks(hw))
        .map(|(v, m)| {
            let weight: f64 = m.iter().map(|&w| w as f64).sum();
            let sum: f64 = v.iter().zip(m).map(|(&v, &w)| v.into() * w as f64).sum();
            if weight > 0.0 {
                sum / weight
            } else {
                0.0
            }
        })
        .collect()
}

/// `[synth] anchor = "first-estimate"`: shifts each slice's grid so that its
/// in-mask mean is `targets`' (outside the mask the composite keeps the source).
fn anchor_means(x: &mut [f32], mask: &[f32], hw: usize, targets: &[f64]) {
    let means = masked_means(x, mask, hw);
    for ((slice, mean), target) in x.chunks_mut(hw).zip(means).zip(targets) {
        let shift = target - mean;
        for v in slice {
            *v = (*v as f64 + shift) as f32;
        }
    }
}

/// Splits [N, C(·2), H, W] into the prediction and (learned) variance, and
/// applies guidance w: ε = ε_u + w (ε_c − ε_u) over a 2N output.
pub fn split_output(
    output: &[f32],
    n: usize,
    hw: usize,
    learned: bool,
    guidance: Option<f32>,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let per = if learned { 2 * hw } else { hw };
    let half = |k: usize| &output[k * per..(k + 1) * per];
    let mut prediction = Vec::with_capacity(n * hw);
    let mut variance = learned.then(|| Vec::with_capacity(n * hw));
    for k in 0..n {
        let conditional = half(k);
        match guidance {
            Some(w) => {
                let unconditional = half(n + k);
                prediction.extend(
                    conditional[..hw]
                        .iter()
                        .zip(&unconditional[..hw])
                        .map(|(&c, &u)| u + w * (c - u)),
                );
            }
            None => prediction.extend_from_slice(&conditional[..hw]),
        }
        if let Some(v) = variance.as_mut() {
            v.extend_from_slice(&conditional[hw..]);
        }
    }
    (prediction, variance)
}

/// cond planes per the manifest, per slice: [N, K, H, W].
fn build_cond(manifest: &Manifest, batch: &[Prepared], hw: usize) -> Vec<f32> {
    let mut cond = Vec::with_capacity(batch.len() * manifest.inputs.cond.len() * hw);
    for p in batch {
        for channel in &manifest.inputs.cond {
            match channel {
                CondChannel::MaskedImage => cond.extend(p.known.iter().zip(&p.mask).map(|(&v, &m)| v * (1.0 - m))),
                CondChannel::Mask => cond.extend_from_slice(&p.mask),
                CondChannel::Label(_) => {
                    let plane = p.component_planes.iter().position(|c| c == channel);
                    match plane.filter(|_| !p.components.is_empty()) {
                        Some(k) => cond.extend(p.components.iter().map(|&v| f32::from(u8::from(v as usize == k + 1)))),
                        None => cond.extend(std::iter::repeat_n(0.0, hw)),
                    }
                }
            }
        }
    }
    cond
}

/// The synthetic grid back onto the slice: model units → real-world values,
/// resampled to rows × cols, blended in under the mask. Outside the mask the
/// input value is copied, so it is bit-identical.
pub fn composite(
    slice: &SliceInput,
    mask: &[u8],
    norm: &Normalization,
    placement: &Placement,
    grid: &[f32],
    feather_px: u32,
) -> Vec<f32> {
    let real: Vec<f32> = grid
        .iter()
        .map(|&v| norm.inverse(v.clamp(norm.range[0], norm.range[1])))
        .collect();
    let synthetic = placement.from_grid(&real);
    let weights = feather_weights(mask, slice.rows, slice.cols, feather_px);
    slice
        .values
        .iter()
        .zip(&synthetic)
        .zip(mask.iter().zip(&weights))
        .map(|((&original, &synth), (&m, &w))| {
            if m == 0 {
                original
            } else if w >= 1.0 {
                synth
            } else {
                w * synth + (1.0 - w) * original
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guidance_combines_conditional_and_unconditional_halves() {
        // n = 1, hw = 2, learned variance: [cond pred, cond var, uncond pred, uncond var].
        let output = [1.0, 2.0, 0.5, 0.5, 0.0, 0.0, 9.0, 9.0];
        let (prediction, variance) = split_output(&output, 1, 2, true, Some(3.0));
        assert_eq!(prediction, vec![3.0, 6.0], "ε_u + w (ε_c − ε_u)");
        assert_eq!(variance, Some(vec![0.5, 0.5]), "variance from the conditional pass");
        let (prediction, variance) = split_output(&output[..4], 2, 2, false, None);
        assert_eq!(prediction, vec![1.0, 2.0, 0.5, 0.5]);
        assert_eq!(variance, None);
    }

    #[test]
    fn anchoring_moves_each_slices_masked_mean_to_its_target_and_keeps_its_texture() {
        // Two slices of hw = 4; the first masked on two pixels, the second on
        // one pixel fully and one at half weight.
        let mut x = vec![0.2f32, 0.6, 5.0, 5.0, -0.4, 0.0, 0.8, 7.0];
        let mask = [1.0f32, 1.0, 0.0, 0.0, 1.0, 0.0, 0.5, 0.0];
        let before = x.clone();
        let targets = [0.0, 0.1];
        anchor_means(&mut x, &mask, 4, &targets);
        let means = masked_means(&x, &mask, 4);
        for (mean, target) in means.iter().zip(targets) {
            assert!((mean - target).abs() < 1e-6, "{means:?}");
        }
        // One shift per slice: differences between pixels stay as they were.
        assert!((x[1] - x[0] - (before[1] - before[0])).abs() < 1e-6);
        assert!((x[6] - x[4] - (before[6] - before[4])).abs() < 1e-6);
        assert!(
            (x[0] - (0.2 - 0.4)).abs() < 1e-6,
            "slice 1 mean 0.4 moved to 0.0: {x:?}"
        );
    }
}
