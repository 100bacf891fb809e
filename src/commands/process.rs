//! `synthd process --pipeline P --input DIR --output DIR [--shard I/N]`: the
//! one-shot batch run (scheduled overnight dataset generation, the demo, one
//! task of a Slurm array or Kubernetes Indexed Job). Produces the same files
//! as the daemon for the same input. Its state is the shard's SQLite ledger
//! (`ledger::shard`) under the output: studies already written by an earlier
//! run are skipped, so an interrupted run resumes.
//!
//! Shards share one output tree: each writes only its own studies' folders
//! (disjoint by construction, `shard.rs`), its own ledger and its own
//! provider cache, so N processes never write one file. A study's files do
//! not depend on the shard count.

use super::progress::Progress;
use crate::config::pipeline::LoadedPipeline;
use crate::deid::{self, Deidentified, Deidentifier};
use crate::fsutil;
use crate::keyfile::SiteKey;
use crate::ledger::shard::{RunRecord, ShardLedger, ShardLedgerError, StudyCounts, SHARDS_DIR};
use crate::output::study::{write_study, SourceWrites, StudyContext, StudyReport};
use crate::phi::StudyKey;
use crate::quarantine::{self, InputRecord, Rejection, Stage};
use crate::runtime;
use crate::shard::{self, Shard};
use crate::synth::{Engine, EngineOptions};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct ProcessArgs {
    pub pipeline: PathBuf,
    pub input: PathBuf,
    pub output: PathBuf,
    pub key_file: Option<PathBuf>,
    pub config: Option<PathBuf>,
    /// `--shard I/N`.
    pub shard: Option<String>,
    /// `--shard-count N`, for an index from the environment.
    pub shard_count: Option<u32>,
    /// Where inputs that cannot be handled go [default: OUTPUT-quarantine].
    pub quarantine: Option<PathBuf>,
}

/// A usage or setup problem (bad shard, a run that does not match the
/// output's ledger): exit code 2, reported before anything is written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

pub fn run(args: ProcessArgs) -> Result<i32> {
    match run_shard(&args) {
        Err(error) => match error.downcast_ref::<Usage>() {
            Some(usage) => {
                eprintln!("error: {usage}");
                Ok(2)
            }
            None => Err(error),
        },
        ok => ok,
    }
}

