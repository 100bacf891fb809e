//! `synthd deid INPUT... --output DIR`: de-identify files and folders in
//! parallel, streaming (memory bounded by the largest file), with a
//! quarantine entry for every file that cannot be handled.

use crate::config::pipeline::{DeidProfile, LoadedPipeline};
use crate::deid::{DeidOption, Deidentifier};
use crate::fsutil;
use crate::keyfile::SiteKey;
use crate::quarantine::{self, Durability, ReasonCode, Rejection, Stage};
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
        /// Why the input that had written the same path earlier in the run
        /// was quarantined, when this one displaced it.
        displaced: Option<ReasonCode>,
    },
    /// The same instance, byte for byte, as another input: recorded and dropped.
    Duplicate,
    Quarantined(ReasonCode),
}

/// Output paths already written in this run and which input wrote each.
/// Two inputs that become the same instance are either identical (one is
/// dropped) or conflicting (the one whose path sorts last is quarantined),
/// whatever order the workers finish in. Writes to one output path are
/// serialised by a striped lock, so a worker comparing against an earlier
/// output reads it whole; writes to different paths run in parallel.
#[derive(Default)]
struct Claims {
    written: std::sync::Mutex<std::collections::HashMap<PathBuf, PathBuf>>,
    stripes: [std::sync::Mutex<()>; 32],
    /// Output bytes written so far, for [`write_back_early`].
    written_bytes: std::sync::atomic::AtomicU64,
}

impl Claims {
    fn stripe(&self, target: &Path) -> &std::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        target.hash(&mut hasher);
        &self.stripes[(hasher.finish() % self.stripes.len() as u64) as usize]
    }
}

/// One worker's share of the run's results.
#[derive(Default)]
struct Tally {
    duplicates: usize,
    reasons: BTreeMap<ReasonCode, usize>,
    crosswalk: BTreeMap<(String, String), String>,
    error: Option<anyhow::Error>,
}

impl Tally {
    /// Counts one input's outcome; false on an environment fault, which stops the run.
    fn add(&mut self, outcome: Result<Outcome>, want_crosswalk: bool) -> bool {
        match outcome {
            Ok(Outcome::Duplicate) => self.duplicates += 1,
            Ok(Outcome::Written { crosswalk, displaced }) => {
                if want_crosswalk {
                    for (attribute, original, replacement) in crosswalk {
                        self.crosswalk.insert((attribute, original), replacement);
                    }
                }
                if let Some(code) = displaced {
                    *self.reasons.entry(code).or_default() += 1;
                }
            }
            Ok(Outcome::Quarantined(code)) => *self.reasons.entry(code).or_default() += 1,
            Err(error) => {
                self.error = Some(error);
                return false;
            }
        }
        true
    }
}

/// Writer threads per worker. A large output's whole blocks are written
/// with `O_DIRECT` (see `fsutil::write_contents`), and a direct write waits
/// for the device: workers that wrote their own large outputs kept at most
/// one write each in flight, and a 126 MB MR series took 240 ms where
/// eight writes in flight took 150. Small outputs are buffered writes,
/// written by the worker itself.
const WRITERS_PER_JOB: usize = 3;

/// Bytes of large outputs waiting for or in a writer at once: memory stays
/// bounded whatever the inputs (one larger output goes alone).
const IN_FLIGHT_BYTES: usize = 64 << 20;

/// A byte budget: `acquire` waits while others hold more than the limit
/// leaves room for, except that an empty budget always admits one.
struct Budget {
    used: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
    limit: usize,
}

impl Budget {
    fn new(limit: usize) -> Budget {
        Budget {
            used: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
            limit,
        }
    }

    fn acquire(&self, bytes: usize) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used > 0 && *used + bytes > self.limit {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += bytes;
    }

    fn release(&self, bytes: usize) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        *used = used.saturating_sub(bytes);
        self.freed.notify_all();
    }
}

/// What every worker and writer shares.
#[derive(Clone, Copy)]
struct Shared<'a> {
    key: &'a SiteKey,
    quarantine_dir: &'a Path,
    /// The input arguments, which quarantine entries name inputs relative to.
    roots: &'a [PathBuf],
    claims: &'a Claims,
}

/// A de-identified instance, encoded, waiting to be written.
struct Pending {
    input: PathBuf,
    target: PathBuf,
    bytes: Vec<u8>,
    crosswalk: Vec<(String, String, String)>,
}

