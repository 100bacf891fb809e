//! Scheduler parity with diffusers: every intermediate x_t of DDPM, DDIM and
//! DPM-Solver++(2M) against fixtures/schedulers/*.json (written by
//! fixtures/schedulers/make_vectors.py), for every beta schedule and
//! prediction type, and for every timestep_spacing (spacing.json): error ≤
//! 1e-5, absolute for |x| ≤ 1 and relative beyond (f32 cannot hold 1e-5
//! absolute at |x| ≈ 60).

use serde::Deserialize;
use synthd::config::pipeline::{SamplerKind, TimestepSpacing};
use synthd::synth::manifest::SchedulerConfig;
use synthd::synth::scheduler::{self, NoiseSchedule, Spacing};

#[derive(Deserialize)]
struct Vectors {
    cases: Vec<Case>,
    #[serde(default)]
    timestep_tables: Vec<Table>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    /// Which sampler, where a file mixes them (spacing.json).
    #[serde(default)]
    scheduler: Option<SamplerKind>,
    config: SchedulerConfig,
    #[serde(default)]
    eta: f64,
    /// diffusers' timestep_spacing; absent = the scheduler's default.
    #[serde(default)]
    timestep_spacing: Option<TimestepSpacing>,
    #[serde(default)]
    steps_offset: i64,
    timesteps: Vec<i64>,
    model_outputs: Vec<Vec<f32>>,
    noises: Vec<Vec<f32>>,
    samples: Vec<Vec<f32>>,
}

/// What diffusers' set_timesteps(steps) gives for one scheduler and spacing.
#[derive(Deserialize)]
struct Table {
    scheduler: SamplerKind,
    timestep_spacing: TimestepSpacing,
    steps_offset: i64,
    steps: usize,
    timesteps: Vec<i64>,
}

fn load(file: &str) -> Vectors {
    let path = format!("{}/fixtures/schedulers/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn check(file: &str, kind: SamplerKind) {
    let vectors = load(file);
    assert!(!vectors.cases.is_empty());
    let mut worst = 0.0f32;
    for case in &vectors.cases {
        let kind = case.scheduler.unwrap_or(kind);
        let schedule = NoiseSchedule::new(&case.config);
        let steps = case.timesteps.len();
        let spacing = Spacing {
            kind: case.timestep_spacing.unwrap_or(kind.default_spacing()),
            steps_offset: case.steps_offset,
        };
        let mut sampler = scheduler::build(kind, &schedule, steps, case.eta, spacing);
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

/// Every spacing ("leading" also with steps_offset 1) stepped through each
/// sampler, cosine schedule and ε prediction as the demo model has them.
#[test]
fn every_timestep_spacing_matches_diffusers() {
    check("spacing.json", SamplerKind::Ddim);
    let cases = load("spacing.json").cases;
    for kind in [SamplerKind::Ddpm, SamplerKind::Ddim, SamplerKind::DpmSolverPlusPlus] {
        for spacing in [
            TimestepSpacing::Linspace,
            TimestepSpacing::Leading,
            TimestepSpacing::Trailing,
        ] {
            assert!(
                cases
                    .iter()
                    .any(|c| c.scheduler == Some(kind) && c.timestep_spacing == Some(spacing)),
                "spacing.json lacks {} with {}",
                kind.name(),
                spacing.name()
            );
        }
    }
}

#[test]
fn timesteps_match_diffusers_for_every_spacing_and_step_count() {
    let tables = load("spacing.json").timestep_tables;
    assert!(tables.len() >= 3 * 4 * 5, "{} tables", tables.len());
    for table in &tables {
        let spacing = Spacing {
            kind: table.timestep_spacing,
            steps_offset: table.steps_offset,
        };
        assert_eq!(
            scheduler::timesteps(table.scheduler, spacing, 1000, table.steps),
            table.timesteps,
            "{} {} steps_offset {} with {} steps",
            table.scheduler.name(),
            table.timestep_spacing.name(),
            table.steps_offset,
            table.steps
        );
    }
}
