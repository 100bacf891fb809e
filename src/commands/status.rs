//! `synthd status [--json]`: what the ledger says, safe while the daemon runs
//! (SQLite WAL lets readers and the writer work at once).

use crate::config::Config;
use crate::ledger::{Ledger, LEDGER_FILE};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::Path;

pub fn run(config_file: &Path, as_json: bool) -> Result<i32> {
    let config = Config::load(config_file)
        .map_err(|problems| anyhow::anyhow!("{problems}"))
        .with_context(|| format!("status: invalid config {}", config_file.display()))?;
    if !config.paths.state.join(LEDGER_FILE).is_file() {
        println!(
            "no job ledger in {} yet: the daemon has not run with this config",
            config.paths.state.display()
        );
        return Ok(0);
    }
    let ledger = Ledger::open_existing(&config.paths.state).context("status")?;
    let jobs = ledger.job_counts().context("status")?;
    let instances = ledger.instance_counts().context("status")?;
    let oldest = ledger.oldest_waiting().context("status")?;
    let now = crate::ledger::now();
    let recent = ledger.recent_quarantines(10).context("status")?;
    if as_json {
        let value = json!({
            "jobs": jobs.iter().map(|(s, n)| (s.as_str().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "instances": instances.iter().map(|(s, n)| (s.as_str().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "oldest_waiting": oldest.as_ref().map(|(study, since)| json!({"study": study, "waiting_s": (now - since).max(0.0)})),
            "recent_quarantines": recent.iter().map(|job| json!({
                "job": job.name(),
                "study": job.study_key,
                "code": job.reason_code,
                "message": job.reason_message,
                "state": job.state.as_str(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(0);
    }
    println!("jobs:");
    for (state, n) in &jobs {
        println!("  {:<13} {n}", state.as_str());
    }
    println!("instances:");
    for (state, n) in &instances {
        println!("  {:<13} {n}", state.as_str());
    }
    match oldest {
        Some((study, since)) => println!(
            "oldest waiting: {study}, {:.0}s since it arrived",
            (now - since).max(0.0)
        ),
        None => println!("oldest waiting: none"),
    }
    println!("recent quarantines (requeue with `synthd requeue JOB`):");
    if recent.is_empty() {
        println!("  none");
    }
    for job in recent {
        println!(
            "  {} {} {}: {}",
            job.name(),
            job.study_key,
            job.reason_code.as_deref().unwrap_or("?"),
            job.reason_message.as_deref().unwrap_or("")
        );
    }
    Ok(0)
}
