//! Sending outputs to `[[destinations]]` (C-STORE SCU) through the durable
//! queue in the ledger (`ledger/sends.rs`).
//!
//! One thread finds jobs whose outputs are all durable (`written`/`done`)
//! and queues every DICOM file of their studies in the outbox for the
//! destinations their pipelines name (`[output] destinations`). One worker
//! per destination sends what is due over an association it keeps open
//! while there is work, proposing each instance's own transfer syntax plus
//! Explicit and Implicit VR Little Endian: when the peer takes only those,
//! native data sets are re-encoded and compressed ones decoded
//! (`crate::pixel_decode`; one that cannot be decoded is a dead letter whose
//! reason names its transfer syntax). Transient failures (connection refused,
//! timeouts, transient rejections, Out of Resources) are retried with
//! exponential backoff and jitter; permanent ones (rejected AE, no
//! presentation context, any other failure status) become dead letters at
//! once, with the reason. Only an acknowledged instance is recorded `sent`.

use super::dimse::{EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN};
use super::scu::{Association, Peer, Proposal, ScuError};
use crate::config::dicom::Destination;
use crate::config::Config;
use crate::ledger::{Ledger, LedgerError, Send};
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use rand::Rng;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the queue and the ledger are looked at when idle.
const POLL: Duration = Duration::from_millis(250);
/// An association with nothing to send is released after this long.
const IDLE_RELEASE: Duration = Duration::from_secs(5);
/// Sends taken from the queue at once.
const BATCH: u32 = 32;
/// PS3.8 allows 128 presentation contexts per association.
const MAX_CONTEXTS: usize = 128;

/// The running exporter; dropping it stops the threads (an association in
/// use finishes its current instance and is released).
pub struct Exporter {
    state: PathBuf,
    outbox: PathBuf,
    /// Runs while some destination is configured.
    finder: Option<Task>,
    routes: Routes,
    workers: Vec<(Destination, Task)>,
    /// Workers of removed destinations finishing their current instance.
    retired: Vec<(String, JoinHandle<()>)>,
}

/// Pipeline name → destination names.
type Routes = HashMap<String, Vec<String>>;

/// A thread and its own stop request.
struct Task {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Task {
    fn start(name: &str, work: impl FnOnce(&AtomicBool) + std::marker::Send + 'static) -> Task {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = spawn(name, stop.clone(), work);
        Task { stop, thread }
    }

    fn stop(self) -> JoinHandle<()> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
    }
}

impl Exporter {
    /// Starts the finder and one worker per configured destination (none
    /// when there is none; [`Exporter::reconfigure`] may add them later).
    pub fn start(config: &Config) -> Result<Exporter, LedgerError> {
        let mut exporter = Exporter {
            state: config.paths.state.clone(),
            outbox: config.paths.outbox.clone(),
            finder: None,
            routes: Routes::new(),
            workers: Vec::new(),
            retired: Vec::new(),
        };
        exporter.reconfigure(config)?;
        Ok(exporter)
    }

    /// Applies `[[destinations]]` and the pipelines' routes (at start and
    /// on a `SIGHUP` reload): unchanged destinations keep their worker and
    /// association; a changed one's new worker starts once the old one has
    /// finished its current instance, so no instance goes out twice; a
    /// removed one's worker stops and its queued sends stay in the ledger
    /// (`synthd status` lists them) until it is configured again. New
    /// routes apply to jobs not yet queued. Ledger connections are opened
    /// first, so a failure changes nothing.
    pub fn reconfigure(&mut self, config: &Config) -> Result<(), LedgerError> {
        let wanted = &config.raw.destinations;
        let routes = routes(config);
        let finder_ledger = match wanted.is_empty() || (routes == self.routes && self.finder.is_some()) {
            true => None,
            false => Some(Ledger::open(&self.state)?),
        };
        let mut starting = Vec::new();
        for destination in wanted {
            if !self.workers.iter().any(|(running, _)| running == destination) {
                starting.push(Worker::new(destination, Ledger::open(&self.state)?));
            }
        }
        self.retired.retain(|(_, thread)| !thread.is_finished());
        let mut predecessors = HashMap::new();
        for (destination, task) in std::mem::take(&mut self.workers) {
            let name = destination.name.get_ref().clone();
            if wanted.contains(&destination) {
                self.workers.push((destination, task));
            } else if wanted.iter().any(|d| d.name.get_ref() == &name) {
                predecessors.insert(name, task.stop());
            } else {
                tracing::warn!(target: "net", destination = %name, "destination removed: its queued sends stay in the ledger until it is configured again (synthd status)");
                self.retired.push((name, task.stop()));
            }
        }
        for worker in starting {
            let destination = wanted
                .iter()
                .find(|d| d.name.get_ref() == &worker.name)
                .expect("started for a wanted destination")
                .clone();
            // A destination removed and added back waits for its old worker too.
            let predecessor = predecessors.remove(&worker.name).or_else(|| {
                let at = self.retired.iter().position(|(name, _)| name == &worker.name)?;
                Some(self.retired.remove(at).1)
            });
            let task = Task::start(&format!("export-{}", worker.name), move |stop| {
                if let Some(previous) = predecessor {
                    let _ = previous.join();
                }
                worker.run(stop)
            });
            self.workers.push((destination, task));
        }
        if wanted.is_empty() {
            if let Some(finder) = self.finder.take() {
                let _ = finder.stop().join();
            }
            self.routes = Routes::new();
        } else if let Some(ledger) = finder_ledger {
            if let Some(finder) = self.finder.take() {
                let _ = finder.stop().join();
            }
            let finder = Finder {
                ledger,
                outbox: self.outbox.clone(),
                routes: routes.clone(),
            };
            self.finder = Some(Task::start("export-find", move |stop| finder.run(stop)));
            self.routes = routes;
        }
        crate::metrics::set_destinations(wanted.iter().map(page_entry).collect());
        Ok(())
    }
}

