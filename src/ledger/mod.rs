//! The job ledger: one SQLite database under `paths.state` (WAL, synchronous
//! FULL) with a row per job and per instance. Every state change is a
//! committed transaction before the side effect that follows it, so a restart
//! can resume each job from its last durable state.
//!
//! Patient values never enter the ledger: studies are named by `StudyKey`,
//! instances by a keyed digest of their SOPInstanceUID. Inbox paths are kept
//! (they may carry PHI in file names) because recovery needs them; the state
//! folder is private (0750) like the work and archive folders.

pub mod lock;
mod sends;
pub mod shard;

pub use sends::{DestinationSummary, FinishedJob, Send, SendState};

use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The ledger's file name inside `paths.state`.
pub const LEDGER_FILE: &str = "ledger.sqlite";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("job ledger {path}: {source}; check that paths.state is writable and not on a full disk")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("job ledger: unknown {what} state {value:?}; the ledger was written by a newer synthd")]
    UnknownState { what: &'static str, value: String },
}

/// Where a job is. A pipeline with `[synth]` passes Synthesized between
/// Deidentified and Written; a de-identify-only pipeline skips it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Instances are assigned; their files are being moved into `paths.work/<job>/`.
    Claiming,
    /// Every instance is in `paths.work/<job>/`.
    Claimed,
    /// Every instance passed de-identification (held in memory, so a restart
    /// from here de-identifies again: outputs are deterministic).
    Deidentified,
    Synthesized,
    /// Every output is durable; originals are being archived or deleted.
    Written,
    Done,
    /// The reason is recorded; the input is being moved into `paths.quarantine/<job>/`.
    Quarantining,
    Quarantined,
    /// An admin sent the quarantined input back to the inbox.
    Requeued,
    /// An admin removed the quarantined input (`synthd quarantine discard`).
    Discarded,
}

impl JobState {
    pub const ALL: [JobState; 10] = [
        JobState::Claiming,
        JobState::Claimed,
        JobState::Deidentified,
        JobState::Synthesized,
        JobState::Written,
        JobState::Done,
        JobState::Quarantining,
        JobState::Quarantined,
        JobState::Requeued,
        JobState::Discarded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Claiming => "claiming",
            JobState::Claimed => "claimed",
            JobState::Deidentified => "deidentified",
            JobState::Synthesized => "synthesized",
            JobState::Written => "written",
            JobState::Done => "done",
            JobState::Quarantining => "quarantining",
            JobState::Quarantined => "quarantined",
            JobState::Requeued => "requeued",
            JobState::Discarded => "discarded",
        }
    }

    pub fn parse(text: &str) -> Result<JobState, LedgerError> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| LedgerError::UnknownState {
                what: "job",
                value: text.to_string(),
            })
    }

    /// States a restart must pick up again.
    pub fn is_intermediate(self) -> bool {
        !matches!(
            self,
            JobState::Done | JobState::Quarantined | JobState::Requeued | JobState::Discarded
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceState {
    /// Settled in the inbox, header read, recorded; then moved to
    /// `paths.work/receiving/<study>/` to wait for its study to complete.
    Received,
    /// Assigned to a job (its file is in, or moving into, the job's work folder).
    Claimed,
    /// Its output is durable in the outbox.
    Written,
    Quarantined,
    /// The same SOP Instance with identical bytes was already taken; dropped.
    Duplicate,
    Requeued,
    /// Its quarantined file was removed by an admin.
    Discarded,
}

impl InstanceState {
    pub const ALL: [InstanceState; 7] = [
        InstanceState::Received,
        InstanceState::Claimed,
        InstanceState::Written,
        InstanceState::Quarantined,
        InstanceState::Duplicate,
        InstanceState::Requeued,
        InstanceState::Discarded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Received => "received",
            InstanceState::Claimed => "claimed",
            InstanceState::Written => "written",
            InstanceState::Quarantined => "quarantined",
            InstanceState::Duplicate => "duplicate",
            InstanceState::Requeued => "requeued",
            InstanceState::Discarded => "discarded",
        }
    }

    pub fn parse(text: &str) -> Result<InstanceState, LedgerError> {
        InstanceState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| LedgerError::UnknownState {
                what: "instance",
                value: text.to_string(),
            })
    }
}

