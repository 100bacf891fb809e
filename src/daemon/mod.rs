//! The daemon: one coordinator thread that watches the inbox, records every
//! transition in the ledger, claims complete studies and moves files; stage
//! threads (deid → output) connected by bounded channels do the work.
//!
//! The coordinator alone writes the ledger and moves inputs, so each
//! transition is committed before the side effect that follows it, and a
//! restart resumes every job from its last durable state.

pub mod deid_stage;
pub mod engine;
mod intake;
mod jobs;
mod receiving;
pub mod system;
pub mod workers;

pub use deid_stage::DeidEngine;
pub use engine::{Engine, SynthesisReport};

use crate::config::Config;
use crate::keyfile::SiteKey;
use crate::ledger::{Ledger, LedgerError};
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use workers::{DeidTask, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("{stage}: {path}: {source}")]
    Io {
        stage: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the pipelines' engine: {0}")]
    Engine(String),
    #[error(transparent)]
    Lock(#[from] crate::ledger::lock::LockError),
}

/// Builds the engine for a config; called at start and on every reload.
pub type EngineBuilder<E> = Box<dyn Fn(&Config, &SiteKey) -> Result<E, String>>;

/// Applies a reloaded config to what runs beside the daemon (the network
/// side); an error refuses the reload, so the hook must change nothing then.
pub type ReloadHook = Box<dyn FnMut(&Config) -> Result<(), String>>;

/// Switches for tests and special deployments, read from the environment.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Rely on rescans only (`SYNTHD_INOTIFY=off`), as on NFS or SMB mounts.
    pub no_inotify: bool,
}

impl Options {
    pub fn from_env() -> Options {
        Options {
            no_inotify: std::env::var("SYNTHD_INOTIFY").is_ok_and(|v| v == "off" || v == "0"),
        }
    }
}

/// A job whose instances are in the stages.
struct Progress {
    study_key: String,
    total: usize,
    /// Instances handed to the stages when the job started.
    tasks: usize,
    remaining: HashSet<i64>,
    deidentified: usize,
    quarantined: usize,
    started: Instant,
    /// Pipelines whose study-level synthesis is still running.
    synthesizing: HashSet<String>,
    /// Whether synthesis was handed out (it runs once the instances are written).
    synthesis_started: bool,
    /// When its study turned complete (`stable_age` expired or marked
    /// ready), seconds since the epoch; unknown for a job resumed at start.
    complete_since: Option<f64>,
}

/// Why intake is paused, and when to try again.
struct Pause {
    /// A fixed word for metrics (`synthd_intake_paused{cause}`).
    cause: &'static str,
    reason: String,
    /// When it began (seconds since the epoch).
    since: f64,
    until: Instant,
    backoff: Duration,
    last_logged: Option<Instant>,
}

#[derive(Default)]
struct Counters {
    studies_done: u64,
    instances_written: u64,
    quarantined: u64,
    duplicates: u64,
}

/// A job whose outputs are all durable in the outbox, for its log line.
struct StudyWritten {
    job: i64,
    study_key: String,
    instances: usize,
    quarantined: usize,
    duration_ms: u64,
}