enum Prepared {
    Write(Pending),
    Done(Outcome),
}

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
    // Opened before the first write, so that every sync of the run reports
    // any writeback error since.
    let output_sync =
        std::fs::File::open(&args.output).with_context(|| format!("deid: cannot open {}", args.output.display()))?;
    let quarantine_dir = args
        .quarantine
        .clone()
        .unwrap_or_else(|| quarantine::beside(&args.output));
    if quarantine::is_within(&quarantine_dir, &args.output) {
        bail!(
            "deid: the quarantine {} lies inside the output {}; choose a --quarantine folder outside it",
            quarantine_dir.display(),
            args.output.display()
        );
    }

    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        .max(1);
    let total = files.len();
    let claims = Claims::default();
    let want_crosswalk = args.crosswalk.is_some();
    // Workers take the next file from a shared index: no feeder thread, no
    // hand-offs; each keeps its own tally, merged at the end. Large outputs
    // go to writer threads (see `WRITERS_PER_JOB`).
    let next = std::sync::atomic::AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let workers_done = std::sync::atomic::AtomicBool::new(false);
    let budget = Budget::new(IN_FLIGHT_BYTES);
    let context = Shared {
        key: &key,
        quarantine_dir: &quarantine_dir,
        roots: &args.inputs,
        claims: &claims,
    };
    let (tallies, early_sync): (Vec<Tally>, std::io::Result<()>) = std::thread::scope(|scope| {
        use std::sync::atomic::Ordering::Relaxed;
        let writeback = scope.spawn(|| write_back_early(&output_sync, &claims.written_bytes, &workers_done));
        let (write_tx, write_rx) = crossbeam_channel::bounded::<Pending>(jobs * WRITERS_PER_JOB);
        // Workers first: they start on the files at once, and a writer is
        // needed only once a worker has prepared a large output.
        let workers: Vec<_> = (0..jobs)
            .map(|_| {
                let (tx, stop, budget, next, files) = (write_tx.clone(), &stop, &budget, &next, &files);
                let (deidentifier, output) = (&deidentifier, &args.output);
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    while !stop.load(Relaxed) {
                        let Some(path) = files.get(next.fetch_add(1, Relaxed)) else {
                            break;
                        };
                        let outcome = match prepare(deidentifier, path, output, &context) {
                            Ok(Prepared::Write(pending)) if pending.bytes.len() >= fsutil::DIRECT_WRITE_MIN => {
                                let len = pending.bytes.len();
                                budget.acquire(len);
                                if tx.send(pending).is_err() {
                                    budget.release(len);
                                    break;
                                }
                                continue;
                            }
                            Ok(Prepared::Write(pending)) => write(pending, &context),
                            Ok(Prepared::Done(outcome)) => Ok(outcome),
                            Err(error) => Err(error),
                        };
                        if !tally.add(outcome, want_crosswalk) {
                            // An environment fault (disk full, unwritable
                            // output) would fail every file after it too.
                            stop.store(true, Relaxed);
                        }
                    }
                    tally
                })
            })
            .collect();
        let writers: Vec<_> = (0..jobs * WRITERS_PER_JOB)
            .map(|_| {
                let (rx, stop, budget) = (write_rx.clone(), &stop, &budget);
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    for pending in rx {
                        let len = pending.bytes.len();
                        // After an error the queue is drained unwritten, so no worker waits on it.
                        if !stop.load(Relaxed) && !tally.add(write(pending, &context), want_crosswalk) {
                            stop.store(true, Relaxed);
                        }
                        budget.release(len);
                    }
                    tally
                })
            })
            .collect();
        drop(write_rx);
        drop(write_tx);
        let joined = |handle: std::thread::ScopedJoinHandle<'_, Tally>| {
            handle.join().unwrap_or_else(|_| Tally {
                error: Some(anyhow::anyhow!("deid: a worker panicked")),
                ..Tally::default()
            })
        };
        // Workers first: the writers end once every worker has dropped its sender.
        let mut tallies: Vec<Tally> = workers.into_iter().map(joined).collect();
        tallies.extend(writers.into_iter().map(joined));
        workers_done.store(true, Relaxed);
        writeback.thread().unpark();
        let early_sync = writeback
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the writeback thread panicked")))
            .map(|_syncs| ());
        (tallies, early_sync)
    });
    let mut reasons: BTreeMap<ReasonCode, usize> = BTreeMap::new();
    let mut duplicates = 0usize;
    let mut crosswalk: BTreeMap<(String, String), String> = BTreeMap::new();
    for tally in tallies {
        if let Some(error) = tally.error {
            return Err(error);
        }
        duplicates += tally.duplicates;
        for (code, n) in tally.reasons {
            *reasons.entry(code).or_default() += n;
        }
        crosswalk.extend(tally.crosswalk);
    }
    early_sync
        .and_then(|()| fsutil::sync_filesystem_of(&output_sync))
        .with_context(|| format!("deid: cannot flush {}", args.output.display()))?;
    // Usually the output's file system, which that syncfs covered; a second
    // one would still cost a device cache flush (2 ms on a VM disk, a tenth
    // of a small run).
    let elsewhere = |dir: &Path| -> std::io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(dir)?.dev() != output_sync.metadata()?.dev())
    };
    if quarantine_dir.exists() && elsewhere(&quarantine_dir).unwrap_or(true) {
        fsutil::sync_filesystem(&quarantine_dir)
            .with_context(|| format!("deid: cannot flush {}", quarantine_dir.display()))?;
    }
    if let Some(path) = &args.crosswalk {
        write_crosswalk(path, &crosswalk)
            .with_context(|| format!("deid: cannot write crosswalk {}", path.display()))?;
    }
    let quarantined: usize = reasons.values().sum();
    let written = claims.written.lock().map(|c| c.len()).unwrap_or(0);
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
    Ok(if quarantined > 0 { super::EXIT_QUARANTINED } else { 0 })
}

