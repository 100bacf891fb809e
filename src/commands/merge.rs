//! `synthd merge OUTPUT... [--into DIR]`: one dataset from the shards of a
//! `synthd process` run. Reads every shard ledger under the outputs
//! (`.synthd/shards/`), checks that they form one complete run (every index
//! of one count once, each finished, the same pipeline, model and key, no
//! study in two shards), then writes `manifest.jsonl`, `manifest.csv` (every
//! study's rows, paths relative to DIR) and `dataset.json` (the dataset
//! card). Any refusal names the problem, exits 2 and writes nothing.

use crate::fsutil;
use crate::ledger::shard::{RunRecord, ShardLedger, StudyRow, SHARDS_DIR};
use crate::output::manifest::{ManifestEntry, CSV_HEADER};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

/// A refusal: the dataset is not whole or not one run. Exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refusal(String);

/// One shard as its ledger records it.
struct ShardRun {
    output: PathBuf,
    ledger: PathBuf,
    run: RunRecord,
    studies: Vec<StudyRow>,
    quarantines: BTreeMap<String, u64>,
    not_selected: u64,
}

impl ShardRun {
    fn name(&self) -> String {
        format!(
            "shard {}/{} ({})",
            self.run.shard_index,
            self.run.shard_count,
            self.ledger.display()
        )
    }
}

pub fn run(outputs: &[PathBuf], into: Option<&Path>) -> Result<i32> {
    let into = into.unwrap_or(&outputs[0]);
    match merge(outputs, into) {
        Ok(summary) => {
            println!("{summary}");
            Ok(0)
        }
        Err(error) => match error.downcast_ref::<Refusal>() {
            Some(refusal) => {
                eprintln!("error: merge refused: {refusal}; nothing was written");
                Ok(2)
            }
            None => Err(error),
        },
    }
}

fn merge(outputs: &[PathBuf], into: &Path) -> Result<String> {
    let shards = read_shards(outputs)?;
    check_one_run(&shards)?;
    check_complete(&shards)?;
    check_disjoint(&shards)?;
    let rows = read_manifests(&shards, into)?;
    let card = dataset_card(&shards, &rows);
    write(into, &rows, &card)?;
    Ok(format!(
        "synthd merge: {} shard(s), {} studies, {} instances -> {}",
        shards.len(),
        card["studies"],
        rows.len(),
        into.display()
    ))
}

fn read_shards(outputs: &[PathBuf]) -> Result<Vec<ShardRun>> {
    let mut shards = Vec::new();
    for output in outputs {
        let dir = output.join(SHARDS_DIR);
        let mut ledgers: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    name.starts_with("shard-") && name.ends_with(".sqlite")
                })
                .collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(error).with_context(|| format!("merge: cannot list {}", dir.display())),
        };
        if ledgers.is_empty() {
            return Err(Refusal(format!(
                "{} holds no shard ledger ({SHARDS_DIR}/shard-*.sqlite): is it the --output of synthd process?",
                output.display()
            ))
            .into());
        }
        ledgers.sort();
        for ledger_path in ledgers {
            let ledger = ShardLedger::open_read(&ledger_path).context("merge")?;
            shards.push(ShardRun {
                output: output.clone(),
                run: ledger.require_run().context("merge")?,
                studies: ledger.studies().context("merge")?,
                quarantines: ledger.quarantines_by_reason().context("merge")?,
                not_selected: ledger.not_selected().context("merge")?,
                ledger: ledger_path,
            });
        }
    }
    shards.sort_by_key(|s| (s.run.shard_index, s.ledger.clone()));
    Ok(shards)
}

