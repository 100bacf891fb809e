//! `synthd status [--json]`: what the ledger says, safe while the daemon runs
//! (SQLite WAL lets readers and the writer work at once), and whether a
//! daemon holds the ledger.
//!
//! `--json` always prints one JSON object, also before the daemon's first
//! run (`"ledger": null`) and for a config that does not load (`"error"`,
//! exit 1), so monitoring scripts never have to parse prose. [`snapshot`] is
//! the same object for other readers (a metrics endpoint).

use crate::config::Config;
use crate::ledger::{lock, Ledger, LEDGER_FILE};
use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use std::path::Path;

/// How many recent quarantines the status shows.
const RECENT: u32 = 10;
/// How many dead letters `--json` lists (newest first); the counts per
/// destination are complete.
const DEAD_LETTERS: u32 = 20;
/// How many of them the text shows per destination.
const DEAD_LETTERS_SHOWN: usize = 5;

pub fn run(config_file: &Path, as_json: bool) -> Result<i32> {
    let loaded = Config::load(config_file)
        .map_err(|problems| anyhow::anyhow!("{problems}"))
        .with_context(|| format!("status: invalid config {}", config_file.display()));
    let status = loaded.and_then(|config| snapshot(&config));
    match (status, as_json) {
        (Ok(status), true) => {
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(0)
        }
        (Ok(status), false) => {
            print_text(&status);
            Ok(0)
        }
        (Err(error), true) => {
            let value = json!({
                "config": config_file,
                "ledger": null,
                "daemon": null,
                "error": format!("{error:#}"),
            });
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(1)
        }
        (Err(error), false) => Err(error),
    }
}

/// The status as one JSON object: `config`, `ledger` (its path, or null
/// before the daemon's first run), `daemon` (`running`, `pid`), `jobs` and
/// `instances` (counts by state, every state present), `oldest_waiting`,
/// `recent_quarantines`, `destinations` and `dead_letters` (the newest
/// [`DEAD_LETTERS`]: destination, path relative to the outbox, reason).
pub fn snapshot(config: &Config) -> Result<Value> {
    let state = &config.paths.state;
    let holder = lock::holder(state).with_context(|| format!("status: cannot check {}", state.display()))?;
    let daemon = json!({
        "running": holder.is_some(),
        "pid": holder.and_then(|h| h.pid),
    });
    let ledger_path = state.join(LEDGER_FILE);
    let ledger = match ledger_path.is_file() {
        true => Some(Ledger::open_existing(state).context("status")?),
        false => None,
    };
    let ledger = match ledger {
        Some(ledger) if ledger.has_schema().context("status")? => ledger,
        _ => {
            return Ok(json!({
                "config": config.file,
                "ledger": null,
                "daemon": daemon,
                "jobs": zero_counts(crate::ledger::JobState::ALL.map(|s| s.as_str())),
                "instances": zero_counts(crate::ledger::InstanceState::ALL.map(|s| s.as_str())),
                "oldest_waiting": null,
                "recent_quarantines": [],
                "qc_flagged": {"series": 0, "recent": []},
                "destinations": destinations(config, None)?,
                "dead_letters": [],
            }))
        }
    };
    let jobs = ledger.job_counts().context("status")?;
    let instances = ledger.instance_counts().context("status")?;
    let oldest = ledger.oldest_waiting().context("status")?;
    let now = crate::ledger::now();
    let recent = ledger.recent_quarantines(RECENT).context("status")?;
    let flags = crate::output::qc::read_flags(state);
    Ok(json!({
        "qc_flagged": {
            "series": flags.len(),
            "recent": flags.iter().take(RECENT as usize).collect::<Vec<_>>(),
        },
        "config": config.file,
        "ledger": ledger_path,
        "daemon": daemon,
        "jobs": jobs.iter().map(|(s, n)| (s.as_str().to_string(), json!(n))).collect::<Map<_, _>>(),
        "instances": instances.iter().map(|(s, n)| (s.as_str().to_string(), json!(n))).collect::<Map<_, _>>(),
        "oldest_waiting": oldest.as_ref().map(|(study, since)| json!({"study": study, "waiting_s": (now - since).max(0.0)})),
        "recent_quarantines": recent.iter().map(|job| json!({
            "job": job.name(),
            "study": job.study_key,
            "code": job.reason_code,
            "message": job.reason_message,
            "state": job.state.as_str(),
        })).collect::<Vec<_>>(),
        "destinations": destinations(config, Some(&ledger))?,
        "dead_letters": dead_letters(config, &ledger)?,
    }))
}

/// The newest dead letters, each with its destination, its file (relative
/// to the outbox: outputs are named by keyed hashes, never by identifiers)
/// and the peer's reason.
fn dead_letters(config: &Config, ledger: &Ledger) -> Result<Vec<Value>> {
    let letters = ledger.dead_letters(DEAD_LETTERS).context("status")?;
    Ok(letters
        .into_iter()
        .map(|(destination, path, reason)| {
            let path = path.strip_prefix(&config.paths.outbox).unwrap_or(&path);
            json!({"destination": destination, "path": path, "reason": reason})
        })
        .collect())
}

