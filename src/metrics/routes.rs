//! What the listener serves: `/metrics`, `/healthz`, `/readyz` and `/`.
//! GET only (405 otherwise), 404 for any other path.

use super::http::{self, Limits, Request, Response};
use super::{get, lock, page, Metrics, StateLabel};
use crate::ledger::{InstanceState, Job, JobState, Ledger, LEDGER_FILE};
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The coordinator turns at least every 50 ms when idle; this long without
/// a turn means it is stuck (systemd's watchdog would act soon after).
const STALLED_AFTER: Duration = Duration::from_secs(30);
/// Ledger figures are read at most this often, however many clients ask.
const LEDGER_REFRESH: Duration = Duration::from_secs(1);
/// A read of a large ledger (counting millions of rows by state) is
/// followed by a pause this many times as long, so the reader takes at
/// most 1/20 of a core.
const READ_DUTY: u32 = 20;
/// The reader stops once nobody has asked for this long, so a daemon that
/// nobody scrapes reads nothing (Prometheus scrapes every 15 s or so).
const IDLE_AFTER: Duration = Duration::from_secs(60);
/// Figures older than the reader's pause plus this were read before an
/// idle spell: a request waits (at most `FIRST_READ_WAIT`) for the read its
/// arrival started.
const STALE_MARGIN: Duration = Duration::from_secs(2);
const FIRST_READ_WAIT: Duration = Duration::from_secs(2);

/// Serves the metrics, health and status page on `listener` from a thread
/// of its own; another thread reads the ledger for it.
pub fn serve(listener: TcpListener, limits: Limits) -> std::io::Result<JoinHandle<()>> {
    let views = Arc::new(Views::default());
    let reader = views.clone();
    std::thread::Builder::new()
        .name("metrics-ledger".to_string())
        .spawn(move || reader.read_forever())?;
    std::thread::Builder::new().name("metrics".to_string()).spawn(move || {
        let mut site = Site { views };
        http::serve_forever(listener, limits, move |request| site.route(request));
    })
}

/// What the ledger says, read through the listener's own connection.
#[derive(Debug, Default, Clone)]
pub(super) struct LedgerView {
    pub jobs: Vec<(JobState, u64)>,
    pub instances: Vec<(InstanceState, u64)>,
    /// (study key, seconds waiting).
    pub oldest_waiting: Option<(String, f64)>,
    pub recent_studies: Vec<Job>,
    pub recent_quarantines: Vec<Job>,
    /// Why the ledger could not be read, if it could not.
    pub problem: Option<String>,
}

/// The latest ledger figures, kept by the `metrics-ledger` thread so that
/// no request waits on SQLite: counting a large ledger's rows by state
/// takes milliseconds, and a scrape only encodes what is in memory.
#[derive(Default)]
struct Views {
    state: Mutex<ViewState>,
    /// Notified when a request arrives after an idle spell, and after each read.
    changed: Condvar,
}

#[derive(Default)]
struct ViewState {
    /// When it was read, and what it says.
    latest: Option<(Instant, Arc<LedgerView>)>,
    /// The reader's pause after its last read.
    pause: Duration,
    /// When a request last wanted figures.
    asked: Option<Instant>,
}

impl ViewState {
    fn reader_active(&self) -> bool {
        self.asked.is_some_and(|at| at.elapsed() < IDLE_AFTER)
    }

    fn fresh(&self) -> Option<Arc<LedgerView>> {
        self.latest
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.pause + STALE_MARGIN)
            .map(|(_, view)| view.clone())
    }
}

impl Views {
    /// The figures for a request: the latest read, at most `LEDGER_REFRESH`
    /// (plus one read) old while clients keep asking; on a ledger so large
    /// that a read takes over 50 ms, 20 times a read's time.
    fn current(&self) -> Arc<LedgerView> {
        let mut state = lock(&self.state);
        if !state.reader_active() {
            self.changed.notify_all();
        }
        state.asked = Some(Instant::now());
        let deadline = Instant::now() + FIRST_READ_WAIT;
        loop {
            if let Some(view) = state.fresh() {
                return view;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Arc::new(LedgerView {
                    problem: Some("the ledger is slow to read; try again".to_string()),
                    ..LedgerView::default()
                });
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .map_or_else(|poisoned| poisoned.into_inner().0, |(state, _)| state);
        }
    }

    fn read_forever(&self) {
        let mut ledger = None;
        loop {
            {
                let mut state = lock(&self.state);
                while !state.reader_active() {
                    state = self
                        .changed
                        .wait_timeout(state, IDLE_AFTER)
                        .map_or_else(|poisoned| poisoned.into_inner().0, |(state, _)| state);
                }
            }
            let started = Instant::now();
            let view = read_ledger(&mut ledger).unwrap_or_else(|problem| LedgerView {
                problem: Some(problem),
                ..LedgerView::default()
            });
            let pause = LEDGER_REFRESH.max(started.elapsed() * READ_DUTY);
            {
                let mut state = lock(&self.state);
                state.latest = Some((Instant::now(), Arc::new(view)));
                state.pause = pause;
            }
            self.changed.notify_all();
            std::thread::sleep(pause);
        }
    }
}

struct Site {
    views: Arc<Views>,
}

impl Site {
    fn route(&mut self, request: &Request) -> Response {
        if request.method != "GET" {
            return Response::text(405, "only GET is served here\n").with_header("Allow", "GET");
        }
        match request.path.as_str() {
            "/metrics" => self.metrics(),
            "/healthz" => healthz(get()),
            "/readyz" => readyz(get()),
            "/" => {
                let view = self.views.current();
                Response::new(200, "text/html; charset=utf-8", page::render(get(), &view)).with_header(
                    "Content-Security-Policy",
                    "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
                )
            }
            _ => Response::text(404, "not found; try /metrics, /healthz, /readyz or /\n"),
        }
    }

