//! The stage threads: deid workers turn claimed files into encoded
//! de-identified instances and write the small ones; output workers write
//! the large ones, whose writes wait on the disk. Each reports back to the
//! coordinator, which alone writes the ledger.

use super::engine::Engine;
use super::system;
use crate::fsutil;
use crate::metrics;
use crate::quarantine::{Rejection, Stage};
use crossbeam_channel::{Receiver, Sender};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub struct DeidTask<E: Engine> {
    pub job: i64,
    pub instance: i64,
    pub path: PathBuf,
    pub pipeline: String,
    pub engine: Arc<E>,
}

/// An encoded output too large to write on the deid worker's thread.
pub struct OutputTask {
    pub job: i64,
    pub instance: i64,
    /// Relative to the outbox.
    pub relative: PathBuf,
    pub bytes: Vec<u8>,
}

/// Study-level synthesis of one job's written instances for one pipeline.
pub struct SynthTask<E: Engine> {
    pub job: i64,
    pub pipeline: String,
    pub written: Vec<PathBuf>,
    pub engine: Arc<E>,
}

#[derive(Debug)]
pub enum OutcomeKind {
    /// A job's synthesis for one pipeline is durable in the outbox.
    Synthesized(String, super::engine::SynthesisReport),
    /// A job's synthesis for one pipeline failed (e.g. model-failure); the
    /// de-identified outputs stand.
    SynthesisFailed(String, Rejection),
    /// The output is in place at this path relative to the outbox; durable
    /// once the coordinator has flushed the outbox (see `write_output`).
    Written(PathBuf),
    Rejected(Stage, Rejection),
    /// Not the data's fault; retry after a pause. The text holds no PHI.
    EnvironmentFault(String),
    /// Everything this task names is durable now (the flush stage synced the outbox).
    Flushed(FlushTask),
    /// Syncing failed; nothing this task names is known durable.
    FlushFailed(FlushTask, String),
}

/// What one flush makes durable: outputs written in place, and folders
/// whose entries the coordinator changed without syncing them (claims
/// renamed inputs into work folders, finished jobs moved their originals).
/// The coordinator records those jobs claimed or done once the report
/// comes, so its own thread never waits on the disk for them.
#[derive(Debug, Default)]
pub struct FlushTask {
    pub outputs: Vec<WrittenOutput>,
    pub folders: Vec<PathBuf>,
    /// Jobs whose claim renames `folders` hold.
    pub claims: Vec<i64>,
    /// Jobs whose originals' move `folders` hold.
    pub moved: Vec<i64>,
}

impl FlushTask {
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty() && self.folders.is_empty() && self.claims.is_empty() && self.moved.is_empty()
    }

    /// Takes back the folder changes of a flush that was not made (or
    /// failed), to go out with the next; returns its outputs.
    pub fn absorb(&mut self, other: FlushTask) -> Vec<WrittenOutput> {
        self.folders.extend(other.folders);
        self.claims.extend(other.claims);
        self.moved.extend(other.moved);
        other.outputs
    }
}

/// An output in place in the outbox, not yet known durable.
#[derive(Debug)]
pub struct WrittenOutput {
    pub job: i64,
    pub instance: i64,
    /// Relative to the outbox.
    pub relative: PathBuf,
}

#[derive(Debug)]
pub struct Outcome {
    pub job: i64,
    pub instance: i64,
    pub kind: OutcomeKind,
}

