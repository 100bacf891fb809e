//! Samplers over a trained noise schedule, one file each, matching diffusers'
//! DDPMScheduler, DDIMScheduler and DPMSolverMultistepScheduler step for step
//! (fixtures/schedulers/*.json hold the parity vectors).
//!
//! Values follow diffusers' float32 arithmetic where it matters: β and ᾱ are
//! rounded to f32 exactly as torch computes them; per-pixel maths runs in f64
//! and is rounded to f32 once per step.

pub mod ddim;
pub mod ddpm;
pub mod dpm_solver;

use super::manifest::{BetaSchedule, PredictionType, SchedulerConfig, VarianceType};
use crate::config::pipeline::{SamplerKind, Synth, TimestepSpacing};

/// ᾱ_t (alphas_cumprod) for t = 0..T, as diffusers holds them (f32 values).
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    pub alphas_cumprod: Vec<f64>,
    pub config: SchedulerConfig,
}

impl NoiseSchedule {
    pub fn new(config: &SchedulerConfig) -> NoiseSchedule {
        let t = config.num_train_timesteps as usize;
        let betas: Vec<f32> = match (&config.trained_betas, config.beta_schedule) {
            (Some(betas), _) => betas.iter().map(|&b| b as f32).collect(),
            (None, BetaSchedule::Linear) => linspace_f32(config.beta_start as f32, config.beta_end as f32, t),
            (None, BetaSchedule::ScaledLinear) => {
                linspace_f32(config.beta_start.sqrt() as f32, config.beta_end.sqrt() as f32, t)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
            (None, BetaSchedule::SquaredcosCapV2) => cosine_betas(t),
        };
        // torch.cumprod on CPU accumulates float32 in double and stores f32.
        let mut running = 1.0f64;
        let alphas_cumprod = betas
            .iter()
            .map(|&beta| {
                running *= (1.0f32 - beta) as f64;
                running as f32 as f64
            })
            .collect();
        NoiseSchedule {
            alphas_cumprod,
            config: config.clone(),
        }
    }

    /// ᾱ at a timestep; negative timesteps (past the end) mean ᾱ = 1.
    pub fn alpha_bar(&self, timestep: i64) -> f64 {
        if timestep < 0 {
            1.0
        } else {
            self.alphas_cumprod[timestep as usize]
        }
    }

    pub fn num_train_timesteps(&self) -> i64 {
        self.config.num_train_timesteps as i64
    }
}

/// torch.linspace for float32 on CPU: the first half counts up from `start`,
/// the second half down from `end`, with a float32 step.
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

/// Nichol & Dhariwal 2021's cosine schedule (diffusers' betas_for_alpha_bar,
/// max_beta 0.999), computed in f64 and rounded to f32 like diffusers.
fn cosine_betas(t: usize) -> Vec<f32> {
    let alpha_bar = |x: f64| ((x + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
    (0..t)
        .map(|i| {
            let t1 = i as f64 / t as f64;
            let t2 = (i + 1) as f64 / t as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// A sampler's timestep spacing with diffusers' `steps_offset` (which only
/// "leading" uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spacing {
    pub kind: TimestepSpacing,
    pub steps_offset: i64,
}

impl Spacing {
    /// What a pipeline asks for (its sampler's diffusers default when unset).
    pub fn of(synth: &Synth) -> Spacing {
        Spacing {
            kind: synth.spacing(),
            steps_offset: synth.steps_offset as i64,
        }
    }

    /// The diffusers default of a sampler, steps_offset 0.
    pub fn default_for(sampler: SamplerKind) -> Spacing {
        Spacing {
            kind: sampler.default_spacing(),
            steps_offset: 0,
        }
    }
}

/// diffusers' "leading" spacing with steps_offset 0: t = i·⌊T/n⌋, descending.
pub fn leading_timesteps(train: i64, steps: usize) -> Vec<i64> {
    let ratio = train / steps as i64;
    (0..steps as i64).rev().map(|i| i * ratio).collect()
}

/// numpy's round: half to even.
pub(crate) fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// `np.linspace(0, stop, num).round()`, ascending: numpy computes i·step with
/// step = stop/(num−1) and sets the endpoint exactly; one point is 0.
pub(crate) fn linspace_rounded(stop: f64, num: usize) -> Vec<i64> {
    if num == 1 {
        return vec![0];
    }
    let step = stop / (num - 1) as f64;
    (0..num)
        .map(|i| {
            let value = if i == num - 1 { stop } else { i as f64 * step };
            round_half_even(value) as i64
        })
        .collect()
}

/// diffusers' "trailing" spacing: `np.round(np.arange(T, 0, −T/n)) − 1`.
/// numpy's float arange fills start + i·((start − T/n) − start), reproduced
/// here. For 62 values of n ≤ 1000 (61, 103, 121, ...) its length rounds up to
/// n + 1 and diffusers gets a spurious last timestep −1; synthd takes n.
pub(crate) fn trailing_timesteps(train: i64, steps: usize) -> Vec<i64> {
    let start = train as f64;
    let step = start / steps as f64;
    let second = start - step;
    let delta = second - start;
    (0..steps)
        .map(|i| {
            let value = match i {
                0 => start,
                1 => second,
                _ => start + i as f64 * delta,
            };
            round_half_even(value) as i64 - 1
        })
        .collect()
}

/// The timesteps a sampler visits, noisiest first, as its diffusers
/// scheduler's `set_timesteps(n)` makes them.
pub fn timesteps(kind: SamplerKind, spacing: Spacing, train: i64, steps: usize) -> Vec<i64> {
    match (kind, spacing.kind) {
        (SamplerKind::Ddpm | SamplerKind::Ddim, _) | (_, TimestepSpacing::Trailing) => {
            spaced_timesteps(spacing, train, steps)
        }
        // DPMSolverMultistepScheduler (lambda_min_clipped −∞, so its
        // last_timestep is T): n + 1 points, the last (t = 0) dropped.
        (SamplerKind::DpmSolverPlusPlus, TimestepSpacing::Linspace) => {
            let mut points = linspace_rounded((train - 1) as f64, steps + 1);
            points.reverse();
            points.pop();
            points
        }
        (SamplerKind::DpmSolverPlusPlus, TimestepSpacing::Leading) => {
            let mut points = leading_timesteps(train, steps + 1);
            points.pop();
            points.into_iter().map(|t| t + spacing.steps_offset).collect()
        }
    }
}

/// DDPMScheduler's and DDIMScheduler's `set_timesteps`: n timesteps, noisiest first.
pub fn spaced_timesteps(spacing: Spacing, train: i64, steps: usize) -> Vec<i64> {
    match spacing.kind {
        TimestepSpacing::Linspace => {
            let mut timesteps = linspace_rounded((train - 1) as f64, steps);
            timesteps.reverse();
            timesteps
        }
        TimestepSpacing::Leading => leading_timesteps(train, steps)
            .into_iter()
            .map(|t| t + spacing.steps_offset)
            .collect(),
        TimestepSpacing::Trailing => trailing_timesteps(train, steps),
    }
}

/// x̂₀ from a model prediction (Ho et al. 2020 eq. 15 for ε; v-prediction per Salimans & Ho 2022).
#[inline]
pub fn predict_x0(prediction: PredictionType, alpha_bar: f64, sample: f64, model_output: f64) -> f64 {
    let beta_bar = 1.0 - alpha_bar;
    match prediction {
        PredictionType::Epsilon => (sample - beta_bar.sqrt() * model_output) / alpha_bar.sqrt(),
        PredictionType::Sample => model_output,
        PredictionType::VPrediction => alpha_bar.sqrt() * sample - beta_bar.sqrt() * model_output,
    }
}

/// ε̂ from a model prediction.
#[inline]
pub fn predict_epsilon(prediction: PredictionType, alpha_bar: f64, sample: f64, model_output: f64) -> f64 {
    let beta_bar = 1.0 - alpha_bar;
    match prediction {
        PredictionType::Epsilon => model_output,
        PredictionType::Sample => (sample - alpha_bar.sqrt() * model_output) / beta_bar.sqrt(),
        PredictionType::VPrediction => alpha_bar.sqrt() * model_output + beta_bar.sqrt() * sample,
    }
}

/// x̂₀ and ε̂ are linear in (x_t, model output) for every prediction type:
/// x̂₀ = a·x + b·m and ε̂ = c·x + d·m. Hoisting the coefficients out of the
/// per-pixel loop leaves two multiply-adds per pixel.
#[derive(Debug, Clone, Copy)]
pub struct Linear {
    pub x0: [f64; 2],
    pub eps: [f64; 2],
}

impl Linear {
    pub fn new(prediction: PredictionType, alpha_bar: f64) -> Linear {
        let (sa, sb) = (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt());
        match prediction {
            PredictionType::Epsilon => Linear {
                x0: [1.0 / sa, -sb / sa],
                eps: [0.0, 1.0],
            },
            PredictionType::Sample => Linear {
                x0: [0.0, 1.0],
                eps: [1.0 / sb, -sa / sb],
            },
            PredictionType::VPrediction => Linear {
                x0: [sa, -sb],
                eps: [sb, sa],
            },
        }
    }

    #[inline]
    pub fn x0(&self, x: f64, m: f64) -> f64 {
        self.x0[0] * x + self.x0[1] * m
    }

    /// x̂₀ held to `clip` (see [`x0_clip`]), as the schedulers use it.
    #[inline]
    pub fn x0_clipped(&self, x: f64, m: f64, clip: Option<f64>) -> f64 {
        let x0 = self.x0(x, m);
        clip.map_or(x0, |range| x0.clamp(-range, range))
    }

    #[inline]
    pub fn eps(&self, x: f64, m: f64) -> f64 {
        self.eps[0] * x + self.eps[1] * m
    }
}

/// `clip_sample`'s bound on x̂₀, when the scheduler clips.
pub fn x0_clip(config: &SchedulerConfig) -> Option<f64> {
    config.clip_sample.then_some(config.clip_sample_range)
}

/// One sampler run over a batch: its timesteps and the update x_t → x_{t−1}.
///
/// Buffers are flat [N·C·H·W]. Each element's update depends only on that
/// element (and its own history), so results do not depend on batch make-up.
pub trait Sampler: Send {
    /// Model timesteps, first (noisiest) to last.
    fn timesteps(&self) -> &[i64];
    /// The timestep reached after step `index` (−1 = fully denoised).
    fn previous_timestep(&self, index: usize) -> i64;
    /// Whether step `index` adds fresh noise, to be drawn by the caller.
    fn is_stochastic(&self, index: usize) -> bool;
    /// x_t → x_{t−1} in place. `variance` is the model's variance channel(s)
    /// for learned-variance models; `noise` is given when `is_stochastic`.
    fn step(
        &mut self,
        index: usize,
        model_output: &[f32],
        variance: Option<&[f32]>,
        sample: &mut [f32],
        noise: Option<&[f32]>,
    );
    /// Forget multistep history (after a RePaint jump back in time).
    fn reset(&mut self) {}
}

/// Why a sampler configuration cannot run on this schedule: every timestep
/// must be a training timestep (0 … T−1), which a large "leading"
/// `steps_offset` can break. `build` expects a configuration that passes.
pub fn check(kind: SamplerKind, schedule: &NoiseSchedule, steps: usize, spacing: Spacing) -> Result<(), String> {
    let train = schedule.num_train_timesteps();
    let steps = steps.clamp(1, train as usize);
    let first = timesteps(kind, spacing, train, steps).into_iter().max().unwrap_or(0);
    if first >= train {
        return Err(format!(
            "steps_offset {} puts the first of {steps} {} steps at t = {first}, past the model's last training timestep {}; \
             use a steps_offset of at most {}",
            spacing.steps_offset,
            kind.name(),
            train - 1,
            spacing.steps_offset - (first - (train - 1))
        ));
    }
    Ok(())
}

/// Builds the sampler a pipeline asks for.
pub fn build(
    kind: SamplerKind,
    schedule: &NoiseSchedule,
    steps: usize,
    eta: f64,
    spacing: Spacing,
) -> Box<dyn Sampler> {
    match kind {
        SamplerKind::Ddpm => Box::new(ddpm::Ddpm::new(schedule.clone(), steps, spacing)),
        SamplerKind::Ddim => Box::new(ddim::Ddim::new(schedule.clone(), steps, eta, spacing)),
        SamplerKind::DpmSolverPlusPlus => {
            Box::new(dpm_solver::DpmSolverPlusPlus::new(schedule.clone(), steps, spacing))
        }
    }
}

/// Whether the variance type reads a model-predicted variance channel.
pub fn is_learned(variance: VarianceType) -> bool {
    matches!(variance, VarianceType::Learned | VarianceType::LearnedRange)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_spacing_matches_diffusers() {
        assert_eq!(
            leading_timesteps(1000, 10),
            vec![900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
        );
        assert_eq!(leading_timesteps(1000, 3), vec![666, 333, 0]);
    }

    #[test]
    fn every_spacing_matches_diffusers_for_25_steps() {
        let spacing = |kind| Spacing { kind, steps_offset: 0 };
        let ddim = |kind| spaced_timesteps(spacing(kind), 1000, 25);
        assert_eq!(ddim(TimestepSpacing::Leading)[..3], [960, 920, 880]);
        assert_eq!(ddim(TimestepSpacing::Linspace)[..3], [999, 957, 916]);
        assert_eq!(ddim(TimestepSpacing::Trailing)[..3], [999, 959, 919]);
        assert_eq!(*ddim(TimestepSpacing::Trailing).last().unwrap(), 39);
        let offset = Spacing {
            kind: TimestepSpacing::Leading,
            steps_offset: 1,
        };
        assert_eq!(spaced_timesteps(offset, 1000, 4), vec![751, 501, 251, 1]);
        // numpy's half-to-even: linspace(0, 999, 3) = [0, 499.5, 999] rounds to 500.
        assert_eq!(linspace_rounded(999.0, 3), vec![0, 500, 999]);
        assert_eq!(linspace_rounded(999.0, 1), vec![0]);
        // Where numpy's arange would add a 62nd element (−1), synthd keeps 61.
        let trailing = trailing_timesteps(1000, 61);
        assert_eq!((trailing.len(), trailing[60]), (61, 15));
    }

    #[test]
    fn alphas_cumprod_decrease_from_near_one() {
        for schedule in [
            BetaSchedule::Linear,
            BetaSchedule::ScaledLinear,
            BetaSchedule::SquaredcosCapV2,
        ] {
            let config = SchedulerConfig {
                beta_schedule: schedule,
                ..SchedulerConfig::default()
            };
            let s = NoiseSchedule::new(&config);
            assert!(s.alphas_cumprod[0] > 0.99 && s.alphas_cumprod[0] < 1.0);
            assert!(s.alphas_cumprod.windows(2).all(|w| w[1] < w[0]));
        }
    }
}