fn run_shard(args: &ProcessArgs) -> Result<i32> {
    let started = Instant::now();
    // Before anything is read or written: a bad shard is a usage error.
    let shard = shard::resolve(args.shard.as_deref(), args.shard_count, |name| std::env::var(name).ok())
        .map_err(|error| Usage(error.to_string()))?;
    let pipeline = LoadedPipeline::load(&args.pipeline)
        .map_err(|problems| anyhow::anyhow!("{problems}"))
        .with_context(|| format!("process: invalid pipeline {}", args.pipeline.display()))?;
    let pipeline_bytes =
        std::fs::read(&args.pipeline).with_context(|| format!("process: cannot read {}", args.pipeline.display()))?;
    let pipeline_sha256 = hex_sha256(&pipeline_bytes);
    let config = crate::config::Config::load(&crate::config::config_path(args.config.as_deref())).ok();
    let key = read_key(args, config.as_ref())?;
    check_shard_count(&args.output, shard)?;
    let deidentifier =
        Deidentifier::new(key.clone(), &pipeline.pipeline.deid).context("process: de-identification profile")?;
    let quarantine_dir = quarantine_dir(args)?;
    let state_dir = args.output.join(".synthd");
    let engine = load_engine(&pipeline, config.as_ref(), &state_dir, shard)?;
    let run = RunRecord {
        shard_index: shard.index,
        shard_count: shard.count,
        pipeline_name: pipeline.name().to_string(),
        pipeline_sha256: pipeline_sha256.clone(),
        model_sha256: engine.as_ref().map(|e| e.model_sha256().to_string()),
        key_id: key_id(&key),
        seed: pipeline.pipeline.synth.as_ref().map(|s| s.seed),
        variants: pipeline.pipeline.synth.as_ref().map(|s| s.variants),
        synthd_version: env!("CARGO_PKG_VERSION").to_string(),
        started: quarantine::now_rfc3339(),
        finished: None,
    };
    let ledger = open_ledger(args, &run, shard, &quarantine_dir)?;

    let refused = Quarantine {
        key: &key,
        dir: &quarantine_dir,
        roots: std::slice::from_ref(&args.input),
        ledger: &ledger,
    };
    let scan = scan(&args.input, &key, &pipeline, shard, &refused)?;
    ledger.set_not_selected(scan.not_selected as u64).context("process")?;
    let mut to_do = Vec::new();
    for (study_key, paths) in &scan.studies {
        if !ledger.is_written(study_key.as_str()).context("process")? {
            to_do.push((study_key, paths));
        }
    }
    let mut progress = Progress::new(to_do.len(), std::io::stderr().is_terminal(), shard.to_string());
    let context = StudyContext {
        key: &key,
        pipeline: &pipeline,
        pipeline_sha256,
        engine: engine.as_ref(),
    };
    let mut totals = StudyReport::default();
    let resumed = scan.studies.len() - to_do.len();
    for (study_key, paths) in to_do {
        let study_started = Instant::now();
        let report = process_study(&context, &deidentifier, &refused, study_key, paths, &args.output)?;
        let written = (report.source_instances + report.synthetic_instances + report.seg_instances) as u64;
        progress.study_done(study_key, paths.len(), written, study_started.elapsed().as_secs_f64());
        add(&mut totals, &report);
    }
    progress.finish();
    ledger.finish_run(&quarantine::now_rfc3339()).context("process")?;
    let summary = Summary {
        pipeline: pipeline.name(),
        studies: scan.studies.len(),
        resumed,
        not_selected: scan.not_selected,
        totals: &totals,
        reasons: ledger.quarantines_by_reason().context("process")?,
        output: &args.output,
        quarantine_dir: &quarantine_dir,
        shard,
        ledger: ledger.path(),
        provider: engine.as_ref().map(|e| e.provider().name()),
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok(summary.print())
}

fn read_key(args: &ProcessArgs, config: Option<&crate::config::Config>) -> Result<SiteKey> {
    let key_file =
        match (&args.key_file, config) {
            (Some(path), _) => path.clone(),
            (None, Some(config)) => config.key_file.clone(),
            (None, None) => return Err(Usage(
                "no key file: pass --key-file FILE (make one with `synthd keygen FILE`) or --config with deid.key_file"
                    .into(),
            )
            .into()),
        };
    SiteKey::read(&key_file)
        .map_err(anyhow::Error::msg)
        .context("process: key file")
}

/// Quarantined originals keep their identifiers: never under the output,
/// which is what gets shared. Shards share it like the output.
fn quarantine_dir(args: &ProcessArgs) -> Result<PathBuf> {
    let dir = args
        .quarantine
        .clone()
        .unwrap_or_else(|| quarantine::beside(&args.output));
    if quarantine::is_within(&dir, &args.output) {
        bail!(
            "process: the quarantine {} lies inside the output {}; choose a --quarantine folder outside it",
            dir.display(),
            args.output.display()
        );
    }
    Ok(dir)
}

/// Opens the shard's ledger and records the run, or refuses a run that
/// does not match the one recorded; moves a legacy in-output quarantine out.
fn open_ledger(args: &ProcessArgs, run: &RunRecord, shard: Shard, quarantine_dir: &Path) -> Result<ShardLedger> {
    let ledger_path = ShardLedger::path_in(&args.output, &shard.ledger_name());
    let folder = ledger_path.parent().expect("under the output");
    fsutil::create_private_dir(folder).with_context(|| format!("process: cannot create {}", folder.display()))?;
    let moved = quarantine::move_out_of_output(&args.output, quarantine_dir).with_context(|| {
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
    let ledger = ShardLedger::open(&ledger_path).context("process")?;
    match ledger.begin_run(run) {
        Ok(()) => Ok(ledger),
        Err(error @ ShardLedgerError::Mismatch { .. }) => Err(Usage(error.to_string()).into()),
        Err(error) => Err(error).context("process"),
    }
}

/// What a run did, for its closing lines.
struct Summary<'a> {
    pipeline: &'a str,
    studies: usize,
    resumed: usize,
    not_selected: usize,
    totals: &'a StudyReport,
    reasons: BTreeMap<String, u64>,
    output: &'a Path,
    quarantine_dir: &'a Path,
    shard: Shard,
    ledger: &'a Path,
    provider: Option<&'a str>,
    seconds: f64,
}

impl Summary<'_> {
    /// Prints the summary and returns the exit code.
    fn print(&self) -> i32 {
        let totals = self.totals;
        let quarantined: u64 = self.reasons.values().sum();
        println!("synthd process: pipeline {}", self.pipeline);
        println!(
            "  studies     {} ({} already done by an earlier run)",
            self.studies, self.resumed
        );
        println!(
            "  series      {} synthetic ({} flagged by QC), {} not synthesized, {} quarantined",
            totals.synthetic_series,
            totals.qc_flagged.len(),
            totals.skipped_series.len(),
            totals.quarantined_series.len()
        );
        for (series, reason) in &totals.skipped_series {
            println!("    not synthesized: series {series}: {reason}");
        }
        for (series, message) in &totals.qc_flagged {
            println!("    flagged by QC: series {series}: {message}");
        }
        for (series, rejection) in &totals.quarantined_series {
            println!("    quarantined: series {series}: {rejection}");
        }
        println!(
            "  instances   {} synthetic, {} de-identified source, {} SEG, {} preview(s)",
            totals.synthetic_instances, totals.source_instances, totals.seg_instances, totals.previews
        );
        println!(
            "  skipped     {} not selected by the pipeline, {quarantined} quarantined",
            self.not_selected
        );
        println!("  written to  {}", self.output.display());
        println!("  shard       {} (ledger {})", self.shard, self.ledger.display());
        match self.provider {
            Some(provider) => println!("  provider    {provider}"),
            None => println!("  provider    none (de-identify and forward)"),
        }
        println!(
            "  time        {:.1} s (synthesis {:.1} s, of which ONNX Runtime {:.1} s)",
            self.seconds, totals.synth_seconds, totals.ort_seconds
        );
        if quarantined == 0 {
            return 0;
        }
        let by_reason: Vec<String> = self.reasons.iter().map(|(code, n)| format!("{code}: {n}")).collect();
        let line = format!(
            "quarantined {quarantined} input(s) ({}) in {}; each folder's reason.json names the input",
            by_reason.join(", "),
            self.quarantine_dir.display()
        );
        println!("  {line}");
        eprintln!("process: {line}");
        // 3, not 1: the run finished and its dataset can be merged; schedulers
        // (Slurm's afterok, a Job's completions, systemd) count it a success.
        super::EXIT_QUARANTINED
    }
}

/// A second `synthd process` with a different shard count writing into the
/// same output would split the studies differently: some would be in two
/// shards. Refused before anything is written.
fn check_shard_count(output: &Path, shard: Shard) -> Result<()> {
    let dir = output.join(SHARDS_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).with_context(|| format!("process: cannot list {}", dir.display())),
    };
    let suffix = format!("-of-{:04}.sqlite", shard.count);
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("shard-") && name.ends_with(".sqlite") && !name.ends_with(&suffix) {
            return Err(Usage(format!(
                "{} holds {name}, a shard of a run with another shard count than {}; \
                 shards of one output must all use the same count (use a fresh --output, or re-run with that count)",
                dir.display(),
                shard.count
            ))
            .into());
        }
    }
    Ok(())
}

