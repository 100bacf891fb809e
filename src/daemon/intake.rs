//! Taking settled inbox files into the ledger: header read, duplicate
//! check, pipeline choice, or quarantine with a reason.

use super::receiving::{Receiving, ToStage};
use super::{Daemon, DaemonError, Engine};
use crate::config::OriginalsPolicy;
use crate::ingest::{self, references, Entry};
use crate::ledger::{Instance, InstanceState, NewInstance};
use crate::phi::{keyed_digest, StudyKey};
use crate::quarantine::{ReasonCode, Rejection, Stage};
use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The study key of inputs refused before their study was known.
const UNKNOWN_STUDY: &str = "st-unknown";

impl<E: Engine> Daemon<E> {
    /// Looks at every pending path once; takes those that have settled. The
    /// round's `received` records share one ledger transaction, and only
    /// once it is committed do their files leave the inbox (for their
    /// study's receiving folder), so a crash before the commit only means
    /// the files are taken again at the next start.
    pub(super) fn intake(&mut self) -> Result<(), DaemonError> {
        if self.pending.is_empty() {
            self.stage_received();
            return Ok(());
        }
        self.ledger.begin_batch()?;
        let taken = self.intake_pending();
        self.ledger.commit_batch()?;
        self.stage_received();
        taken
    }

