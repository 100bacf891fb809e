//! The daemon config (`synthd.toml`) and pipeline files, read with spans so
//! that every error names the file, line, column and key.
//!
//! Relative paths inside a config resolve against the config file's folder.

pub mod diagnostic;
pub mod dicom;
pub mod metrics;
pub mod pipeline;
mod ranges;
pub mod units;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use pipeline::{LoadedPipeline, Pipeline};
pub use units::{ByteSize, HumanDuration};

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Where the daemon config is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/synthd/synthd.toml";
/// The environment variable that overrides [`DEFAULT_CONFIG_PATH`].
pub const CONFIG_ENV: &str = "SYNTHD_CONFIG";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub paths: Paths,
    #[serde(default)]
    pub ingest: Ingest,
    pub deid: DeidSettings,
    #[serde(default)]
    pub runtime: Runtime,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub daemon: DaemonSettings,
    /// DICOM networking: `[dicom.listen]` (see `dicom.rs`).
    #[serde(default)]
    pub dicom: dicom::DicomSettings,
    /// The Prometheus endpoint and status page; off when absent.
    pub metrics: Option<metrics::MetricsSettings>,
    /// Where pipelines send their outputs over DICOM (see `dicom.rs`).
    #[serde(default)]
    pub destinations: Vec<dicom::Destination>,
    /// Pipeline files, or folders whose `*.toml` files are pipelines.
    #[serde(default)]
    pub pipelines: Vec<Spanned<PathBuf>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paths {
    /// The drop folder next to the PACS.
    pub inbox: Spanned<PathBuf>,
    /// Claimed jobs, one folder each.
    pub work: Spanned<PathBuf>,
    /// De-identified and synthetic studies.
    pub outbox: Spanned<PathBuf>,
    /// Inputs that could not be processed, each with a `reason.json`.
    pub quarantine: Spanned<PathBuf>,
    /// Originals after success (they carry PHI).
    pub archive: Spanned<PathBuf>,
    /// The job ledger and provider caches.
    pub state: Spanned<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ingest {
    /// A study is complete when no instance of it arrived for this long.
    #[serde(default = "default_stable_age")]
    pub stable_age: HumanDuration,
    /// Full rescan of the inbox, for mounts that deliver no events.
    #[serde(default = "default_rescan_interval")]
    pub rescan_interval: HumanDuration,
    /// A file is taken once its size and mtime stayed unchanged this long.
    #[serde(default = "default_settle")]
    pub settle: HumanDuration,
}

impl Default for Ingest {
    fn default() -> Self {
        Ingest {
            stable_age: default_stable_age(),
            rescan_interval: default_rescan_interval(),
            settle: default_settle(),
        }
    }
}

fn default_stable_age() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn default_rescan_interval() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_settle() -> HumanDuration {
    HumanDuration::from_secs(2)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeidSettings {
    /// 32 random bytes, mode 0600, made by `synthd init` or `synthd keygen`.
    pub key_file: Spanned<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Path of libonnxruntime.so; found automatically when absent.
    pub onnxruntime_library: Option<Spanned<PathBuf>>,
    /// ONNX Runtime intra-op threads on the CPU provider; 0 = all cores,
    /// shared out among the lanes.
    #[serde(default, deserialize_with = "ranges::u32_in::<0, 1024, _>")]
    pub intra_op_threads: u32,
    /// Model sessions run side by side, each on its own batches. On a CPU,
    /// 2 or more trade a little latency per series for throughput (each
    /// session holds its own copy of the weights).
    #[serde(default = "one_lane", deserialize_with = "ranges::u32_in::<1, 64, _>")]
    pub inference_lanes: u32,
}

fn one_lane() -> u32 {
    1
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            onnxruntime_library: None,
            intra_op_threads: 0,
            inference_lanes: one_lane(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OriginalsPolicy {
    /// Move originals under `paths.archive` after success.
    #[default]
    Archive,
    /// Delete originals after success.
    Delete,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSettings {
    #[serde(default = "default_workers", deserialize_with = "ranges::u32_in::<1, 256, _>")]
    pub deid_workers: u32,
    /// Output workers mostly wait for the disk (a large output's blocks are
    /// written with O_DIRECT), so more of them than cores keep writes in flight.
    #[serde(default = "default_output_workers", deserialize_with = "ranges::u32_in::<1, 256, _>")]
    pub output_workers: u32,
    /// Capacity of each bounded channel between stages.
    #[serde(default = "default_queue_depth", deserialize_with = "ranges::u32_in::<1, 100000, _>")]
    pub queue_depth: u32,
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: HumanDuration,
    #[serde(default)]
    pub originals: OriginalsPolicy,
    /// Purge archived originals older than this many days; absent = keep.
    pub retention_days: Option<u32>,
    /// How often the summary log line is written.
    #[serde(default = "default_summary_interval")]
    pub summary_interval: HumanDuration,
    /// Intake pauses while the outbox file system has less free space than this.
    #[serde(default = "default_min_free_space")]
    pub min_free_space: ByteSize,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            deid_workers: default_workers(),
            output_workers: default_output_workers(),
            queue_depth: default_queue_depth(),
            shutdown_timeout: default_shutdown_timeout(),
            originals: OriginalsPolicy::Archive,
            retention_days: None,
            summary_interval: default_summary_interval(),
            min_free_space: default_min_free_space(),
        }
    }
}

fn default_workers() -> u32 {
    2
}
fn default_output_workers() -> u32 {
    6
}
fn default_queue_depth() -> u32 {
    64
}
fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_summary_interval() -> HumanDuration {
    HumanDuration::from_secs(300)
}
fn default_min_free_space() -> ByteSize {
    ByteSize(512 * 1024 * 1024)
}

/// The daemon config with every path resolved and every pipeline loaded.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub raw: RawConfig,
    pub paths: ResolvedPaths,
    pub key_file: PathBuf,
    pub onnxruntime_library: Option<PathBuf>,
    pub pipelines: Vec<LoadedPipeline>,
    /// `[metrics] listen`, parsed; None when metrics are off.
    pub metrics: Option<metrics::MetricsListen>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPaths {
    pub inbox: PathBuf,
    pub work: PathBuf,
    pub outbox: PathBuf,
    pub quarantine: PathBuf,
    pub archive: PathBuf,
    pub state: PathBuf,
}

impl ResolvedPaths {
    /// Each path with its config key, for reports.
    pub fn named(&self) -> [(&'static str, &Path); 6] {
        [
            ("paths.inbox", &self.inbox),
            ("paths.work", &self.work),
            ("paths.outbox", &self.outbox),
            ("paths.quarantine", &self.quarantine),
            ("paths.archive", &self.archive),
            ("paths.state", &self.state),
        ]
    }
}

/// The config file named by `--config`, else `$SYNTHD_CONFIG`, else the default.
pub fn config_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    match std::env::var_os(CONFIG_ENV) {
        Some(value) if !value.is_empty() => PathBuf::from(value),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

/// The `[log] format` of a daemon config, read before logging starts so the
/// daemon's very first lines already use it. Any problem gives `None`: the
/// full load that follows reports it properly.
pub fn peek_log_format(path: &Path) -> Option<LogFormat> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: toml::Table = text.parse().ok()?;
    let format = value.get("log")?.get("format")?.as_str()?;
    match format {
        "text" => Some(LogFormat::Text),
        "json" => Some(LogFormat::Json),
        _ => None,
    }
}

impl Config {
    /// Reads and checks the daemon config and every pipeline it names.
    pub fn load(file: &Path) -> Result<Config, Diagnostics> {
        let source = std::fs::read_to_string(file).map_err(|error| {
            Diagnostics(vec![Diagnostic::whole_file(
                file,
                format!("cannot read config file: {error}; create one with `synthd init DIR`"),
            )])
        })?;
        Config::parse(file, &source)
    }

    pub fn parse(file: &Path, source: &str) -> Result<Config, Diagnostics> {
        let raw: RawConfig =
            toml::from_str(source).map_err(|error| Diagnostics(vec![Diagnostic::from_toml(file, source, &error)]))?;
        let resolve = |path: &Spanned<PathBuf>| pipeline::resolve(file, path.get_ref());
        let paths = ResolvedPaths {
            inbox: resolve(&raw.paths.inbox),
            work: resolve(&raw.paths.work),
            outbox: resolve(&raw.paths.outbox),
            quarantine: resolve(&raw.paths.quarantine),
            archive: resolve(&raw.paths.archive),
            state: resolve(&raw.paths.state),
        };
        let mut problems = Diagnostics::default();
        let spanned_paths = [
            &raw.paths.inbox,
            &raw.paths.work,
            &raw.paths.outbox,
            &raw.paths.quarantine,
            &raw.paths.archive,
            &raw.paths.state,
        ];
        for (spanned, resolved) in spanned_paths.iter().zip(paths.named()) {
            let (_, path) = resolved;
            let parent_missing = path
                .parent()
                .is_some_and(|parent| !parent.as_os_str().is_empty() && !parent.is_dir());
            if !path.is_dir() && parent_missing {
                problems.push(Diagnostic::at_span(
                    file,
                    source,
                    spanned.span(),
                    format!(
                        "{} does not exist and neither does its parent folder; expected a folder synthd can create",
                        path.display()
                    ),
                ));
            } else if path.exists() && !path.is_dir() {
                problems.push(Diagnostic::at_span(
                    file,
                    source,
                    spanned.span(),
                    format!("{} is not a folder", path.display()),
                ));
            }
        }
        if crate::quarantine::is_within(&paths.quarantine, &paths.outbox) {
            problems.push(Diagnostic::at_span(
                file,
                source,
                raw.paths.quarantine.span(),
                "lies inside paths.outbox, which gets shared, and quarantined originals keep their identifiers; choose a folder outside it",
            ));
        }
        let key_file = resolve(&raw.deid.key_file);
        if let Err(message) = crate::keyfile::check_permissions(&key_file) {
            problems.push(Diagnostic::at_span(file, source, raw.deid.key_file.span(), message));
        }
        let onnxruntime_library = raw.runtime.onnxruntime_library.as_ref().map(resolve);
        if let (Some(spanned), Some(library)) = (&raw.runtime.onnxruntime_library, &onnxruntime_library) {
            if !library.is_file() {
                problems.push(Diagnostic::at_span(
                    file,
                    source,
                    spanned.span(),
                    format!(
                        "{} not found; expected the path of libonnxruntime.so, or remove the key to let synthd find it",
                        library.display()
                    ),
                ));
            }
        }
        problems.extend(dicom::check(file, source, &raw.dicom));
        let metrics = match raw
            .metrics
            .as_ref()
            .map(|m| metrics::MetricsListen::parse(file, source, m))
        {
            Some(Err(problem)) => {
                problems.push(problem);
                None
            }
            Some(Ok(listen)) => Some(listen),
            None => None,
        };
        let mut pipelines = Vec::new();
        for entry in &raw.pipelines {
            let target = resolve(entry);
            match pipeline_files(&target) {
                Ok(files) => {
                    for pipeline_file in files {
                        match LoadedPipeline::load(&pipeline_file) {
                            Ok(loaded) => pipelines.push(loaded),
                            Err(errors) => problems.extend(errors),
                        }
                    }
                }
                Err(message) => problems.push(Diagnostic::at_span(file, source, entry.span(), message)),
            }
        }
        problems.extend(dicom::check_destinations(file, source, &raw.destinations, &pipelines));
        let mut names: Vec<&str> = pipelines.iter().map(LoadedPipeline::name).collect();
        names.sort_unstable();
        for pair in names.windows(2) {
            if pair[0] == pair[1] {
                problems.push(Diagnostic::whole_file(
                    file,
                    format!("two pipelines are named {:?}; expected unique names", pair[0]),
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            file: file.to_path_buf(),
            raw,
            paths,
            key_file,
            onnxruntime_library,
            pipelines,
            metrics,
        })
    }

    pub fn pipeline(&self, name: &str) -> Option<&LoadedPipeline> {
        self.pipelines.iter().find(|p| p.name() == name)
    }
}

/// The pipeline files named by one `pipelines` entry: the file itself, or the
/// `*.toml` files of a folder in name order.
fn pipeline_files(target: &Path) -> Result<Vec<PathBuf>, String> {
    if target.is_file() {
        return Ok(vec![target.to_path_buf()]);
    }
    if target.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(target)
            .map_err(|error| format!("cannot list {}: {error}", target.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml") && path.is_file())
            .collect();
        files.sort();
        return Ok(files);
    }
    Err(format!(
        "{} not found; expected a pipeline file or a folder of pipeline files",
        target.display()
    ))
}

/// Whether a TOML file looks like a pipeline rather than a daemon config.
pub fn looks_like_pipeline(source: &str) -> bool {
    match toml::from_str::<toml::Table>(source) {
        Ok(table) => table.contains_key("name") && !table.contains_key("paths"),
        Err(_) => !source.contains("[paths]"),
    }
}
