//! Observability: Prometheus metrics, `/healthz`, `/readyz` and a status
//! page, served by `[metrics] listen` (docs/metrics.md lists every metric).
//!
//! The metrics are process-wide ([`get`]): any stage records into them
//! with a call that takes a few atomic operations and never waits on the
//! listener. The listener (`http.rs`, its own thread) reads them, and the
//! ledger through its own read-only connection, so a scrape never asks the
//! coordinator anything.
//!
//! Label values are fixed vocabularies (states, reason codes, stages) or
//! names an admin wrote in a config (pipelines, destinations); never a
//! value read from a DICOM file.
//!
//! For other stages, the calls to make:
//! - synthesis QC (per synthetic series): [`synthetic_series`]`(pipeline, "pass" | "flagged" | "quarantined")`;
//! - DICOM export (per send): [`sent`]`(destination, "ok" | "failed" | "retried")`,
//!   and [`set_destinations`] once the destinations are configured (the status page lists them);
//! - ONNX Runtime (per batch run): [`onnx_batch`]`(provider, seconds)`.

mod http;
mod page;
mod routes;

pub use http::Limits;
pub use routes::serve;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

type GaugeF64 = Gauge<f64, AtomicU64>;

/// The states `synthd_instances_total` counts.
pub const INSTANCE_STATES: [&str; 4] = ["received", "duplicate", "written", "quarantined"];
/// The states `synthd_studies_total` counts.
pub const STUDY_STATES: [&str; 3] = ["claimed", "written", "done"];

/// The queues `synthd_queue_depth` reports.
pub const QUEUES: [&str; 6] = ["inbox_unsettled", "dispatch", "deid", "output", "synth", "unflushed"];

/// Every metric family served, as its `# TYPE` line names it (counters
/// with `_total`); dashboards and alert rules may use these (and a
/// histogram's `_bucket`, `_sum`, `_count`).
pub const FAMILIES: [&str; 20] = [
    "synthd_instances_total",
    "synthd_studies_total",
    "synthd_quarantines_total",
    "synthd_synthetic_series_total",
    "synthd_sends_total",
    "synthd_coordinator_turns_total",
    "synthd_stage_seconds",
    "synthd_study_latency_seconds",
    "synthd_onnx_batch_seconds",
    "synthd_queue_depth",
    "synthd_intake_paused",
    "synthd_oldest_waiting_study_seconds",
    "synthd_outbox_free_bytes",
    "synthd_execution_provider",
    "synthd_ledger_jobs",
    "synthd_ledger_instances",
    "synthd_start_time_seconds",
    "synthd_unclean_start",
    "synthd_coordinator_last_turn_age_seconds",
    "synthd_build_info",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeriesLabels {
    pipeline: String,
    qc: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SendLabels {
    destination: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipelineLabels {
    pipeline: String,
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// A per-instance stage whose time is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the header of a settled inbox file and recording it.
    Intake,
    Deid,
    Encode,
    Write,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Intake => "intake",
            Stage::Deid => "deid",
            Stage::Encode => "encode",
            Stage::Write => "write",
        }
    }
}

/// What the status page says about a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineInfo {
    pub name: String,
    /// The model file's name, when the pipeline synthesizes.
    pub model: Option<String>,
    /// The execution provider serving it ("none" for de-identify only).
    pub provider: String,
}

/// A DICOM export destination, for the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub name: String,
    /// Where it sends, as configured (e.g. "PACS@10.0.0.5:104").
    pub address: String,
}

/// Why intake is paused: a fixed cause (a label value) and the admin-facing reason.
#[derive(Debug, Clone, PartialEq)]
pub struct PauseInfo {
    pub cause: &'static str,
    pub reason: String,
    /// Seconds since the epoch.
    pub since: f64,
}

/// Instances written per minute over the last hour.
#[derive(Debug, Default)]
struct Throughput {
    /// (minute since the epoch, instances written in it), oldest first.
    minutes: std::collections::VecDeque<(u64, u64)>,
}

impl Throughput {
    fn add(&mut self, minute: u64, count: u64) {
        match self.minutes.back_mut() {
            Some((last, n)) if *last == minute => *n += count,
            _ => self.minutes.push_back((minute, count)),
        }
        while self.minutes.front().is_some_and(|(m, _)| *m + 60 <= minute) {
            self.minutes.pop_front();
        }
    }