pub struct Daemon<E: Engine> {
    config: Config,
    key: SiteKey,
    engine: Arc<E>,
    build: EngineBuilder<E>,
    ledger: Ledger,
    /// Held while this daemon runs: one daemon per ledger, and `status` sees it.
    _lock: crate::ledger::lock::DaemonLock,
    options: Options,
    settler: crate::ingest::Settler,
    /// Inbox paths to look at again (new, or not settled yet).
    pending: HashSet<PathBuf>,
    /// Inbox paths already recorded as received (still in the inbox).
    recorded: HashSet<PathBuf>,
    /// Received instances waiting in `paths.work/receiving/<study>/`.
    receiving: receiving::Receiving,
    /// Inbox folders holding a `.ready` marker, with the markers.
    ready: HashMap<PathBuf, Vec<PathBuf>>,
    /// Inbox files that could not be read, logged once each.
    unreadable: HashSet<PathBuf>,
    /// Inputs whose quarantine an environment fault interrupted; intake leaves them alone.
    held: HashSet<PathBuf>,
    jobs: HashMap<i64, Progress>,
    dispatch: VecDeque<DeidTask<E>>,
    retry: Vec<(i64, i64)>,
    /// Outputs in place but not yet flushed nor recorded.
    unflushed: Vec<workers::WrittenOutput>,
    flush_tx: Option<Sender<workers::FlushTask>>,
    /// A batch is with the flush stage; the next waits for its report.
    flush_in_flight: bool,
    unflushed_since: Option<Instant>,
    /// Jobs whose outputs are all durable, to be finished together.
    finishing: Vec<(i64, Progress)>,
    /// Folder changes the next flush makes durable, and the jobs they claim
    /// or finish (see `workers::FlushTask`).
    unsynced: workers::FlushTask,
    /// Jobs whose originals moved, waiting for a flush to make that durable.
    moving: HashMap<i64, Progress>,
    /// Jobs recorded written in the open batch, logged once it commits.
    written: Vec<StudyWritten>,
    /// Jobs recorded done in the open batch, logged once it commits.
    finished: Vec<(i64, Progress)>,
    /// Jobs whose instances were all de-identified this round.
    deidentified_jobs: Vec<i64>,
    /// When the next received study turns `stable_age` quiet (epoch seconds).
    next_claim_due: Option<f64>,
    /// The last turn left inotify events unread (a flood of arrivals):
    /// files of a study may wait in them, so no study is claimed.
    intake_behind: bool,
    pause: Option<Pause>,
    deid_tx: Option<Sender<DeidTask<E>>>,
    /// Held to report the output queue's depth.
    output_rx: Receiver<workers::OutputTask>,
    synth_tx: Option<Sender<workers::SynthTask<E>>>,
    outcome_rx: Receiver<Outcome>,
    threads: Vec<JoinHandle<()>>,
    counters: Counters,
    last_summary: Instant,
    events: Option<std::sync::mpsc::Receiver<notify::Result<notify::Event>>>,
    timers: Timers,
    on_reload: Option<ReloadHook>,
}

struct Timers {
    rescan: Option<Instant>,
    resume: Instant,
    watchdog: Instant,
    watchdog_every: Option<Duration>,
    status: Instant,
    /// When the outbox's free space was last found sufficient.
    space_checked: Option<Instant>,
}

/// How long a free-space check holds: statvfs on every turn of a busy loop
/// cost a few percent of the coordinator, and a write that runs out of space
/// in between pauses intake on its own (ENOSPC is an environment fault).
const SPACE_CHECK_EVERY: Duration = Duration::from_millis(250);

/// Inotify events read per turn of the coordinator loop.
const EVENTS_PER_TURN: usize = 10_000;

/// Written in `paths.state` by a daemon that stopped cleanly, removed at start:
/// a start without it after a ledger exists follows a watchdog kill or a crash.
const CLEAN_STOP_FILE: &str = "stopped-cleanly";

