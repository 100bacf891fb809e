//! `synthd init DIR`: a ready-to-run layout under one folder.

use super::EXAMPLE_PIPELINES;
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The folders of `[paths]`, created 0750 because work and archive hold PHI.
const LAYOUT: [&str; 6] = ["inbox", "work", "outbox", "quarantine", "archive", "state"];

pub fn run(dir: &Path) -> Result<i32> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .with_context(|| format!("init: cannot create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("init: cannot resolve {}", dir.display()))?;
    let config_file = dir.join("synthd.toml");
    if config_file.exists() {
        bail!(
            "init: {} already exists; synthd init never overwrites a layout (choose an empty folder)",
            config_file.display()
        );
    }
    for name in LAYOUT {
        let path = dir.join(name);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&path)
            .with_context(|| format!("init: cannot create {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o750))
            .with_context(|| format!("init: cannot set the mode of {}", path.display()))?;
    }
    let key_file = dir.join("synthd.key");
    crate::keyfile::generate(&key_file)
        .map_err(anyhow::Error::msg)
        .context("init: key file")?;

    let pipelines_dir = dir.join("pipelines");
    fs::create_dir_all(&pipelines_dir).with_context(|| format!("init: cannot create {}", pipelines_dir.display()))?;
    let mut written = Vec::new();
    for (file_name, text) in EXAMPLE_PIPELINES {
        match install_pipeline(&dir, file_name, text)? {
            Some(path) => written.push(path),
            None => eprintln!(
                "init: skipped pipelines/{file_name}: its model is not available in this build's source folder"
            ),
        }
    }
    fs::write(&config_file, config_text(&SystemPaths::under(&dir), "synthd init"))
        .with_context(|| format!("init: cannot write {}", config_file.display()))?;

    println!("Wrote a synthd layout in {}:", dir.display());
    println!("  config     {}", config_file.display());
    println!(
        "  key file   {} (mode 0600; back it up: without it no mapping can be reproduced)",
        key_file.display()
    );
    for path in &written {
        println!("  pipeline   {}", path.display());
    }
    println!("Next: synthd validate {}", config_file.display());
    Ok(0)
}

/// The paths a config names, as written into it.
pub struct SystemPaths {
    pub pipelines: String,
    pub inbox: String,
    pub work: String,
    pub outbox: String,
    pub quarantine: String,
    pub archive: String,
    pub state: String,
    pub key: String,
}

impl SystemPaths {
    /// Everything in one folder, as `synthd init DIR` lays it out.
    fn under(dir: &Path) -> SystemPaths {
        let path = |name: &str| dir.join(name).display().to_string();
        SystemPaths {
            pipelines: path("pipelines"),
            inbox: path("inbox"),
            work: path("work"),
            outbox: path("outbox"),
            quarantine: path("quarantine"),
            archive: path("archive"),
            state: path("state"),
            key: path("synthd.key"),
        }
    }
}

/// The daemon config text; `writer` says what wrote it.
pub fn config_text(paths: &SystemPaths, writer: &str) -> String {
    format!(
        r#"# synthd daemon config, written by `{writer}`. Relative paths resolve
# against this file's folder. Check changes with `synthd validate` before a reload.
# The first pipeline (in this order) whose [match] takes a series handles it.
# Synthesis examples are in {pipelines}/: list one here (before deid-only) to
# enable it, e.g. "{pipelines}/brain-mri-inpaint.toml".
pipelines = ["{pipelines}/deid-only.toml"]

[paths]
inbox = "{inbox}"
work = "{work}"
outbox = "{outbox}"
quarantine = "{quarantine}"
archive = "{archive}"
state = "{state}"

[ingest]
stable_age = "60s"
rescan_interval = "30s"
settle = "2s"

[deid]
key_file = "{key}"

[runtime]
# onnxruntime_library = "/opt/onnxruntime/libonnxruntime.so"
intra_op_threads = 0
# Model sessions side by side, each on its own batches; on a CPU-only host,
# 2 gives more slices per second (overnight datasets) at some latency.
inference_lanes = 1

[log]
format = "text"

[daemon]
deid_workers = 2
# Output workers write instances of 64 KiB and more (smaller ones are written
# by the deid worker); they mostly wait for the disk, so more keep writes in flight.
output_workers = 6
queue_depth = 64
shutdown_timeout = "30s"
originals = "archive"
summary_interval = "5m"
min_free_space = "512MiB"

# Receive studies over DICOM (C-STORE, C-ECHO) into the inbox: uncomment,
# and list each sending PACS or modality with the addresses it calls from.
# [dicom.listen]
# ae_title = "SYNTHD"
# bind = "127.0.0.1"
# port = 11112
# max_associations = 16
# connect_timeout = "10s"
# read_timeout = "30s"
# idle_timeout = "2m"
# max_pdu = "256KiB"
# [[dicom.listen.allow]]
# ae_title = "PACS"
# hosts = ["127.0.0.1"]

# Prometheus /metrics, /healthz, /readyz and a status page at / (docs/metrics.md).
# Off while commented out. Loopback keeps them on this host; an address other
# networks reach shows them counts, keyed study ids, reason codes and pipeline
# names (never a patient value).
# [metrics]
# listen = "127.0.0.1:9464"

# Send outputs back over DICOM (C-STORE): a pipeline names destinations in
# its [output] table, e.g. destinations = ["pacs"]. Transient failures are
# retried with backoff; refusals become dead letters (`synthd status`,
# `synthd requeue --dead-letters`).
# [[destinations]]
# name = "pacs"
# ae_title = "PACS"
# host = "127.0.0.1"
# port = 104
# calling_ae_title = "SYNTHD"
# max_pdu = "256KiB"
# connect_timeout = "10s"
# read_timeout = "60s"
# retry_initial = "5s"
# retry_max = "10m"
"#,
        pipelines = paths.pipelines,
        inbox = paths.inbox,
        work = paths.work,
        outbox = paths.outbox,
        quarantine = paths.quarantine,
        archive = paths.archive,
        state = paths.state,
        key = paths.key,
    )
}

/// Writes one example pipeline; a pipeline with a model gets the model and
/// its manifest copied under `DIR/models/`. Returns None when the model is
/// not available.
fn install_pipeline(dir: &Path, file_name: &str, text: &str) -> Result<Option<PathBuf>> {
    let target = dir.join("pipelines").join(file_name);
    let mut text = text.to_string();
    if let Some(model) = model_line(&text) {
        let source_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        let model_path = source_dir.join(&model);
        if !model_path.is_file() {
            return Ok(None);
        }
        let models_dir = dir.join("models");
        fs::create_dir_all(&models_dir).with_context(|| format!("init: cannot create {}", models_dir.display()))?;
        let model_name = model_path.file_name().context("init: model path has no file name")?;
        fs::copy(&model_path, models_dir.join(model_name))
            .with_context(|| format!("init: cannot copy {}", model_path.display()))?;
        let manifest = model_path.with_extension("toml");
        if manifest.is_file() {
            let manifest_name = manifest.file_name().context("init: manifest path has no file name")?;
            fs::copy(&manifest, models_dir.join(manifest_name))
                .with_context(|| format!("init: cannot copy {}", manifest.display()))?;
        }
        let replacement = format!("../models/{}", model_name.to_string_lossy());
        text = text.replacen(&format!("\"{model}\""), &format!("\"{replacement}\""), 1);
    }
    fs::write(&target, text).with_context(|| format!("init: cannot write {}", target.display()))?;
    Ok(Some(target))
}

/// The value of the first `model = "..."` line.
pub fn model_line(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "model").then(|| value.trim().trim_matches('"').to_string())
    })
}
