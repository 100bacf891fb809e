//! The ledger of one shard of a `synthd process` run:
//! `OUTPUT/.synthd/shards/shard-IIII-of-NNNN.sqlite`, written by that shard
//! alone, so shards writing into one output tree never share a database.
//! Same rules as the daemon's ledger (WAL, synchronous FULL, a state is
//! committed before the side effect that follows it; no patient values:
//! studies by `StudyKey`, inputs by a keyed digest of their path).
//!
//! It records what the run was made with (pipeline, model, key id, shard),
//! each study's state (`writing` → `written`, with its counts), each
//! quarantined input's reason, and whether the run finished. A killed run,
//! re-run, skips `written` studies and rewrites `writing` ones (outputs are
//! deterministic, so the bytes are the same). `synthd merge` reads it.
//!
//! Locking mode is EXCLUSIVE: WAL then needs no shared memory, so the file
//! works on the network file systems clusters share, and a second process
//! on the same shard is refused instead of interleaving.

use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where shard ledgers live, relative to the output folder.
pub const SHARDS_DIR: &str = ".synthd/shards";

#[derive(Debug, thiserror::Error)]
pub enum ShardLedgerError {
    #[error("shard ledger {path}: {source}; check that the output folder is writable, not full, and that no other synthd process runs this shard")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path} was made by a run with {what} {recorded}, and this run has {current}; use a fresh --output, or delete that output folder to start over")]
    Mismatch {
        path: PathBuf,
        what: &'static str,
        recorded: String,
        current: String,
    },
    #[error("{path} holds no run record; it is not a synthd shard ledger")]
    NoRun { path: PathBuf },
}

/// What a run is made with; every shard of one dataset must agree on all
/// but the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub shard_index: u32,
    pub shard_count: u32,
    pub pipeline_name: String,
    pub pipeline_sha256: String,
    pub model_sha256: Option<String>,
    /// A keyed digest that names the site key without revealing it.
    pub key_id: String,
    pub seed: Option<u64>,
    pub variants: Option<u32>,
    pub synthd_version: String,
    pub started: String,
    /// Set when the run went through all its studies; cleared when a run starts.
    pub finished: Option<String>,
}

/// One study's outcome, for summaries and the dataset card (counts only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StudyCounts {
    /// The de-identified study folder (its new Study Instance UID).
    pub folder: String,
    pub inputs: u64,
    pub source: u64,
    pub synthetic: u64,
    pub seg: u64,
    pub previews: u64,
    pub synthetic_series: u64,
    pub series_not_synthesized: u64,
}

/// A study as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudyRow {
    pub study_key: String,
    pub written: bool,
    pub counts: StudyCounts,
}