impl<E: Engine> Daemon<E> {
    /// Opens the ledger, starts the stage threads and resumes unfinished jobs.
    pub fn start(config: Config, key: SiteKey, build: EngineBuilder<E>, options: Options) -> Result<Self, DaemonError> {
        for (_, path) in config.paths.named() {
            crate::fsutil::create_private_dir(path).map_err(|source| DaemonError::Io {
                stage: "start",
                path: path.to_path_buf(),
                source,
            })?;
        }
        let lock = crate::ledger::lock::DaemonLock::acquire(&config.paths.state)?;
        let engine = Arc::new(build(&config, &key).map_err(DaemonError::Engine)?);
        let unclean = unclean_stop(&config.paths.state);
        let ledger = Ledger::open(&config.paths.state)?;
        let settings = &config.raw.daemon;
        let depth = settings.queue_depth as usize;
        let (deid_tx, deid_rx) = bounded::<DeidTask<E>>(depth);
        let (output_tx, output_rx) = bounded::<workers::OutputTask>(depth);
        // Outcomes are bounded by the tasks in flight, so this cannot grow without bound.
        let (outcome_tx, outcome_rx) = unbounded::<Outcome>();
        let mut threads = Vec::new();
        for n in 0..settings.deid_workers {
            let (rx, tx, out) = (deid_rx.clone(), output_tx.clone(), outcome_tx.clone());
            let outbox = config.paths.outbox.clone();
            threads.push(spawn(format!("deid-{n}"), move || {
                workers::deid_worker(rx, tx, outbox, out)
            }));
        }
        let (synth_tx, synth_rx) = bounded::<workers::SynthTask<E>>(depth);
        {
            let (out, outbox) = (outcome_tx.clone(), config.paths.outbox.clone());
            threads.push(spawn("synth".to_string(), move || {
                workers::synth_worker(synth_rx, outbox, out)
            }));
        }
        let output_depth = output_rx.clone();
        for n in 0..settings.output_workers {
            let (rx, out, outbox) = (output_rx.clone(), outcome_tx.clone(), config.paths.outbox.clone());
            threads.push(spawn(format!("output-{n}"), move || {
                workers::output_worker(rx, outbox, out)
            }));
        }
        // One batch at a time: the coordinator waits for its report before the next.
        let (flush_tx, flush_rx) = bounded::<workers::FlushTask>(1);
        {
            let (out, outbox) = (outcome_tx.clone(), config.paths.outbox.clone());
            // Opened before any output is written; an absent outbox is
            // opened (or reported) at the first flush.
            let held = std::fs::File::open(&outbox).ok();
            threads.push(spawn("flush".to_string(), move || {
                workers::flush_worker(flush_rx, outbox, held, out)
            }));
        }
        let mut daemon = Daemon {
            config,
            key,
            engine,
            build,
            ledger,
            _lock: lock,
            options,
            settler: Default::default(),
            pending: HashSet::new(),
            recorded: HashSet::new(),
            receiving: Default::default(),
            ready: HashMap::new(),
            unreadable: HashSet::new(),
            held: HashSet::new(),
            jobs: HashMap::new(),
            dispatch: VecDeque::new(),
            retry: Vec::new(),
            unflushed: Vec::new(),
            flush_tx: Some(flush_tx),
            flush_in_flight: false,
            unflushed_since: None,
            finishing: Vec::new(),
            unsynced: Default::default(),
            moving: HashMap::new(),
            written: Vec::new(),
            finished: Vec::new(),
            deidentified_jobs: Vec::new(),
            next_claim_due: None,
            intake_behind: false,
            pause: None,
            deid_tx: Some(deid_tx),
            output_rx: output_depth,
            synth_tx: Some(synth_tx),
            outcome_rx,
            threads,
            counters: Counters::default(),
            last_summary: Instant::now(),
            events: None,
            on_reload: None,
            timers: Timers {
                rescan: None,
                resume: Instant::now(),
                watchdog: Instant::now(),
                watchdog_every: system::watchdog_interval(),
                status: Instant::now(),
                space_checked: None,
            },
        };
        for instance in daemon.ledger.received()? {
            let work = &daemon.config.paths.work;
            if !receiving::Receiving::path(work, &instance.study_key, instance.id).exists() {
                // Recorded, but its move out of the inbox was lost or never
                // made: made at the first intake round, without reading it again.
                daemon.receiving.to_stage.push(receiving::ToStage {
                    id: instance.id,
                    study: instance.study_key,
                    inbox_path: instance.inbox_path.clone(),
                });
                daemon.recorded.insert(instance.inbox_path);
            }
        }
        sweep_stale_temporaries(&daemon.config.paths.outbox);
        let outbox = &daemon.config.paths.outbox;
        let metrics = crate::metrics::get();
        // Before attaching: /readyz answers from the first moment it can.
        metrics.outbox(system::free_space(outbox).unwrap_or(0), system::writable(outbox));
        metrics.attach(daemon.config.paths.state.clone(), unclean);
        daemon.publish_pipelines();
        daemon.resume()?;
        Ok(daemon)
    }

