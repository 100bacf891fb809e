//! Jobs: claiming complete studies into `paths.work/<job>/`, handing their
//! instances to the stages, recording outcomes, moving originals and
//! quarantined inputs, and resuming all of it after a restart.

use super::receiving::Receiving;
use super::workers::{self, DeidTask, OutcomeKind, WrittenOutput};
use super::{Daemon, DaemonError, Engine, Progress, StudyWritten};
use crate::fsutil;
use crate::ledger::{self, Instance, InstanceState, Job, JobState};
use crate::quarantine::{self, ReasonCode, Rejection, Stage};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Outputs flushed together at most: bounds the work a crash repeats.
const FLUSH_BATCH: usize = 256;
/// The longest an output waits for its flush (and its ledger record).
pub(super) const FLUSH_AFTER: Duration = Duration::from_millis(50);

impl<E: Engine> Daemon<E> {
    fn work_dir(&self, job: i64) -> PathBuf {
        self.config.paths.work.join(ledger::job_name(job))
    }

    fn work_path(&self, instance: &Instance) -> PathBuf {
        self.work_dir(instance.job_id.unwrap_or_default())
            .join(instance.work_name())
    }

    pub(super) fn io_fault(&mut self, stage: &str, error: &std::io::Error) {
        self.pause_for("io-error", format!("{stage}: {error}"));
    }

    /// Claims every study that is complete: quiet for `ingest.stable_age`, or
    /// marked by a `.ready` file in its folder once that folder has settled.
    ///
    /// Quiet means that no file arrived for it in `stable_age`, and the
    /// arrivals that count are also those not read yet: while intake is
    /// behind (a flood of events not yet read, or a file that arrived before
    /// the study's quiet time ended and is still settling), a study waits,
    /// or a large drop read more slowly than `stable_age` would be split
    /// into two jobs.
    pub(super) fn claim_complete_studies(&mut self) -> Result<(), DaemonError> {
        // Back-pressure: a full deid queue stops claiming, files stay in the inbox.
        self.next_claim_due = None;
        if !self.dispatch.is_empty() || self.intake_behind {
            return Ok(());
        }
        let unread_since = self.settler.oldest_unsettled().map(ledger::epoch_seconds);
        let stable = self.config.raw.ingest.stable_age.as_duration().as_secs_f64();
        let now = ledger::now();
        let mut studies: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
        for instance in self.ledger.received()? {
            studies.entry(instance.study_key.clone()).or_default().push(instance);
        }
        let mut used_markers: HashSet<PathBuf> = HashSet::new();
        let mut due: Vec<(String, Vec<Instance>)> = Vec::new();
        for (study, instances) in studies {
            let newest = instances.iter().map(|i| i.arrived).fold(0.0, f64::max);
            let folders: HashSet<&Path> = instances.iter().filter_map(|i| i.inbox_path.parent()).collect();
            let marked: Vec<&PathBuf> = folders
                .iter()
                .filter(|folder| !self.settler.unsettled_under(folder))
                .filter_map(|folder| self.ready.get(*folder))
                .flatten()
                .collect();
            if now - newest < stable && marked.is_empty() {
                let due = newest + stable;
                self.next_claim_due = Some(self.next_claim_due.map_or(due, |d| d.min(due)));
                continue;
            }
            if marked.is_empty() && unread_since.is_some_and(|since| since <= newest + stable) {
                // Taken within `settle`; the loop turns at least every 50 ms.
                continue;
            }
            used_markers.extend(marked.into_iter().cloned());
            due.push((study, instances));
        }
        let due = self.follow_references(due)?;
        self.claim(due)?;
        for marker in used_markers {
            // The marker has done its job; a crash before this only repeats an empty claim.
            if std::fs::remove_file(&marker).is_ok() {
                if let Some(folder) = marker.parent() {
                    let _ = fsutil::fsync_dir(folder);
                    self.ready.remove(folder);
                }
            }
        }
        Ok(())
    }

    /// Gives each SEG, SR or presentation state that waited without a
    /// pipeline the pipeline of a series of its study it references, so it
    /// is de-identified with that series (same keyed UIDs: its references
    /// stay consistent). One that references no such series is quarantined
    /// as no-matching-pipeline before the claim.
    fn follow_references(
        &mut self,
        due: Vec<(String, Vec<Instance>)>,
    ) -> Result<Vec<(String, Vec<Instance>)>, DaemonError> {
        let mut kept = Vec::with_capacity(due.len());
        for (study, instances) in due {
            let mut claimable = Vec::with_capacity(instances.len());
            for mut instance in instances {
                if instance.pipeline.is_some() {
                    claimable.push(instance);
                    continue;
                }
                let refs = instance.refs.clone().unwrap_or_default();
                let digests: Vec<&str> = refs.split_whitespace().collect();
                match self.ledger.pipeline_of_series(&study, &digests)? {
                    Some(pipeline) => {
                        self.ledger.batch_instance_pipeline(instance.id, &pipeline)?;
                        instance.pipeline = Some(pipeline);
                        claimable.push(instance);
                    }
                    None => self.quarantine_unreferenced(&instance)?,
                }
            }
            if !claimable.is_empty() {
                kept.push((study, claimable));
            }
        }
        Ok(kept)
    }