    /// The last 60 minutes up to `minute`, oldest first, zeros included.
    fn last_hour(&self, minute: u64) -> Vec<u64> {
        (0..60)
            .map(|back| minute - 59 + back)
            .map(|m| self.minutes.iter().find(|(at, _)| *at == m).map_or(0, |(_, n)| *n))
            .collect()
    }
}

/// What the daemon tells the listener beyond the metrics.
#[derive(Default)]
struct Live {
    state_dir: Mutex<Option<PathBuf>>,
    last_turn_ms: AtomicU64,
    outbox_writable: AtomicBool,
    pause: Mutex<Option<PauseInfo>>,
    pipelines: Mutex<Vec<PipelineInfo>>,
    destinations: Mutex<Vec<Destination>>,
    throughput: Mutex<Throughput>,
}

pub struct Metrics {
    registry: Registry,
    started: Instant,
    instances: Family<StateLabel, Counter>,
    studies: Family<StateLabel, Counter>,
    quarantines: Family<ReasonLabel, Counter>,
    synthetic_series: Family<SeriesLabels, Counter>,
    sends: Family<SendLabels, Counter>,
    turns: Counter,
    stage_seconds: Family<StageLabel, Histogram>,
    study_latency: Histogram,
    onnx_batch: Family<ProviderLabel, Histogram>,
    queue_depth: Family<QueueLabel, Gauge>,
    intake_paused: Family<CauseLabel, Gauge>,
    oldest_waiting: GaugeF64,
    outbox_free: Gauge,
    execution_provider: Family<PipelineLabels, Gauge>,
    ledger_jobs: Family<StateLabel, Gauge>,
    ledger_instances: Family<StateLabel, Gauge>,
    start_time: GaugeF64,
    unclean_start: Gauge,
    last_turn_age: GaugeF64,
    live: Live,
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 100 µs to ~30 min.
    exponential_buckets(0.0001, 2.5, 19)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("synthd");
        let m = Metrics {
            registry: Registry::default(),
            started: Instant::now(),
            instances: Family::default(),
            studies: Family::default(),
            quarantines: Family::default(),
            synthetic_series: Family::default(),
            sends: Family::default(),
            turns: Counter::default(),
            stage_seconds: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
            study_latency: Histogram::new(seconds_buckets()),
            onnx_batch: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
            queue_depth: Family::default(),
            intake_paused: Family::default(),
            oldest_waiting: GaugeF64::default(),
            outbox_free: Gauge::default(),
            execution_provider: Family::default(),
            ledger_jobs: Family::default(),
            ledger_instances: Family::default(),
            start_time: GaugeF64::default(),
            unclean_start: Gauge::default(),
            last_turn_age: GaugeF64::default(),
            live: Live::default(),
        };
        let r = &mut registry;
        r.register(
            "instances",
            "Instances that entered each state since start (received, duplicate, written, quarantined)",
            m.instances.clone(),
        );
        r.register(
            "studies",
            "Studies that entered each state since start (claimed, written, done)",
            m.studies.clone(),
        );
        r.register(
            "quarantines",
            "Inputs quarantined since start, by reason code",
            m.quarantines.clone(),
        );
        r.register(
            "synthetic_series",
            "Synthetic series written, by pipeline and QC outcome",
            m.synthetic_series.clone(),
        );
        r.register("sends", "DICOM sends, by destination and outcome", m.sends.clone());
        r.register("coordinator_turns", "Turns of the coordinator loop", m.turns.clone());
        r.register(
            "stage_seconds",
            "Time per instance in each stage (intake, deid, encode, write)",
            m.stage_seconds.clone(),
        );
        r.register(
            "study_latency_seconds",
            "From a study's stable_age expiry to all its outputs durable in the outbox",
            m.study_latency.clone(),
        );
        r.register(
            "onnx_batch_seconds",
            "ONNX Runtime time per model run on a batch, by execution provider",
            m.onnx_batch.clone(),
        );
        r.register(
            "queue_depth",
            "Items waiting in each queue (inbox_unsettled, dispatch, deid, output, synth, unflushed)",
            m.queue_depth.clone(),
        );
        r.register(
            "intake_paused",
            "1 while intake is paused, labelled with the cause; cause=\"none\" is 0 when running",
            m.intake_paused.clone(),
        );
        r.register(
            "oldest_waiting_study_seconds",
            "Age of the oldest study waiting to be claimed (0 when none)",
            m.oldest_waiting.clone(),
        );
        r.register(
            "outbox_free_bytes",
            "Free bytes on the outbox's file system, as last checked",
            m.outbox_free.clone(),
        );
        r.register(
            "execution_provider",
            "1 per pipeline, labelled with the execution provider serving it",
            m.execution_provider.clone(),
        );
        r.register(
            "ledger_jobs",
            "Jobs in the ledger by state (as `synthd status` counts them)",
            m.ledger_jobs.clone(),
        );
        r.register(
            "ledger_instances",
            "Instances in the ledger by state (as `synthd status` counts them)",
            m.ledger_instances.clone(),
        );
        r.register(
            "start_time_seconds",
            "When this daemon started, seconds since the epoch",
            m.start_time.clone(),
        );
        r.register(
            "unclean_start",
            "1 when this daemon started after one that did not stop cleanly (watchdog, crash, kill)",
            m.unclean_start.clone(),
        );
        r.register(
            "coordinator_last_turn_age_seconds",
            "Seconds since the coordinator loop last turned",
            m.last_turn_age.clone(),
        );
        let build_info: Family<VersionLabel, Gauge> = Family::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register("build_info", "1, labelled with the synthd version", build_info);
        m.set_paused_gauge(None);
        m.start_from_zero();
        Metrics { registry, ..m }
    }

    /// Series of the fixed vocabularies exist from the start at zero, so
    /// that the first event of a kind is an increase Prometheus can see.
    fn start_from_zero(&self) {
        for state in INSTANCE_STATES {
            drop(self.instances.get_or_create(&StateLabel { state }));
        }
        for state in STUDY_STATES {
            drop(self.studies.get_or_create(&StateLabel { state }));
        }
        for code in crate::quarantine::ReasonCode::ALL {
            drop(self.quarantines.get_or_create(&ReasonLabel { reason: code.as_str() }));
        }
        for stage in [Stage::Intake, Stage::Deid, Stage::Encode, Stage::Write] {
            drop(self.stage_seconds.get_or_create(&StageLabel { stage: stage.as_str() }));
        }
        for queue in QUEUES {
            drop(self.queue_depth.get_or_create(&QueueLabel { queue }));
        }
        for state in crate::ledger::JobState::ALL {
            drop(self.ledger_jobs.get_or_create(&StateLabel { state: state.as_str() }));
        }
        for state in crate::ledger::InstanceState::ALL {
            drop(
                self.ledger_instances
                    .get_or_create(&StateLabel { state: state.as_str() }),
            );
        }
    }

    fn minute_now() -> u64 {
        (crate::ledger::now() / 60.0) as u64
    }
}