/// Outputs under [`fsutil::DIRECT_WRITE_MIN`] are written where they were
/// made: a buffered write of a few kilobytes costs less than handing it to
/// another thread (two wake-ups and context switches per file, the largest
/// cost the daemon added to `synthd deid` on small instances). Larger ones
/// are written with O_DIRECT and wait on the device, so they go to the
/// output workers, which keep several writes in flight while this worker
/// de-identifies the next file.
pub fn deid_worker<E: Engine>(
    tasks: Receiver<DeidTask<E>>,
    output: Sender<OutputTask>,
    outbox: PathBuf,
    outcomes: Sender<Outcome>,
) {
    for task in tasks {
        let (job, instance) = (task.job, task.instance);
        let metrics = crate::metrics::get();
        let started = Instant::now();
        let encoded = task
            .engine
            .deidentify(&task.pipeline, &task.path)
            .map_err(|rejection| (Stage::Deid, rejection))
            .and_then(|item| {
                metrics.stage(metrics::Stage::Deid, started.elapsed().as_secs_f64());
                let started = Instant::now();
                let encoded = task.engine.encode(&item);
                metrics.stage(metrics::Stage::Encode, started.elapsed().as_secs_f64());
                encoded.map_err(|rejection| (Stage::Output, rejection))
            });
        let kind = match encoded {
            Err((stage, rejection)) => OutcomeKind::Rejected(stage, rejection),
            Ok((relative, bytes)) if bytes.len() < fsutil::DIRECT_WRITE_MIN => written(&outbox, relative, &bytes),
            Ok((relative, bytes)) => {
                // No report of its own: the output stage's report implies it.
                // A full output queue blocks here: back-pressure up to intake.
                let task = OutputTask {
                    job,
                    instance,
                    relative,
                    bytes,
                };
                if output.send(task).is_err() {
                    return;
                }
                continue;
            }
        };
        if outcomes.send(Outcome { job, instance, kind }).is_err() {
            return;
        }
    }
}