    /// Quarantines a received reference object whose series no pipeline takes.
    fn quarantine_unreferenced(&mut self, instance: &Instance) -> Result<(), DaemonError> {
        let rejection = Rejection::new(
            ReasonCode::NoMatchingPipeline,
            "a SEG, SR or presentation state whose referenced series no pipeline takes (or did not arrive with its study); \
             send it with its series, or add a pipeline for that series",
        );
        let work = self.config.paths.work.clone();
        let received = Receiving::path(&work, &instance.study_key, instance.id);
        let source = if received.exists() {
            received
        } else {
            instance.inbox_path.clone()
        };
        self.recorded.remove(&instance.inbox_path);
        let job =
            self.ledger
                .begin_instance_quarantine(instance, &source, rejection.code.as_str(), &rejection.message)?;
        self.receiving.taken_out(&instance.study_key, instance.id);
        self.finish_quarantine(job, &source, &rejection, Stage::Ingest)
    }

    /// Claims complete studies together: one ledger transaction records
    /// them as claiming, then their files are renamed into their work
    /// folders. Claiming study by study made a burst of small studies crawl.
    ///
    /// The renames are made durable by the next flush, with the first
    /// outputs (the flush stage syncs the folders; see `workers::FlushTask`),
    /// and its report records the jobs claimed in the same commit as those
    /// outputs. Each file goes to the deid stage as soon as it is renamed.
    /// That is safe because nothing leaves the work folder, and no output
    /// is recorded, before the claim is durable: a crash in between resumes
    /// the claim (`claiming`) and rewrites the same outputs.
    fn claim(&mut self, due: Vec<(String, Vec<Instance>)>) -> Result<(), DaemonError> {
        if due.is_empty() {
            return Ok(());
        }
        let claims: Vec<(&str, Vec<i64>)> = due
            .iter()
            .map(|(study, instances)| (study.as_str(), instances.iter().map(|i| i.id).collect()))
            .collect();
        let jobs = self.ledger.begin_claims(&claims)?;
        for instance in due.iter().flat_map(|(_, instances)| instances) {
            self.recorded.remove(&instance.inbox_path);
        }
        let mut moved = Vec::with_capacity(jobs.len());
        let mut touched = HashSet::from([self.config.paths.work.clone()]);
        let (stable, now) = (
            self.config.raw.ingest.stable_age.as_duration().as_secs_f64(),
            ledger::now(),
        );
        for (&job, (study, instances)) in jobs.iter().zip(&due) {
            // What `begin_claims` recorded, without reading it back.
            let unfinished: Vec<Instance> = instances
                .iter()
                .map(|instance| Instance {
                    job_id: Some(job),
                    state: InstanceState::Claimed,
                    ..instance.clone()
                })
                .collect();
            self.track(job, study.clone(), unfinished.len(), &unfinished);
            if let Some(progress) = self.jobs.get_mut(&job) {
                // Claimed late (a backlog) or early (a `.ready` marker).
                let newest = instances.iter().map(|i| i.arrived).fold(0.0, f64::max);
                progress.complete_since = Some((newest + stable).min(now));
            }
            if !self.move_into_work_unsynced(job, &unfinished, &mut touched, true)? {
                // Its dispatched files finish; `resume_moves` completes the claim.
                self.jobs.remove(&job);
                break;
            }
            moved.push(job);
        }
        if moved.is_empty() {
            return Ok(());
        }
        self.unsynced.folders.extend(touched);
        self.unsynced.claims.extend(&moved);
        for (job, (study, instances)) in moved.into_iter().zip(&due) {
            crate::metrics::get().study("claimed");
            tracing::info!(target: "daemon", study = %study, job = %ledger::job_name(job), instances = instances.len(), "study claimed");
            self.check_finished(job)?;
        }
        Ok(())
    }

    /// [`Self::move_into_work_unsynced`], then made durable.
    fn move_into_work(&mut self, job: i64) -> Result<bool, DaemonError> {
        let mut touched = HashSet::from([self.config.paths.work.clone()]);
        let claimed: Vec<Instance> = self
            .ledger
            .instances_of(job)?
            .into_iter()
            .filter(|i| i.state == InstanceState::Claimed)
            .collect();
        Ok(self.move_into_work_unsynced(job, &claimed, &mut touched, false)? && self.sync_dirs("claim", &touched))
    }

    /// Fsyncs folders whose entries changed; false (and paused) on a fault.
    fn sync_dirs(&mut self, stage: &str, dirs: &HashSet<PathBuf>) -> bool {
        match fsutil::sync_dirs(dirs.iter().map(PathBuf::as_path)) {
            Ok(()) => true,
            Err(error) => {
                self.io_fault(stage, &error);
                false
            }
        }
    }