    fn metrics(&mut self) -> Response {
        let view = self.views.current();
        let metrics = get();
        for (state, n) in &view.jobs {
            metrics
                .ledger_jobs
                .get_or_create(&StateLabel { state: state.as_str() })
                .set(*n as i64);
        }
        for (state, n) in &view.instances {
            metrics
                .ledger_instances
                .get_or_create(&StateLabel { state: state.as_str() })
                .set(*n as i64);
        }
        metrics
            .oldest_waiting
            .set(view.oldest_waiting.as_ref().map_or(0.0, |(_, age)| *age));
        metrics.last_turn_age.set(last_turn_age(metrics).as_secs_f64());
        let mut text = String::with_capacity(16 * 1024);
        match prometheus_client::encoding::prometheus_text::encode(&mut text, &metrics.registry) {
            Ok(()) => Response::new(200, prometheus_client::encoding::prometheus_text::CONTENT_TYPE, text),
            Err(_) => Response::text(500, "cannot encode the metrics\n"),
        }
    }
}

/// Reads the figures through `ledger`, opened here on first use (the
/// daemon creates the ledger) and reopened after an error.
fn read_ledger(ledger: &mut Option<Ledger>) -> Result<LedgerView, String> {
    if ledger.is_none() {
        let state_dir = lock(&get().live.state_dir).clone().ok_or("the daemon is starting")?;
        if !state_dir.join(LEDGER_FILE).is_file() {
            return Err("no ledger yet".to_string());
        }
        *ledger = Some(Ledger::open_existing(&state_dir).map_err(|e| e.to_string())?);
    }
    let open = ledger.as_ref().ok_or("no ledger")?;
    let read = || -> Result<LedgerView, crate::ledger::LedgerError> {
        let now = crate::ledger::now();
        Ok(LedgerView {
            jobs: open.job_counts()?,
            instances: open.instance_counts()?,
            oldest_waiting: open
                .oldest_waiting()?
                .map(|(study, since)| (study, (now - since).max(0.0))),
            recent_studies: open.recent_studies(15)?,
            recent_quarantines: open.recent_quarantines(10)?,
            problem: None,
        })
    };
    read().map_err(|error| {
        // Reopened at the next read.
        *ledger = None;
        error.to_string()
    })
}

fn last_turn_age(metrics: &Metrics) -> Duration {
    let last = Duration::from_millis(metrics.live.last_turn_ms.load(Ordering::Relaxed));
    metrics.started.elapsed().saturating_sub(last)
}

/// Alive, and the coordinator loop turns.
fn healthz(metrics: &Metrics) -> Response {
    if lock(&metrics.live.state_dir).is_none() {
        return Response::text(503, "starting: the daemon has not opened its ledger yet\n");
    }
    let age = last_turn_age(metrics);
    let turns = metrics.turns.get();
    if age > STALLED_AFTER {
        return Response::text(
            503,
            format!(
                "stalled: the coordinator loop has not turned for {:.0} s ({turns} turns)\n",
                age.as_secs_f64()
            ),
        );
    }
    Response::text(
        200,
        format!(
            "ok: coordinator loop turned {turns} times, last {} ms ago\n",
            age.as_millis()
        ),
    )
}

/// Config loaded, outbox writable, intake not paused.
fn readyz(metrics: &Metrics) -> Response {
    let mut problems = Vec::new();
    if lock(&metrics.live.state_dir).is_none() {
        problems.push("config not loaded yet".to_string());
    }
    if !metrics.live.outbox_writable.load(Ordering::Relaxed) {
        problems.push("the outbox is not writable".to_string());
    }
    if let Some(pause) = lock(&metrics.live.pause).as_ref() {
        problems.push(format!("intake paused ({}): {}", pause.cause, pause.reason));
    }
    if problems.is_empty() {
        Response::text(200, "ready: config loaded, outbox writable, intake running\n")
    } else {
        Response::text(503, format!("not ready: {}\n", problems.join("; ")))
    }
}