/// How the status page lists a destination: its name and where it sends.
fn page_entry(destination: &Destination) -> crate::metrics::Destination {
    crate::metrics::Destination {
        name: destination.name.get_ref().clone(),
        address: format!(
            "{}@{}:{}",
            destination.ae_title.get_ref(),
            destination.host.get_ref(),
            destination.port
        ),
    }
}

fn routes(config: &Config) -> Routes {
    config
        .pipelines
        .iter()
        .map(|p| {
            let names = p
                .pipeline
                .output
                .destinations
                .iter()
                .map(|d| d.get_ref().clone())
                .collect();
            (p.name().to_string(), names)
        })
        .collect()
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let tasks = self
            .finder
            .take()
            .into_iter()
            .chain(self.workers.drain(..).map(|(_, task)| task));
        let mut threads: Vec<JoinHandle<()>> = tasks.map(Task::stop).collect();
        threads.extend(self.retired.drain(..).map(|(_, thread)| thread));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

fn spawn(
    name: &str,
    stop: Arc<AtomicBool>,
    work: impl FnOnce(&AtomicBool) + std::marker::Send + 'static,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || work(&stop))
        .expect("a thread can be started at daemon start")
}

/// Queues the outputs of finished jobs.
struct Finder {
    ledger: Ledger,
    outbox: PathBuf,
    routes: Routes,
}

impl Finder {
    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            if let Err(error) = self.queue_finished_jobs() {
                tracing::error!(target: "net", %error, "cannot queue outputs for sending; trying again");
            }
            std::thread::sleep(POLL);
        }
    }

    fn queue_finished_jobs(&mut self) -> Result<(), LedgerError> {
        for job in self.ledger.jobs_to_export()? {
            let destinations: BTreeSet<String> = job
                .pipelines
                .iter()
                .filter_map(|p| self.routes.get(p))
                .flatten()
                .cloned()
                .collect();
            let destinations: Vec<String> = destinations.into_iter().collect();
            let files = if destinations.is_empty() {
                Vec::new()
            } else {
                study_files(&self.outbox, &job.outputs)
            };
            let queued = self.ledger.enqueue_sends(job.id, &destinations, &files)?;
            if queued > 0 {
                tracing::info!(target: "net", job = %crate::ledger::job_name(job.id), queued, destinations = ?destinations, "outputs queued for sending");
            }
        }
        Ok(())
    }
}

/// Every `.dcm` under the study folders holding `outputs` (paths relative
/// to the outbox, `<study>/<series>/<sop>.dcm`): the de-identified series
/// and what synthesis wrote beside them (synthetic series, SEG).
fn study_files(outbox: &Path, outputs: &[PathBuf]) -> Vec<PathBuf> {
    let studies: BTreeSet<PathBuf> = outputs
        .iter()
        .filter_map(|relative| relative.components().next())
        .map(|first| outbox.join(first.as_os_str()))
        .collect();
    let mut files = Vec::new();
    for study in studies {
        collect_dcm(&study, &mut files);
    }
    files.sort();
    files
}

fn collect_dcm(folder: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(folder) else { return };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else { continue };
        let path = entry.path();
        if kind.is_dir() {
            collect_dcm(&path, files);
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "dcm") {
            files.push(path);
        }
    }
}