/// Every shard must come from the same run: count, pipeline, model and key.
fn check_one_run(shards: &[ShardRun]) -> Result<()> {
    let first = &shards[0];
    let facts = |run: &RunRecord| -> [(&'static str, String); 4] {
        [
            ("shard count", run.shard_count.to_string()),
            (
                "pipeline",
                format!("{} (sha256 {})", run.pipeline_name, run.pipeline_sha256),
            ),
            (
                "model sha256",
                run.model_sha256.clone().unwrap_or_else(|| "none".into()),
            ),
            ("site key id", run.key_id.clone()),
        ]
    };
    for other in &shards[1..] {
        for ((what, a), (_, b)) in facts(&first.run).into_iter().zip(facts(&other.run)) {
            if a != b {
                return Err(Refusal(format!(
                    "{} and {} differ in {what}: {a} against {b}; merge only shards of one run",
                    first.name(),
                    other.name()
                ))
                .into());
            }
        }
    }
    Ok(())
}

/// Every index 0..count exactly once, and each shard finished.
fn check_complete(shards: &[ShardRun]) -> Result<()> {
    let count = shards[0].run.shard_count;
    let mut seen: BTreeMap<u32, &ShardRun> = BTreeMap::new();
    for shard in shards {
        if let Some(earlier) = seen.insert(shard.run.shard_index, shard) {
            return Err(Refusal(format!("{} and {} are the same shard", earlier.name(), shard.name())).into());
        }
    }
    let missing: Vec<String> = (0..count)
        .filter(|i| !seen.contains_key(i))
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        return Err(Refusal(format!(
            "shard(s) {} missing (no {SHARDS_DIR}/shard-IIII-of-{count:04}.sqlite under the outputs given); \
             run `synthd process --shard I/{count}` for each (or re-submit those array tasks) and merge again",
            missing.join(", ")
        ))
        .into());
    }
    for shard in shards {
        let writing = shard.studies.iter().filter(|s| !s.written).count();
        if shard.run.finished.is_none() || writing > 0 {
            return Err(Refusal(format!(
                "{} did not finish ({writing} studies still being written, run not marked finished): \
                 it was killed or is still running; re-run that shard, it resumes",
                shard.name()
            ))
            .into());
        }
    }
    Ok(())
}

/// No study (keyed id or de-identified folder) in two shards.
fn check_disjoint(shards: &[ShardRun]) -> Result<()> {
    let mut owner: BTreeMap<&str, &ShardRun> = BTreeMap::new();
    for shard in shards {
        for study in &shard.studies {
            for id in [study.study_key.as_str(), study.counts.folder.as_str()] {
                if id.is_empty() {
                    continue;
                }
                if let Some(other) = owner.insert(id, shard) {
                    if !std::ptr::eq(other, shard) {
                        return Err(Refusal(format!(
                            "study {} is in {} and in {}",
                            study.study_key,
                            other.name(),
                            shard.name()
                        ))
                        .into());
                    }
                }
            }
        }
    }
    Ok(())
}

/// A study's manifest rows, with paths made relative to the dataset folder.
struct Row {
    json: Value,
    entry: ManifestEntry,
}

fn read_manifests(shards: &[ShardRun], into: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for shard in shards {
        for study in shard.studies.iter().filter(|s| !s.counts.folder.is_empty()) {
            let folder = shard.output.join(&study.counts.folder);
            let path = folder.join("manifest.jsonl");
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Refusal(format!(
                    "study {} of {}: cannot read {}: {e}",
                    study.study_key,
                    shard.name(),
                    path.display()
                ))
            })?;
            let prefix = relative(into, &folder).with_context(|| format!("merge: {}", folder.display()))?;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let mut json: Value = serde_json::from_str(line)
                    .with_context(|| format!("merge: {} is not JSON lines", path.display()))?;
                let mut entry: ManifestEntry = serde_json::from_value(json.clone())
                    .with_context(|| format!("merge: {} has a row synthd does not know", path.display()))?;
                entry.path = prefix.join(&entry.path).display().to_string();
                json["path"] = Value::String(entry.path.clone());
                rows.push(Row { json, entry });
            }
        }
    }
    rows.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
    Ok(rows)
}