/// Each `[[destinations]]` entry (and any the queue still names): queued,
/// sent and dead-letter counts, last success and last error (epoch seconds),
/// and whether it is configured (a removed one's queued sends are kept).
fn destinations(config: &Config, ledger: Option<&Ledger>) -> Result<Vec<Value>> {
    let mut summaries = match ledger {
        Some(ledger) => ledger.destination_summaries().context("status")?,
        None => Vec::new(),
    };
    for destination in &config.raw.destinations {
        let name = destination.name.get_ref();
        if !summaries.iter().any(|s| &s.name == name) {
            summaries.push(crate::ledger::DestinationSummary {
                name: name.clone(),
                ..Default::default()
            });
        }
    }
    summaries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(summaries
        .into_iter()
        .map(|s| {
            json!({
                "configured": config.raw.destinations.iter().any(|d| d.name.get_ref() == &s.name),
                "name": s.name,
                "queued": s.queued,
                "sent": s.sent,
                "dead": s.dead,
                "last_success": s.last_success,
                "last_error": s.last_error,
                "last_error_at": s.last_error_at,
            })
        })
        .collect())
}

fn print_destinations(status: &Value) {
    let destinations = status["destinations"].as_array().cloned().unwrap_or_default();
    if destinations.is_empty() {
        return;
    }
    let now = crate::ledger::now();
    let ago = |value: &Value| match value.as_f64() {
        Some(at) => format!("{:.0}s ago", (now - at).max(0.0)),
        None => "never".to_string(),
    };
    println!("destinations (dead letters: `synthd requeue --dead-letters`):");
    for d in destinations {
        println!(
            "  {} queued {} sent {} dead {}; last success {}",
            d["name"].as_str().unwrap_or("?"),
            d["queued"],
            d["sent"],
            d["dead"],
            ago(&d["last_success"])
        );
        if let Some(error) = d["last_error"].as_str() {
            println!("    last error {}: {error}", ago(&d["last_error_at"]));
        }
        if d["configured"] == false {
            println!("    not in [[destinations]]: its queued sends wait until it is configured again");
        }
        print_dead_letters(status, &d);
    }
}

/// A destination's newest dead letters, with how many more there are.
fn print_dead_letters(status: &Value, destination: &Value) {
    let letters: Vec<&Value> = status["dead_letters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|letter| letter["destination"] == destination["name"])
        .collect();
    for letter in letters.iter().take(DEAD_LETTERS_SHOWN) {
        println!(
            "    dead: {}: {}",
            letter["path"].as_str().unwrap_or("?"),
            letter["reason"].as_str().unwrap_or("")
        );
    }
    let dead = destination["dead"].as_u64().unwrap_or(0);
    let shown = letters.len().min(DEAD_LETTERS_SHOWN) as u64;
    if dead > shown {
        println!("    … and {} more dead letter(s)", dead - shown);
    }
}

fn zero_counts<const N: usize>(states: [&str; N]) -> Map<String, Value> {
    states.into_iter().map(|s| (s.to_string(), json!(0))).collect()
}

fn print_text(status: &Value) {
    match (status["daemon"]["running"].as_bool(), status["daemon"]["pid"].as_u64()) {
        (Some(true), Some(pid)) => println!("daemon: running (pid {pid})"),
        (Some(true), None) => println!("daemon: running"),
        _ => println!("daemon: not running"),
    }
    if status["ledger"].is_null() {
        println!(
            "no job ledger yet: the daemon has not run with {}",
            status["config"].as_str().unwrap_or("this config")
        );
        return;
    }
    let job_states = crate::ledger::JobState::ALL.map(|s| s.as_str());
    let instance_states = crate::ledger::InstanceState::ALL.map(|s| s.as_str());
    for (table, states) in [("jobs", &job_states[..]), ("instances", &instance_states[..])] {
        println!("{table}:");
        for state in states {
            println!("  {state:<13} {}", status[table][*state].as_u64().unwrap_or(0));
        }
    }
    match status["oldest_waiting"].as_object() {
        Some(oldest) => println!(
            "oldest waiting: {}, {:.0}s since it arrived",
            oldest["study"].as_str().unwrap_or("?"),
            oldest["waiting_s"].as_f64().unwrap_or(0.0)
        ),
        None => println!("oldest waiting: none"),
    }
    let flagged = status["qc_flagged"]["series"].as_u64().unwrap_or(0);
    println!("synthetic series flagged by QC (written; [synth.qc] on_fail = \"flag\"): {flagged}");
    for flag in status["qc_flagged"]["recent"].as_array().into_iter().flatten() {
        println!(
            "  {} series {}: {}",
            flag["pipeline"].as_str().unwrap_or("?"),
            flag["series"].as_str().unwrap_or("?"),
            flag["message"].as_str().unwrap_or("")
        );
    }
    println!("recent quarantines (requeue with `synthd requeue JOB`, drop with `synthd quarantine discard JOB`):");
    let recent = status["recent_quarantines"].as_array().cloned().unwrap_or_default();
    if recent.is_empty() {
        println!("  none");
    }
    for job in recent {
        println!(
            "  {} {} {}: {}",
            job["job"].as_str().unwrap_or("?"),
            job["study"].as_str().unwrap_or("?"),
            job["code"].as_str().unwrap_or("?"),
            job["message"].as_str().unwrap_or("")
        );
    }
    print_destinations(status);
}
