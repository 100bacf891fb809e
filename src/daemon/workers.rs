//! The stage threads: deid workers turn claimed files into de-identified
//! items, output workers write them durably. Each reports back to the
//! coordinator, which alone writes the ledger.

use super::engine::Engine;
use super::system;
use crate::fsutil;
use crate::quarantine::{Rejection, Stage};
use crossbeam_channel::{Receiver, Sender};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct DeidTask<E: Engine> {
    pub job: i64,
    pub instance: i64,
    pub path: PathBuf,
    pub pipeline: String,
    pub engine: Arc<E>,
}

pub struct OutputTask<E: Engine> {
    pub job: i64,
    pub instance: i64,
    pub item: E::Item,
    pub engine: Arc<E>,
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
    Deidentified,
    /// A job's synthesis for one pipeline is durable in the outbox.
    Synthesized(String),
    /// A job's synthesis for one pipeline failed (e.g. model-failure); the
    /// de-identified outputs stand.
    SynthesisFailed(String, Rejection),
    /// The output is durable at this path relative to the outbox.
    Written(PathBuf),
    Rejected(Stage, Rejection),
    /// Not the data's fault; retry after a pause. The text holds no PHI.
    EnvironmentFault(String),
}

#[derive(Debug)]
pub struct Outcome {
    pub job: i64,
    pub instance: i64,
    pub kind: OutcomeKind,
}

pub fn deid_worker<E: Engine>(tasks: Receiver<DeidTask<E>>, output: Sender<OutputTask<E>>, outcomes: Sender<Outcome>) {
    for task in tasks {
        let result = task.engine.deidentify(&task.pipeline, &task.path);
        let (job, instance) = (task.job, task.instance);
        match result {
            Ok(item) => {
                let _ = outcomes.send(Outcome {
                    job,
                    instance,
                    kind: OutcomeKind::Deidentified,
                });
                // A full output queue blocks here: back-pressure up to intake.
                if output
                    .send(OutputTask {
                        job,
                        instance,
                        item,
                        engine: task.engine,
                    })
                    .is_err()
                {
                    return;
                }
            }
            Err(rejection) => {
                let _ = outcomes.send(Outcome {
                    job,
                    instance,
                    kind: OutcomeKind::Rejected(Stage::Deid, rejection),
                });
            }
        }
    }
}

pub fn output_worker<E: Engine>(tasks: Receiver<OutputTask<E>>, outbox: PathBuf, outcomes: Sender<Outcome>) {
    for task in tasks {
        let kind = match task.engine.encode(&task.item) {
            Err(rejection) => OutcomeKind::Rejected(Stage::Output, rejection),
            Ok((relative, bytes)) => match write_output(&outbox, &relative, &bytes) {
                Ok(()) => OutcomeKind::Written(relative),
                Err(error) => OutcomeKind::EnvironmentFault(format!("writing to the outbox failed: {error}")),
            },
        };
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

/// Writes one output durably: folders created and fsynced, temp file,
/// fsync, rename, fsync of the folder. Rewriting the same output is harmless.
fn write_output(outbox: &Path, relative: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(error) = system::injected_write_fault() {
        return Err(error);
    }
    let target = outbox.join(relative);
    let folder = target.parent().unwrap_or(outbox);
    if !folder.is_dir() {
        fsutil::create_private_dir(folder)?;
        // New folders are durable only once their parents are fsynced too.
        let mut dir = folder;
        while dir != outbox {
            let Some(parent) = dir.parent() else { break };
            fsutil::fsync_dir(parent)?;
            dir = parent;
        }
    }
    fsutil::write_atomic(&target, bytes, 0o640)
}

/// The synth stage: one study at a time (the model saturates the cores or
/// the GPU; more threads would only contend). Reports with instance 0.
pub fn synth_worker<E: Engine>(tasks: Receiver<SynthTask<E>>, outbox: PathBuf, outcomes: Sender<Outcome>) {
    for task in tasks {
        let kind = match task.engine.synthesize(&task.pipeline, &outbox, &task.written) {
            Ok(()) => OutcomeKind::Synthesized(task.pipeline.clone()),
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
