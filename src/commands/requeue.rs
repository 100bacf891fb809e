//! `synthd requeue JOB | --all`: sends quarantined inputs back to the inbox,
//! where the running daemon takes them like any new arrival.
//! `synthd requeue --dead-letters [--destination NAME]`: sends that failed
//! permanently go back in the send queue, due at once.

use crate::config::Config;
use crate::fsutil;
use crate::ledger::{self, JobState, Ledger};
use crate::quarantine;
use anyhow::{bail, Context, Result};
use std::path::Path;

pub fn run(config_file: &Path, job: Option<&str>, all: bool) -> Result<i32> {
    let config = Config::load(config_file)
        .map_err(|problems| anyhow::anyhow!("{problems}"))
        .with_context(|| format!("requeue: invalid config {}", config_file.display()))?;
    let mut ledger = Ledger::open_existing(&config.paths.state).context("requeue")?;
    let jobs = match (job, all) {
        (Some(_), true) | (None, false) => {
            eprintln!("error: give one JOB (as listed by `synthd status`) or --all");
            return Ok(2);
        }
        (None, true) => ledger.jobs_in(JobState::Quarantined).context("requeue")?,
        (Some(name), false) => {
            let Some(id) = ledger::parse_job_name(name) else {
                bail!("requeue: {name:?} is not a job name; expected e.g. job-000042 as listed by `synthd status`");
            };
            match ledger.job(id).context("requeue")? {
                Some(job) if job.state == JobState::Quarantined => vec![job],
                Some(job) => bail!(
                    "requeue: {} is {}, not quarantined; only quarantined jobs can be requeued",
                    job.name(),
                    job.state.as_str()
                ),
                None => bail!("requeue: no job {name} in the ledger"),
            }
        }
    };
    for job in &jobs {
        let folder = config.paths.quarantine.join(job.name());
        let reason = quarantine::read_reason(&folder)
            .with_context(|| format!("requeue: cannot read {}/reason.json", folder.display()))?;
        let file = reason.file.unwrap_or_else(|| "input.dcm".to_string());
        let source = folder.join(&file);
        let target = config.paths.inbox.join(format!("requeued-{}-{file}", job.name()));
        if source.symlink_metadata().is_ok() {
            // A hidden temp name first: intake skips it until the final rename.
            let temp = config.paths.inbox.join(format!(".requeue-{}", job.name()));
            if std::fs::rename(&source, &temp).is_err() {
                std::fs::copy(&source, &temp).with_context(|| format!("requeue: cannot copy {}", source.display()))?;
                std::fs::File::open(&temp).and_then(|f| f.sync_all())?;
                std::fs::remove_file(&source)?;
            }
            fsutil::rename_durable(&temp, &target)
                .with_context(|| format!("requeue: cannot move into {}", config.paths.inbox.display()))?;
        }
        ledger.mark_requeued(job.id).context("requeue")?;
        let _ = std::fs::remove_dir_all(&folder);
        println!("requeued {} ({})", job.name(), reason.code);
    }
    if jobs.is_empty() {
        println!("nothing to requeue");
    }
    Ok(0)
}

pub fn dead_letters(config_file: &Path, destination: Option<&str>) -> Result<i32> {
    let config = Config::load(config_file)
        .map_err(|problems| anyhow::anyhow!("{problems}"))
        .with_context(|| format!("requeue: invalid config {}", config_file.display()))?;
    if let Some(name) = destination {
        if !config.raw.destinations.iter().any(|d| d.name.get_ref() == name) {
            bail!(
                "requeue: no [[destinations]] entry is named {name:?} in {}",
                config_file.display()
            );
        }
    }
    let ledger = Ledger::open_existing(&config.paths.state).context("requeue")?;
    let requeued = ledger.requeue_dead_letters(destination).context("requeue")?;
    println!("requeued {requeued} dead letter(s)");
    Ok(0)
}