/// One output read for sending: its File Meta values and its data set.
struct Outgoing {
    sop_class_uid: String,
    sop_instance_uid: String,
    transfer_syntax: String,
    data_set: Vec<u8>,
}

impl Outgoing {
    fn read(path: &Path) -> Result<Outgoing, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read the output: {e}"))?;
        if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
            return Err("the output is not a DICOM Part 10 file".into());
        }
        let meta = dicom_object::FileMetaTable::from_reader(&bytes[128..])
            .map_err(|e| format!("cannot read the output's File Meta: {e}"))?;
        let start = 132 + 12 + meta.information_group_length as usize;
        let data_set = bytes
            .get(start..)
            .ok_or("the output ends inside its File Meta")?
            .to_vec();
        let trim = |s: &str| super::accept::trim_uid(s).to_string();
        Ok(Outgoing {
            sop_class_uid: trim(meta.media_storage_sop_class_uid()),
            sop_instance_uid: trim(meta.media_storage_sop_instance_uid()),
            transfer_syntax: trim(meta.transfer_syntax()),
            data_set,
        })
    }

    /// The presentation contexts this instance may go on.
    fn proposals(&self) -> Vec<Proposal> {
        let native = vec![
            EXPLICIT_VR_LITTLE_ENDIAN.to_string(),
            IMPLICIT_VR_LITTLE_ENDIAN.to_string(),
        ];
        let mut proposals = Vec::new();
        if !native.contains(&self.transfer_syntax) {
            proposals.push(Proposal {
                abstract_syntax: self.sop_class_uid.clone(),
                transfer_syntaxes: vec![self.transfer_syntax.clone()],
            });
        }
        proposals.push(Proposal {
            abstract_syntax: self.sop_class_uid.clone(),
            transfer_syntaxes: native,
        });
        proposals
    }
}

/// The data set re-encoded in `to`, a native little-endian syntax: native
/// data sets are re-encoded as they are; compressed Pixel Data is decoded
/// first (`pixel_decode`, which also updates the Image Pixel attributes and
/// keeps a lossy source declared lossy). The SOP Instance UID stays: the
/// image is the same, only its encoding changed.
fn transcode(outgoing: &Outgoing, to: &str) -> Result<Vec<u8>, String> {
    let from = outgoing.transfer_syntax.as_str();
    let registry = TransferSyntaxRegistry;
    let (Some(from_ts), Some(to_ts)) = (registry.get(from), registry.get(to)) else {
        return Err(format!(
            "the peer accepts SOP class {} only in little endian and transfer syntax {from} is unknown to synthd",
            outgoing.sop_class_uid
        ));
    };
    let object = InMemDicomObject::read_dataset_with_ts(outgoing.data_set.as_slice(), from_ts)
        .map_err(|e| format!("cannot re-encode: {e}"))?;
    let object = if from_ts.is_encapsulated_pixel_data() {
        decoded(object, outgoing, to)?
    } else {
        object
    };
    let mut out = Vec::with_capacity(outgoing.data_set.len() + 1024);
    object
        .write_dataset_with_ts(&mut out, to_ts)
        .map_err(|e| format!("cannot re-encode: {e}"))?;
    Ok(out)
}

/// `object` with its Pixel Data decoded for a peer that takes only `to`.
fn decoded(object: InMemDicomObject, outgoing: &Outgoing, to: &str) -> Result<InMemDicomObject, String> {
    let meta = dicom_object::FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(outgoing.sop_class_uid.as_str())
        .media_storage_sop_instance_uid(outgoing.sop_instance_uid.as_str())
        .transfer_syntax(outgoing.transfer_syntax.as_str())
        .build()
        .map_err(|e| format!("cannot re-encode: {e}"))?;
    let mut file = object.with_exact_meta(meta);
    crate::pixel_decode::decode_to_native(&mut file, to).map_err(|error| {
        format!(
            "the peer accepted SOP class {} only in little endian, and {error}; \
             or configure the peer to accept {} (dcmtk storescp: +xa)",
            outgoing.sop_class_uid, outgoing.transfer_syntax
        )
    })?;
    Ok(file.into_inner())
}

/// What became of one attempt to send.
enum Attempt {
    Sent,
    /// Try the instance again later; the destination backs off.
    Transient(String),
    /// Dead letter with this reason.
    Permanent(String),
}

struct Open {
    association: Association,
    proposed: BTreeSet<(String, Vec<String>)>,
    last_used: Instant,
}

