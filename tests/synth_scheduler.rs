//! Scheduler parity with diffusers: every intermediate x_t of DDPM, DDIM and
//! DPM-Solver++(2M) against fixtures/schedulers/*.json (written by
//! fixtures/schedulers/make_vectors.py), for every beta schedule and
//! prediction type: error ≤ 1e-5, absolute for |x| ≤ 1 and relative
//! beyond (f32 cannot hold 1e-5 absolute at |x| ≈ 60).

use serde::Deserialize;
use synthd::config::pipeline::SamplerKind;
use synthd::synth::manifest::SchedulerConfig;
use synthd::synth::scheduler::{self, NoiseSchedule};

#[derive(Deserialize)]
struct Vectors {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    config: SchedulerConfig,
    #[serde(default)]
    eta: f64,
    timesteps: Vec<i64>,
    model_outputs: Vec<Vec<f32>>,
    noises: Vec<Vec<f32>>,
    samples: Vec<Vec<f32>>,
}

fn check(file: &str, kind: SamplerKind) {
    let path = format!("{}/fixtures/schedulers/{file}", env!("CARGO_MANIFEST_DIR"));
    let vectors: Vectors = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(!vectors.cases.is_empty());
    let mut worst = 0.0f32;
    for case in &vectors.cases {
        let schedule = NoiseSchedule::new(&case.config);
        let steps = case.timesteps.len();
        let mut sampler = scheduler::build(kind, &schedule, steps, case.eta);
        assert_eq!(
            sampler.timesteps(),
            case.timesteps.as_slice(),
            "{file} {}: timesteps",
            case.name
        );
        let mut x = case.samples[0].clone();
        let n = x.len();
        for (index, expected) in case.samples[1..].iter().enumerate() {
            let output = &case.model_outputs[index];
            let (prediction, variance) = if output.len() == 2 * n {
                (&output[..n], Some(&output[n..]))
            } else {
                (&output[..], None)
            };
            let noise = sampler.is_stochastic(index).then_some(case.noises[index].as_slice());
            sampler.step(index, prediction, variance, &mut x, noise);
            // Absolute error for |x| ≤ 1; relative beyond, where one f32 ulp
            // already exceeds 1e-5 (random model outputs push x_t to ~±60).
            let error = x
                .iter()
                .zip(expected)
                .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
                .fold(0.0f32, f32::max);
            worst = worst.max(error);
            assert!(
                error <= 1e-5,
                "{file} {}: step {index} (t = {}) max abs error {error:e}\n ours {:?}\n diffusers {:?}",
                case.name,
                case.timesteps[index],
                &x[..4],
                &expected[..4]
            );
        }
    }
    eprintln!("{file}: {} cases, worst max abs error {worst:e}", vectors.cases.len());
}

#[test]
fn ddpm_matches_diffusers() {
    check("ddpm.json", SamplerKind::Ddpm);
}

#[test]
fn ddim_matches_diffusers() {
    check("ddim.json", SamplerKind::Ddim);
}

#[test]
fn dpm_solver_pp_matches_diffusers() {
    check("dpm_solver_pp.json", SamplerKind::DpmSolverPlusPlus);
}