fn load_engine(
    pipeline: &LoadedPipeline,
    config: Option<&crate::config::Config>,
    state_dir: &Path,
    shard: Shard,
) -> Result<Option<Engine>> {
    let (Some(synth), Some(model)) = (&pipeline.pipeline.synth, pipeline.model_path()) else {
        return Ok(None);
    };
    let library = config.and_then(|c| c.onnxruntime_library.clone());
    let runtime = runtime::init(library.as_deref()).context("process: ONNX Runtime")?;
    // Shards in one output tree never write one TensorRT cache file at once.
    let mut cache_dir = state_dir.join("provider-cache");
    if shard.count > 1 {
        cache_dir = cache_dir.join(shard.ledger_name().trim_end_matches(".sqlite"));
    }
    let options = EngineOptions {
        intra_op_threads: config.map_or(0, |c| c.raw.runtime.intra_op_threads),
        cache_dir,
        lanes: config.map_or(1, |c| c.raw.runtime.inference_lanes),
    };
    let engine =
        Engine::new(runtime, &model, synth, options).with_context(|| format!("process: model {}", model.display()))?;
    let problems = crate::output::series::check_pipeline(&pipeline.pipeline, engine.manifest());
    if !problems.is_empty() {
        bail!(
            "process: pipeline {} and model {} disagree: {}",
            pipeline.file.display(),
            model.display(),
            problems.join("; ")
        );
    }
    Ok(Some(engine))
}

