//! `synthd deid INPUT... --output DIR`: de-identify files and folders in
//! parallel, streaming (memory bounded by the largest file), with a
//! quarantine entry for every file that cannot be handled.

use crate::config::pipeline::{DeidProfile, LoadedPipeline};
use crate::deid::{DeidOption, Deidentifier};
use crate::fsutil;
use crate::keyfile::SiteKey;
use crate::quarantine::{self, ReasonCode, Rejection, Stage};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct DeidArgs {
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    pub pipeline: Option<PathBuf>,
    pub options: Vec<DeidOption>,
    pub key_file: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub crosswalk: Option<PathBuf>,
    pub quarantine: Option<PathBuf>,
    pub jobs: Option<usize>,
}

/// What happened to one input.
enum Outcome {
    Written {
        crosswalk: Vec<(String, String, String)>,
    },
    /// The same instance, byte for byte, as another input: recorded and dropped.
    Duplicate,
    Quarantined(ReasonCode),
}

/// Output paths already written in this run: which input wrote each, and a
/// digest of the bytes. Two inputs that become the same instance are either
/// identical (one is dropped) or conflicting (the one whose path sorts last
/// is quarantined), whatever order the workers finish in.
type Claims = std::sync::Mutex<std::collections::HashMap<PathBuf, (PathBuf, [u8; 32])>>;

