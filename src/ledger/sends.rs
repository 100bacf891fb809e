//! The send queue: one row per (destination, output file), its state
//! (`queued` → `sent`, or `dead` with the reason), attempts and when the
//! next one is due; and per destination its last success and last error.
//! A row becomes `sent` only once the peer acknowledged the instance, in a
//! commit made before the next instance is sent, so a restart resends at
//! most the one instance in flight when the process died.

use super::{now, Ledger, LedgerError};
use rusqlite::{params, OptionalExtension};
use std::path::{Path, PathBuf};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sends (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    path TEXT NOT NULL,
    job_id INTEGER,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    reason TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    UNIQUE (destination, path)
);
CREATE INDEX IF NOT EXISTS sends_due ON sends(destination, state, next_attempt);
CREATE TABLE IF NOT EXISTS send_jobs (job_id INTEGER PRIMARY KEY, examined REAL NOT NULL);
CREATE TABLE IF NOT EXISTS send_destinations (
    name TEXT PRIMARY KEY,
    last_success REAL,
    last_error TEXT,
    last_error_at REAL
);
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendState {
    Queued,
    Sent,
    Dead,
}

impl SendState {
    pub fn as_str(self) -> &'static str {
        match self {
            SendState::Queued => "queued",
            SendState::Sent => "sent",
            SendState::Dead => "dead",
        }
    }
}

/// One queued instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Send {
    pub id: i64,
    pub destination: String,
    pub path: PathBuf,
    pub attempts: u32,
}

/// What `synthd status` shows per destination.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DestinationSummary {
    pub name: String,
    pub queued: u64,
    pub sent: u64,
    pub dead: u64,
    pub last_success: Option<f64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<f64>,
}

/// A job whose outputs are all durable, with the pipelines of its instances
/// and the folders holding its outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedJob {
    pub id: i64,
    pub pipelines: Vec<String>,
    pub outputs: Vec<PathBuf>,
}