/// A keyed digest that names the site key in ledgers and dataset cards, so
/// shards made with different keys are told apart; it reveals nothing of it.
pub fn key_id(key: &SiteKey) -> String {
    let digest = crate::phi::keyed_digest(key, "synthd/key-id", &[]);
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("key-{hex}")
}

/// This shard's studies (by keyed study id), and what it skipped.
struct Scan {
    studies: BTreeMap<StudyKey, Vec<PathBuf>>,
    not_selected: usize,
}

/// Reads every input's header and keeps this shard's studies, chosen by the
/// pipeline on the original header; quarantines this shard's unreadable inputs.
fn scan(
    input: &Path,
    key: &SiteKey,
    pipeline: &LoadedPipeline,
    shard: Shard,
    quarantine: &Quarantine<'_>,
) -> Result<Scan> {
    let mut files = Vec::new();
    collect(input, &mut files).with_context(|| format!("process: cannot list {}", input.display()))?;
    files.sort();
    if files.is_empty() {
        bail!("process: no input files under {}", input.display());
    }
    let mut scan = Scan {
        studies: BTreeMap::new(),
        not_selected: 0,
    };
    for file in &files {
        match deid::read_header(file) {
            Ok(header) => {
                let study = StudyKey::new(key, header.study_instance_uid.expose());
                if !shard.owns_study(&study) {
                    continue;
                }
                if deid::selection::pipeline_takes(&pipeline.pipeline, &header.header) {
                    scan.studies.entry(study).or_default().push(file.clone());
                } else {
                    scan.not_selected += 1;
                }
            }
            Err(rejection) if shard.owns_unreadable(key, file) => quarantine.file(file, &rejection, None)?,
            Err(_) => {}
        }
    }
    Ok(scan)
}