pub fn run(args: DeidArgs) -> Result<i32> {
    if args.pipeline.is_some() && !args.options.is_empty() {
        eprintln!("error: give either --pipeline or --option, not both");
        return Ok(2);
    }
    let profile = match &args.pipeline {
        Some(file) => LoadedPipeline::load(file)
            .map_err(|problems| anyhow::anyhow!("{problems}"))
            .with_context(|| format!("deid: invalid pipeline {}", file.display()))?
            .pipeline
            .deid
            .clone(),
        None => DeidProfile {
            options: args.options.clone(),
            ..DeidProfile::default()
        },
    };
    let Some(key_file) = key_file(&args) else {
        eprintln!(
            "error: no key file: pass --key-file FILE (make one with `synthd keygen FILE`) or --config with deid.key_file"
        );
        return Ok(2);
    };
    let key = SiteKey::read(&key_file)
        .map_err(anyhow::Error::msg)
        .context("deid: key file")?;
    let deidentifier = Deidentifier::new(key.clone(), &profile).context("deid: profile")?;

    let mut files = Vec::new();
    for input in &args.inputs {
        collect(input, &mut files).with_context(|| format!("deid: cannot list {}", input.display()))?;
    }
    if files.is_empty() {
        bail!("deid: no input files found under the given paths");
    }
    files.sort();
    fsutil::create_private_dir(&args.output)
        .with_context(|| format!("deid: cannot create {}", args.output.display()))?;
    let quarantine_dir = args.quarantine.clone().unwrap_or_else(|| {
        args.output
            .with_file_name(format!("{}-quarantine", file_name(&args.output)))
    });

    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        .max(1);
    let (work_tx, work_rx) = crossbeam_channel::bounded::<PathBuf>(jobs * 2);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<Result<Outcome>>(jobs * 2);
    let total = files.len();
    let mut reasons: BTreeMap<ReasonCode, usize> = BTreeMap::new();
    let mut duplicates = 0usize;
    let claims = Claims::default();
    let mut crosswalk: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut first_error = None;
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let work_rx = work_rx.clone();
            let done_tx = done_tx.clone();
            let deidentifier = &deidentifier;
            let output = &args.output;
            let quarantine_dir = &quarantine_dir;
            let key = &key;
            let claims = &claims;
            scope.spawn(move || {
                for path in work_rx {
                    let outcome = process(deidentifier, key, &path, output, quarantine_dir, claims);
                    if done_tx.send(outcome).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        scope.spawn(move || {
            for path in files {
                if work_tx.send(path).is_err() {
                    break;
                }
            }
        });
        for outcome in done_rx {
            match outcome {
                Ok(Outcome::Duplicate) => duplicates += 1,
                Ok(Outcome::Written { crosswalk: entries }) => {
                    for (attribute, original, replacement) in entries {
                        crosswalk.insert((attribute, original), replacement);
                    }
                }
                Ok(Outcome::Quarantined(code)) => *reasons.entry(code).or_default() += 1,
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
    });
    if let Some(error) = first_error {
        return Err(error);
    }
    fsutil::sync_filesystem(&args.output).with_context(|| format!("deid: cannot flush {}", args.output.display()))?;
    if let Some(path) = &args.crosswalk {
        write_crosswalk(path, &crosswalk)
            .with_context(|| format!("deid: cannot write crosswalk {}", path.display()))?;
    }
    let quarantined: usize = reasons.values().sum();
    let written = claims.lock().map(|c| c.len()).unwrap_or(0);
    println!(
        "de-identified {written} of {total} file(s) into {}; dropped {duplicates} identical duplicate(s); quarantined {quarantined}{}",
        args.output.display(),
        if quarantined > 0 {
            format!(
                " in {} ({})",
                quarantine_dir.display(),
                reasons
                    .iter()
                    .map(|(code, n)| format!("{code}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        }
    );
    Ok(if quarantined > 0 { 1 } else { 0 })
}

fn key_file(args: &DeidArgs) -> Option<PathBuf> {
    if let Some(path) = &args.key_file {
        return Some(path.clone());
    }
    let config_path = crate::config::config_path(args.config.as_deref());
    crate::config::Config::load(&config_path)
        .ok()
        .map(|config| config.key_file)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".to_string())
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let metadata = std::fs::symlink_metadata(path)?;
    if metadata.is_dir() {
        for entry in std::fs::read_dir(path)? {
            collect(&entry?.path(), files)?;
        }
    } else {
        files.push(path.to_path_buf());
    }
    Ok(())
}

/// De-identifies one file and writes it, or quarantines it. An `Err` is an
/// environment fault (cannot write output), not the file's fault.
fn process(
    deidentifier: &Deidentifier,
    key: &SiteKey,
    path: &Path,
    output: &Path,
    quarantine_dir: &Path,
    claims: &Claims,
) -> Result<Outcome> {
    let metadata = std::fs::symlink_metadata(path).with_context(|| format!("deid: cannot stat {}", path.display()))?;
    let result = if !metadata.file_type().is_file() {
        Err(Rejection::new(
            ReasonCode::NotARegularFile,
            "the input is a symlink, device or FIFO; synthd reads regular files only",
        ))
    } else {
        deidentifier.deidentify_file(path)
    };
    match result {
        Ok(deidentified) => {
            let bytes = match deidentified.to_bytes() {
                Ok(bytes) => bytes,
                Err(error) => {
                    let rejection = Rejection::new(ReasonCode::UnsupportedTransferSyntax, error.to_string());
                    return quarantine(key, path, quarantine_dir, &rejection);
                }
            };
            let target = output.join(deidentified.relative_path());
            let digest: [u8; 32] = {
                use sha2::Digest;
                sha2::Sha256::digest(&bytes).into()
            };
            let mut claimed = claims.lock().map_err(|_| anyhow::anyhow!("deid: a worker panicked"))?;
            let loser = match claimed.get(&target) {
                Some((_, other_digest)) if *other_digest == digest => return Ok(Outcome::Duplicate),
                Some((other_input, _)) if other_input.as_path() < path => Some(path.to_path_buf()),
                Some((other_input, _)) => Some(other_input.clone()),
                None => None,
            };
            let conflict = || {
                Rejection::new(
                    ReasonCode::ConflictingDuplicate,
                    "another input has the same SOP Instance UID with different content",
                )
            };
            if loser.as_deref() == Some(path) {
                drop(claimed);
                return quarantine(key, path, quarantine_dir, &conflict());
            }
            claimed.insert(target.clone(), (path.to_path_buf(), digest));
            if let Some(parent) = target.parent() {
                fsutil::create_private_dir(parent)
                    .with_context(|| format!("deid: cannot create {}", parent.display()))?;
            }
            // One syncfs at the end makes the run durable; per-file fsyncs
            // would cost more than the de-identification itself.
            fsutil::write_replace(&target, &bytes, 0o640)
                .with_context(|| format!("deid: cannot write {}", target.display()))?;
            drop(claimed);
            if let Some(replaced) = loser {
                quarantine(key, &replaced, quarantine_dir, &conflict())?;
            }
            let crosswalk = deidentified
                .crosswalk
                .into_iter()
                .map(|entry| (entry.attribute, entry.original.into_inner(), entry.replacement))
                .collect();
            Ok(Outcome::Written { crosswalk })
        }
        Err(rejection) => quarantine(key, path, quarantine_dir, &rejection),
    }
}

fn quarantine(key: &SiteKey, path: &Path, quarantine_dir: &Path, rejection: &Rejection) -> Result<Outcome> {
    quarantine::quarantine_copy(key, path, quarantine_dir, rejection, Stage::Deid)
        .with_context(|| format!("deid: cannot quarantine into {}", quarantine_dir.display()))?;
    Ok(Outcome::Quarantined(rejection.code))
}

fn write_crosswalk(path: &Path, entries: &BTreeMap<(String, String), String>) -> std::io::Result<()> {
    let mut text = String::from("attribute,original,replacement\n");
    for ((attribute, original), replacement) in entries {
        text.push_str(&format!("{},{},{}\n", csv(attribute), csv(original), csv(replacement)));
    }
    fsutil::write_atomic(path, text.as_bytes(), 0o600)
}

fn csv(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}