impl Ledger {
    /// Jobs written or done that the exporter has not looked at yet. On the
    /// first call ever, the jobs finished before then are marked looked at
    /// and not returned: destinations apply from when they are configured.
    pub fn jobs_to_export(&mut self) -> Result<Vec<FinishedJob>, LedgerError> {
        let first: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM send_jobs", [], |row| row.get(0))
            .map_err(|e| self.err(e))?;
        if first == 0 {
            self.conn
                .execute(
                    "INSERT OR IGNORE INTO send_jobs (job_id, examined)
                     SELECT id, ?1 FROM jobs WHERE state IN ('written', 'done')",
                    params![now()],
                )
                .map_err(|e| self.err(e))?;
            // Marks that the exporter has run even when no job exists yet.
            self.conn
                .execute(
                    "INSERT OR IGNORE INTO send_jobs (job_id, examined) VALUES (0, ?1)",
                    params![now()],
                )
                .map_err(|e| self.err(e))?;
            return Ok(Vec::new());
        }
        let mut statement = self
            .conn
            .prepare(
                "SELECT j.id, i.pipeline, i.output FROM jobs j JOIN instances i ON i.job_id = j.id
                 WHERE j.state IN ('written', 'done')
                   AND NOT EXISTS (SELECT 1 FROM send_jobs s WHERE s.job_id = j.id)
                 ORDER BY j.id",
            )
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, Option<String>>(1)?,
                    row.get::<_, Option<String>>(2)?,
                ))
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        let mut jobs: Vec<FinishedJob> = Vec::new();
        for (id, pipeline, output) in rows {
            if jobs.last().is_none_or(|job| job.id != id) {
                jobs.push(FinishedJob {
                    id,
                    pipelines: Vec::new(),
                    outputs: Vec::new(),
                });
            }
            let job = jobs.last_mut().expect("pushed above");
            if let Some(pipeline) = pipeline.filter(|p| !job.pipelines.contains(p)) {
                job.pipelines.push(pipeline);
            }
            if let Some(output) = output {
                job.outputs.push(PathBuf::from(output));
            }
        }
        Ok(jobs)
    }

    /// Queues `files` for `destinations` and marks `job` looked at, in one commit.
    pub fn enqueue_sends(
        &mut self,
        job: i64,
        destinations: &[String],
        files: &[PathBuf],
    ) -> Result<usize, LedgerError> {
        let now = now();
        let path = self.path.clone();
        let wrap = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let transaction = self.conn.transaction().map_err(wrap)?;
        let mut added = 0;
        {
            let mut insert = transaction
                .prepare(
                    "INSERT OR IGNORE INTO sends (destination, path, job_id, state, next_attempt, created, updated)
                     VALUES (?1, ?2, ?3, 'queued', ?4, ?4, ?4)",
                )
                .map_err(wrap)?;
            for destination in destinations {
                for file in files {
                    added += insert
                        .execute(params![destination, file.to_string_lossy(), job, now])
                        .map_err(wrap)?;
                }
            }
            transaction
                .execute(
                    "INSERT OR IGNORE INTO send_jobs (job_id, examined) VALUES (?1, ?2)",
                    params![job, now],
                )
                .map_err(wrap)?;
        }
        transaction.commit().map_err(wrap)?;
        Ok(added)
    }

    /// Up to `limit` queued sends of `destination` due by `at`, oldest first.
    pub fn due_sends(&self, destination: &str, at: f64, limit: u32) -> Result<Vec<Send>, LedgerError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT id, destination, path, attempts FROM sends
                 WHERE destination = ?1 AND state = 'queued' AND next_attempt <= ?2
                 ORDER BY next_attempt, id LIMIT ?3",
            )
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map(params![destination, at, limit], |row| {
                Ok(Send {
                    id: row.get(0)?,
                    destination: row.get(1)?,
                    path: PathBuf::from(row.get::<_, String>(2)?),
                    attempts: row.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// When the next queued send of `destination` is due, if any is queued.
    pub fn next_send_due(&self, destination: &str) -> Result<Option<f64>, LedgerError> {
        self.conn
            .query_row(
                "SELECT MIN(next_attempt) FROM sends WHERE destination = ?1 AND state = 'queued'",
                params![destination],
                |row| row.get::<_, Option<f64>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(|e| self.err(e))
    }

    /// The peer acknowledged the instance: one commit (one fsync) records
    /// the send and the destination's last success.
    pub fn send_acknowledged(&mut self, id: i64, destination: &str) -> Result<(), LedgerError> {
        let now = now();
        let path = self.path.clone();
        let wrap = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let transaction = self.conn.transaction().map_err(wrap)?;
        transaction
            .execute(
                "UPDATE sends SET state = 'sent', attempts = attempts + 1, reason = NULL, updated = ?2 WHERE id = ?1",
                params![id, now],
            )
            .map_err(wrap)?;
        transaction
            .execute(
                "INSERT INTO send_destinations (name, last_success) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET last_success = ?2",
                params![destination, now],
            )
            .map_err(wrap)?;
        transaction.commit().map_err(wrap)
    }

    /// A transient failure: try again at `next_attempt`.
    pub fn send_retry(&self, id: i64, next_attempt: f64, reason: &str) -> Result<(), LedgerError> {
        self.conn
            .execute(
                "UPDATE sends SET attempts = attempts + 1, next_attempt = ?2, reason = ?3, updated = ?4 WHERE id = ?1",
                params![id, next_attempt, reason, now()],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// A permanent failure: dead letter, kept with its reason until requeued.
    pub fn send_dead(&self, id: i64, reason: &str) -> Result<(), LedgerError> {
        self.conn
            .execute(
                "UPDATE sends SET state = 'dead', attempts = attempts + 1, reason = ?2, updated = ?3 WHERE id = ?1",
                params![id, reason, now()],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Notes a destination's latest error (connection refused, rejection, failure status).
    pub fn destination_error(&self, destination: &str, error: &str) -> Result<(), LedgerError> {
        self.conn
            .execute(
                "INSERT INTO send_destinations (name, last_error, last_error_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET last_error = ?2, last_error_at = ?3",
                params![destination, error, now()],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Per destination: queue counts by state, last success, last error
    /// (none when no daemon with this version created the queue yet).
    pub fn destination_summaries(&self) -> Result<Vec<DestinationSummary>, LedgerError> {
        let tables: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('sends', 'send_destinations')",
                [],
                |row| row.get(0),
            )
            .map_err(|e| self.err(e))?;
        if tables < 2 {
            return Ok(Vec::new());
        }
        let mut statement = self
            .conn
            .prepare(
                "SELECT d.name,
                        (SELECT COUNT(*) FROM sends s WHERE s.destination = d.name AND s.state = 'queued'),
                        (SELECT COUNT(*) FROM sends s WHERE s.destination = d.name AND s.state = 'sent'),
                        (SELECT COUNT(*) FROM sends s WHERE s.destination = d.name AND s.state = 'dead'),
                        m.last_success, m.last_error, m.last_error_at
                 FROM (SELECT DISTINCT destination AS name FROM sends
                       UNION SELECT name FROM send_destinations) d
                 LEFT JOIN send_destinations m ON m.name = d.name
                 ORDER BY d.name",
            )
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok(DestinationSummary {
                    name: row.get(0)?,
                    queued: row.get::<_, i64>(1)? as u64,
                    sent: row.get::<_, i64>(2)? as u64,
                    dead: row.get::<_, i64>(3)? as u64,
                    last_success: row.get(4)?,
                    last_error: row.get(5)?,
                    last_error_at: row.get(6)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Dead letters with their reasons (newest first), for `synthd status`.
    pub fn dead_letters(&self, limit: u32) -> Result<Vec<(String, PathBuf, String)>, LedgerError> {
        let mut statement = self
            .conn
            .prepare(
                "SELECT destination, path, COALESCE(reason, '') FROM sends WHERE state = 'dead'
                 ORDER BY updated DESC LIMIT ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map(params![limit], |row| {
                Ok((row.get(0)?, PathBuf::from(row.get::<_, String>(1)?), row.get(2)?))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Puts dead letters (of one destination, or all) back in the queue, due now.
    pub fn requeue_dead_letters(&self, destination: Option<&str>) -> Result<usize, LedgerError> {
        self.conn
            .execute(
                "UPDATE sends SET state = 'queued', attempts = 0, next_attempt = ?2, reason = NULL, updated = ?2
                 WHERE state = 'dead' AND (?1 IS NULL OR destination = ?1)",
                params![destination, now()],
            )
            .map_err(|e| self.err(e))
    }

    /// The state of the send of `path` to `destination`, if queued ever.
    pub fn send_state(&self, destination: &str, path: &Path) -> Result<Option<String>, LedgerError> {
        self.conn
            .query_row(
                "SELECT state FROM sends WHERE destination = ?1 AND path = ?2",
                params![destination, path.to_string_lossy()],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_is_queued_once_retried_dead_lettered_and_requeued() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        assert!(ledger.jobs_to_export().unwrap().is_empty(), "first call marks the past");
        let files = vec![PathBuf::from("/o/a.dcm"), PathBuf::from("/o/b.dcm")];
        let destinations = vec!["pacs".to_string()];
        assert_eq!(ledger.enqueue_sends(1, &destinations, &files).unwrap(), 2);
        assert_eq!(
            ledger.enqueue_sends(1, &destinations, &files).unwrap(),
            0,
            "never twice"
        );
        let due = ledger.due_sends("pacs", now(), 10).unwrap();
        assert_eq!(due.len(), 2);
        ledger.send_acknowledged(due[0].id, "pacs").unwrap();
        ledger
            .send_retry(due[1].id, now() + 60.0, "connection refused")
            .unwrap();
        assert!(ledger.due_sends("pacs", now(), 10).unwrap().is_empty());
        ledger.send_dead(due[1].id, "0xA900").unwrap();
        let summary = &ledger.destination_summaries().unwrap()[0];
        assert_eq!((summary.queued, summary.sent, summary.dead), (0, 1, 1));
        assert!(summary.last_success.is_some());
        assert_eq!(ledger.requeue_dead_letters(Some("pacs")).unwrap(), 1);
        assert_eq!(ledger.due_sends("pacs", now() + 1.0, 10).unwrap().len(), 1);
        assert_eq!(
            ledger.send_state("pacs", Path::new("/o/a.dcm")).unwrap().as_deref(),
            Some("sent")
        );
    }
}