    /// Moves a claiming job's inputs into its work folder (0750, files
    /// 0640), not yet durably: the folders whose entries changed are added
    /// to `touched` for the caller to fsync. A fresh claim whose study
    /// folder in `receiving` holds exactly its instances renames that
    /// folder; otherwise each file is looked for in the work folder, its
    /// receiving folder, then the inbox. With `dispatch`, each file is
    /// queued for the deid stage once it is in place. False when an
    /// environment fault stopped it.
    fn move_into_work_unsynced(
        &mut self,
        job: i64,
        instances: &[Instance],
        touched: &mut HashSet<PathBuf>,
        dispatch: bool,
    ) -> Result<bool, DaemonError> {
        let dir = self.work_dir(job);
        let work = self.config.paths.work.clone();
        let study = instances.first().map(|i| i.study_key.clone()).unwrap_or_default();
        // Their files left these at intake or leave them now: the claim is
        // durable once they are synced too.
        for folder in instances.iter().filter_map(|i| i.inbox_path.parent()) {
            if !touched.contains(folder) {
                touched.insert(folder.to_path_buf());
            }
        }
        let ids: HashSet<i64> = instances.iter().map(|i| i.id).collect();
        if dispatch && self.receiving.holds_exactly(&study, &ids) && !dir.exists() {
            if let Err(error) = std::fs::rename(Receiving::folder(&work, &study), &dir) {
                self.receiving.lost_track(&study);
                self.io_fault("claim", &error);
                return Ok(false);
            }
            self.receiving.claimed_whole(&study);
            for instance in instances {
                self.enqueue_and_push(instance);
            }
            self.push_dispatch();
            touched.insert(Receiving::root(&work));
            touched.insert(dir);
            return Ok(true);
        }
        // Only a resumed claim can find files already moved; a fresh folder
        // saves a stat per file.
        let resuming = dir.exists();
        if let Err(error) = fsutil::create_private_dir(&dir) {
            self.io_fault("claim", &error);
            return Ok(false);
        }
        let mut from_receiving = false;
        for instance in instances {
            let target = dir.join(instance.work_name());
            let in_place = if resuming && target.exists() {
                true
            } else {
                let received = Receiving::path(&work, &study, instance.id);
                let moved = match std::fs::rename(&received, &target) {
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                        std::fs::rename(&instance.inbox_path, &target)
                    }
                    other => {
                        from_receiving = true;
                        other
                    }
                };
                match moved {
                    // Intake made it 0640 when it read it.
                    Ok(()) => true,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                        // In neither the inbox, its receiving folder nor work: removed by someone else.
                        tracing::error!(target: "daemon", study = %study, job = %ledger::job_name(job), instance = instance.id, "an instance vanished from the inbox before it was claimed; it was not processed");
                        self.ledger.set_instance_state(instance.id, InstanceState::Requeued)?;
                        if let Some(progress) = self.jobs.get_mut(&job) {
                            if progress.remaining.remove(&instance.id) {
                                progress.tasks -= 1;
                            }
                        }
                        false
                    }
                    Err(error) => {
                        self.receiving.lost_track(&study);
                        self.io_fault("claim", &error);
                        return Ok(false);
                    }
                }
            };
            if dispatch && in_place {
                self.enqueue_and_push(instance);
            }
        }
        if dispatch {
            self.push_dispatch();
        }
        if self.receiving.claimed_file_by_file(&work, &study) {
            touched.insert(Receiving::root(&work));
        } else if from_receiving {
            touched.insert(Receiving::folder(&work, &study));
        }
        touched.insert(dir);
        Ok(true)
    }

    /// Hands a claimed job's unfinished instances to the deid stage.
    fn start_job(&mut self, job: i64) -> Result<(), DaemonError> {
        for instance in self.track_job(job)? {
            self.enqueue(&instance);
        }
        self.check_finished(job)
    }

    /// Starts tracking a job's progress from the ledger; returns its
    /// unfinished (claimed) instances.
    fn track_job(&mut self, job: i64) -> Result<Vec<Instance>, DaemonError> {
        let Some(record) = self.ledger.job(job)? else {
            return Ok(Vec::new());
        };
        let instances = self.ledger.instances_of(job)?;
        let total = instances.len();
        let unfinished: Vec<Instance> = instances
            .into_iter()
            .filter(|i| i.state == InstanceState::Claimed)
            .collect();
        self.track(job, record.study_key, total, &unfinished);
        if record.state == JobState::Synthesized {
            // Recorded before a stop or crash: not run again.
            if let Some(progress) = self.jobs.get_mut(&job) {
                progress.synthesis_started = true;
            }
        }
        Ok(unfinished)
    }

    /// Tracks a job of `total` instances, `unfinished` of them still to do.
    fn track(&mut self, job: i64, study_key: String, total: usize, unfinished: &[Instance]) {
        let remaining: HashSet<i64> = unfinished.iter().map(|i| i.id).collect();
        self.jobs.insert(
            job,
            Progress {
                study_key,
                total,
                tasks: remaining.len(),
                remaining,
                deidentified: 0,
                quarantined: 0,
                started: Instant::now(),
                synthesizing: HashSet::new(),
                synthesis_started: false,
                complete_since: None,
            },
        );
    }

    fn enqueue(&mut self, instance: &Instance) {
        let path = self.work_path(instance);
        self.dispatch.push_back(DeidTask {
            job: instance.job_id.unwrap_or_default(),
            instance: instance.id,
            path,
            pipeline: instance.pipeline.clone().unwrap_or_default(),
            engine: self.engine.clone(),
        });
    }

    /// Queues a file in place in its work folder and hands the queue to the
    /// deid workers every 16, so they start while a claim is still moving files.
    fn enqueue_and_push(&mut self, instance: &Instance) {
        self.enqueue(instance);
        if self.dispatch.len() >= 16 {
            self.push_dispatch();
        }
    }

    pub(super) fn requeue_task(&mut self, _job: i64, instance: i64) -> Result<(), DaemonError> {
        if let Some(instance) = self.ledger.instance(instance)? {
            if instance.state == InstanceState::Claimed {
                self.enqueue(&instance);
            }
        }
        Ok(())
    }

    /// Hands queued tasks to the deid workers without blocking the coordinator.
    pub(super) fn push_dispatch(&mut self) {
        let Some(tx) = &self.deid_tx else { return };
        while let Some(task) = self.dispatch.pop_front() {
            match tx.try_send(task) {
                Ok(()) => {}
                Err(crossbeam_channel::TrySendError::Full(task)) => {
                    self.dispatch.push_front(task);
                    break;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => break,
            }
        }
    }

    /// Records what the stages report, waiting up to `wait` for the first
    /// report, then hands written outputs to the flush stage when a batch is due.
    pub(super) fn drain_outcomes(&mut self, wait: Duration) -> Result<(), DaemonError> {
        let first = if wait.is_zero() {
            self.outcome_rx.try_recv().ok()
        } else {
            self.outcome_rx.recv_timeout(wait).ok()
        };
        let mut outcome = first;
        while let Some(current) = outcome {
            self.record(current.job, current.instance, current.kind)?;
            outcome = self.outcome_rx.try_recv().ok();
        }
        if !self.deidentified_jobs.is_empty() {
            // Informational (resuming treats claimed and deidentified alike):
            // it rides along with the round's next commit.
            let jobs = std::mem::take(&mut self.deidentified_jobs);
            self.ledger
                .batch_jobs_advance(&jobs, JobState::Claimed, JobState::Deidentified)?;
        }
        self.flush_written(false)?;
        // Jobs that a flushed batch completed are recorded written in the
        // same commit as the batch's instances.
        self.finish_jobs()?;
        // Their moved originals go out with the next flush (now, if none is out).
        self.flush_written(false)?;
        self.ledger.commit_batch()?;
        self.log_finished();
        self.push_dispatch();
        Ok(())
    }

    /// Sends the written outputs, with the folder changes not yet durable,
    /// to the flush stage when due: a full batch, the oldest waiting
    /// `FLUSH_AFTER`, a job's last outputs, a finished job's moved
    /// originals, or `force`; one flush at a time. Batching turns two
    /// fsyncs per file into one syncfs per batch. A claim alone does not
    /// make a flush due: it rides with its first outputs. With `force` and
    /// no flush stage (shutting down), flushes here.
    pub(super) fn flush_written(&mut self, force: bool) -> Result<(), DaemonError> {
        if (self.unflushed.is_empty() && self.unsynced.is_empty()) || self.flush_in_flight {
            return Ok(());
        }
        let due = force
            || !self.unsynced.moved.is_empty()
            || self.unflushed.len() >= FLUSH_BATCH
            || self.unflushed_since.is_some_and(|since| since.elapsed() >= FLUSH_AFTER)
            || self.completes_a_job();
        if !due {
            return Ok(());
        }
        let mut task = std::mem::take(&mut self.unsynced);
        task.outputs = std::mem::take(&mut self.unflushed);
        task.folders.sort();
        task.folders.dedup();
        self.unflushed_since = None;
        match &self.flush_tx {
            Some(tx) => match tx.send(task) {
                Ok(()) => self.flush_in_flight = true,
                Err(crossbeam_channel::SendError(task)) => self.take_back(task),
            },
            None => {
                let kind = match workers::flush(&self.config.paths.outbox, &mut None, &task.folders) {
                    Ok(()) => OutcomeKind::Flushed(task),
                    Err(error) => OutcomeKind::FlushFailed(task, format!("flushing the outbox failed: {error}")),
                };
                self.record(0, 0, kind)?;
                self.ledger.commit_batch()?;
                self.log_finished();
            }
        }
        Ok(())
    }

    /// A flush that was not made: its outputs and folder changes wait for the next.
    fn take_back(&mut self, task: workers::FlushTask) {
        self.unflushed = self.unsynced.absorb(task);
        self.unflushed_since.get_or_insert_with(Instant::now);
    }

    /// A durable flush: its outputs recorded written, its claims claimed and
    /// its moved jobs done, all in the round's open batch.
    fn record_flush(&mut self, task: workers::FlushTask) -> Result<(), DaemonError> {
        self.ledger
            .batch_jobs_advance(&task.claims, JobState::Claiming, JobState::Claimed)?;
        self.record_flushed(task.outputs)?;
        self.ledger.batch_jobs_state(&task.moved, JobState::Done)?;
        for job in task.moved {
            if let Some(progress) = self.moving.remove(&job) {
                crate::metrics::get().study("done");
                self.counters.studies_done += 1;
                self.finished.push((job, progress));
            }
        }
        Ok(())
    }

    /// One line per finished study, once its done state is committed.
    /// Logs the jobs the round's commit recorded written (outputs durable in
    /// the outbox), then those it recorded done (originals archived or deleted).
    pub(super) fn log_finished(&mut self) {
        for written in std::mem::take(&mut self.written) {
            // A study whose every instance was quarantined wrote nothing.
            let message = if written.quarantined >= written.instances {
                "study not written: every instance was quarantined"
            } else {
                "study written"
            };
            tracing::info!(
                target: "daemon",
                study = %written.study_key,
                job = %ledger::job_name(written.job),
                instances = written.instances,
                quarantined = written.quarantined,
                duration_ms = written.duration_ms,
                "{message}"
            );
        }
        for (job, progress) in std::mem::take(&mut self.finished) {
            tracing::info!(
                target: "daemon",
                study = %progress.study_key,
                job = %ledger::job_name(job),
                instances = progress.total,
                quarantined = progress.quarantined,
                duration_ms = progress.started.elapsed().as_millis() as u64,
                outcome = if progress.quarantined == 0 { "done" } else { "done-with-quarantines" },
                "study finished"
            );
        }
    }

    /// Records a durable batch of outputs in the ledger's open batch: the
    /// round's commit makes it durable, together with the written state of
    /// the jobs it completes (before their originals move).
    fn record_flushed(&mut self, written: Vec<WrittenOutput>) -> Result<(), DaemonError> {
        let batch: Vec<(i64, PathBuf)> = written.iter().map(|w| (w.instance, w.relative.clone())).collect();
        self.ledger.batch_instances_written(&batch)?;
        self.counters.instances_written += written.len() as u64;
        crate::metrics::get().instance("written", written.len() as u64);
        let mut jobs: Vec<i64> = Vec::new();
        for output in &written {
            if let Some(progress) = self.jobs.get_mut(&output.job) {
                progress.remaining.remove(&output.instance);
            }
            if !jobs.contains(&output.job) {
                jobs.push(output.job);
            }
        }
        for job in jobs {
            self.check_finished(job)?;
        }
        Ok(())
    }

    /// Whether the unflushed outputs include the last ones some job waits for.
    fn completes_a_job(&self) -> bool {
        let mut per_job: HashMap<i64, usize> = HashMap::new();
        for output in &self.unflushed {
            *per_job.entry(output.job).or_default() += 1;
        }
        per_job
            .iter()
            .any(|(job, count)| self.jobs.get(job).is_none_or(|p| p.remaining.len() <= *count))
    }

    fn record(&mut self, job: i64, instance: i64, kind: OutcomeKind) -> Result<(), DaemonError> {
        match kind {
            OutcomeKind::Synthesized(pipeline, report) => {
                self.log_synthesis(job, &pipeline, &report);
                let done = self.jobs.get_mut(&job).is_some_and(|progress| {
                    progress.synthesizing.remove(&pipeline);
                    progress.synthesizing.is_empty()
                });
                if done {
                    self.ledger.set_job_state(job, JobState::Synthesized)?;
                }
                self.check_finished(job)?;
            }
            OutcomeKind::SynthesisFailed(pipeline, rejection) => {
                // The study's de-identified outputs are durable; what failed is
                // the derived series. It is recorded where admins look for
                // failures, with its reason code, and the job completes.
                let dir = self
                    .config
                    .paths
                    .quarantine
                    .join(format!("{}-synth-{pipeline}", ledger::job_name(job)));
                if let Err(error) = quarantine::write_reason(&dir, &rejection, Stage::Synth, None, None) {
                    self.io_fault("synth", &error);
                }
                crate::metrics::get().quarantine(rejection.code);
                let study = self.jobs.get(&job).map(|p| p.study_key.clone()).unwrap_or_default();
                tracing::warn!(
                    target: "daemon",
                    study = %study,
                    job = %ledger::job_name(job),
                    pipeline = %pipeline,
                    reason = %rejection.code,
                    "synthesis failed; the de-identified series were written"
                );
                if let Some(progress) = self.jobs.get_mut(&job) {
                    progress.synthesizing.remove(&pipeline);
                }
                self.check_finished(job)?;
            }
            OutcomeKind::Written(relative) => {
                self.count_deidentified(job);
                self.unflushed_since.get_or_insert_with(Instant::now);
                self.unflushed.push(WrittenOutput {
                    job,
                    instance,
                    relative,
                });
            }
            OutcomeKind::Flushed(task) => {
                self.flush_in_flight = false;
                self.record_flush(task)?;
            }
            OutcomeKind::FlushFailed(task, reason) => {
                // Not durable, so not recorded: the instances are written
                // again, the folders synced with the next flush.
                self.flush_in_flight = false;
                let outputs = self.unsynced.absorb(task);
                self.retry.extend(outputs.iter().map(|w| (w.job, w.instance)));
                self.pause_for("flush-failed", reason);
            }
            OutcomeKind::Rejected(stage, rejection) => {
                if !self.claim_durable_for(job, instance)? {
                    // Paused on an environment fault; the instance is tried again.
                    self.retry.push((job, instance));
                    return Ok(());
                }
                if stage == Stage::Output {
                    // De-identified, then refused by the encoder.
                    self.count_deidentified(job);
                }
                if let Some(record) = self.ledger.instance(instance)? {
                    let source = self.work_path(&record);
                    let quarantine_job = self.ledger.begin_instance_quarantine(
                        &record,
                        &source,
                        rejection.code.as_str(),
                        &rejection.message,
                    )?;
                    self.finish_quarantine(quarantine_job, &source, &rejection, stage)?;
                }
                if let Some(progress) = self.jobs.get_mut(&job) {
                    progress.remaining.remove(&instance);
                    progress.quarantined += 1;
                }
                self.check_finished(job)?;
            }
            OutcomeKind::EnvironmentFault(reason) => {
                self.retry.push((job, instance));
                self.pause_for("write-failed", reason);
            }
        }
        Ok(())
    }

    /// Makes the claim of one instance durable before it is quarantined,
    /// when its job's claim still waits for a flush: moving it on from the
    /// work folder must not leave it in the inbox too after a crash. False
    /// when an environment fault stopped it (paused).
    fn claim_durable_for(&mut self, job: i64, instance: i64) -> Result<bool, DaemonError> {
        if !self.ledger.job(job)?.is_some_and(|j| j.state == JobState::Claiming) {
            return Ok(true);
        }
        let Some(record) = self.ledger.instance(instance)? else {
            return Ok(true);
        };
        let work = &self.config.paths.work;
        let mut dirs = HashSet::from([self.work_dir(job), work.clone()]);
        dirs.extend(record.inbox_path.parent().map(Path::to_path_buf));
        // The file may have come through its study's receiving folder, which
        // a claim renames or removes once empty.
        let receiving = [Receiving::root(work), Receiving::folder(work, &record.study_key)];
        dirs.extend(receiving.into_iter().filter(|folder| folder.is_dir()));
        Ok(self.sync_dirs("claim", &dirs))
    }

    /// Counts an instance the deid stage got through; once all of a job's
    /// have, the job is recorded as deidentified with the round's other
    /// reports (see `drain_outcomes`).
    fn count_deidentified(&mut self, job: i64) {
        let all = self.jobs.get_mut(&job).is_some_and(|progress| {
            progress.deidentified += 1;
            progress.deidentified == progress.tasks
        });
        if all {
            self.deidentified_jobs.push(job);
        }
    }

    /// Hands the written instances of each synthesizing pipeline to the
    /// synth stage; true when the job must wait for it.
    fn start_synthesis(&mut self, job: i64) -> Result<bool, DaemonError> {
        let mut by_pipeline: HashMap<String, Vec<PathBuf>> = HashMap::new();
        for instance in self.ledger.instances_of(job)? {
            if let (Some(pipeline), Some(output)) = (instance.pipeline, instance.output) {
                if instance.state == InstanceState::Written && self.engine.synthesizes(&pipeline) {
                    by_pipeline.entry(pipeline).or_default().push(output);
                }
            }
        }
        if !by_pipeline.is_empty() {
            // Synthesis reads outputs recorded written: durable first.
            self.ledger.commit_batch()?;
        }
        let Some(progress) = self.jobs.get_mut(&job) else {
            return Ok(false);
        };
        let Some(synth_tx) = &self.synth_tx else {
            // Shutting down: the job waits, unfinished, and the next start
            // synthesizes it (finishing it here would skip synthesis for good).
            return Ok(!by_pipeline.is_empty());
        };
        progress.synthesis_started = true;
        for (pipeline, mut written) in by_pipeline {
            written.sort();
            progress.synthesizing.insert(pipeline.clone());
            let task = workers::SynthTask {
                job,
                pipeline,
                written,
                engine: self.engine.clone(),
            };
            // Bounded: a full synth queue blocks the coordinator here, which
            // stops claiming; the backlog stays in the inbox.
            if synth_tx.send(task).is_err() {
                return Ok(false);
            }
        }
        Ok(!progress.synthesizing.is_empty())
    }

    /// The synth stage's report, named by study and job.
    fn log_synthesis(&self, job: i64, pipeline: &str, report: &super::SynthesisReport) {
        let study = self.jobs.get(&job).map(|p| p.study_key.as_str()).unwrap_or_default();
        let job = ledger::job_name(job);
        for reason in &report.skipped_series {
            tracing::warn!(target: "daemon", study = %study, job = %job, pipeline = %pipeline, "not synthesized: {reason}");
        }
        tracing::info!(
            target: "daemon",
            study = %study,
            job = %job,
            pipeline = %pipeline,
            synthetic_series = report.synthetic_series,
            synthetic_instances = report.synthetic_instances,
            seg = report.seg_instances,
            ort_seconds = report.ort_seconds,
            provider = %report.provider,
            "synthesis written"
        );
    }

    fn check_finished(&mut self, job: i64) -> Result<(), DaemonError> {
        let ready = self.jobs.get(&job).is_some_and(|p| p.remaining.is_empty());
        if ready && !self.jobs.get(&job).is_some_and(|p| p.synthesis_started) && self.start_synthesis(job)? {
            return Ok(());
        }
        if self
            .jobs
            .get(&job)
            .is_some_and(|p| p.remaining.is_empty() && p.synthesizing.is_empty())
        {
            if let Some(progress) = self.jobs.remove(&job) {
                self.finishing.push((job, progress));
            }
        }
        Ok(())
    }

    /// Finishes the jobs whose outputs are all durable, together: one
    /// commit records them written, then their originals are archived or
    /// deleted. The next flush makes the moves durable, and its report
    /// records the jobs done.
    pub(super) fn finish_jobs(&mut self) -> Result<(), DaemonError> {
        if self.finishing.is_empty() {
            return Ok(());
        }
        let finishing = std::mem::take(&mut self.finishing);
        let ids: Vec<i64> = finishing.iter().map(|(job, _)| *job).collect();
        self.ledger.set_jobs_state(&ids, JobState::Written)?;
        let metrics = crate::metrics::get();
        let now = ledger::now();
        for (job, progress) in &finishing {
            metrics.study("written");
            if let Some(since) = progress.complete_since {
                metrics.study_latency(now - since);
            }
            self.written.push(StudyWritten {
                job: *job,
                study_key: progress.study_key.clone(),
                instances: progress.total,
                quarantined: progress.quarantined,
                duration_ms: progress.started.elapsed().as_millis() as u64,
            });
        }
        let mut moved = Vec::with_capacity(finishing.len());
        for (job, progress) in finishing {
            // A job left in Written by a fault is finished by `resume_moves`.
            if !self.move_originals_unsynced(job)? {
                break;
            }
            moved.push((job, progress));
        }
        if moved.is_empty() {
            return Ok(());
        }
        self.unsynced.folders.extend(self.originals_dirs());
        for (job, progress) in moved {
            self.unsynced.moved.push(job);
            self.moving.insert(job, progress);
        }
        Ok(())
    }

    /// Archives or deletes a finished job's originals (the whole work folder,
    /// one rename), not yet durably. False when an environment fault stopped it.
    fn move_originals_unsynced(&mut self, job: i64) -> Result<bool, DaemonError> {
        let dir = self.work_dir(job);
        if !dir.exists() {
            return Ok(true);
        }
        let result = match self.config.raw.daemon.originals {
            crate::config::OriginalsPolicy::Archive => {
                let target = self.config.paths.archive.join(ledger::job_name(job));
                fsutil::create_private_dir(&self.config.paths.archive)
                    .and_then(|()| std::fs::rename(&dir, &target))
                    .and_then(|()| std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o750)))
            }
            crate::config::OriginalsPolicy::Delete => std::fs::remove_dir_all(&dir),
        };
        match result {
            Ok(()) => Ok(true),
            Err(error) => {
                self.io_fault("originals", &error);
                Ok(false)
            }
        }
    }

    /// [`Self::move_originals_unsynced`], then made durable.
    fn move_originals(&mut self, job: i64) -> Result<bool, DaemonError> {
        Ok(self.move_originals_unsynced(job)? && self.sync_dirs("originals", &self.originals_dirs()))
    }

    /// The folders whose entries moving originals changes.
    fn originals_dirs(&self) -> HashSet<PathBuf> {
        let mut dirs = HashSet::from([self.config.paths.work.clone()]);
        if matches!(
            self.config.raw.daemon.originals,
            crate::config::OriginalsPolicy::Archive
        ) {
            dirs.insert(self.config.paths.archive.clone());
        }
        dirs
    }

    /// Writes `reason.json`, moves the input into `paths.quarantine/<job>/`,
    /// then records the job as quarantined. An environment fault leaves the
    /// job quarantining; it is finished later.
    pub(super) fn finish_quarantine(
        &mut self,
        job: i64,
        source: &Path,
        rejection: &Rejection,
        stage: Stage,
    ) -> Result<(), DaemonError> {
        let dir = self.config.paths.quarantine.join(ledger::job_name(job));
        let kind = std::fs::symlink_metadata(source).ok().map(|m| m.file_type());
        let name = match &kind {
            Some(kind) if kind.is_symlink() => "input.link",
            Some(kind) if !kind.is_file() => "input.special",
            _ => "input.dcm",
        };
        let existing_reason = quarantine::read_reason(&dir).ok();
        let input = match existing_reason {
            None => self.input_record(job, source)?,
            Some(_) => None,
        };
        let moved = || -> std::io::Result<()> {
            if existing_reason.is_none() {
                quarantine::write_reason(&dir, rejection, stage, Some(name), input)?;
            }
            if kind.is_some() {
                let target = dir.join(
                    existing_reason
                        .as_ref()
                        .and_then(|r| r.file.clone())
                        .unwrap_or(name.into()),
                );
                fsutil::rename_durable(source, &target)?;
                if kind.as_ref().is_some_and(|k| k.is_file()) {
                    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640))?;
                }
            }
            Ok(())
        };
        match moved() {
            Ok(()) => {
                self.held.remove(source);
                self.ledger.set_job_state(job, JobState::Quarantined)?;
                self.counters.quarantined += 1;
                crate::metrics::get().instance("quarantined", 1);
                crate::metrics::get().quarantine(rejection.code);
                let study = self.ledger.job(job)?.map(|j| j.study_key).unwrap_or_default();
                tracing::warn!(target: "daemon", job = %ledger::job_name(job), study = %study, reason = %rejection.code, stage = ?stage, "quarantined: {}", rejection.message);
            }
            Err(error) => {
                self.held.insert(source.to_path_buf());
                self.io_fault("quarantine", &error);
            }
        }
        Ok(())
    }

    /// What `reason.json` says of a quarantined input: its path as it arrived
    /// under the inbox, its size and SHA-256 (recorded by intake, else
    /// read from `source`). `None` when the ledger has no instance for the job.
    fn input_record(&self, job: i64, source: &Path) -> Result<Option<quarantine::InputRecord>, DaemonError> {
        let Some(instance) = self.ledger.instances_of(job)?.into_iter().next() else {
            return Ok(None);
        };
        let relative = instance
            .inbox_path
            .strip_prefix(&self.config.paths.inbox)
            .unwrap_or(&instance.inbox_path);
        let size = std::fs::symlink_metadata(source)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        let sha256 = if !instance.content_digest.is_empty() {
            Some(instance.content_digest.clone())
        } else if size.is_some() {
            std::fs::read(source).ok().map(|bytes| quarantine::sha256_hex(&bytes))
        } else {
            None
        };
        Ok(Some(quarantine::InputRecord {
            path: relative.to_string_lossy().into_owned(),
            size,
            sha256,
        }))
    }

    /// At start: every job in an intermediate state resumes from its last durable state.
    pub(super) fn resume(&mut self) -> Result<(), DaemonError> {
        let jobs = self.ledger.unfinished_jobs()?;
        if !jobs.is_empty() {
            tracing::info!(target: "daemon", jobs = jobs.len(), "resuming unfinished jobs from the ledger");
        }
        for job in jobs {
            match job.state {
                JobState::Claimed | JobState::Deidentified | JobState::Synthesized => self.start_job(job.id)?,
                _ => self.resume_move(&job)?,
            }
        }
        Ok(())
    }

    /// Retries the file moves an environment fault interrupted.
    pub(super) fn resume_moves(&mut self) -> Result<(), DaemonError> {
        if self.pause.as_ref().is_some_and(|p| Instant::now() < p.until) {
            return Ok(());
        }
        for state in [JobState::Claiming, JobState::Quarantining, JobState::Written] {
            for job in self.ledger.jobs_in(state)? {
                if !self.jobs.contains_key(&job.id) && !self.moving.contains_key(&job.id) {
                    self.resume_move(&job)?;
                }
            }
        }
        Ok(())
    }

    fn finish_claim(&mut self, job: i64) -> Result<(), DaemonError> {
        if self.move_into_work(job)? {
            self.ledger.set_job_state(job, JobState::Claimed)?;
            crate::metrics::get().study("claimed");
            self.start_job(job)?;
        }
        Ok(())
    }

    fn finish_written(&mut self, job: &Job) -> Result<(), DaemonError> {
        if self.move_originals(job.id)? {
            self.ledger.set_job_state(job.id, JobState::Done)?;
            self.counters.studies_done += 1;
            crate::metrics::get().study("done");
            tracing::info!(target: "daemon", study = %job.study_key, job = %job.name(), outcome = "done", "study finished (originals moved after a restart)");
        }
        Ok(())
    }

    fn resume_move(&mut self, job: &Job) -> Result<(), DaemonError> {
        match job.state {
            JobState::Claiming => self.finish_claim(job.id)?,
            JobState::Written => self.finish_written(job)?,
            JobState::Quarantining => {
                let code = job
                    .reason_code
                    .as_deref()
                    .and_then(|code| serde_json::from_value::<ReasonCode>(serde_json::Value::from(code)).ok())
                    .unwrap_or(ReasonCode::NotDicom);
                let rejection = Rejection::new(code, job.reason_message.clone().unwrap_or_default());
                let source = job.source.clone().unwrap_or_default();
                let stage = if source.starts_with(&self.config.paths.work) {
                    Stage::Deid
                } else {
                    Stage::Ingest
                };
                self.finish_quarantine(job.id, &source, &rejection, stage)?;
            }
            _ => {}
        }
        Ok(())
    }
}