    /// Calls `hook` with each reloaded config, after the pipelines built
    /// and before anything is swapped.
    pub fn on_reload(&mut self, hook: ReloadHook) {
        self.on_reload = Some(hook);
    }

    /// Runs until SIGTERM or SIGINT, then drains in-flight work within
    /// `daemon.shutdown_timeout`. Work not finished by then stays in the
    /// ledger and resumes at the next start.
    pub fn run(&mut self) -> Result<(), DaemonError> {
        let (_watcher, events) = self.watch();
        self.events = events;
        system::sd_notify("READY=1");
        tracing::info!(target: "daemon", inbox = %self.config.paths.inbox.display(), deid_workers = self.config.raw.daemon.deid_workers, "serving");
        while !system::terminate_requested() {
            if system::take_reload() {
                self.reload();
            }
            self.step()?;
        }
        system::sd_notify("STOPPING=1");
        self.shutdown()
    }

    /// One turn of the coordinator loop: events, rescan when due, intake,
    /// claims, dispatch, outcomes, watchdog and summary.
    pub fn step(&mut self) -> Result<(), DaemonError> {
        if let Some(events) = self.events.take() {
            self.drain_events(&events);
            self.events = Some(events);
        }
        let rescan_every = self.config.raw.ingest.rescan_interval.as_duration();
        if self.timers.rescan.is_none_or(|t| t.elapsed() >= rescan_every) {
            self.rescan();
            self.timers.rescan = Some(Instant::now());
        }
        self.intake()?;
        self.drain_outcomes(Duration::ZERO)?;
        if self.may_proceed() {
            self.claim_complete_studies()?;
            self.push_dispatch();
        }
        if self.timers.resume.elapsed() >= Duration::from_secs(2) {
            // Moves that failed on an environment fault are retried here.
            self.resume_moves()?;
            self.timers.resume = Instant::now();
        }
        self.drain_outcomes(self.idle_wait())?;
        if self
            .timers
            .watchdog_every
            .is_some_and(|every| self.timers.watchdog.elapsed() >= every)
        {
            system::sd_notify("WATCHDOG=1");
            self.timers.watchdog = Instant::now();
        }
        if self.timers.status.elapsed() >= Duration::from_secs(5) {
            system::sd_notify(&format!("STATUS={}", self.status_line()?));
            self.timers.status = Instant::now();
        }
        if self.last_summary.elapsed() >= self.config.raw.daemon.summary_interval.as_duration() {
            self.summary()?;
            self.purge_archive();
        }
        self.publish();
        Ok(())
    }

    /// What the metrics listener reports about this turn: a few atomic
    /// stores, never a wait on the listener.
    fn publish(&self) {
        let metrics = crate::metrics::get();
        metrics.turn();
        metrics.queue_depth("inbox_unsettled", self.pending.len());
        metrics.queue_depth("dispatch", self.dispatch.len());
        metrics.queue_depth("deid", self.deid_tx.as_ref().map_or(0, Sender::len));
        metrics.queue_depth("output", self.output_rx.len());
        metrics.queue_depth("synth", self.synth_tx.as_ref().map_or(0, Sender::len));
        metrics.queue_depth("unflushed", self.unflushed.len());
        metrics.paused(self.pause.as_ref().map(|pause| crate::metrics::PauseInfo {
            cause: pause.cause,
            reason: pause.reason.clone(),
            since: pause.since,
        }));
    }