/// `target` relative to `base` (both made absolute), `..` where needed.
fn relative(base: &Path, target: &Path) -> std::io::Result<PathBuf> {
    let absolute = |p: &Path| -> std::io::Result<Vec<String>> {
        let p = std::path::absolute(p)?;
        Ok(p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect())
    };
    let (base, target) = (absolute(base)?, absolute(target)?);
    let common = base.iter().zip(&target).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..base.len() {
        path.push("..");
    }
    for part in &target[common..] {
        path.push(part);
    }
    Ok(path)
}

/// dataset.json: what the dataset is made of and how, for whoever gets it.
fn dataset_card(shards: &[ShardRun], rows: &[Row]) -> Value {
    let run = &shards[0].run;
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut seeds: BTreeSet<u64> = BTreeSet::new();
    let (mut qc_checked, mut qc_passed) = (0u64, 0u64);
    for row in rows {
        let kind = row.json["kind"].as_str().unwrap_or("unknown").to_string();
        *kinds.entry(kind).or_default() += 1;
        seeds.extend(row.entry.seed);
        if let Some(pass) = row.json.get("qc_pass").and_then(Value::as_bool) {
            qc_checked += 1;
            qc_passed += u64::from(pass);
        }
    }
    let mut quarantines: BTreeMap<String, u64> = BTreeMap::new();
    for shard in shards {
        for (code, n) in &shard.quarantines {
            *quarantines.entry(code.clone()).or_default() += n;
        }
    }
    let sum = |f: fn(&StudyRow) -> u64| -> u64 { shards.iter().flat_map(|s| &s.studies).map(f).sum() };
    let qc = (qc_checked > 0)
        .then(|| json!({"instances_checked": qc_checked, "passed": qc_passed, "failed": qc_checked - qc_passed}));
    json!({
        "synthd_version": env!("CARGO_PKG_VERSION"),
        "pipeline": {"name": run.pipeline_name, "sha256": run.pipeline_sha256},
        "model_sha256": run.model_sha256,
        "site_key_id": run.key_id,
        "seed": run.seed,
        "variants": run.variants,
        "seeds": seeds,
        "studies": shards.iter().map(|s| s.studies.len()).sum::<usize>(),
        "inputs": sum(|s| s.counts.inputs),
        "instances_by_kind": kinds,
        "previews": sum(|s| s.counts.previews),
        "synthetic_series": sum(|s| s.counts.synthetic_series),
        "series_not_synthesized": sum(|s| s.counts.series_not_synthesized),
        "not_selected": shards.iter().map(|s| s.not_selected).sum::<u64>(),
        "quarantines_by_reason": quarantines,
        "qc": qc,
        "shards": shards.iter().map(|s| json!({
            "index": s.run.shard_index,
            "count": s.run.shard_count,
            "output": s.output.display().to_string(),
            "studies": s.studies.len(),
            "synthd_version": s.run.synthd_version,
            "started": s.run.started,
            "finished": s.run.finished,
        })).collect::<Vec<_>>(),
    })
}

fn write(into: &Path, rows: &[Row], card: &Value) -> Result<()> {
    fsutil::create_private_dir(into).with_context(|| format!("merge: cannot create {}", into.display()))?;
    let mut jsonl = Vec::new();
    let mut csv = format!("{CSV_HEADER}\n");
    for row in rows {
        serde_json::to_writer(&mut jsonl, &row.json)?;
        jsonl.push(b'\n');
        csv.push_str(&row.entry.csv_row());
        csv.push('\n');
    }
    let mut card_bytes = serde_json::to_vec_pretty(card)?;
    card_bytes.push(b'\n');
    for (name, bytes) in [
        ("manifest.jsonl", jsonl.as_slice()),
        ("manifest.csv", csv.as_bytes()),
        ("dataset.json", card_bytes.as_slice()),
    ] {
        let path = into.join(name);
        fsutil::write_atomic(&path, bytes, 0o640).with_context(|| format!("merge: cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_between_folders() {
        assert_eq!(
            relative(Path::new("/a/b"), Path::new("/a/b/c")).unwrap(),
            Path::new("c")
        );
        assert_eq!(
            relative(Path::new("/a/b"), Path::new("/a/x/c")).unwrap(),
            Path::new("../x/c")
        );
    }
}
