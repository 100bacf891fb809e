//! The `synthd` command line. Errors are reported here, with context naming
//! the file and stage; exit codes: 0 ok, 1 failure, 2 usage or invalid config.

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
    /// Write a ready-to-run layout in DIR: synthd.toml, a fresh 0600 key file, example pipelines.
    Init {
        /// The folder to create (must not hold a synthd.toml yet).
        dir: PathBuf,
    },
    /// Check daemon configs and pipeline files; exit 0 when valid, 2 when not.
    Validate {
        /// synthd.toml files and pipeline files, in any mix.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Report the ONNX Runtime in use, its execution providers, paths, key file and pipelines.
    Doctor {
        /// The daemon config [default: $SYNTHD_CONFIG, else /etc/synthd/synthd.toml].
        #[arg(long)]
        config: Option<PathBuf>,
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
    /// Write a fresh site key (32 random bytes, mode 0600) to FILE; never overwrites.
    Keygen { file: PathBuf },
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
        /// The daemon config [default: $SYNTHD_CONFIG, else /etc/synthd/synthd.toml].
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn parse_log_format(text: &str) -> Result<LogFormat, String> {
    match text {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("unknown log format {other:?}; expected \"text\" or \"json\"")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    synthd::logging::init(cli.log_format.unwrap_or_default());
    let result = match cli.command {
        Command::Init { dir } => commands::init::run(&dir),
        Command::Validate { files } => Ok(commands::validate::run(&files)),
        Command::Doctor { config } => Ok(commands::doctor::run(&config::config_path(config.as_deref()))),
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
        Command::Run { config, allow_root } => commands::run::run(&config::config_path(config.as_deref()), allow_root),
        Command::Status { config, json } => commands::status::run(&config::config_path(config.as_deref()), json),
        Command::Requeue { job, all, config } => {
            commands::requeue::run(&config::config_path(config.as_deref()), job.as_deref(), all)
        }
        Command::Keygen { file } => synthd::keyfile::generate(&file)
            .map(|()| {
                println!("wrote {} (mode 0600)", file.display());
                0
            })
            .map_err(anyhow::Error::msg),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}