// What the daemon records.
impl Metrics {
    /// At start: where the ledger is, whether the previous daemon stopped cleanly.
    pub fn attach(&self, state_dir: PathBuf, unclean: bool) {
        *lock(&self.live.state_dir) = Some(state_dir);
        self.start_time.set(crate::ledger::now());
        self.unclean_start.set(i64::from(unclean));
        self.turn();
    }

    /// An instance entered `state` (one of [`INSTANCE_STATES`]).
    pub fn instance(&self, state: &'static str, count: u64) {
        self.instances.get_or_create(&StateLabel { state }).inc_by(count);
        if state == "written" {
            lock(&self.live.throughput).add(Self::minute_now(), count);
        }
    }

    /// A study entered `state` (one of [`STUDY_STATES`]).
    pub fn study(&self, state: &'static str) {
        self.studies.get_or_create(&StateLabel { state }).inc();
    }

    pub fn quarantine(&self, code: crate::quarantine::ReasonCode) {
        self.quarantines
            .get_or_create(&ReasonLabel { reason: code.as_str() })
            .inc();
    }

    pub fn stage(&self, stage: Stage, seconds: f64) {
        self.stage_seconds
            .get_or_create(&StageLabel { stage: stage.as_str() })
            .observe(seconds);
    }

    pub fn study_latency(&self, seconds: f64) {
        self.study_latency.observe(seconds.max(0.0));
    }

