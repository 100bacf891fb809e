//! `synthd quarantine discard JOB`: removes a quarantined input an admin has
//! judged worthless (a truncated re-send, a conflicting copy), so that it is
//! neither kept for ever nor quarantined again by a requeue. The ledger
//! records the job `discarded` before the folder goes, so the audit trail
//! says who took it out of custody: an admin, not synthd.

use crate::config::Config;
use crate::fsutil;
use crate::ledger::{self, JobState, Ledger};
use crate::quarantine;
use anyhow::{bail, Context, Result};
use std::path::Path;

pub fn discard(config_file: &Path, name: &str) -> Result<i32> {
    let config = Config::load(config_file)
        .map_err(|problems| anyhow::anyhow!("{problems}"))
        .with_context(|| format!("quarantine discard: invalid config {}", config_file.display()))?;
    let mut ledger = Ledger::open_existing(&config.paths.state).context("quarantine discard")?;
    let Some(id) = ledger::parse_job_name(name) else {
        bail!("quarantine discard: {name:?} is not a job name; expected e.g. job-000042 as listed by `synthd status`");
    };
    let Some(job) = ledger.job(id).context("quarantine discard")? else {
        bail!("quarantine discard: no job {name} in the ledger");
    };
    let folder = config.paths.quarantine.join(job.name());
    match job.state {
        JobState::Quarantined => {}
        // Recorded, but the removal did not finish: finish it.
        JobState::Discarded if folder.exists() => {}
        state => bail!(
            "quarantine discard: {} is {}, not quarantined; only quarantined inputs can be discarded",
            job.name(),
            state.as_str()
        ),
    }
    let code = quarantine::read_reason(&folder)
        .map(|reason| reason.code.to_string())
        .or_else(|_| job.reason_code.clone().ok_or(()))
        .unwrap_or_else(|()| "unknown".into());
    ledger.mark_discarded(job.id).context("quarantine discard")?;
    remove_folder(&folder).with_context(|| {
        format!(
            "quarantine discard: recorded {} as discarded, but cannot remove {}; remove it by hand",
            job.name(),
            folder.display()
        )
    })?;
    println!("discarded {} ({code}); the ledger records it", job.name());
    Ok(0)
}

fn remove_folder(folder: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(folder) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    match folder.parent() {
        Some(parent) => fsutil::fsync_dir(parent),
        None => Ok(()),
    }
}