/// Output bytes after which the writeback thread starts writing outputs
/// back while the workers go on.
const WRITE_BACK_EVERY: u64 = 16 << 20;

/// Syncs the output's file system each time another [`WRITE_BACK_EVERY`]
/// bytes are written, until the workers are done, so that the disk works
/// while they do: on a 126 MB MR series the run's one final sync alone took
/// 70 of its 190 ms. Small runs never reach the threshold. The first error
/// stops it and fails the run. Returns how many syncs it made.
fn write_back_early(
    output: &std::fs::File,
    written: &std::sync::atomic::AtomicU64,
    done: &std::sync::atomic::AtomicBool,
) -> std::io::Result<usize> {
    use std::sync::atomic::Ordering::Relaxed;
    let (mut synced, mut syncs) = (0, 0);
    loop {
        let now = written.load(Relaxed);
        if now - synced >= WRITE_BACK_EVERY {
            fsutil::sync_filesystem_of(output)?;
            (synced, syncs) = (now, syncs + 1);
        } else if done.load(Relaxed) {
            return Ok(syncs);
        } else {
            // Unparked at once when the workers are done.
            std::thread::park_timeout(std::time::Duration::from_millis(5));
        }
    }
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

/// De-identifies and encodes one file, or quarantines it. An `Err` is an
/// environment fault (cannot write the quarantine), not the file's fault.
fn prepare(deidentifier: &Deidentifier, path: &Path, output: &Path, context: &Shared) -> Result<Prepared> {
    let metadata = std::fs::symlink_metadata(path).with_context(|| format!("deid: cannot stat {}", path.display()))?;
    let result = if !metadata.file_type().is_file() {
        Err(Rejection::new(
            ReasonCode::NotARegularFile,
            "the input is a symlink, device or FIFO; synthd reads regular files only",
        ))
    } else {
        deidentifier.deidentify_file(path)
    };
    let deidentified = match result {
        Ok(deidentified) => deidentified,
        Err(rejection) => return quarantine(context, path, &rejection).map(Prepared::Done),
    };
    let bytes = match deidentified.to_bytes() {
        Ok(bytes) => bytes,
        Err(error) => {
            let rejection = Rejection::new(ReasonCode::UnsupportedTransferSyntax, error.to_string());
            return quarantine(context, path, &rejection).map(Prepared::Done);
        }
    };
    Ok(Prepared::Write(Pending {
        input: path.to_path_buf(),
        target: output.join(crate::output::study::source_path(&deidentified)),
        bytes,
        crosswalk: deidentified
            .crosswalk
            .into_iter()
            .map(|entry| (entry.attribute, entry.original.into_inner(), entry.replacement))
            .collect(),
    }))
}

/// Writes one prepared output, unless another input already wrote the
/// same instance (identical: dropped; conflicting: one is quarantined). An
/// `Err` is an environment fault (cannot write output).
fn write(pending: Pending, context: &Shared) -> Result<Outcome> {
    let Pending {
        input: path,
        target,
        bytes,
        crosswalk,
    } = pending;
    let claims = context.claims;
    let _writing = claims
        .stripe(&target)
        .lock()
        .map_err(|_| anyhow::anyhow!("deid: a worker panicked"))?;
    let earlier = claims
        .written
        .lock()
        .map_err(|_| anyhow::anyhow!("deid: a worker panicked"))?
        .get(&target)
        .cloned();
    let conflict = || {
        Rejection::new(
            ReasonCode::ConflictingDuplicate,
            "another input has the same SOP Instance UID with different content",
        )
    };
    let loser = match earlier {
        None => None,
        Some(other_input) => {
            // Rare: compare with what the earlier input wrote, in full.
            let existing =
                std::fs::read(&target).with_context(|| format!("deid: cannot read back {}", target.display()))?;
            if existing == bytes {
                return Ok(Outcome::Duplicate);
            }
            if other_input < path {
                return quarantine(context, &path, &conflict());
            }
            Some(other_input)
        }
    };
    if let Some(parent) = target.parent() {
        fsutil::create_private_dir(parent).with_context(|| format!("deid: cannot create {}", parent.display()))?;
    }
    // One syncfs at the end makes the run durable; per-file fsyncs
    // would cost more than the de-identification itself.
    let buffered = fsutil::write_replace(&target, &bytes, 0o640)
        .with_context(|| format!("deid: cannot write {}", target.display()))?;
    claims
        .written_bytes
        .fetch_add(buffered, std::sync::atomic::Ordering::Relaxed);
    claims
        .written
        .lock()
        .map_err(|_| anyhow::anyhow!("deid: a worker panicked"))?
        .insert(target.clone(), path.clone());
    drop(_writing);
    let displaced = match loser {
        Some(replaced) => {
            let rejection = conflict();
            quarantine(context, &replaced, &rejection)?;
            Some(rejection.code)
        }
        None => None,
    };
    Ok(Outcome::Written { crosswalk, displaced })
}

fn quarantine(context: &Shared, path: &Path, rejection: &Rejection) -> Result<Outcome> {
    let quarantine_dir = context.quarantine_dir;
    quarantine::quarantine_copy(
        context.key,
        path,
        &quarantine::InputRecord::relative_to(path, context.roots),
        quarantine_dir,
        rejection,
        Stage::Deid,
        Durability::AtEndOfRun,
    )
    .with_context(|| format!("deid: cannot quarantine into {}", quarantine_dir.display()))?;
    Ok(Outcome::Quarantined(rejection.code))
}

fn write_crosswalk(path: &Path, entries: &BTreeMap<(String, String), String>) -> std::io::Result<()> {
    let mut text = String::from("attribute,original,replacement\n");
    for ((attribute, original), replacement) in entries {
        text.push_str(&format!("{},{},{}\n", csv(attribute), csv(original), csv(replacement)));
    }
    fsutil::write_atomic(path, text.as_bytes(), 0o600).map(drop)
}

fn csv(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_writeback_syncs_once_per_threshold_and_not_for_a_small_run() {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        let dir = tempfile::tempdir().unwrap();
        let output = std::fs::File::open(dir.path()).unwrap();
        let done = AtomicBool::new(true);
        let small = AtomicU64::new(WRITE_BACK_EVERY - 1);
        assert_eq!(write_back_early(&output, &small, &done).unwrap(), 0);
        // Bytes past the threshold since the last sync: one sync covers them all.
        let large = AtomicU64::new(3 * WRITE_BACK_EVERY);
        assert_eq!(write_back_early(&output, &large, &done).unwrap(), 1);
    }

    #[test]
    fn the_byte_budget_waits_for_room_and_admits_an_oversized_output_alone() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let budget = Budget::new(100);
        budget.acquire(60);
        budget.acquire(40);
        let admitted = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                budget.acquire(500);
                admitted.store(true, SeqCst);
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!admitted.load(SeqCst), "the budget is full");
            budget.release(60);
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(
                !admitted.load(SeqCst),
                "too large for the room left; it waits for an empty budget"
            );
            budget.release(40);
        });
        assert!(admitted.load(SeqCst));
    }

    #[test]
    fn an_input_displaced_by_the_one_that_sorts_first_is_counted_as_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        crate::keyfile::generate(&dir.path().join("k")).unwrap();
        let key = SiteKey::read(&dir.path().join("k")).unwrap();
        let deidentifier = Deidentifier::new(key.clone(), &DeidProfile::default()).unwrap();
        // One SOP Instance, two contents; "a" sorts first, so it wins.
        let (first, last) = (dir.path().join("a.dcm"), dir.path().join("c.dcm"));
        crate::daemon::tests::write_mr(&first, "1.2.3", "1.2.3.4", "Fake^One");
        crate::daemon::tests::write_mr(&last, "1.2.3", "1.2.3.4", "Fake^Other");
        let (output, quarantine_dir) = (dir.path().join("out"), dir.path().join("quarantine"));
        let claims = Claims::default();
        let context = Shared {
            key: &key,
            quarantine_dir: &quarantine_dir,
            roots: &[],
            claims: &claims,
        };
        let process = |path: &Path| match prepare(&deidentifier, path, &output, &context).unwrap() {
            Prepared::Write(pending) => write(pending, &context).unwrap(),
            Prepared::Done(outcome) => outcome,
        };
        // As when a second worker finishes the later input first.
        let outcome = process(&last);
        assert!(matches!(outcome, Outcome::Written { displaced: None, .. }));
        let outcome = process(&first);
        assert!(
            matches!(
                outcome,
                Outcome::Written {
                    displaced: Some(ReasonCode::ConflictingDuplicate),
                    ..
                }
            ),
            "the displaced input must reach the run's tally"
        );
        assert_eq!(std::fs::read_dir(&quarantine_dir).unwrap().count(), 1);
    }
}
