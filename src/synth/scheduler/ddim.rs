//! DDIM (Song et al. 2021): x_{t−1} = √ᾱ_{t−1} x̂₀ + √(1−ᾱ_{t−1}−σ_t²) ε̂ + σ_t z
//! with σ_t(η) = η √((1−ᾱ_{t−1})/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_{t−1}); η = 0 is
//! deterministic. As diffusers' DDIMScheduler: any `timestep_spacing`
//! (default "leading"), the previous timestep t − ⌊T/n⌋ whatever the spacing
//! (as diffusers computes it), set_alpha_to_one = true (ᾱ past the last step
//! is 1), ε̂ from the unclipped x̂₀.

use super::{spaced_timesteps, Linear, NoiseSchedule, Sampler, Spacing};

pub struct Ddim {
    schedule: NoiseSchedule,
    timesteps: Vec<i64>,
    ratio: i64,
    eta: f64,
}

impl Ddim {
    pub fn new(schedule: NoiseSchedule, steps: usize, eta: f64, spacing: Spacing) -> Ddim {
        let train = schedule.num_train_timesteps();
        let steps = steps.clamp(1, train as usize);
        Ddim {
            timesteps: spaced_timesteps(spacing, train, steps),
            ratio: train / steps as i64,
            schedule,
            eta,
        }
    }
}

impl Sampler for Ddim {
    fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    fn previous_timestep(&self, index: usize) -> i64 {
        self.timesteps[index] - self.ratio
    }

    fn is_stochastic(&self, _index: usize) -> bool {
        self.eta > 0.0
    }

    fn step(
        &mut self,
        index: usize,
        model_output: &[f32],
        _variance: Option<&[f32]>,
        sample: &mut [f32],
        noise: Option<&[f32]>,
    ) {
        let config = &self.schedule.config;
        let t = self.timesteps[index];
        let alpha_bar_t = self.schedule.alpha_bar(t);
        let alpha_bar_prev = self.schedule.alpha_bar(self.previous_timestep(index));
        let beta_bar_t = 1.0 - alpha_bar_t;
        let beta_bar_prev = 1.0 - alpha_bar_prev;
        let variance = beta_bar_prev / beta_bar_t * (1.0 - alpha_bar_t / alpha_bar_prev);
        let sigma_t = self.eta * variance.sqrt();
        let direction = (1.0 - alpha_bar_prev - sigma_t * sigma_t).max(0.0).sqrt();
        let clip = super::x0_clip(config);
        let linear = Linear::new(config.prediction_type, alpha_bar_t);
        for i in 0..sample.len() {
            let x = sample[i] as f64;
            let output = model_output[i] as f64;
            let x0 = linear.x0_clipped(x, output, clip);
            let eps = linear.eps(x, output);
            let mut next = alpha_bar_prev.sqrt() * x0 + direction * eps;
            if self.eta > 0.0 {
                next += sigma_t * noise.map_or(0.0, |n| n[i] as f64);
            }
            sample[i] = next as f32;
        }
    }
}
