//! DPM-Solver++(2M) (Lu et al. 2022): the multistep second-order solver in
//! data prediction (x̂₀) form, as diffusers' DPMSolverMultistepScheduler with
//! its defaults (solver_order 2, midpoint, lower_order_final, final σ = 0)
//! and any `timestep_spacing` (default "linspace", which starts at t = T−1
//! where a cosine schedule has ᾱ ≈ 0). In the half-log-SNR λ = log α − log σ:
//!   first order:  x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D₀
//!   second order: … − ½ α_t (e^{−h} − 1) D₁, D₁ = (D₀ − D₋₁)/r, r = h₋₁/h.

use super::{Linear, NoiseSchedule, Sampler, Spacing};
use crate::config::pipeline::SamplerKind;

pub struct DpmSolverPlusPlus {
    schedule: NoiseSchedule,
    timesteps: Vec<i64>,
    /// σ (diffusers' sigma = √((1−ᾱ)/ᾱ)) per step, plus the final 0.
    sigmas: Vec<f64>,
    previous_x0: Option<Vec<f64>>,
    /// Reused buffer for this step's D₀, swapped into `previous_x0`.
    spare: Vec<f64>,
}

impl DpmSolverPlusPlus {
    pub fn new(schedule: NoiseSchedule, steps: usize, spacing: Spacing) -> DpmSolverPlusPlus {
        let train = schedule.num_train_timesteps();
        let steps = steps.clamp(1, train as usize);
        let timesteps = super::timesteps(SamplerKind::DpmSolverPlusPlus, spacing, train, steps);
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| {
                let a = schedule.alphas_cumprod[t as usize] as f32;
                (((1.0f32 - a) / a).sqrt()) as f64
            })
            .collect();
        sigmas.push(0.0);
        DpmSolverPlusPlus {
            schedule,
            timesteps,
            sigmas,
            previous_x0: None,
            spare: Vec::new(),
        }
    }

    /// (α, σ, λ) of diffusers' sigma: α = 1/√(σ²+1), σ_t = σ α.
    fn alpha_sigma_lambda(sigma: f64) -> (f64, f64, f64) {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        let sigma_t = sigma * alpha;
        (alpha, sigma_t, alpha.ln() - sigma_t.ln())
    }
}

impl Sampler for DpmSolverPlusPlus {
    fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    fn previous_timestep(&self, index: usize) -> i64 {
        self.timesteps.get(index + 1).copied().unwrap_or(-1)
    }

    fn is_stochastic(&self, _index: usize) -> bool {
        false
    }

    fn step(
        &mut self,
        index: usize,
        model_output: &[f32],
        _variance: Option<&[f32]>,
        sample: &mut [f32],
        _noise: Option<&[f32]>,
    ) {
        let prediction = self.schedule.config.prediction_type;
        let (alpha_s, sigma_s, lambda_s) = Self::alpha_sigma_lambda(self.sigmas[index]);
        let linear = Linear::new(prediction, alpha_s * alpha_s);
        let mut x0 = std::mem::take(&mut self.spare);
        x0.clear();
        x0.extend(
            sample
                .iter()
                .zip(model_output)
                .map(|(&x, &m)| linear.x0(x as f64, m as f64)),
        );
        let sigma_next = self.sigmas[index + 1];
        let last = index + 1 == self.timesteps.len();
        if sigma_next == 0.0 {
            // Final σ = 0: α_t = 1, e^{−h} = 0, so x_t = D₀ (first or second order alike).
            for (s, &d) in sample.iter_mut().zip(&x0) {
                *s = d as f32;
            }
        } else {
            let (alpha_t, sigma_t, lambda_t) = Self::alpha_sigma_lambda(sigma_next);
            let h = lambda_t - lambda_s;
            let decay = sigma_t / sigma_s;
            let gain = alpha_t * ((-h).exp() - 1.0);
            match (&self.previous_x0, index) {
                (Some(previous), i) if i > 0 && !last => {
                    let (_, _, lambda_prev) = Self::alpha_sigma_lambda(self.sigmas[index - 1]);
                    let r = (lambda_s - lambda_prev) / h;
                    for i in 0..sample.len() {
                        let d1 = (x0[i] - previous[i]) / r;
                        sample[i] = (decay * sample[i] as f64 - gain * x0[i] - 0.5 * gain * d1) as f32;
                    }
                }
                _ => {
                    for i in 0..sample.len() {
                        sample[i] = (decay * sample[i] as f64 - gain * x0[i]) as f32;
                    }
                }
            }
        }
        if let Some(old) = self.previous_x0.replace(x0) {
            self.spare = old;
        }
    }

    fn reset(&mut self) {
        self.previous_x0 = None;
    }
}
