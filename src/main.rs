//! The `synthd` command line. Errors are reported here, with context naming
//! the file and stage; exit codes: 0 ok, 1 failure, 2 usage or invalid config;
//! `deid` and `process` exit 3 when they finished with some inputs quarantined.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use synthd::commands;
use synthd::config::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "synthd",
    version,
    about = "De-identify DICOM studies and synthesize series with diffusion models",
    long_about = "synthd watches a DICOM inbox, de-identifies each study per DICOM PS3.15 Annex E \
                  (keyed UIDs, pseudonyms, per-patient date shift), optionally synthesizes series \
                  with an ONNX diffusion model, and writes DICOM with full provenance.\n\n\
                  Start with `synthd init DIR`, then `synthd validate DIR/synthd.toml` and `synthd doctor`."
)]
struct Cli {
    /// Log format: "text" for people tailing logs, "json" for log shippers.
    #[arg(long, global = true, value_parser = parse_log_format)]
    log_format: Option<LogFormat>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a ready-to-run layout in DIR (synthd.toml, a fresh 0600 key file, example pipelines),
    /// or with --system the layout the systemd units expect (/etc/synthd, /var/lib/synthd).
    Init {
        /// The folder to create (must not hold a synthd.toml yet).
        #[arg(required_unless_present = "system", conflicts_with = "system")]
        dir: Option<PathBuf>,
        /// Config and pipelines in /etc/synthd, the key readable only by the synthd user, data under
        /// /var/lib/synthd; keeps whatever exists.
        #[arg(long)]
        system: bool,
        /// Prefix every path with this root (a scratch install, as systemd-sysusers --root).
        #[arg(long, hide = true, requires = "system", default_value = "/")]
        root: PathBuf,
    },
    /// Write the Debian package's generated files (man pages, completions, example config) into DIR.
    #[command(hide = true)]
    PackageAssets { dir: PathBuf },
    /// Check daemon configs and pipeline files; exit 0 when valid, 2 when not.
    Validate {
        /// synthd.toml files and pipeline files, in any mix.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Report the ONNX Runtime in use, its execution providers, paths, key file, pipelines and unit.
    Doctor {
        /// The daemon config [default: $SYNTHD_CONFIG, else /etc/synthd/synthd.toml].
        #[arg(long)]
        config: Option<PathBuf>,
        /// The synthd.service whose ReadWritePaths= to check [default: the installed one].
        #[arg(long)]
        unit: Option<PathBuf>,
    },
    /// De-identify DICOM files and folders per DICOM PS3.15 Annex E into DIR/<study>/<series>/<sop>.dcm.
    Deid {
        /// Files or folders (searched recursively).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output folder; files are named by their new UIDs only.
        #[arg(long)]
        output: PathBuf,
        /// Take the de-identification profile from this pipeline's [deid] table.
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// An Annex E option (repeatable), e.g. retain-longitudinal-modified-dates.
        #[arg(long = "option", value_name = "NAME")]
        options: Vec<synthd::deid::DeidOption>,
        /// The site key [default: deid.key_file of the daemon config].
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// The daemon config, for its key file [default: $SYNTHD_CONFIG, else /etc/synthd/synthd.toml].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Write the re-identification crosswalk (CSV, mode 0600) here.
        #[arg(long)]
        crosswalk: Option<PathBuf>,
        /// Where files that cannot be handled go [default: OUTPUT-quarantine beside OUTPUT].
        #[arg(long)]
        quarantine: Option<PathBuf>,
        /// Parallel workers [default: all cores].
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Run a pipeline once over a folder (overnight dataset generation, the demo); resumable.
    ///
    /// Exit codes: 0 done, 3 done with some inputs quarantined, 1 failure, 2 usage or invalid shard.
    Process {
        /// The pipeline file (pipelines/NAME.toml).
        #[arg(long)]
        pipeline: PathBuf,
        /// Folder of DICOM files (searched recursively).
        #[arg(long)]
        input: PathBuf,
        /// Output folder: <study>/<series>/<sop>.dcm, manifest.jsonl, previews.
        #[arg(long)]
        output: PathBuf,
        /// The site key [default: deid.key_file of the daemon config].
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// The daemon config, for its key file and runtime settings.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where inputs that cannot be handled go, outside OUTPUT [default: OUTPUT-quarantine beside OUTPUT].
        #[arg(long)]
        quarantine: Option<PathBuf>,
        /// Take only shard INDEX of COUNT (INDEX from 0) of the studies [default: from
        /// SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX, else 0/1]; docs/scale-out.md.
        #[arg(long, value_name = "INDEX/COUNT")]
        shard: Option<String>,
        /// The shard count for an index taken from the environment [default:
        /// $SYNTHD_SHARD_COUNT, else $SLURM_ARRAY_TASK_COUNT].
        #[arg(long, value_name = "COUNT")]
        shard_count: Option<u32>,
    },
    /// Merge the shards of `synthd process` runs into one dataset: manifest.jsonl/.csv and dataset.json.
    Merge {
        /// Output folders of `synthd process` (usually one, shared by all shards).
        #[arg(required = true)]
        outputs: Vec<PathBuf>,
        /// Where the dataset manifest and card go [default: the first OUTPUT].
        #[arg(long)]
        into: Option<PathBuf>,
    },
    /// Write a fresh site key (32 random bytes, mode 0600) to FILE; never overwrites.
    Keygen { file: PathBuf },
    /// Time a pipeline's model and sampler on synthetic slices; the last line is JSON.
    Bench {
        /// The pipeline file whose [synth] model and sampler to run.
        #[arg(long)]
        pipeline: PathBuf,
        /// Slices per model batch [default: the pipeline's synth.batch].
        #[arg(long)]
        batch: Option<u32>,
        /// Sampler steps [default: the pipeline's synth.steps].
        #[arg(long)]
        steps: Option<u32>,
        /// Slices in the measured request [default: 4 batches].
        #[arg(long)]
        slices: Option<usize>,
        /// CPU intra-op threads per lane; 0 = all cores, shared out among the lanes.
        #[arg(long, default_value_t = 0)]
        threads: u32,
        /// Model sessions run side by side, each on its own batches (as [runtime] inference_lanes).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        lanes: u32,
        /// Use only this execution provider (tensorrt, cuda, cpu) instead of the pipeline's list.
        #[arg(long, value_parser = parse_provider)]
        provider: Option<synthd::config::pipeline::ProviderKind>,
        /// TensorRT engine and timing cache folder [default: a folder under the system temp dir].
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// libonnxruntime.so to load [default: the usual search, including $ORT_DYLIB_PATH].
        #[arg(long)]
        onnxruntime: Option<PathBuf>,
        /// Measured runs; the fastest is reported.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
    },
    /// Run the daemon: watch the inbox, de-identify complete studies, write the outbox (what systemd starts).
    Run {
        /// The daemon config [default: $SYNTHD_CONFIG, else /etc/synthd/synthd.toml].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Run even as root (not recommended: run as the synthd user).
        #[arg(long)]
        allow_root: bool,
    },
    /// Show the job ledger: counts by state, the oldest waiting study, recent quarantines.
    Status {
        /// The daemon config [default: $SYNTHD_CONFIG, else /etc/synthd/synthd.toml].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send a quarantined job's input back to the inbox (after fixing its cause).
    Requeue {
        /// The job, as listed by `synthd status` (e.g. job-000042).
        job: Option<String>,
        /// Requeue every quarantined job.
        #[arg(long)]
        all: bool,
        /// Instead: put the send queue's dead letters back in the queue.
        #[arg(long, conflicts_with_all = ["job", "all"])]
        dead_letters: bool,
        /// With --dead-letters: only those of this destination.
        #[arg(long, requires = "dead_letters")]
        destination: Option<String>,
        /// The daemon config [default: $SYNTHD_CONFIG, else /etc/synthd/synthd.toml].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Act on quarantined inputs (see `synthd status` for their jobs).
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
}

#[derive(Debug, Subcommand)]
enum QuarantineAction {
    /// Remove a quarantined input for good; the ledger records it as discarded.
    Discard {
        /// The job, as listed by `synthd status` (e.g. job-000042).
        job: String,
        /// The daemon config [default: $SYNTHD_CONFIG, else /etc/synthd/synthd.toml].
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn parse_provider(text: &str) -> Result<synthd::config::pipeline::ProviderKind, String> {
    use synthd::config::pipeline::ProviderKind;
    match text {
        "tensorrt" => Ok(ProviderKind::Tensorrt),
        "cuda" => Ok(ProviderKind::Cuda),
        "cpu" => Ok(ProviderKind::Cpu),
        other => Err(format!("unknown provider {other:?}; expected tensorrt, cuda or cpu")),
    }
}

fn parse_log_format(text: &str) -> Result<LogFormat, String> {
    match text {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("unknown log format {other:?}; expected \"text\" or \"json\"")),
    }
}

/// DICOM files are often a little over glibc's 128 KiB mmap threshold, so
/// every file's buffers were fresh mappings: a page fault and a zeroed page
/// per 4 KiB, then unmapped again (a quarter of `synthd deid`'s time on a
/// 1,000-file MR series). Serving them from the heap and not trimming it
/// reuses the same pages file after file; peak memory is unchanged.
fn keep_freed_buffers() {
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

fn main() -> ExitCode {
    // Like other Unix tools, stop quietly when the reader of our output goes
    // away (`synthd doctor | head`) instead of panicking on a broken pipe.
    // SAFETY: called before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    keep_freed_buffers();
    let cli = Cli::parse();
    // --log-format wins; the daemon otherwise follows its config's [log] format.
    let configured = match &cli.command {
        Command::Run { config, .. } => config::peek_log_format(&config::config_path(config.as_deref())),
        _ => None,
    };
    synthd::logging::init(cli.log_format.or(configured).unwrap_or_default());
    let result = match cli.command {
        Command::Init { dir: Some(dir), .. } => commands::init::run(&dir),
        Command::Init { dir: None, root, .. } => commands::init_system::run(&root),
        Command::PackageAssets { dir } => commands::package::write(&dir, <Cli as clap::CommandFactory>::command()),
        Command::Validate { files } => Ok(commands::validate::run(&files)),
        Command::Doctor { config, unit } => Ok(commands::doctor::run(
            &config::config_path(config.as_deref()),
            unit.as_deref(),
        )),
        Command::Deid {
            inputs,
            output,
            pipeline,
            options,
            key_file,
            config,
            crosswalk,
            quarantine,
            jobs,
        } => commands::deid::run(commands::deid::DeidArgs {
            inputs,
            output,
            pipeline,
            options,
            key_file,
            config,
            crosswalk,
            quarantine,
            jobs,
        }),
        Command::Process {
            pipeline,
            input,
            output,
            key_file,
            config,
            quarantine,
            shard,
            shard_count,
        } => commands::process::run(commands::process::ProcessArgs {
            pipeline,
            input,
            output,
            key_file,
            config,
            quarantine,
            shard,
            shard_count,
        }),
        Command::Merge { outputs, into } => commands::merge::run(&outputs, into.as_deref()),
        Command::Run { config, allow_root } => commands::run::run(&config::config_path(config.as_deref()), allow_root),
        Command::Status { config, json } => commands::status::run(&config::config_path(config.as_deref()), json),
        Command::Requeue {
            config,
            dead_letters: true,
            destination,
            ..
        } => commands::requeue::dead_letters(&config::config_path(config.as_deref()), destination.as_deref()),
        Command::Requeue { job, all, config, .. } => {
            commands::requeue::run(&config::config_path(config.as_deref()), job.as_deref(), all)
        }
        Command::Quarantine {
            action: QuarantineAction::Discard { job, config },
        } => commands::quarantine::discard(&config::config_path(config.as_deref()), &job),
        Command::Keygen { file } => synthd::keyfile::generate(&file)
            .map(|()| {
                println!("wrote {} (mode 0600)", file.display());
                0
            })
            .map_err(anyhow::Error::msg),
        Command::Bench {
            pipeline,
            batch,
            steps,
            slices,
            threads,
            lanes,
            provider,
            cache_dir,
            onnxruntime,
            repeat,
        } => commands::bench::run(&commands::bench::BenchArgs {
            pipeline,
            batch,
            steps,
            slices,
            threads,
            lanes,
            cache_dir,
            provider,
            library: onnxruntime,
            repeat,
        }),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}