    /// Each pipeline's model and execution provider, for the metrics and status page.
    fn publish_pipelines(&self) {
        let pipelines = self
            .config
            .pipelines
            .iter()
            .map(|pipeline| crate::metrics::PipelineInfo {
                name: pipeline.name().to_string(),
                model: pipeline
                    .model_path()
                    .and_then(|model| model.file_name().map(|name| name.to_string_lossy().into_owned())),
                provider: self
                    .engine
                    .provider(pipeline.name())
                    .unwrap_or_else(|| "none".to_string()),
            })
            .collect();
        crate::metrics::get().pipelines(pipelines);
    }

    /// How long a turn may wait for the stages: at most 50 ms, less when a
    /// study turns complete or a batch of outputs is due to be flushed sooner.
    fn idle_wait(&self) -> Duration {
        let mut wait = Duration::from_millis(50);
        if let Some(due) = self.next_claim_due {
            wait = wait.min(Duration::from_secs_f64((due - crate::ledger::now()).max(0.0)));
        }
        // While a flush is out, its report wakes the loop.
        if let (Some(since), false) = (self.unflushed_since, self.flush_in_flight) {
            wait = wait.min(jobs::FLUSH_AFTER.saturating_sub(since.elapsed()));
        }
        wait
    }

    /// Whether nothing is received, claimed or in flight (for tests and benchmarks).
    pub fn idle(&self) -> Result<bool, DaemonError> {
        Ok(self.jobs.is_empty()
            && self.dispatch.is_empty()
            && self.ledger.unfinished_jobs()?.is_empty()
            && self.ledger.received()?.is_empty())
    }

    pub fn shutdown(&mut self) -> Result<(), DaemonError> {
        let deadline = Instant::now() + self.config.raw.daemon.shutdown_timeout.as_duration();
        tracing::info!(target: "daemon", in_flight = self.in_flight(), "stopping: intake stopped, finishing in-flight jobs");
        // Tasks not yet handed to a worker stay claimed in the ledger; the next start resumes them.
        self.dispatch.clear();
        self.deid_tx = None;
        self.synth_tx = None;
        // A synthesis already running is waited for too: recording it now
        // spares a restart minutes of model time redoing it.
        while !self.jobs.is_empty() && self.in_flight() + self.synthesizing() > 0 && Instant::now() < deadline {
            self.drain_outcomes(Duration::from_millis(100))?;
            if self.pause.is_some() {
                break;
            }
        }
        // The last outputs are flushed here, after the flush stage's report.
        while self.flush_in_flight && Instant::now() < deadline {
            self.drain_outcomes(Duration::from_millis(100))?;
        }
        self.flush_tx = None;
        if !self.flush_in_flight {
            self.flush_written(true)?;
            self.finish_jobs()?;
            // The originals those jobs just moved.
            self.flush_written(true)?;
        }
        let left = self.in_flight() + self.synthesizing();
        if left == 0 {
            for thread in self.threads.drain(..) {
                let _ = thread.join();
            }
        }
        self.summary()?;
        if let Err(error) = std::fs::write(self.config.paths.state.join(CLEAN_STOP_FILE), b"") {
            tracing::warn!(target: "daemon", %error, "cannot record the clean stop; the next start reports an unclean one");
        }
        tracing::info!(target: "daemon", checkpointed = left, "stopped; unfinished work resumes at the next start");
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.jobs.values().map(|p| p.remaining.len()).sum::<usize>()
    }

    /// Study-level syntheses handed to the synth stage and not yet reported.
    fn synthesizing(&self) -> usize {
        self.jobs.values().map(|p| p.synthesizing.len()).sum::<usize>()
    }