pub fn output_worker(tasks: Receiver<OutputTask>, outbox: PathBuf, outcomes: Sender<Outcome>) {
    for task in tasks {
        let kind = written(&outbox, task.relative, &task.bytes);
        if outcomes
            .send(Outcome {
                job: task.job,
                instance: task.instance,
                kind,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Writes an output and says how that went.
fn written(outbox: &Path, relative: PathBuf, bytes: &[u8]) -> OutcomeKind {
    let started = Instant::now();
    let result = write_output(outbox, &relative, bytes);
    metrics::get().stage(metrics::Stage::Write, started.elapsed().as_secs_f64());
    match result {
        Ok(()) => OutcomeKind::Written(relative),
        Err(error) => OutcomeKind::EnvironmentFault(format!("writing to the outbox failed: {error}")),
    }
}

/// Writes one output under a temp name and renames it into place, without
/// fsyncs: the coordinator flushes the outbox's file system once per round
/// of outcomes, before the ledger records any of them as written (one
/// syncfs for many files instead of two fsyncs each). Until then the ledger
/// still says "claimed", so a crash only means the output is written again,
/// byte for byte.
fn write_output(outbox: &Path, relative: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(error) = system::injected_write_fault() {
        return Err(error);
    }
    let target = outbox.join(relative);
    let folder = target.parent().unwrap_or(outbox);
    if !folder.is_dir() {
        fsutil::create_private_dir(folder)?;
    }
    fsutil::write_replace(&target, bytes, 0o640).map(drop)
}

/// The flush stage: makes batches of written outputs durable with one
/// syncfs of the outbox's file system each, off the coordinator's thread, so
/// claiming and dispatching go on while the disk catches up. Reports with
/// job and instance 0.
///
/// The outbox is synced through one descriptor, opened before any output is
/// written (`held`): the kernel reports a writeback error once per
/// descriptor and only if it came after the descriptor's open, so a fresh
/// descriptor per batch would miss a failure of the kernel's own background
/// writeback and record lost outputs as durable.
pub fn flush_worker(
    batches: Receiver<FlushTask>,
    outbox: PathBuf,
    held: Option<std::fs::File>,
    outcomes: Sender<Outcome>,
) {
    let mut held = held;
    for batch in batches {
        let flushed = match system::injected_flush_fault() {
            Some(error) => Err(error),
            None => flush(&outbox, &mut held, &batch.folders),
        };
        let kind = match flushed {
            Ok(()) => OutcomeKind::Flushed(batch),
            Err(error) => OutcomeKind::FlushFailed(batch, format!("flushing the outbox failed: {error}")),
        };
        if outcomes
            .send(Outcome {
                job: 0,
                instance: 0,
                kind,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Syncs the outbox's file system, then the `folders` on other file
/// systems (the inbox and work folders may be elsewhere) as
/// `fsutil::sync_dirs` does. A folder gone since is skipped: only a job
/// folder (its job finished with no outputs, its work folder archived) or a
/// study's receiving folder (claimed: renamed to a work folder) moves on,
/// and its parent, which is in `folders` too, holds that change.
pub fn flush(outbox: &Path, held: &mut Option<std::fs::File>, folders: &[PathBuf]) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let outbox_device = sync_outbox(outbox, held)?;
    let mut elsewhere = Vec::new();
    for folder in folders {
        match std::fs::metadata(folder) {
            Ok(meta) if meta.dev() != outbox_device => elsewhere.push(folder.as_path()),
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    fsutil::sync_dirs(elsewhere)
}

/// Syncs the outbox's file system through `held`, opening it when missing
/// (the outbox was absent at start) or when the outbox is now another file
/// system (remounted), so that the sync reaches the file system written to.
/// Returns that file system's device.
fn sync_outbox(outbox: &Path, held: &mut Option<std::fs::File>) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let current = std::fs::metadata(outbox)?.dev();
    if let Some(file) = held.as_ref() {
        if file.metadata()?.dev() != current {
            *held = None;
        }
    }
    let file = match held {
        Some(file) => file,
        None => held.insert(std::fs::File::open(outbox)?),
    };
    fsutil::sync_filesystem_of(file)?;
    Ok(current)
}

/// The synth stage: one study at a time (the model saturates the cores or
/// the GPU; more threads would only contend). Reports with instance 0.
pub fn synth_worker<E: Engine>(tasks: Receiver<SynthTask<E>>, outbox: PathBuf, outcomes: Sender<Outcome>) {
    for task in tasks {
        let kind = match task.engine.synthesize(&task.pipeline, &outbox, &task.written) {
            Ok(report) => OutcomeKind::Synthesized(task.pipeline.clone(), report),
            Err(rejection) => OutcomeKind::SynthesisFailed(task.pipeline.clone(), rejection),
        };
        if outcomes
            .send(Outcome {
                job: task.job,
                instance: 0,
                kind,
            })
            .is_err()
        {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{flush, sync_outbox};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_outbox_is_synced_through_a_descriptor_on_its_own_file_system() {
        let outbox = tempfile::tempdir().unwrap();
        let dev = std::fs::metadata(outbox.path()).unwrap().dev();
        // A descriptor on another file system, as after the outbox was remounted.
        let mut held = Some(std::fs::File::open("/proc").unwrap());
        assert_ne!(held.as_ref().unwrap().metadata().unwrap().dev(), dev);
        sync_outbox(outbox.path(), &mut held).unwrap();
        assert_eq!(held.as_ref().unwrap().metadata().unwrap().dev(), dev);
        let mut absent_at_start = None;
        sync_outbox(outbox.path(), &mut absent_at_start).unwrap();
        assert!(absent_at_start.is_some());
        assert!(sync_outbox(&outbox.path().join("missing"), &mut None).is_err());
    }

    #[test]
    fn a_flush_syncs_the_folders_it_names_and_skips_one_moved_on_since() {
        let root = tempfile::tempdir().unwrap();
        let (outbox, work) = (root.path().join("outbox"), root.path().join("work"));
        std::fs::create_dir_all(work.join("job-000001")).unwrap();
        std::fs::create_dir_all(&outbox).unwrap();
        // Its job finished with no outputs; its folder was archived before the flush.
        let archived = work.join("job-000002");
        // /proc is another file system: its folders get a sync of their own, which it refuses.
        let folders = [work.join("job-000001"), archived, work.clone()];
        flush(&outbox, &mut None, &folders).unwrap();
        assert!(flush(&outbox, &mut None, &[std::path::PathBuf::from("/proc/self")]).is_err());
        assert!(flush(&root.path().join("missing"), &mut None, &folders).is_err());
    }
}