pub struct ShardLedger {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS run (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    shard_index INTEGER NOT NULL,
    shard_count INTEGER NOT NULL,
    pipeline_name TEXT NOT NULL,
    pipeline_sha256 TEXT NOT NULL,
    model_sha256 TEXT,
    key_id TEXT NOT NULL,
    seed INTEGER,
    variants INTEGER,
    synthd_version TEXT NOT NULL,
    started TEXT NOT NULL,
    finished TEXT,
    not_selected INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS studies (
    study_key TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('writing', 'written')),
    folder TEXT NOT NULL DEFAULT '',
    inputs INTEGER NOT NULL DEFAULT 0,
    source INTEGER NOT NULL DEFAULT 0,
    synthetic INTEGER NOT NULL DEFAULT 0,
    seg INTEGER NOT NULL DEFAULT 0,
    previews INTEGER NOT NULL DEFAULT 0,
    synthetic_series INTEGER NOT NULL DEFAULT 0,
    series_not_synthesized INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS quarantines (
    input TEXT PRIMARY KEY,
    study_key TEXT,
    code TEXT NOT NULL,
    folder TEXT NOT NULL
);
";

impl ShardLedger {
    /// The ledger file of `shard_name` (`Shard::ledger_name`) under `output`.
    pub fn path_in(output: &Path, shard_name: &str) -> PathBuf {
        output.join(SHARDS_DIR).join(shard_name)
    }

    /// Opens (creating when needed) a ledger for writing.
    pub fn open(path: &Path) -> Result<ShardLedger, ShardLedgerError> {
        let ledger = Self::connect(path, rusqlite::OpenFlags::default())?;
        let wrap = |source| ShardLedgerError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        ledger.conn.pragma_update(None, "journal_mode", "WAL").map_err(wrap)?;
        ledger.conn.pragma_update(None, "synchronous", "FULL").map_err(wrap)?;
        ledger.conn.execute_batch(SCHEMA).map_err(wrap)?;
        Ok(ledger)
    }

    /// Opens an existing ledger to read (for `synthd merge`).
    pub fn open_read(path: &Path) -> Result<ShardLedger, ShardLedgerError> {
        Self::connect(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
    }

    fn connect(path: &Path, flags: rusqlite::OpenFlags) -> Result<ShardLedger, ShardLedgerError> {
        let wrap = |source| ShardLedgerError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(path, flags).map_err(wrap)?;
        conn.busy_timeout(std::time::Duration::from_secs(2)).map_err(wrap)?;
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE").map_err(wrap)?;
        Ok(ShardLedger {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> ShardLedgerError {
        ShardLedgerError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Records the run's parameters, or checks them against the recorded
    /// ones (a resumed run must be the same run), and marks it unfinished.
    pub fn begin_run(&self, run: &RunRecord) -> Result<(), ShardLedgerError> {
        if let Some(recorded) = self.run()? {
            self.check_same_run(&recorded, run)?;
            self.conn
                .execute(
                    "UPDATE run SET finished = NULL, synthd_version = ?1",
                    params![run.synthd_version],
                )
                .map_err(|e| self.err(e))?;
            return Ok(());
        }
        self.conn
            .execute(
                "INSERT INTO run (id, shard_index, shard_count, pipeline_name, pipeline_sha256, model_sha256, \
                 key_id, seed, variants, synthd_version, started, finished) \
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL)",
                params![
                    run.shard_index,
                    run.shard_count,
                    run.pipeline_name,
                    run.pipeline_sha256,
                    run.model_sha256,
                    run.key_id,
                    run.seed.map(|s| s as i64),
                    run.variants,
                    run.synthd_version,
                    run.started
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn check_same_run(&self, recorded: &RunRecord, current: &RunRecord) -> Result<(), ShardLedgerError> {
        let pairs = [
            (
                "shard",
                format!("{}/{}", recorded.shard_index, recorded.shard_count),
                format!("{}/{}", current.shard_index, current.shard_count),
            ),
            (
                "pipeline sha256",
                recorded.pipeline_sha256.clone(),
                current.pipeline_sha256.clone(),
            ),
            (
                "model sha256",
                recorded.model_sha256.clone().unwrap_or_else(|| "none".into()),
                current.model_sha256.clone().unwrap_or_else(|| "none".into()),
            ),
            ("site key id", recorded.key_id.clone(), current.key_id.clone()),
        ];
        match pairs.into_iter().find(|(_, a, b)| a != b) {
            Some((what, recorded, current)) => Err(ShardLedgerError::Mismatch {
                path: self.path.clone(),
                what,
                recorded,
                current,
            }),
            None => Ok(()),
        }
    }

    pub fn run(&self) -> Result<Option<RunRecord>, ShardLedgerError> {
        self.conn
            .query_row(
                "SELECT shard_index, shard_count, pipeline_name, pipeline_sha256, model_sha256, key_id, seed, \
                 variants, synthd_version, started, finished FROM run WHERE id = 1",
                [],
                |row| {
                    Ok(RunRecord {
                        shard_index: row.get(0)?,
                        shard_count: row.get(1)?,
                        pipeline_name: row.get(2)?,
                        pipeline_sha256: row.get(3)?,
                        model_sha256: row.get(4)?,
                        key_id: row.get(5)?,
                        seed: row.get::<_, Option<i64>>(6)?.map(|s| s as u64),
                        variants: row.get(7)?,
                        synthd_version: row.get(8)?,
                        started: row.get(9)?,
                        finished: row.get(10)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The run record, or an error naming the file when there is none.
    pub fn require_run(&self) -> Result<RunRecord, ShardLedgerError> {
        self.run()?.ok_or_else(|| ShardLedgerError::NoRun {
            path: self.path.clone(),
        })
    }

    pub fn finish_run(&self, finished: &str) -> Result<(), ShardLedgerError> {
        self.conn
            .execute("UPDATE run SET finished = ?1", params![finished])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Whether the study's outputs are all durable already.
    pub fn is_written(&self, study_key: &str) -> Result<bool, ShardLedgerError> {
        self.conn
            .query_row(
                "SELECT state = 'written' FROM studies WHERE study_key = ?1",
                params![study_key],
                |row| row.get(0),
            )
            .optional()
            .map(|state| state.unwrap_or(false))
            .map_err(|e| self.err(e))
    }

    /// Recorded before a study's first output is written.
    pub fn begin_study(&self, study_key: &str, inputs: u64) -> Result<(), ShardLedgerError> {
        self.conn
            .execute(
                "INSERT INTO studies (study_key, state, inputs) VALUES (?1, 'writing', ?2) \
                 ON CONFLICT (study_key) DO UPDATE SET state = 'writing', inputs = ?2",
                params![study_key, inputs as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Recorded once every output of the study is durable.
    pub fn study_written(&self, study_key: &str, counts: &StudyCounts) -> Result<(), ShardLedgerError> {
        self.conn
            .execute(
                "UPDATE studies SET state = 'written', folder = ?2, inputs = ?3, source = ?4, synthetic = ?5, \
                 seg = ?6, previews = ?7, synthetic_series = ?8, series_not_synthesized = ?9 WHERE study_key = ?1",
                params![
                    study_key,
                    counts.folder,
                    counts.inputs as i64,
                    counts.source as i64,
                    counts.synthetic as i64,
                    counts.seg as i64,
                    counts.previews as i64,
                    counts.synthetic_series as i64,
                    counts.series_not_synthesized as i64
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn studies(&self) -> Result<Vec<StudyRow>, ShardLedgerError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT study_key, state, folder, inputs, source, synthetic, seg, previews, synthetic_series, \
                 series_not_synthesized FROM studies ORDER BY study_key",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |row| {
                let count = |i: usize| row.get::<_, i64>(i).map(|v| v as u64);
                Ok(StudyRow {
                    study_key: row.get(0)?,
                    written: row.get::<_, String>(1)? == "written",
                    counts: StudyCounts {
                        folder: row.get(2)?,
                        inputs: count(3)?,
                        source: count(4)?,
                        synthetic: count(5)?,
                        seg: count(6)?,
                        previews: count(7)?,
                        synthetic_series: count(8)?,
                        series_not_synthesized: count(9)?,
                    },
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Recorded once the input's quarantine copy and reason are durable.
    /// `input` is a keyed digest of its path, so a re-run records it once.
    pub fn quarantined(
        &self,
        input: &str,
        study_key: Option<&str>,
        code: &str,
        folder: &str,
    ) -> Result<(), ShardLedgerError> {
        self.conn
            .execute(
                "INSERT INTO quarantines (input, study_key, code, folder) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (input) DO UPDATE SET study_key = ?2, code = ?3, folder = ?4",
                params![input, study_key, code, folder],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Quarantined inputs by reason code.
    pub fn quarantines_by_reason(&self) -> Result<BTreeMap<String, u64>, ShardLedgerError> {
        let mut stmt = self
            .conn
            .prepare("SELECT code, COUNT(*) FROM quarantines GROUP BY code ORDER BY code")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// How many inputs of this shard's studies the pipeline did not select
    /// (set by each run's scan, which sees them all again).
    pub fn set_not_selected(&self, count: u64) -> Result<(), ShardLedgerError> {
        self.conn
            .execute("UPDATE run SET not_selected = ?1", params![count as i64])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn not_selected(&self) -> Result<u64, ShardLedgerError> {
        self.conn
            .query_row("SELECT not_selected FROM run WHERE id = 1", [], |row| {
                row.get::<_, i64>(0)
            })
            .optional()
            .map(|n| n.unwrap_or(0) as u64)
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pipeline_sha256: &str) -> RunRecord {
        RunRecord {
            shard_index: 1,
            shard_count: 3,
            pipeline_name: "p".into(),
            pipeline_sha256: pipeline_sha256.into(),
            model_sha256: None,
            key_id: "k-1".into(),
            seed: Some(7),
            variants: Some(2),
            synthd_version: "0.1.0".into(),
            started: "2026-01-01T00:00:00Z".into(),
            finished: None,
        }
    }

    #[test]
    fn studies_resume_and_a_different_run_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard.sqlite");
        {
            let ledger = ShardLedger::open(&path).unwrap();
            ledger.begin_run(&run("aa")).unwrap();
            ledger.begin_study("st-1", 3).unwrap();
            ledger.begin_study("st-2", 4).unwrap();
            let counts = StudyCounts {
                folder: "2.25.9".into(),
                inputs: 3,
                source: 3,
                ..StudyCounts::default()
            };
            ledger.study_written("st-1", &counts).unwrap();
            ledger.quarantined("q-1", None, "truncated", "q-1").unwrap();
            ledger.quarantined("q-1", None, "truncated", "q-1").unwrap();
        }
        let ledger = ShardLedger::open(&path).unwrap();
        assert!(ledger.is_written("st-1").unwrap());
        assert!(!ledger.is_written("st-2").unwrap(), "killed while writing: redone");
        assert!(!ledger.is_written("st-3").unwrap());
        assert_eq!(ledger.quarantines_by_reason().unwrap()["truncated"], 1);
        let error = ledger.begin_run(&run("bb")).unwrap_err().to_string();
        assert!(
            error.contains("pipeline sha256 aa") && error.contains("fresh --output"),
            "{error}"
        );
        ledger.begin_run(&run("aa")).unwrap();
        ledger.finish_run("2026-01-01T01:00:00Z").unwrap();
        assert!(ledger.require_run().unwrap().finished.is_some());
    }

    #[test]
    fn a_second_writer_of_the_same_shard_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard.sqlite");
        let first = ShardLedger::open(&path).unwrap();
        first.begin_run(&run("aa")).unwrap();
        let second = ShardLedger::open(&path).and_then(|l| l.begin_run(&run("aa")));
        assert!(second.is_err(), "the exclusive lock keeps a second process out");
    }
}