    /// One coordinator turn (for /healthz).
    pub fn turn(&self) {
        self.turns.inc();
        let ms = self.started.elapsed().as_millis() as u64;
        self.live.last_turn_ms.store(ms, Ordering::Relaxed);
    }

    pub fn queue_depth(&self, queue: &'static str, depth: usize) {
        self.queue_depth.get_or_create(&QueueLabel { queue }).set(depth as i64);
    }

    /// Intake paused (with a fixed cause and the reason logged), or running.
    /// Cheap when nothing changed, so the coordinator may call it every turn.
    pub fn paused(&self, pause: Option<PauseInfo>) {
        let mut current = lock(&self.live.pause);
        let (was, now) = (current.as_ref().map(|p| p.cause), pause.as_ref().map(|p| p.cause));
        if was == now {
            // Same cause: keep when it began; the reason may have new figures.
            if let (Some(current), Some(pause)) = (current.as_mut(), pause) {
                current.reason = pause.reason;
            }
            return;
        }
        self.set_paused_gauge(now);
        *current = pause;
    }

    fn set_paused_gauge(&self, cause: Option<&'static str>) {
        self.intake_paused.clear();
        let labels = CauseLabel {
            cause: cause.unwrap_or("none"),
        };
        self.intake_paused
            .get_or_create(&labels)
            .set(i64::from(cause.is_some()));
    }

    /// The outbox as last checked by the coordinator.
    pub fn outbox(&self, free_bytes: u64, writable: bool) {
        self.outbox_free.set(free_bytes.min(i64::MAX as u64) as i64);
        self.live.outbox_writable.store(writable, Ordering::Relaxed);
    }

    /// The pipelines of the loaded config (at start and on reload).
    pub fn pipelines(&self, pipelines: Vec<PipelineInfo>) {
        self.execution_provider.clear();
        for pipeline in &pipelines {
            let labels = PipelineLabels {
                pipeline: pipeline.name.clone(),
                provider: pipeline.provider.clone(),
            };
            self.execution_provider.get_or_create(&labels).set(1);
        }
        *lock(&self.live.pipelines) = pipelines;
    }
}

/// A synthetic series was checked by `[synth.qc]`: `qc` is "pass", "flagged" or "quarantined"
/// (or another word of the QC's fixed vocabulary).
pub fn synthetic_series(pipeline: &str, qc: &str) {
    let labels = SeriesLabels {
        pipeline: pipeline.to_string(),
        qc: qc.to_string(),
    };
    get().synthetic_series.get_or_create(&labels).inc();
}

/// A send to a DICOM destination ended: `outcome` is "ok", "failed" or "retried".
pub fn sent(destination: &str, outcome: &str) {
    let labels = SendLabels {
        destination: destination.to_string(),
        outcome: outcome.to_string(),
    };
    get().sends.get_or_create(&labels).inc();
}

/// The configured DICOM destinations, for the status page.
pub fn set_destinations(destinations: Vec<Destination>) {
    *lock(&get().live.destinations) = destinations;
}

/// One ONNX Runtime run on a batch took `seconds` on `provider`.
pub fn onnx_batch(provider: &str, seconds: f64) {
    let labels = ProviderLabel {
        provider: provider.to_string(),
    };
    get().onnx_batch.get_or_create(&labels).observe(seconds);
}

/// A poisoned lock only means a panic elsewhere; the data stays usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_served_and_listed() {
        synthetic_series("test-pipeline", "pass");
        sent("test-destination", "ok");
        onnx_batch("cpu", 0.01);
        get().pipelines(vec![PipelineInfo {
            name: "test-pipeline".to_string(),
            model: None,
            provider: "none".to_string(),
        }]);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &get().registry).unwrap();
        let mut served: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split(' ').next())
            .collect();
        served.sort_unstable();
        let mut listed = FAMILIES.to_vec();
        listed.sort_unstable();
        assert_eq!(served, listed);
    }

    #[test]
    fn throughput_keeps_the_last_hour_per_minute() {
        let mut t = Throughput::default();
        t.add(100, 3);
        t.add(100, 2);
        t.add(130, 1);
        t.add(165, 4);
        let hour = t.last_hour(165);
        assert_eq!(hour.len(), 60);
        assert_eq!(hour[59], 4);
        assert_eq!(hour[59 - 35], 1);
        assert_eq!(hour.iter().sum::<u64>(), 5, "minute 100 is more than an hour old");
    }
}