/// De-identifies and writes one study, recorded `writing` before its first
/// output and `written` once all are durable.
fn process_study(
    context: &StudyContext<'_>,
    deidentifier: &Deidentifier,
    quarantine: &Quarantine<'_>,
    study_key: &StudyKey,
    paths: &[PathBuf],
    output: &Path,
) -> Result<StudyReport> {
    let ledger = quarantine.ledger;
    ledger
        .begin_study(study_key.as_str(), paths.len() as u64)
        .context("process")?;
    let mut instances: Vec<Deidentified> = Vec::with_capacity(paths.len());
    for path in paths {
        match deidentifier.deidentify_file(path) {
            Ok(instance) => instances.push(instance),
            Err(rejection) => quarantine.file(path, &rejection, Some(study_key))?,
        }
    }
    let report = write_study(context, &instances, output, SourceWrites::Write)
        .with_context(|| format!("process: output stage, study {study_key}"))?;
    for (series, reason) in &report.skipped_series {
        tracing::warn!(stage = "synth", study = %study_key, "series {series} not synthesized: {reason}");
    }
    for (series, rejection) in &report.quarantined_series {
        quarantine.series(series, rejection, study_key)?;
    }
    for (series, message) in &report.qc_flagged {
        tracing::warn!(stage = "synth", study = %study_key, "series {series} flagged by QC: {message}");
    }
    let counts = StudyCounts {
        folder: instances.first().map(|i| i.study_uid.clone()).unwrap_or_default(),
        inputs: paths.len() as u64,
        source: report.source_instances as u64,
        synthetic: report.synthetic_instances as u64,
        seg: report.seg_instances as u64,
        previews: report.previews as u64,
        synthetic_series: report.synthetic_series as u64,
        series_not_synthesized: report.skipped_series.len() as u64,
    };
    ledger
        .study_written(study_key.as_str(), &counts)
        .context("process: cannot record progress")?;
    Ok(report)
}

fn add(totals: &mut StudyReport, report: &StudyReport) {
    totals.source_instances += report.source_instances;
    totals.synthetic_series += report.synthetic_series;
    totals.synthetic_instances += report.synthetic_instances;
    totals.seg_instances += report.seg_instances;
    totals.previews += report.previews;
    totals.skipped_series.extend(report.skipped_series.iter().cloned());
    totals
        .quarantined_series
        .extend(report.quarantined_series.iter().cloned());
    totals.qc_flagged.extend(report.qc_flagged.iter().cloned());
    totals.ort_seconds += report.ort_seconds;
    totals.synth_seconds += report.synth_seconds;
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

/// Where refused inputs go, and the ledger that records them.
struct Quarantine<'a> {
    key: &'a SiteKey,
    dir: &'a Path,
    /// Input roots, for the relative path reason.json records.
    roots: &'a [PathBuf],
    ledger: &'a ShardLedger,
}

impl Quarantine<'_> {
    /// Copies the input and its reason durably, then records it (by its
    /// quarantine folder, a keyed digest of its path: a re-run records it once).
    fn file(&self, path: &Path, rejection: &Rejection, study: Option<&StudyKey>) -> Result<()> {
        let relative = InputRecord::relative_to(path, self.roots);
        let dir = quarantine::quarantine_copy(
            self.key,
            path,
            &relative,
            self.dir,
            rejection,
            Stage::Deid,
            quarantine::Durability::Immediate,
        )
        .with_context(|| format!("process: cannot quarantine into {}", self.dir.display()))?;
        let folder = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.ledger
            .quarantined(&folder, study.map(StudyKey::as_str), rejection.code.as_str(), &folder)
            .context("process")?;
        tracing::warn!(stage = "deid", reason = %rejection.code, "quarantined an input");
        Ok(())
    }

    /// A synthetic series that is not written (its de-identified source is):
    /// `<series>-synth/reason.json`, recorded like an input.
    fn series(&self, series: &str, rejection: &Rejection, study: &StudyKey) -> Result<()> {
        let folder = format!("{series}-synth");
        quarantine::write_reason(&self.dir.join(&folder), rejection, Stage::Synth, None, None)
            .with_context(|| format!("process: cannot quarantine into {}", self.dir.display()))?;
        self.ledger
            .quarantined(&folder, Some(study.as_str()), rejection.code.as_str(), &folder)
            .context("process")?;
        tracing::warn!(stage = "synth", study = %study, reason = %rejection.code, "series {series} quarantined: {}", rejection.message);
        Ok(())
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
