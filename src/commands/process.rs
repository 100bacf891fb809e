//! `synthd process --pipeline P --input DIR --output DIR`: the one-shot batch
//! run (scheduled overnight dataset generation, and the demo). Produces the
//! same files as the daemon for the same input; studies already finished by
//! an earlier run are skipped, so an interrupted run resumes.

use crate::config::pipeline::LoadedPipeline;
use crate::deid::{self, Deidentified, Deidentifier};
use crate::fsutil;
use crate::keyfile::SiteKey;
use crate::output::study::{write_study, SourceWrites, StudyContext, StudyReport};
use crate::phi::StudyKey;
use crate::quarantine::{self, InputRecord, ReasonCode, Rejection, Stage};
use crate::runtime;
use crate::synth::{Engine, EngineOptions};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct ProcessArgs {
    pub pipeline: PathBuf,
    pub input: PathBuf,
    pub output: PathBuf,
    pub key_file: Option<PathBuf>,
    pub config: Option<PathBuf>,
    /// Where inputs that cannot be handled go [default: OUTPUT-quarantine].
    pub quarantine: Option<PathBuf>,
}

pub fn run(args: ProcessArgs) -> Result<i32> {
    let started = Instant::now();
    let pipeline = LoadedPipeline::load(&args.pipeline)
        .map_err(|problems| anyhow::anyhow!("{problems}"))
        .with_context(|| format!("process: invalid pipeline {}", args.pipeline.display()))?;
    let pipeline_bytes =
        std::fs::read(&args.pipeline).with_context(|| format!("process: cannot read {}", args.pipeline.display()))?;
    let pipeline_sha256 = hex_sha256(&pipeline_bytes);
    let config = crate::config::Config::load(&crate::config::config_path(args.config.as_deref())).ok();
    let key_file = match (&args.key_file, &config) {
        (Some(path), _) => path.clone(),
        (None, Some(config)) => config.key_file.clone(),
        (None, None) => {
            eprintln!("error: no key file: pass --key-file FILE (make one with `synthd keygen FILE`) or --config with deid.key_file");
            return Ok(2);
        }
    };
    let key = SiteKey::read(&key_file)
        .map_err(anyhow::Error::msg)
        .context("process: key file")?;
    let deidentifier =
        Deidentifier::new(key.clone(), &pipeline.pipeline.deid).context("process: de-identification profile")?;
    // Quarantined originals keep their identifiers: never under the output,
    // which is what gets shared.
    let quarantine_dir = args
        .quarantine
        .clone()
        .unwrap_or_else(|| quarantine::beside(&args.output));
    if quarantine::is_within(&quarantine_dir, &args.output) {
        bail!(
            "process: the quarantine {} lies inside the output {}; choose a --quarantine folder outside it",
            quarantine_dir.display(),
            args.output.display()
        );
    }
    let state_dir = args.output.join(".synthd");
    fsutil::create_private_dir(&state_dir)
        .with_context(|| format!("process: cannot create {}", state_dir.display()))?;
    let moved = quarantine::move_out_of_output(&args.output, &quarantine_dir).with_context(|| {
        format!(
            "process: cannot move {}/quarantine out of the output",
            args.output.display()
        )
    })?;
    if moved > 0 {
        eprintln!(
            "process: moved {moved} quarantine entr{} left by an earlier version from the output into {}",
            if moved == 1 { "y" } else { "ies" },
            quarantine_dir.display()
        );
    }

    let engine = match (&pipeline.pipeline.synth, pipeline.model_path()) {
        (Some(synth), Some(model)) => {
            let library = config.as_ref().and_then(|c| c.onnxruntime_library.clone());
            let runtime = runtime::init(library.as_deref()).context("process: ONNX Runtime")?;
            let threads = config.as_ref().map_or(0, |c| c.raw.runtime.intra_op_threads);
            let lanes = config.as_ref().map_or(1, |c| c.raw.runtime.inference_lanes);
            let options = EngineOptions {
                intra_op_threads: threads,
                cache_dir: state_dir.join("provider-cache"),
                lanes,
            };
            Some(
                Engine::new(runtime, &model, synth, options)
                    .with_context(|| format!("process: model {}", model.display()))?,
            )
        }
        _ => None,
    };

    // Read every input's header, choose by the pipeline on the original, and
    // group by the original study (all of a study is written together).
    let mut files = Vec::new();
    collect(&args.input, &mut files).with_context(|| format!("process: cannot list {}", args.input.display()))?;
    files.sort();
    if files.is_empty() {
        bail!("process: no input files under {}", args.input.display());
    }
    let roots = [args.input.clone()];
    let refuse = |path: &Path, rejection: &Rejection, reasons: &mut BTreeMap<ReasonCode, usize>| {
        let relative = InputRecord::relative_to(path, &roots);
        *reasons.entry(rejection.code).or_default() += 1;
        quarantine_file(&key, path, &relative, &quarantine_dir, rejection)
    };
    let mut studies: BTreeMap<StudyKey, Vec<PathBuf>> = BTreeMap::new();
    let mut not_selected = 0usize;
    let mut reasons: BTreeMap<ReasonCode, usize> = BTreeMap::new();
    for file in &files {
        match deid::read_header(file) {
            Ok(header) => {
                if deid::selection::pipeline_takes(&pipeline.pipeline, &header.header) {
                    studies
                        .entry(StudyKey::new(&key, header.study_instance_uid.expose()))
                        .or_default()
                        .push(file.clone());
                } else {
                    not_selected += 1;
                }
            }
            Err(rejection) => refuse(file, &rejection, &mut reasons)?,
        }
    }

    let done_path = state_dir.join("done-studies.txt");
    let mut done: BTreeSet<String> = std::fs::read_to_string(&done_path)
        .map(|text| text.lines().map(str::to_string).collect())
        .unwrap_or_default();
    let tty = std::io::stderr().is_terminal();
    let total = studies.len();
    let mut totals = StudyReport::default();
    let mut resumed = 0usize;
    for (index, (study_key, paths)) in studies.iter().enumerate() {
        if done.contains(study_key.as_str()) {
            resumed += 1;
            continue;
        }
        progress(tty, index, total, study_key, paths.len());
        let mut instances: Vec<Deidentified> = Vec::with_capacity(paths.len());
        for path in paths {
            match deidentifier.deidentify_file(path) {
                Ok(instance) => instances.push(instance),
                Err(rejection) => refuse(path, &rejection, &mut reasons)?,
            }
        }
        let context = StudyContext {
            key: &key,
            pipeline: &pipeline,
            pipeline_sha256: pipeline_sha256.clone(),
            engine: engine.as_ref(),
        };
        let report = write_study(&context, &instances, &args.output, SourceWrites::Write)
            .with_context(|| format!("process: output stage, study {study_key}"))?;
        for reason in &report.skipped_series {
            tracing::warn!(stage = "synth", study = %study_key, "not synthesized: {reason}");
        }
        add(&mut totals, &report);
        done.insert(study_key.as_str().to_string());
        let text: String = done.iter().map(|s| format!("{s}\n")).collect();
        fsutil::write_atomic(&done_path, text.as_bytes(), 0o640).context("process: cannot record progress")?;
    }
    if tty && total > 0 {
        eprintln!();
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("synthd process: pipeline {}", pipeline.name());
    println!("  studies     {total} ({resumed} already done by an earlier run)");
    println!(
        "  series      {} synthetic, {} not synthesized",
        totals.synthetic_series,
        totals.skipped_series.len()
    );
    println!(
        "  instances   {} synthetic, {} de-identified source, {} SEG, {} preview(s)",
        totals.synthetic_instances, totals.source_instances, totals.seg_instances, totals.previews
    );
    let quarantined: usize = reasons.values().sum();
    println!("  skipped     {not_selected} not selected by the pipeline, {quarantined} quarantined");
    println!("  written to  {}", args.output.display());
    match &engine {
        Some(engine) => println!("  provider    {}", engine.provider().name()),
        None => println!("  provider    none (de-identify and forward)"),
    }
    println!(
        "  time        {elapsed:.1} s (synthesis {:.1} s, of which ONNX Runtime {:.1} s)",
        totals.synth_seconds, totals.ort_seconds
    );
    if quarantined > 0 {
        let by_reason: Vec<String> = reasons.iter().map(|(code, n)| format!("{code}: {n}")).collect();
        let line = format!(
            "quarantined {quarantined} input(s) ({}) in {}; each folder's reason.json names the input",
            by_reason.join(", "),
            quarantine_dir.display()
        );
        println!("  {line}");
        eprintln!("process: {line}");
        return Ok(1);
    }
    Ok(0)
}

fn add(totals: &mut StudyReport, report: &StudyReport) {
    totals.source_instances += report.source_instances;
    totals.synthetic_series += report.synthetic_series;
    totals.synthetic_instances += report.synthetic_instances;
    totals.seg_instances += report.seg_instances;
    totals.previews += report.previews;
    totals.skipped_series.extend(report.skipped_series.iter().cloned());
    totals.ort_seconds += report.ort_seconds;
    totals.synth_seconds += report.synth_seconds;
}

fn progress(tty: bool, index: usize, total: usize, study: &StudyKey, instances: usize) {
    if tty {
        let width = 30;
        let filled = (index * width) / total.max(1);
        eprint!(
            "\r[{}{}] study {}/{total} {study} ({instances} instances)",
            "#".repeat(filled),
            ".".repeat(width - filled),
            index + 1
        );
    } else {
        eprintln!("progress: study {}/{total} {study} ({instances} instances)", index + 1);
    }
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let metadata = std::fs::symlink_metadata(path)?;
    if metadata.is_dir() {
        for entry in std::fs::read_dir(path)? {
            collect(&entry?.path(), files)?;
        }
    } else if metadata.is_file() {
        files.push(path.to_path_buf());
    }
    Ok(())
}

fn quarantine_file(
    key: &SiteKey,
    path: &Path,
    relative: &Path,
    quarantine_dir: &Path,
    rejection: &Rejection,
) -> Result<()> {
    quarantine::quarantine_copy(
        key,
        path,
        relative,
        quarantine_dir,
        rejection,
        Stage::Deid,
        quarantine::Durability::Immediate,
    )
    .with_context(|| format!("process: cannot quarantine into {}", quarantine_dir.display()))?;
    tracing::warn!(stage = "deid", reason = %rejection.code, "quarantined an input");
    Ok(())
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