    fn watch(
        &mut self,
    ) -> (
        Option<notify::RecommendedWatcher>,
        Option<std::sync::mpsc::Receiver<notify::Result<notify::Event>>>,
    ) {
        use notify::Watcher;
        if self.options.no_inotify {
            tracing::info!(target: "ingest", "inotify off; relying on rescans every {}", self.config.raw.ingest.rescan_interval);
            return (None, None);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let watcher = notify::recommended_watcher(tx).and_then(|mut watcher| {
            watcher.watch(&self.config.paths.inbox, notify::RecursiveMode::Recursive)?;
            Ok(watcher)
        });
        match watcher {
            Ok(watcher) => (Some(watcher), Some(rx)),
            Err(error) => {
                tracing::warn!(target: "ingest", %error, "cannot watch the inbox; relying on rescans");
                (None, None)
            }
        }
    }

    fn drain_events(&mut self, events: &std::sync::mpsc::Receiver<notify::Result<notify::Event>>) {
        use notify::event::{EventKind, ModifyKind, RenameMode};
        // Bounded per turn, so a flood of events cannot starve the rest of
        // the loop; claims wait until the flood is read (`intake_behind`).
        self.intake_behind = true;
        for _ in 0..EVENTS_PER_TURN {
            let Ok(event) = events.try_recv() else {
                self.intake_behind = false;
                break;
            };
            let event = match event {
                Ok(event) if !event.need_rescan() => event,
                _ => {
                    // Events were dropped (the kernel's queue overflowed):
                    // files may wait unseen, so rescan in this turn, before
                    // its claims: what it finds is unsettled until taken,
                    // and holds back the claims it may belong to.
                    self.timers.rescan = None;
                    continue;
                }
            };
            // Opens and reads (ours included: scanning a folder opens it) change nothing.
            if matches!(event.kind, EventKind::Access(_)) {
                continue;
            }
            let renamed_in = matches!(
                event.kind,
                EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
            );
            let target = if renamed_in { event.paths.last() } else { None };
            if let Some(path) = target {
                self.settler.renamed_in(path);
            }
            // The source of a rename and a removed entry are gone: nothing to
            // take, and no stat to pay for (every claim renames its files
            // out of the inbox, one event each).
            let gone = match event.kind {
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => event.paths.len(),
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => 1,
                _ => 0,
            };
            for (index, path) in event.paths.into_iter().enumerate() {
                if !path.starts_with(&self.config.paths.inbox) {
                    continue;
                }
                if index < gone {
                    self.settler.forget(&path);
                    continue;
                }
                // A folder moved in brings files that raised no events of their own.
                let is_folder = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
                if is_folder {
                    for entry in crate::ingest::scan_inbox(&path).unwrap_or_default() {
                        if let crate::ingest::Entry::File(candidate) = entry {
                            self.pending.insert(candidate.path);
                        }
                    }
                }
                self.pending.insert(path);
            }
        }
    }

    fn rescan(&mut self) {
        match crate::ingest::scan_inbox(&self.config.paths.inbox) {
            Ok(entries) => {
                let mut present = HashSet::new();
                self.ready.clear();
                for entry in entries {
                    match entry {
                        crate::ingest::Entry::File(candidate) => {
                            present.insert(candidate.path.clone());
                            self.pending.insert(candidate.path);
                        }
                        crate::ingest::Entry::ReadyMarker(path) | crate::ingest::Entry::NotRegular(path) => {
                            present.insert(path.clone());
                            self.pending.insert(path);
                        }
                        crate::ingest::Entry::Skipped => {}
                    }
                }
                self.settler.retain(&present);
                self.recorded.retain(|path| present.contains(path));
                self.unreadable.retain(|path| present.contains(path));
                self.remove_empty_drop_folders();
            }
            Err(error) => self.pause_for("inbox-unreadable", format!("cannot list the inbox: {error}")),
        }
    }

    /// Removes empty drop folders quiet for `stable_age`, except those a
    /// claim or flush may still sync: the inbox folders of received
    /// instances and of claims not yet durable (a folder gone from under a
    /// sync would pause intake).
    fn remove_empty_drop_folders(&mut self) {
        let mut keep: HashSet<PathBuf> = self.unsynced.folders.iter().cloned().collect();
        let mut pending = match self.ledger.received() {
            Ok(received) => received,
            Err(_) => return,
        };
        for job in self
            .ledger
            .jobs_in(crate::ledger::JobState::Claiming)
            .unwrap_or_default()
        {
            pending.extend(self.ledger.instances_of(job.id).unwrap_or_default());
        }
        keep.extend(pending.iter().filter_map(|i| i.inbox_path.parent().map(PathBuf::from)));
        let quiet_for = self.config.raw.ingest.stable_age.as_duration();
        for folder in crate::ingest::scan::remove_empty_folders(&self.config.paths.inbox, quiet_for, &keep) {
            self.ready.remove(&folder);
        }
    }

    fn reload(&mut self) {
        match Config::load(&self.config.file) {
            Err(problems) => {
                tracing::error!(target: "daemon", "reload refused, keeping the running config: {problems}");
            }
            Ok(config) => match (self.build)(&config, &self.key) {
                Err(error) => tracing::error!(target: "daemon", %error, "reload refused, keeping the running config"),
                Ok(engine) => {
                    if let Some(Err(error)) = self.on_reload.as_mut().map(|hook| hook(&config)) {
                        tracing::error!(target: "daemon", %error, "reload refused, keeping the running config");
                        return;
                    }
                    if config.paths != self.config.paths {
                        tracing::warn!(target: "daemon", "[paths] changed; the new paths take effect at the next restart");
                    }
                    // The stage threads, their queues and the log subscriber
                    // are set up once; say so rather than seem to apply them.
                    let (new, old) = (&config.raw.daemon, &self.config.raw.daemon);
                    if (new.deid_workers, new.output_workers, new.queue_depth)
                        != (old.deid_workers, old.output_workers, old.queue_depth)
                    {
                        tracing::warn!(target: "daemon", "[daemon] worker counts or queue_depth changed; they take effect at the next restart");
                    }
                    if config.metrics != self.config.metrics {
                        tracing::warn!(target: "daemon", "[metrics] changed; it takes effect at the next restart");
                    }
                    if config.raw.log.format != self.config.raw.log.format {
                        tracing::warn!(target: "daemon", "[log] format changed; it takes effect at the next restart");
                    }
                    let pipelines = config.pipelines.len();
                    let paths = self.config.paths.clone();
                    self.config = config;
                    self.config.paths = paths;
                    self.engine = Arc::new(engine);
                    self.publish_pipelines();
                    tracing::info!(target: "daemon", pipelines, "reloaded config and pipelines");
                }
            },
        }
    }

    /// Whether intake may claim and dispatch: not paused, outbox has space.
    fn may_proceed(&mut self) -> bool {
        if let Some(pause) = &mut self.pause {
            if Instant::now() < pause.until {
                if pause.last_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(target: "daemon", reason = %pause.reason, retry_in_ms = pause.backoff.as_millis() as u64, "intake paused; nothing is dropped, retrying");
                    pause.last_logged = Some(Instant::now());
                }
                return false;
            }
        }
        if self.pause.is_none()
            && self
                .timers
                .space_checked
                .is_some_and(|t| t.elapsed() < SPACE_CHECK_EVERY)
        {
            return true;
        }
        self.timers.space_checked = None;
        let min_free = self.config.raw.daemon.min_free_space.0;
        match system::free_space(&self.config.paths.outbox) {
            Ok(free) if free < min_free => {
                crate::metrics::get().outbox(free, system::writable(&self.config.paths.outbox));
                self.pause_for("low-disk-space", format!(
                    "the outbox file system has {free} bytes free, below daemon.min_free_space ({min_free}); free space or lower the setting"
                ));
                return false;
            }
            Err(error) => {
                crate::metrics::get().outbox(0, false);
                self.pause_for(
                    "outbox-unavailable",
                    format!("cannot check the outbox ({error}); is the mount present?"),
                );
                return false;
            }
            Ok(free) => {
                crate::metrics::get().outbox(free, system::writable(&self.config.paths.outbox));
                self.timers.space_checked = Some(Instant::now());
            }
        }
        if let Some(pause) = self.pause.take() {
            tracing::info!(target: "daemon", reason = %pause.reason, "intake resumed");
            // Instances that hit the fault go back to the deid queue.
            for (job, instance) in std::mem::take(&mut self.retry) {
                if let Err(error) = self.requeue_task(job, instance) {
                    tracing::error!(target: "daemon", %error, "cannot requeue an instance after a pause");
                }
            }
        }
        true
    }

