//! DDPM ancestral sampling (Ho et al. 2020): x_{t−1} drawn from the posterior
//! q(x_{t−1} | x_t, x̂₀) with mean μ̃_t (eq. 7) and variance β̃_t or β_t,
//! skipping timesteps as diffusers' DDPMScheduler does: any
//! `timestep_spacing` (default "leading"), the previous timestep being the
//! next one in the list (−1, ᾱ = 1, after the last).

use super::{spaced_timesteps, Linear, NoiseSchedule, Sampler, Spacing};
use crate::synth::manifest::VarianceType;

pub struct Ddpm {
    schedule: NoiseSchedule,
    timesteps: Vec<i64>,
}

impl Ddpm {
    pub fn new(schedule: NoiseSchedule, steps: usize, spacing: Spacing) -> Ddpm {
        let train = schedule.num_train_timesteps();
        let steps = steps.clamp(1, train as usize);
        Ddpm {
            timesteps: spaced_timesteps(spacing, train, steps),
            schedule,
        }
    }
}

impl Sampler for Ddpm {
    fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    fn previous_timestep(&self, index: usize) -> i64 {
        self.timesteps.get(index + 1).copied().unwrap_or(-1)
    }

    fn is_stochastic(&self, index: usize) -> bool {
        self.timesteps[index] > 0
    }

    fn step(
        &mut self,
        index: usize,
        model_output: &[f32],
        variance: Option<&[f32]>,
        sample: &mut [f32],
        noise: Option<&[f32]>,
    ) {
        let config = &self.schedule.config;
        let t = self.timesteps[index];
        let alpha_bar_t = self.schedule.alpha_bar(t);
        let alpha_bar_prev = self.schedule.alpha_bar(self.previous_timestep(index));
        let beta_bar_t = 1.0 - alpha_bar_t;
        let beta_bar_prev = 1.0 - alpha_bar_prev;
        let alpha_t = alpha_bar_t / alpha_bar_prev;
        let beta_t = 1.0 - alpha_t;
        // Posterior mean coefficients μ̃_t = c₀·x̂₀ + c_t·x_t (Ho et al. eq. 7).
        let coeff_x0 = alpha_bar_prev.sqrt() * beta_t / beta_bar_t;
        let coeff_xt = alpha_t.sqrt() * beta_bar_prev / beta_bar_t;
        // β̃_t, the posterior variance, clamped like diffusers before any log.
        let beta_tilde = (beta_bar_prev / beta_bar_t * beta_t).max(1e-20);
        let clip = super::x0_clip(config);
        let add_noise = t > 0;
        let linear = Linear::new(config.prediction_type, alpha_bar_t);
        for i in 0..sample.len() {
            let x = sample[i] as f64;
            let x0 = linear.x0_clipped(x, model_output[i] as f64, clip);
            let mut next = coeff_x0 * x0 + coeff_xt * x;
            if add_noise {
                let z = noise.map_or(0.0, |n| n[i] as f64);
                let std = match config.variance_type {
                    VarianceType::FixedSmall => beta_tilde.sqrt(),
                    VarianceType::FixedLarge => beta_t.sqrt(),
                    VarianceType::Learned => (variance.map_or(beta_tilde, |v| v[i] as f64)).sqrt(),
                    VarianceType::LearnedRange => {
                        // Nichol & Dhariwal 2021: interpolate log β̃_t and log β_t by v ∈ [−1, 1].
                        let frac = (variance.map_or(-1.0, |v| v[i] as f64) + 1.0) / 2.0;
                        let log_var = frac * beta_t.ln() + (1.0 - frac) * beta_tilde.ln();
                        (0.5 * log_var).exp()
                    }
                };
                next += std * z;
            }
            sample[i] = next as f32;
        }
    }
}