    /// Moves committed `received` files from the inbox into
    /// `paths.work/receiving/<study>/` (see `receiving`). The folders whose
    /// entries changed go to the flush thread, due within `FLUSH_AFTER`:
    /// the coordinator does not wait on the disk for them, and a crash
    /// before they are synced leaves each file in the inbox (taken again,
    /// and moved) or in its receiving folder. A file that cannot be moved
    /// stays in the inbox, recorded; its claim moves it from there.
    fn stage_received(&mut self) {
        let to_stage = std::mem::take(&mut self.receiving.to_stage);
        if to_stage.is_empty() {
            return;
        }
        let work = self.config.paths.work.clone();
        let mut touched: HashSet<PathBuf> = HashSet::from([Receiving::root(&work)]);
        for item in to_stage {
            let moved = self
                .receiving
                .prepare(&work, &item.study)
                .and_then(|()| std::fs::rename(&item.inbox_path, Receiving::path(&work, &item.study, item.id)));
            match moved {
                Ok(()) => {
                    self.receiving.moved(&item.study, item.id);
                    self.recorded.remove(&item.inbox_path);
                    touched.insert(Receiving::folder(&work, &item.study));
                    touched.extend(item.inbox_path.parent().map(Path::to_path_buf));
                }
                // Gone from the inbox: its claim finds it nowhere and says so.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    self.io_fault("ingest", &error);
                    break;
                }
            }
        }
        self.unsynced.folders.extend(touched);
        self.unflushed_since.get_or_insert_with(Instant::now);
    }

    fn intake_pending(&mut self) -> Result<(), DaemonError> {
        let settle = self.config.raw.ingest.settle.as_duration();
        let mut paths: Vec<PathBuf> = self.pending.drain().collect();
        paths.sort();
        let now = Instant::now();
        for path in paths {
            if self.recorded.contains(&path) || self.unreadable.contains(&path) || self.held.contains(&path) {
                continue;
            }
            match ingest::classify(&self.config.paths.inbox, &path) {
                None | Some(Entry::Skipped) => self.settler.forget(&path),
                Some(Entry::ReadyMarker(marker)) => {
                    let folder = marker.parent().map(Path::to_path_buf).unwrap_or_default();
                    let markers = self.ready.entry(folder).or_default();
                    if !markers.contains(&marker) {
                        markers.push(marker);
                    }
                }
                Some(Entry::NotRegular(path)) => {
                    self.settler.forget(&path);
                    let rejection = Rejection::new(
                        ReasonCode::NotARegularFile,
                        "the inbox entry is a symlink, FIFO, socket or device; synthd never follows links. Copy the file itself into the inbox",
                    );
                    self.quarantine_at_intake(&path, None, &rejection)?;
                }
                Some(Entry::File(candidate)) => {
                    if self
                        .settler
                        .observe(&candidate.path, candidate.size, candidate.mtime, settle, now)
                    {
                        self.settler.forget(&candidate.path);
                        let started = Instant::now();
                        self.take(&candidate.path)?;
                        let seconds = started.elapsed().as_secs_f64();
                        crate::metrics::get().stage(crate::metrics::Stage::Intake, seconds);
                    } else {
                        self.pending.insert(candidate.path);
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads one settled file without following links and records its outcome.
    fn take(&mut self, path: &Path) -> Result<(), DaemonError> {
        let (bytes, arrived) = match read_no_follow(path) {
            Ok(read) => read,
            Err(error) if error.raw_os_error() == Some(libc::ELOOP) => {
                let rejection = Rejection::new(ReasonCode::NotARegularFile, "the inbox entry became a symlink");
                return self.quarantine_at_intake(path, None, &rejection);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => {
                // Permissions are the environment's fault, not the data's: the
                // file stays, and is taken once synthd can read it.
                tracing::warn!(target: "ingest", %error, "cannot read an inbox file; grant the synthd user read access (it is retried at each rescan)");
                self.unreadable.insert(path.to_path_buf());
                return Ok(());
            }
        };
        let header = match ingest::read_header(&bytes) {
            Ok(header) => header,
            Err(rejection) => {
                let digest = ingest::header::hex(&sha_of(&bytes));
                return self.quarantine_at_intake(path, Some(&digest), &rejection);
            }
        };
        let study_key = StudyKey::new(&self.key, header.study_instance_uid.expose());
        let sop_digest = ingest::header::hex(&keyed_digest(
            &self.key,
            "synthd/sop-instance",
            &[header.sop_instance_uid.expose().as_bytes()],
        ));
        let pipeline = ingest::select::pick_pipeline(&self.config.pipelines, &header).map(|p| p.name().to_string());
        let series_digest =
            references::own_series(&header.dataset).map(|uid| references::series_digest(&self.key, &uid));
        // A SEG, SR or presentation state no pipeline takes waits for its
        // claim, which gives it the pipeline of a series it references.
        let refs = (pipeline.is_none() && references::is_reference_class(&header.sop_class_uid))
            .then(|| {
                let digests: Vec<String> = references::referenced_series(&header.dataset)
                    .iter()
                    .map(|uid| references::series_digest(&self.key, uid))
                    .collect();
                digests.join(" ")
            })
            .filter(|refs| !refs.is_empty());
        let new = NewInstance {
            study_key: study_key.as_str(),
            sop_digest: &sop_digest,
            content_digest: &header.content_digest,
            inbox_path: path,
            pipeline: pipeline.as_deref(),
            arrived,
            series_digest: series_digest.as_deref(),
            refs: refs.as_deref(),
        };
        if let Some(existing) = self.ledger.live_with_sop(&sop_digest)? {
            let work = &self.config.paths.work;
            if existing.state == InstanceState::Received
                && existing.inbox_path == path
                && existing.content_digest == header.content_digest
                && !Receiving::path(work, &existing.study_key, existing.id).exists()
            {
                // Recorded before a restart that came before its move (or lost it).
                self.recorded.insert(path.to_path_buf());
                self.receiving.to_stage.push(ToStage {
                    id: existing.id,
                    study: existing.study_key,
                    inbox_path: path.to_path_buf(),
                });
                return Ok(());
            }
            let mid_claim = existing.state == InstanceState::Claimed
                && existing.inbox_path == path
                && !self
                    .config
                    .paths
                    .work
                    .join(crate::ledger::job_name(existing.job_id.unwrap_or_default()))
                    .join(existing.work_name())
                    .exists();
            if mid_claim {
                // Its claim was interrupted; resuming the claim moves this very file.
                return Ok(());
            }
            if existing.content_digest == header.content_digest {
                self.ledger.insert_duplicate(&new)?;
                // The record must be durable before the file goes.
                self.ledger.commit_batch()?;
                remove_durably(path).map_err(|source| DaemonError::Io {
                    stage: "ingest",
                    path: self.config.paths.inbox.clone(),
                    source,
                })?;
                self.counters.duplicates += 1;
                crate::metrics::get().instance("duplicate", 1);
                tracing::info!(target: "ingest", study = %study_key, "identical duplicate of an instance already taken; recorded and dropped");
                return Ok(());
            }
            let rejection = Rejection::new(
                ReasonCode::ConflictingDuplicate,
                format!(
                    "an instance with the same SOP Instance UID but different bytes was already taken ({}); \
                     compare the two copies, then drop this one with `synthd quarantine discard JOB` or, if it is \
                     the right one, `synthd requeue JOB`",
                    self.where_is(&existing)
                ),
            );
            return self.quarantine_new(&new, &rejection);
        }
        if pipeline.is_none() && refs.is_none() {
            let rejection = Rejection::new(
                ReasonCode::NoMatchingPipeline,
                "no pipeline's [match] accepts this series (modality, SOP class, series description); add a pipeline or widen a [match]",
            );
            return self.quarantine_new(&new, &rejection);
        }
        let id = self.ledger.insert_received(&new)?;
        crate::metrics::get().instance("received", 1);
        self.recorded.insert(path.to_path_buf());
        self.receiving.to_stage.push(ToStage {
            id,
            study: study_key.as_str().to_string(),
            inbox_path: path.to_path_buf(),
        });
        Ok(())
    }

    /// Where a taken instance's copy is now, for an admin comparing it with
    /// a conflicting one: by job and ledger id, never by the inbox name.
    fn where_is(&self, existing: &Instance) -> String {
        let paths = &self.config.paths;
        let job = existing.job_id.map(crate::ledger::job_name).unwrap_or_default();
        let original = paths.work.join(&job).join(existing.work_name());
        match existing.state {
            InstanceState::Received => format!(
                "the other copy waits for its study in {}",
                Receiving::path(&paths.work, &existing.study_key, existing.id).display()
            ),
            InstanceState::Claimed => format!("the other copy is being processed by {job}: {}", original.display()),
            _ => {
                let output = existing
                    .output
                    .as_ref()
                    .map(|output| paths.outbox.join(output).display().to_string())
                    .unwrap_or_else(|| "unknown".into());
                let original = match self.config.raw.daemon.originals {
                    // Its job may still be finishing: the original leaves work/ last.
                    _ if original.exists() => original.display().to_string(),
                    OriginalsPolicy::Archive => paths
                        .archive
                        .join(&job)
                        .join(existing.work_name())
                        .display()
                        .to_string(),
                    OriginalsPolicy::Delete => "deleted after processing".into(),
                };
                format!("the other copy was processed by {job}: output {output}, original {original}")
            }
        }
    }

    fn quarantine_at_intake(
        &mut self,
        path: &Path,
        digest: Option<&str>,
        rejection: &Rejection,
    ) -> Result<(), DaemonError> {
        let new = NewInstance {
            study_key: UNKNOWN_STUDY,
            sop_digest: "",
            content_digest: digest.unwrap_or(""),
            inbox_path: path,
            pipeline: None,
            arrived: crate::ledger::now(),
            series_digest: None,
            refs: None,
        };
        self.quarantine_new(&new, rejection)
    }

    /// Records the reason, then moves the input into `paths.quarantine/<job>/`.
    fn quarantine_new(&mut self, new: &NewInstance<'_>, rejection: &Rejection) -> Result<(), DaemonError> {
        let (job, _) = self
            .ledger
            .begin_intake_quarantine(new, rejection.code.as_str(), &rejection.message)?;
        self.recorded.remove(new.inbox_path);
        self.finish_quarantine(job, new.inbox_path, rejection, Stage::Ingest)
    }
}

/// Reads a file refusing symlinks (O_NOFOLLOW) and anything not regular.
/// Also returns when the file landed in the inbox: its ctime, which a
/// rename into the inbox or the last write sets, so `stable_age` counts
/// from the real arrival however late synthd looks (a rescan of an NFS
/// inbox, a backlog). A ctime in the future (a file server's clock ahead of
/// ours) counts as now.
fn read_no_follow(path: &Path) -> std::io::Result<(Vec<u8>, f64)> {
    use std::os::unix::fs::MetadataExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
    }
    let changed = metadata.ctime() as f64 + metadata.ctime_nsec() as f64 * 1e-9;
    // Originals hold PHI: 0640 from here on (receiving, work and archive
    // folders are 0750), whatever mode they arrived with. Through the
    // descriptor, before the file leaves the inbox; a file another user
    // owns keeps its mode (the folders still keep others out).
    if metadata.mode() & 0o7777 != 0o640 {
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o640));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.read_to_end(&mut bytes)?;
    Ok((bytes, changed.min(crate::ledger::now())))
}

fn sha_of(bytes: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).into()
}

fn remove_durably(path: &Path) -> std::io::Result<()> {
    std::fs::remove_file(path)?;
    match path.parent() {
        Some(parent) => crate::fsutil::fsync_dir(parent),
        None => Ok(()),
    }
}