    fn pause_for(&mut self, cause: &'static str, reason: String) {
        match &mut self.pause {
            Some(pause) => {
                pause.backoff = (pause.backoff * 2).min(Duration::from_secs(30));
                pause.until = Instant::now() + pause.backoff;
                pause.cause = cause;
                pause.reason = reason;
            }
            None => {
                let backoff = Duration::from_millis(500);
                tracing::warn!(target: "daemon", %reason, "intake paused; nothing is dropped, retrying with backoff");
                self.pause = Some(Pause {
                    cause,
                    since: crate::ledger::now(),
                    reason,
                    until: Instant::now() + backoff,
                    backoff,
                    last_logged: Some(Instant::now()),
                });
            }
        }
    }

    fn status_line(&self) -> Result<String, DaemonError> {
        let waiting = self.ledger.received()?.len();
        Ok(format!(
            "waiting {waiting}, in flight {}, studies done {}, quarantined {}{}",
            self.in_flight(),
            self.counters.studies_done,
            self.counters.quarantined,
            if self.pause.is_some() { ", intake paused" } else { "" }
        ))
    }

    fn summary(&mut self) -> Result<(), DaemonError> {
        self.last_summary = Instant::now();
        let waiting = self.ledger.received()?.len();
        let free = system::free_space(&self.config.paths.outbox).unwrap_or(0);
        tracing::info!(
            target: "daemon",
            queued = waiting,
            in_flight = self.in_flight(),
            studies_done = self.counters.studies_done,
            instances_written = self.counters.instances_written,
            quarantined = self.counters.quarantined,
            duplicates = self.counters.duplicates,
            disk_free_mib = free / (1024 * 1024),
            paused = self.pause.is_some(),
            "summary"
        );
        Ok(())
    }