struct Worker {
    name: String,
    peer: Peer,
    retry_initial: Duration,
    retry_max: Duration,
    ledger: Ledger,
    open: Option<Open>,
    /// Consecutive transient failures: the destination's backoff exponent.
    failures: u32,
    paused_until: Option<Instant>,
}

impl Worker {
    fn new(destination: &Destination, ledger: Ledger) -> Worker {
        Worker {
            name: destination.name.get_ref().clone(),
            peer: destination.peer(),
            retry_initial: destination.retry_initial.as_duration(),
            retry_max: destination.retry_max.as_duration(),
            ledger,
            open: None,
            failures: 0,
            paused_until: None,
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            match self.step(stop) {
                Ok(true) => {}
                Ok(false) => std::thread::sleep(POLL),
                Err(error) => {
                    tracing::error!(target: "net", destination = %self.name, %error, "send queue unavailable; trying again");
                    std::thread::sleep(POLL * 4);
                }
            }
        }
        if let Some(open) = self.open.take() {
            open.association.release();
        }
    }

    /// Sends what is due; true when something was attempted.
    fn step(&mut self, stop: &AtomicBool) -> Result<bool, LedgerError> {
        if self.paused_until.is_some_and(|until| Instant::now() < until) {
            return Ok(false);
        }
        let due = self.ledger.due_sends(&self.name, crate::ledger::now(), BATCH)?;
        if due.is_empty() {
            if self
                .open
                .as_ref()
                .is_some_and(|open| open.last_used.elapsed() > IDLE_RELEASE)
            {
                if let Some(open) = self.open.take() {
                    open.association.release();
                }
            }
            return Ok(false);
        }
        for send in &due {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let outgoing = match Outgoing::read(&send.path) {
                Ok(outgoing) => outgoing,
                Err(reason) => {
                    self.dead_letter(send, &reason)?;
                    continue;
                }
            };
            match self.attempt(&outgoing, &due) {
                Attempt::Sent => {
                    self.ledger.send_acknowledged(send.id, &self.name)?;
                    crate::metrics::sent(&self.name, "ok");
                    if self.failures > 0 {
                        tracing::info!(target: "net", destination = %self.name, "destination reachable again");
                    }
                    self.failures = 0;
                    self.paused_until = None;
                }
                Attempt::Permanent(reason) => self.dead_letter(send, &reason)?,
                Attempt::Transient(reason) => {
                    self.back_off(send, &reason)?;
                    break;
                }
            }
        }
        Ok(true)
    }

    fn attempt(&mut self, outgoing: &Outgoing, batch: &[Send]) -> Attempt {
        let wanted: Vec<Proposal> = outgoing.proposals();
        if let Err(error) = self.ensure_open(&wanted, batch) {
            return classify(error);
        }
        let open = self.open.as_mut().expect("opened above");
        open.last_used = Instant::now();
        let association = &mut open.association;
        let own = association.context_for(&outgoing.sop_class_uid, &[outgoing.transfer_syntax.as_str()]);
        let native = association.context_for(
            &outgoing.sop_class_uid,
            &[EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN],
        );
        let (id, data) = match (own, native) {
            (Some((id, _)), _) => (id, std::borrow::Cow::Borrowed(&outgoing.data_set)),
            (None, Some((id, ts))) => match transcode(outgoing, &ts) {
                Ok(data) => (id, std::borrow::Cow::Owned(data)),
                Err(reason) => return Attempt::Permanent(reason),
            },
            (None, None) => {
                return Attempt::Permanent(format!(
                    "the peer accepted no presentation context for SOP class {} in {} or little endian",
                    outgoing.sop_class_uid, outgoing.transfer_syntax
                ))
            }
        };
        match association.store_with_comment(id, &outgoing.sop_class_uid, &outgoing.sop_instance_uid, &data) {
            Ok((status, _)) if status.is_success() || status.is_warning() => Attempt::Sent,
            Ok((status, comment)) => {
                let reason = match comment {
                    Some(comment) => format!("the peer answered {status}: {comment}"),
                    None => format!("the peer answered {status}"),
                };
                if status.is_transient_failure() {
                    self.drop_association();
                    Attempt::Transient(reason)
                } else {
                    Attempt::Permanent(reason)
                }
            }
            Err(error) => {
                self.drop_association();
                classify(error)
            }
        }
    }