/// The name of a job in folders, logs and `synthd requeue`.
pub fn job_name(id: i64) -> String {
    format!("job-{id:06}")
}

/// An instance's file name once it has left the inbox (receiving and work
/// folders, archive): its ledger id, never a name from the input.
pub fn work_name(id: i64) -> String {
    format!("{id:06}.dcm")
}

/// The id in a job name (`job-000042` or `42`).
pub fn parse_job_name(name: &str) -> Option<i64> {
    name.strip_prefix("job-").unwrap_or(name).parse().ok()
}

#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: i64,
    pub study_key: String,
    pub state: JobState,
    pub reason_code: Option<String>,
    pub reason_message: Option<String>,
    /// For a quarantine job: where its input was when the reason was recorded.
    pub source: Option<PathBuf>,
    pub created: f64,
    pub updated: f64,
}

impl Job {
    pub fn name(&self) -> String {
        job_name(self.id)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: i64,
    pub study_key: String,
    pub sop_digest: String,
    pub content_digest: String,
    pub inbox_path: PathBuf,
    pub pipeline: Option<String>,
    pub job_id: Option<i64>,
    pub state: InstanceState,
    pub output: Option<PathBuf>,
    pub arrived: f64,
    /// For a SEG, SR or presentation state no pipeline matched: the keyed
    /// digests of the series it references, space-separated; the claim
    /// gives it the pipeline of one of them (`ingest::references`).
    pub refs: Option<String>,
}

impl Instance {
    /// The instance's file name inside its job's work or quarantine folder.
    /// Never the inbox name, which may carry patient values.
    pub fn work_name(&self) -> String {
        work_name(self.id)
    }
}

/// A new instance as intake saw it.
#[derive(Debug, Clone)]
pub struct NewInstance<'a> {
    pub study_key: &'a str,
    pub sop_digest: &'a str,
    pub content_digest: &'a str,
    pub inbox_path: &'a Path,
    pub pipeline: Option<&'a str>,
    /// When the file landed in the inbox (seconds since the epoch).
    pub arrived: f64,
    /// Keyed digest of its Series Instance UID.
    pub series_digest: Option<&'a str>,
    /// See [`Instance::refs`].
    pub refs: Option<&'a str>,
}

pub struct Ledger {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_key TEXT NOT NULL,
    state TEXT NOT NULL,
    reason_code TEXT,
    reason_message TEXT,
    source TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_key TEXT NOT NULL,
    sop_digest TEXT NOT NULL,
    content_digest TEXT NOT NULL,
    inbox_path TEXT NOT NULL,
    pipeline TEXT,
    job_id INTEGER REFERENCES jobs(id),
    state TEXT NOT NULL,
    output TEXT,
    arrived REAL NOT NULL,
    series_digest TEXT,
    refs TEXT
);
CREATE INDEX IF NOT EXISTS instances_sop ON instances(sop_digest);
CREATE INDEX IF NOT EXISTS instances_state ON instances(state, study_key);
CREATE INDEX IF NOT EXISTS instances_job ON instances(job_id);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
";

const JOB_COLUMNS: &str = "id, study_key, state, reason_code, reason_message, source, created, updated";
const INSTANCE_COLUMNS: &str =
    "id, study_key, sop_digest, content_digest, inbox_path, pipeline, job_id, state, output, arrived, refs";

/// Columns added after the first release, with their type: added to an
/// older ledger when it is opened.
const ADDED_INSTANCE_COLUMNS: [(&str, &str); 2] = [("series_digest", "TEXT"), ("refs", "TEXT")];

/// Creates or upgrades every table in one transaction, so a reader
/// (`synthd status` while the daemon starts) sees the whole schema or none
/// of it: [`Ledger::has_schema`] then answers for all of it.
fn create_schema(conn: &mut Connection) -> rusqlite::Result<()> {
    let transaction = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    transaction.execute_batch(SCHEMA)?;
    transaction.execute_batch(sends::SCHEMA)?;
    add_missing_columns(&transaction)?;
    transaction.commit()
}

fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    let present: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('instances')")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for (name, kind) in ADDED_INSTANCE_COLUMNS {
        if !present.iter().any(|column| column == name) {
            conn.execute_batch(&format!("ALTER TABLE instances ADD COLUMN {name} {kind}"))?;
        }
    }
    Ok(())
}

/// Seconds since the Unix epoch; wall clock because completeness must survive restarts.
pub fn now() -> f64 {
    epoch_seconds(std::time::SystemTime::now())
}

/// A time as the ledger keeps times: seconds since the Unix epoch (0 before it).
pub fn epoch_seconds(time: std::time::SystemTime) -> f64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

impl Ledger {
    /// Opens (creating when needed) the ledger in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Ledger, LedgerError> {
        let path = state_dir.join(LEDGER_FILE);
        let wrap = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(wrap)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(wrap)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(wrap)?;
        // FULL: a committed transition survives power loss, not only a crash.
        conn.pragma_update(None, "synchronous", "FULL").map_err(wrap)?;
        create_schema(&mut conn).map_err(wrap)?;
        Ok(Ledger { conn, path })
    }

    /// Opens an existing ledger for reading while the daemon may be writing.
    pub fn open_existing(state_dir: &Path) -> Result<Ledger, LedgerError> {
        let path = state_dir.join(LEDGER_FILE);
        let wrap = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(wrap)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(wrap)?;
        Ok(Ledger { conn, path })
    }

    /// Whether the tables exist: a daemon that just started may have created
    /// the file and not yet its schema (created in one transaction, so
    /// `jobs` and `instances` stand for every table).
    pub fn has_schema(&self) -> Result<bool, LedgerError> {
        let tables: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('jobs', 'instances')",
                [],
                |row| row.get(0),
            )
            .map_err(|e| self.err(e))?;
        Ok(tables == 2)
    }

    fn err(&self, source: rusqlite::Error) -> LedgerError {
        LedgerError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Job, String)> {
        let state: String = row.get(2)?;
        Ok((
            Job {
                id: row.get(0)?,
                study_key: row.get(1)?,
                state: JobState::Done,
                reason_code: row.get(3)?,
                reason_message: row.get(4)?,
                source: row.get::<_, Option<String>>(5)?.map(PathBuf::from),
                created: row.get(6)?,
                updated: row.get(7)?,
            },
            state,
        ))
    }

    fn instance_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Instance, String)> {
        let state: String = row.get(7)?;
        Ok((
            Instance {
                id: row.get(0)?,
                study_key: row.get(1)?,
                sop_digest: row.get(2)?,
                content_digest: row.get(3)?,
                inbox_path: PathBuf::from(row.get::<_, String>(4)?),
                pipeline: row.get(5)?,
                job_id: row.get(6)?,
                state: InstanceState::Received,
                output: row.get::<_, Option<String>>(8)?.map(PathBuf::from),
                arrived: row.get(9)?,
                refs: row.get(10)?,
            },
            state,
        ))
    }

    fn query_jobs(&self, sql: &str, args: impl rusqlite::Params) -> Result<Vec<Job>, LedgerError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(args, Self::job_from_row)
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|(mut job, state)| {
                job.state = JobState::parse(&state)?;
                Ok(job)
            })
            .collect()
    }

    fn query_instances(&self, sql: &str, args: impl rusqlite::Params) -> Result<Vec<Instance>, LedgerError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(args, Self::instance_from_row)
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|(mut instance, state)| {
                instance.state = InstanceState::parse(&state)?;
                Ok(instance)
            })
            .collect()
    }

    pub fn job(&self, id: i64) -> Result<Option<Job>, LedgerError> {
        Ok(self
            .query_jobs(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"), params![id])?
            .pop())
    }

    pub fn jobs_in(&self, state: JobState) -> Result<Vec<Job>, LedgerError> {
        self.query_jobs(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE state = ?1 ORDER BY id"),
            params![state.as_str()],
        )
    }

    /// Jobs a restart must resume, oldest first.
    pub fn unfinished_jobs(&self) -> Result<Vec<Job>, LedgerError> {
        let all = self.query_jobs(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE state NOT IN ('done', 'quarantined', 'requeued', 'discarded') ORDER BY id"
            ),
            [],
        )?;
        Ok(all.into_iter().filter(|job| job.state.is_intermediate()).collect())
    }

    pub fn instances_of(&self, job_id: i64) -> Result<Vec<Instance>, LedgerError> {
        self.query_instances(
            &format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE job_id = ?1 ORDER BY id"),
            params![job_id],
        )
    }

    pub fn instance(&self, id: i64) -> Result<Option<Instance>, LedgerError> {
        Ok(self
            .query_instances(
                &format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ?1"),
                params![id],
            )?
            .pop())
    }

    /// Instances waiting in the inbox for their study to complete.
    pub fn received(&self) -> Result<Vec<Instance>, LedgerError> {
        self.query_instances(
            &format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE state = 'received' ORDER BY id"),
            [],
        )
    }

    /// The received row for this inbox file, if intake already recorded it.
    pub fn received_at(&self, inbox_path: &Path) -> Result<Option<Instance>, LedgerError> {
        Ok(self
            .query_instances(
                &format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE state = 'received' AND inbox_path = ?1"),
                params![inbox_path.to_string_lossy()],
            )?
            .pop())
    }

    /// The live instance (not dropped, quarantined or requeued) with this SOP digest.
    pub fn live_with_sop(&self, sop_digest: &str) -> Result<Option<Instance>, LedgerError> {
        Ok(self
            .query_instances(
                &format!(
                    "SELECT {INSTANCE_COLUMNS} FROM instances WHERE sop_digest = ?1 \
                     AND state IN ('received', 'claimed', 'written') ORDER BY id LIMIT 1"
                ),
                params![sop_digest],
            )?
            .pop())
    }

    pub fn insert_received(&self, new: &NewInstance<'_>) -> Result<i64, LedgerError> {
        self.insert_instance(new, InstanceState::Received, None)
    }

    /// Records a dropped duplicate (identical bytes of an instance already taken).
    pub fn insert_duplicate(&self, new: &NewInstance<'_>) -> Result<i64, LedgerError> {
        self.insert_instance(new, InstanceState::Duplicate, None)
    }

    fn insert_instance(
        &self,
        new: &NewInstance<'_>,
        state: InstanceState,
        job_id: Option<i64>,
    ) -> Result<i64, LedgerError> {
        self.conn
            .prepare_cached(
                "INSERT INTO instances (study_key, sop_digest, content_digest, inbox_path, pipeline, job_id, state, arrived, series_digest, refs) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    new.study_key,
                    new.sop_digest,
                    new.content_digest,
                    new.inbox_path.to_string_lossy(),
                    new.pipeline,
                    job_id,
                    state.as_str(),
                    new.arrived,
                    new.series_digest,
                    new.refs
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records a refused input (before it had a job) as a quarantine job with
    /// one instance, in state Quarantining. Returns (job id, instance id).
    pub fn begin_intake_quarantine(
        &mut self,
        new: &NewInstance<'_>,
        code: &str,
        message: &str,
    ) -> Result<(i64, i64), LedgerError> {
        self.transaction(|tx| {
            let t = now();
            tx.execute(
                "INSERT INTO jobs (study_key, state, reason_code, reason_message, source, created, updated) \
                 VALUES (?1, 'quarantining', ?2, ?3, ?4, ?5, ?5)",
                params![new.study_key, code, message, new.inbox_path.to_string_lossy(), t],
            )?;
            let job = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO instances (study_key, sop_digest, content_digest, inbox_path, pipeline, job_id, state, arrived) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'quarantined', ?7)",
                params![
                    new.study_key,
                    new.sop_digest,
                    new.content_digest,
                    new.inbox_path.to_string_lossy(),
                    new.pipeline,
                    job,
                    t
                ],
            )?;
            let instance = tx.last_insert_rowid();
            Ok((job, instance))
        })
    }

    /// Moves one instance of a running job into a new quarantine job (state
    /// Quarantining, source = its work file). Returns the new job's id.
    pub fn begin_instance_quarantine(
        &mut self,
        instance: &Instance,
        source: &Path,
        code: &str,
        message: &str,
    ) -> Result<i64, LedgerError> {
        self.transaction(|tx| {
            let t = now();
            tx.execute(
                "INSERT INTO jobs (study_key, state, reason_code, reason_message, source, created, updated) \
             VALUES (?1, 'quarantining', ?2, ?3, ?4, ?5, ?5)",
                params![instance.study_key, code, message, source.to_string_lossy(), t],
            )?;
            let job = tx.last_insert_rowid();
            tx.execute(
                "UPDATE instances SET job_id = ?1, state = 'quarantined' WHERE id = ?2",
                params![job, instance.id],
            )?;
            Ok(job)
        })
    }

    /// Creates a job for these received instances (state Claiming) and assigns them to it.
    pub fn begin_claim(&mut self, study_key: &str, instance_ids: &[i64]) -> Result<i64, LedgerError> {
        Ok(self.begin_claims(&[(study_key, instance_ids.to_vec())])?[0])
    }

    /// [`Ledger::begin_claim`] for several studies in one transaction.
    pub fn begin_claims(&mut self, claims: &[(&str, Vec<i64>)]) -> Result<Vec<i64>, LedgerError> {
        self.transaction(|tx| {
            let t = now();
            let mut jobs = Vec::with_capacity(claims.len());
            for (study_key, instance_ids) in claims {
                tx.execute(
                    "INSERT INTO jobs (study_key, state, created, updated) VALUES (?1, 'claiming', ?2, ?2)",
                    params![study_key, t],
                )?;
                let job = tx.last_insert_rowid();
                let mut stmt = tx.prepare_cached(
                    "UPDATE instances SET job_id = ?1, state = 'claimed' WHERE id = ?2 AND state = 'received'",
                )?;
                for id in instance_ids {
                    stmt.execute(params![job, id])?;
                }
                jobs.push(job);
            }
            Ok(jobs)
        })
    }

    /// Moves several jobs to `state` in one transaction.
    /// Durable on return, with an open batch if there is one.
    pub fn set_jobs_state(&mut self, jobs: &[i64], state: JobState) -> Result<(), LedgerError> {
        self.batch_jobs_state(jobs, state)?;
        self.commit_batch()
    }

    /// Durable on return (an open batch is committed with it).
    pub fn set_job_state(&mut self, job: i64, state: JobState) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached("UPDATE jobs SET state = ?1, updated = ?2 WHERE id = ?3")
            .and_then(|mut stmt| stmt.execute(params![state.as_str(), now(), job]))
            .map_err(|e| self.err(e))?;
        self.commit_batch()
    }

    /// Records outputs the caller made durable as written, in the open batch
    /// (opening one): one WAL sync for many instances, with the next commit.
    /// The coordinator records a flushed batch this way so that the jobs it
    /// completes are recorded written in the same commit.
    pub fn batch_instances_written(&mut self, written: &[(i64, PathBuf)]) -> Result<(), LedgerError> {
        self.begin_batch()?;
        let mut stmt = self
            .conn
            .prepare_cached("UPDATE instances SET state = 'written', output = ?1 WHERE id = ?2")
            .map_err(|e| self.err(e))?;
        for (instance, output) in written {
            stmt.execute(params![output.to_string_lossy(), instance])
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// [`Ledger::set_jobs_state`] into the open batch (opening one), for a
    /// state no side effect waits on until the round's commit.
    pub fn batch_jobs_state(&mut self, jobs: &[i64], state: JobState) -> Result<(), LedgerError> {
        self.batch_jobs_update(jobs, None, state)
    }

    /// Moves those of `jobs` that are in state `from` to `to`, in the open
    /// batch (opening one); the others keep their state. For transitions
    /// that may be overtaken: a claim made durable after its job already
    /// finished (it had no outputs), a deidentified job whose claim is not
    /// durable yet (a restart must still finish its renames).
    pub fn batch_jobs_advance(&mut self, jobs: &[i64], from: JobState, to: JobState) -> Result<(), LedgerError> {
        self.batch_jobs_update(jobs, Some(from), to)
    }

    fn batch_jobs_update(&mut self, jobs: &[i64], from: Option<JobState>, to: JobState) -> Result<(), LedgerError> {
        if jobs.is_empty() {
            return Ok(());
        }
        self.begin_batch()?;
        let mut stmt = self
            .conn
            .prepare_cached("UPDATE jobs SET state = ?1, updated = ?2 WHERE id = ?3 AND (?4 IS NULL OR state = ?4)")
            .map_err(|e| self.err(e))?;
        let (t, from) = (now(), from.map(JobState::as_str));
        for job in jobs {
            stmt.execute(params![to.as_str(), t, job, from])
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Runs `work` in one transaction. An open batch is joined: one commit
    /// (one WAL sync) makes the batch and `work` durable together.
    fn transaction<T>(
        &mut self,
        work: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T, LedgerError> {
        let path = self.path.clone();
        let wrap = |source| LedgerError::Sqlite { path, source };
        if !self.conn.is_autocommit() {
            let result = work(&self.conn).and_then(|value| {
                self.conn.execute_batch("COMMIT")?;
                Ok(value)
            });
            if result.is_err() {
                // Nothing of the batch or `work` is recorded; the caller
                // stops, and a restart finds the files where they were.
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            return result.map_err(wrap);
        }
        let result = self.conn.transaction().and_then(|tx| {
            let value = work(&tx)?;
            tx.commit()?;
            Ok(value)
        });
        result.map_err(wrap)
    }

    /// Opens a batch: the writes that follow share one transaction (and one
    /// WAL sync) until [`Ledger::commit_batch`]. Only for records no side
    /// effect depends on until the batch is committed (intake's `received`).
    pub fn begin_batch(&mut self) -> Result<(), LedgerError> {
        if self.conn.is_autocommit() {
            self.conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Commits an open batch, if any: its records are durable on return.
    pub fn commit_batch(&mut self) -> Result<(), LedgerError> {
        if !self.conn.is_autocommit() {
            self.conn.execute_batch("COMMIT").map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Durable on return (an open batch is committed with it).
    pub fn set_instance_state(&mut self, instance: i64, state: InstanceState) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached("UPDATE instances SET state = ?1 WHERE id = ?2")
            .and_then(|mut stmt| stmt.execute(params![state.as_str(), instance]))
            .map_err(|e| self.err(e))?;
        self.commit_batch()
    }

    /// Marks a quarantined job and its instances as sent back to the inbox.
    pub fn mark_requeued(&mut self, job: i64) -> Result<(), LedgerError> {
        self.transaction(|tx| {
            tx.execute(
                "UPDATE jobs SET state = 'requeued', updated = ?1 WHERE id = ?2",
                params![now(), job],
            )?;
            tx.execute(
                "UPDATE instances SET state = 'requeued' WHERE job_id = ?1",
                params![job],
            )?;
            Ok(())
        })
    }

    /// Marks a quarantined job and its instances as discarded by an admin;
    /// recorded before the quarantine folder is removed.
    pub fn mark_discarded(&mut self, job: i64) -> Result<(), LedgerError> {
        self.transaction(|tx| {
            tx.execute(
                "UPDATE jobs SET state = 'discarded', updated = ?1 WHERE id = ?2",
                params![now(), job],
            )?;
            tx.execute(
                "UPDATE instances SET state = 'discarded' WHERE job_id = ?1",
                params![job],
            )?;
            Ok(())
        })
    }

    /// The pipeline taking a series of `study_key` named by one of
    /// `series_digests` (received, claimed or written), if any.
    pub fn pipeline_of_series(&self, study_key: &str, series_digests: &[&str]) -> Result<Option<String>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT pipeline FROM instances WHERE study_key = ?1 AND series_digest = ?2 \
                 AND pipeline IS NOT NULL AND state IN ('received', 'claimed', 'written') LIMIT 1",
            )
            .map_err(|e| self.err(e))?;
        for digest in series_digests {
            let found: Option<String> = stmt
                .query_row(params![study_key, digest], |row| row.get(0))
                .optional()
                .map_err(|e| self.err(e))?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Gives a received instance its pipeline, in the open batch (opening one).
    pub fn batch_instance_pipeline(&mut self, instance: i64, pipeline: &str) -> Result<(), LedgerError> {
        self.begin_batch()?;
        self.conn
            .prepare_cached("UPDATE instances SET pipeline = ?1 WHERE id = ?2")
            .and_then(|mut stmt| stmt.execute(params![pipeline, instance]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Job counts by state, in [`JobState::ALL`] order.
    pub fn job_counts(&self) -> Result<Vec<(JobState, u64)>, LedgerError> {
        let mut counts = Vec::new();
        for state in JobState::ALL {
            let n: i64 = self
                .conn
                .prepare_cached("SELECT COUNT(*) FROM jobs WHERE state = ?1")
                .and_then(|mut stmt| stmt.query_row(params![state.as_str()], |row| row.get(0)))
                .map_err(|e| self.err(e))?;
            counts.push((state, n as u64));
        }
        Ok(counts)
    }

    /// Instance counts by state, in [`InstanceState::ALL`] order.
    pub fn instance_counts(&self) -> Result<Vec<(InstanceState, u64)>, LedgerError> {
        let mut counts = Vec::new();
        for state in InstanceState::ALL {
            let n: i64 = self
                .conn
                .prepare_cached("SELECT COUNT(*) FROM instances WHERE state = ?1")
                .and_then(|mut stmt| stmt.query_row(params![state.as_str()], |row| row.get(0)))
                .map_err(|e| self.err(e))?;
            counts.push((state, n as u64));
        }
        Ok(counts)
    }

    /// The study that has waited longest in the inbox: (study key, first arrival).
    pub fn oldest_waiting(&self) -> Result<Option<(String, f64)>, LedgerError> {
        self.conn
            .query_row(
                "SELECT study_key, MIN(arrived) FROM instances WHERE state = 'received' \
                 GROUP BY study_key ORDER BY MIN(arrived) LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The most recent study jobs (not quarantines), newest first.
    pub fn recent_studies(&self, limit: u32) -> Result<Vec<Job>, LedgerError> {
        self.query_jobs(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE reason_code IS NULL ORDER BY id DESC LIMIT ?1"),
            params![limit],
        )
    }

    /// The most recent quarantine jobs, newest first.
    pub fn recent_quarantines(&self, limit: u32) -> Result<Vec<Job>, LedgerError> {
        self.query_jobs(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('quarantined', 'quarantining') ORDER BY id DESC LIMIT ?1"
            ),
            params![limit],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new<'a>(sop: &'a str, path: &'a Path) -> NewInstance<'a> {
        NewInstance {
            study_key: "st-0000000000000001",
            sop_digest: sop,
            content_digest: "c1",
            inbox_path: path,
            pipeline: Some("deid-only"),
            arrived: now(),
            series_digest: None,
            refs: None,
        }
    }

    #[test]
    fn claim_moves_received_instances_into_a_job_durably() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let a = ledger.insert_received(&new("s1", Path::new("/in/a"))).unwrap();
        let b = ledger.insert_received(&new("s2", Path::new("/in/b"))).unwrap();
        assert_eq!(ledger.received().unwrap().len(), 2);
        let job = ledger.begin_claim("st-0000000000000001", &[a, b]).unwrap();
        assert!(ledger.received().unwrap().is_empty());
        drop(ledger);
        // A reopened ledger (a restart) sees the claim and must resume it.
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let unfinished = ledger.unfinished_jobs().unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].state, JobState::Claiming);
        assert_eq!(ledger.instances_of(job).unwrap().len(), 2);
        assert_eq!(
            ledger.live_with_sop("s1").unwrap().unwrap().state,
            InstanceState::Claimed
        );
        ledger.set_job_state(job, JobState::Done).unwrap();
        assert!(ledger.unfinished_jobs().unwrap().is_empty());
    }

    #[test]
    fn a_transaction_commits_the_open_batch_with_it_and_a_dropped_batch_is_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let a = ledger.insert_received(&new("s1", Path::new("/in/a"))).unwrap();
        let b = ledger.insert_received(&new("s2", Path::new("/in/b"))).unwrap();
        let job = ledger.begin_claim("st-0000000000000001", &[a, b]).unwrap();
        // Another process (synthd status) sees only committed records.
        let reader = Ledger::open(dir.path()).unwrap();
        ledger
            .batch_instances_written(&[(a, PathBuf::from("x/a.dcm"))])
            .unwrap();
        ledger.batch_jobs_state(&[job], JobState::Deidentified).unwrap();
        assert_eq!(reader.job(job).unwrap().unwrap().state, JobState::Claiming);
        ledger.set_jobs_state(&[job], JobState::Written).unwrap();
        assert_eq!(reader.job(job).unwrap().unwrap().state, JobState::Written);
        assert_eq!(reader.instance(a).unwrap().unwrap().state, InstanceState::Written);
        // A batch the process dies with is not recorded: its work is redone.
        ledger
            .batch_instances_written(&[(b, PathBuf::from("x/b.dcm"))])
            .unwrap();
        drop(ledger);
        assert_eq!(reader.instance(b).unwrap().unwrap().state, InstanceState::Claimed);
        // A single-state write is durable on return, with the batch.
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger
            .batch_instances_written(&[(b, PathBuf::from("x/b.dcm"))])
            .unwrap();
        ledger.set_job_state(job, JobState::Done).unwrap();
        assert_eq!(reader.instance(b).unwrap().unwrap().state, InstanceState::Written);
    }

    #[test]
    fn a_late_transition_moves_only_jobs_still_in_its_from_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let a = ledger.insert_received(&new("s1", Path::new("/in/a"))).unwrap();
        let b = ledger.insert_received(&new("s2", Path::new("/in/b"))).unwrap();
        let claiming = ledger.begin_claim("st-0000000000000001", &[a]).unwrap();
        let finished = ledger.begin_claim("st-0000000000000002", &[b]).unwrap();
        // Its only instance was quarantined: written before its claim was known durable.
        ledger.set_job_state(finished, JobState::Written).unwrap();
        // Deidentified before the claim is durable: a restart must still finish the claim.
        ledger
            .batch_jobs_advance(&[claiming], JobState::Claimed, JobState::Deidentified)
            .unwrap();
        ledger
            .batch_jobs_advance(&[claiming, finished], JobState::Claiming, JobState::Claimed)
            .unwrap();
        ledger.commit_batch().unwrap();
        assert_eq!(ledger.job(claiming).unwrap().unwrap().state, JobState::Claimed);
        assert_eq!(ledger.job(finished).unwrap().unwrap().state, JobState::Written);
        ledger
            .batch_jobs_advance(&[claiming], JobState::Claimed, JobState::Deidentified)
            .unwrap();
        ledger.commit_batch().unwrap();
        assert_eq!(ledger.job(claiming).unwrap().unwrap().state, JobState::Deidentified);
    }

    #[test]
    fn quarantine_and_requeue_release_the_sop_for_a_new_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let (job, _) = ledger
            .begin_intake_quarantine(&new("s1", Path::new("/in/a")), "not-dicom", "no DICM prefix")
            .unwrap();
        assert!(ledger.live_with_sop("s1").unwrap().is_none());
        assert_eq!(ledger.job(job).unwrap().unwrap().state, JobState::Quarantining);
        ledger.set_job_state(job, JobState::Quarantined).unwrap();
        let recent = ledger.recent_quarantines(5).unwrap();
        assert_eq!(recent[0].reason_code.as_deref(), Some("not-dicom"));
        ledger.mark_requeued(job).unwrap();
        assert_eq!(ledger.job(job).unwrap().unwrap().state, JobState::Requeued);
        assert_eq!(job_name(job), format!("job-{job:06}"));
        assert_eq!(parse_job_name(&job_name(job)), Some(job));
    }
}