    /// Removes archived originals older than `daemon.retention_days`.
    fn purge_archive(&self) {
        let Some(days) = self.config.raw.daemon.retention_days else {
            return;
        };
        let cutoff = Duration::from_secs(u64::from(days) * 86_400);
        let Ok(listing) = std::fs::read_dir(&self.config.paths.archive) else {
            return;
        };
        for entry in listing.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= cutoff);
            if old && std::fs::remove_dir_all(entry.path()).is_ok() {
                tracing::info!(target: "daemon", job = %entry.file_name().to_string_lossy(), "purged archived originals past retention");
            }
        }
    }
}

/// Whether the last daemon on this state folder stopped without recording a
/// clean stop (only once a ledger exists: a first start is clean). Consumes the record.
fn unclean_stop(state: &std::path::Path) -> bool {
    let marker = state.join(CLEAN_STOP_FILE);
    let clean = std::fs::remove_file(&marker).is_ok();
    !clean && state.join(crate::ledger::LEDGER_FILE).exists()
}

/// Removes temp files a killed writer left (`.NAME.tmp-PID`, see
/// `fsutil::write_atomic`); the outputs they were for are rewritten on resume.
fn sweep_stale_temporaries(outbox: &std::path::Path) {
    let mut folders = vec![outbox.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(listing) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in listing.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => folders.push(entry.path()),
                Ok(kind) if kind.is_file() && name.starts_with('.') && name.contains(".tmp-") => {
                    let _ = std::fs::remove_file(entry.path());
                }
                _ => {}
            }
        }
    }
}

fn spawn(name: String, work: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name)
        .spawn(work)
        .expect("the OS refused to start a stage thread")
}

#[cfg(test)]
pub(crate) mod tests;