    /// Opens an association covering `wanted`, reusing the open one when it
    /// does; a new one also proposes what the rest of the batch needs.
    fn ensure_open(&mut self, wanted: &[Proposal], batch: &[Send]) -> Result<(), ScuError> {
        let key = |p: &Proposal| (p.abstract_syntax.clone(), p.transfer_syntaxes.clone());
        if let Some(open) = &self.open {
            if wanted.iter().all(|p| open.proposed.contains(&key(p))) {
                return Ok(());
            }
        }
        if let Some(open) = self.open.take() {
            open.association.release();
        }
        let mut proposals: Vec<Proposal> = wanted.to_vec();
        for send in batch {
            if proposals.len() + 2 > MAX_CONTEXTS {
                break;
            }
            if let Ok(other) = Outgoing::read(&send.path) {
                for proposal in other.proposals() {
                    if !proposals.contains(&proposal) {
                        proposals.push(proposal);
                    }
                }
            }
        }
        let association = Association::open(&self.peer, &proposals)?;
        self.open = Some(Open {
            association,
            proposed: proposals.iter().map(key).collect(),
            last_used: Instant::now(),
        });
        Ok(())
    }

    fn drop_association(&mut self) {
        if let Some(open) = self.open.take() {
            open.association.abort();
        }
    }

    fn dead_letter(&mut self, send: &Send, reason: &str) -> Result<(), LedgerError> {
        tracing::warn!(target: "net", destination = %self.name, file = %send.path.display(), reason, "send failed permanently: dead letter (synthd requeue --dead-letters)");
        self.ledger.send_dead(send.id, reason)?;
        crate::metrics::sent(&self.name, "failed");
        self.ledger.destination_error(&self.name, reason)
    }

    fn back_off(&mut self, send: &Send, reason: &str) -> Result<(), LedgerError> {
        self.failures += 1;
        crate::metrics::sent(&self.name, "retried");
        let pause = backoff(self.retry_initial, self.retry_max, self.failures, &mut rand::rng());
        self.paused_until = Some(Instant::now() + pause);
        tracing::warn!(target: "net", destination = %self.name, reason, retry_in_s = pause.as_secs_f64(), "send failed; will retry");
        let next = crate::ledger::now() + pause.as_secs_f64();
        self.ledger.send_retry(send.id, next, reason)?;
        self.ledger.destination_error(&self.name, reason)
    }
}

fn classify(error: ScuError) -> Attempt {
    if error.is_transient() {
        Attempt::Transient(error.to_string())
    } else {
        Attempt::Permanent(error.to_string())
    }
}

/// `initial · 2^(failures-1)`, at most `max`, times a random factor in
/// [0.5, 1) so that senders that failed together do not retry together.
pub fn backoff(initial: Duration, max: Duration, failures: u32, rng: &mut impl Rng) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    let base = initial.saturating_mul(1u32 << exponent.min(31)).min(max);
    base.mul_f64(rng.random_range(0.5..1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter_below_it() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (initial, max) = (Duration::from_secs(2), Duration::from_secs(60));
        for failures in 1..40 {
            let delay = backoff(initial, max, failures, &mut rng);
            let base = (initial * 2u32.saturating_pow(failures - 1)).min(max);
            assert!(delay >= base / 2 && delay < base, "{failures}: {delay:?} vs {base:?}");
        }
    }

    fn outgoing(transfer_syntax: &str, data_set: Vec<u8>) -> Outgoing {
        Outgoing {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.7".into(),
            sop_instance_uid: "2.25.1".into(),
            transfer_syntax: transfer_syntax.into(),
            data_set,
        }
    }

    #[test]
    fn native_data_sets_are_re_encoded_and_undecodable_ones_refused_naming_the_syntax() {
        let explicit = [0x08u8, 0x00, 0x60, 0x00, b'C', b'S', 2, 0, b'M', b'R'];
        let implicit = transcode(
            &outgoing(EXPLICIT_VR_LITTLE_ENDIAN, explicit.to_vec()),
            IMPLICIT_VR_LITTLE_ENDIAN,
        )
        .unwrap();
        assert_eq!(implicit, [0x08, 0x00, 0x60, 0x00, 2, 0, 0, 0, b'M', b'R']);
        // JPEG-LS: no decoder in this build. The reason names it and says what to do.
        let jpeg_ls = "1.2.840.10008.1.2.4.80";
        let mut data_set = explicit.to_vec();
        data_set.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        data_set.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
        data_set.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 2, 0, 0, 0, 0xFF, 0xD8]);
        data_set.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let reason = transcode(&outgoing(jpeg_ls, data_set), EXPLICIT_VR_LITTLE_ENDIAN).unwrap_err();
        assert!(
            reason.contains(jpeg_ls) && reason.contains("no decoder") && reason.contains("+xa"),
            "{reason}"
        );
    }
}
