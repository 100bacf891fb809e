//! `synthd process --shard I/N` and `synthd merge`: N = 1 and N = 4 give the
//! same files; four shards write into one output tree at once; a killed run
//! resumes from its ledger; bad shard input and incomplete or mixed shard
//! sets are refused with exit code 2 and nothing written.

mod common;

use common::{assert_same_files, fixed_key, make_studies, repo, stderr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const STUDIES: usize = 5;
const SLICES: usize = 3;

/// The tiny test model with generated masks: a synth pipeline that is quick on CPU.
fn tiny_pipeline(dir: &Path, seed: u32) -> PathBuf {
    let path = dir.join(format!("tiny-{seed}.toml"));
    let text = format!(
        r#"name = "tiny-shards"
[match]
modality = ["MR"]
[deid]
options = ["retain-longitudinal-modified-dates", "clean-descriptors"]
[synth]
model = "{model}"
sampler = "ddim"
steps = 2
seed = {seed}
variants = 2
batch = 8
providers = ["cpu"]
[synth.mask]
source = "generated"
diameter_mm = [10.0, 20.0]
[output]
preview = true
csv = true
"#,
        model = repo("fixtures/models/tiny/tiny-cond.onnx").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn process_command(pipeline: &Path, input: &Path, output: &Path, key: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_synthd"));
    command
        .args(["process", "--pipeline"])
        .arg(pipeline)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .arg("--key-file")
        .arg(key)
        .env_remove("SYNTHD_CONFIG")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("SYNTHD_SHARD_COUNT");
    command
}

fn ok(output: Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(0), "{stdout}{}", stderr(&output));
    stdout
}

fn merge(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_synthd"))
        .arg("merge")
        .args(args)
        .output()
        .unwrap()
}

fn card(output: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(output.join("dataset.json")).unwrap()).unwrap()
}

/// Runs all `count` shards at once into `output`.
fn run_shards(pipeline: &Path, input: &Path, output: &Path, key: &Path, count: u32) {
    let children: Vec<_> = (0..count)
        .map(|index| {
            process_command(pipeline, input, output, key)
                .arg("--shard")
                .arg(format!("{index}/{count}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        ok(child.wait_with_output().unwrap());
    }
}

#[test]
fn one_shard_and_four_shards_give_the_same_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_studies(&dir.path().join("in"), STUDIES, SLICES);
    // With this key the five studies fall into all four shards (2, 1, 0, 3, 2).
    let key = fixed_key(dir.path(), 5);
    let pipeline = tiny_pipeline(dir.path(), 11);
    let (one, four) = (dir.path().join("one"), dir.path().join("four"));
    ok(process_command(&pipeline, &input, &one, &key).output().unwrap());
    run_shards(&pipeline, &input, &four, &key, 4);
    ok(merge(&[&one]));
    ok(merge(&[&four]));

    assert_same_files(&one, &four);
    let (card_one, card_four) = (card(&one), card(&four));
    for field in [
        "studies",
        "instances_by_kind",
        "model_sha256",
        "pipeline",
        "seeds",
        "site_key_id",
    ] {
        assert_eq!(card_one[field], card_four[field], "{field}");
    }
    let shards = card_four["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 4);
    let busy = shards.iter().filter(|s| s["studies"].as_u64().unwrap() > 0).count();
    assert_eq!(busy, 4, "the studies spread over the shards: {shards:?}");

    // The merged manifest lists every study's rows, by paths under the output.
    assert_eq!(card_four["studies"], STUDIES);
    assert_eq!(
        card_four["instances_by_kind"]["source"],
        STUDIES * SLICES,
        "the SEG is not selected"
    );
    assert_eq!(card_four["instances_by_kind"]["synthetic"], STUDIES * SLICES * 2);
    assert_eq!(card_four["seeds"], serde_json::json!([11]));
    assert_eq!(card_four["model_sha256"].as_str().unwrap().len(), 64);
    let manifest = std::fs::read_to_string(four.join("manifest.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = manifest.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let total: u64 = card_four["instances_by_kind"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(rows.len() as u64, total);
    for row in &rows {
        assert!(four.join(row["path"].as_str().unwrap()).is_file(), "{row}");
    }
    let csv = std::fs::read_to_string(four.join("manifest.csv")).unwrap();
    assert_eq!(csv.lines().count(), rows.len() + 1);
}

#[test]
fn a_killed_run_resumes_from_its_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_studies(&dir.path().join("in"), STUDIES, SLICES);
    let key = fixed_key(dir.path(), 7);
    let pipeline = tiny_pipeline(dir.path(), 11);
    let (clean, killed) = (dir.path().join("clean"), dir.path().join("killed"));
    ok(process_command(&pipeline, &input, &clean, &key).output().unwrap());

    // Kill the run once its first study is complete (the study's manifest is its last file).
    let mut child = process_command(&pipeline, &input, &killed, &key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !common::files_under(&killed)
        .iter()
        .any(|p| p.ends_with("manifest.jsonl"))
    {
        assert!(std::time::Instant::now() < deadline, "no study written in 60 s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let again = ok(process_command(&pipeline, &input, &killed, &key).output().unwrap());
    let resumed: usize = again
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{again}"));
    assert!(resumed < STUDIES, "{again}");
    assert_same_files(&clean, &killed);
    let third = ok(process_command(&pipeline, &input, &killed, &key).output().unwrap());
    assert!(
        third.contains(&format!("({STUDIES} already done by an earlier run)")),
        "{third}"
    );
}

#[test]
fn bad_shard_input_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let key = fixed_key(dir.path(), 7);
    let pipeline = repo("pipelines/deid-only.toml");
    let input = repo("fixtures/dicom/demo");
    let output = dir.path().join("out");
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--shard", "5/4"], vec![], "out of range for 4 shard(s)"),
        (vec!["--shard", "0/0"], vec![], "count must be at least 1"),
        (vec!["--shard", "1"], vec![], "is not INDEX/COUNT"),
        (vec![], vec![("JOB_COMPLETION_INDEX", "2")], "no shard count is given"),
        (
            vec![],
            vec![("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_COUNT", "3")],
            "out of range",
        ),
        (vec!["--shard-count", "4"], vec![], "no shard index"),
    ];
    for (args, env, expected) in cases {
        let result = process_command(&pipeline, &input, &output, &key)
            .args(&args)
            .envs(env.clone())
            .output()
            .unwrap();
        let message = stderr(&result);
        assert_eq!(result.status.code(), Some(2), "{args:?} {env:?}: {message}");
        assert!(message.contains(expected), "{args:?} {env:?}: {message}");
        assert!(!output.exists(), "{args:?} {env:?}: nothing written");
    }
}

#[test]
fn merge_refuses_incomplete_or_mixed_shards_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_studies(&dir.path().join("in"), 4, 2);
    let key = fixed_key(dir.path(), 7);
    let deid_only = repo("pipelines/deid-only.toml");
    let shard = |pipeline: &Path, output: &Path, key: &Path, shard: &str| {
        ok(process_command(pipeline, &input, output, key)
            .args(["--shard", shard])
            .output()
            .unwrap());
    };
    let refused = |args: &[&Path], expected: &str, into: &Path| {
        let result = merge(args);
        let message = stderr(&result);
        assert_eq!(result.status.code(), Some(2), "{message}");
        assert!(message.contains(expected), "{message}");
        assert!(!into.join("manifest.jsonl").exists() && !into.join("dataset.json").exists());
    };

    // A missing shard.
    let partial = dir.path().join("partial");
    shard(&deid_only, &partial, &key, "0/3");
    shard(&deid_only, &partial, &key, "2/3");
    refused(&[&partial], "shard(s) 1/3 missing", &partial);

    // A second shard count into the same output is refused by process itself.
    let result = process_command(&deid_only, &input, &partial, &key)
        .args(["--shard", "0/2"])
        .output()
        .unwrap();
    assert_eq!(result.status.code(), Some(2), "{}", stderr(&result));
    assert!(stderr(&result).contains("another shard count"), "{}", stderr(&result));

    // Shards of different pipelines, and of different keys.
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    shard(&deid_only, &a, &key, "0/2");
    let other = dir.path().join("other.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&deid_only)
            .unwrap()
            .replace("name = \"deid-only\"", "name = \"deid-other\""),
    )
    .unwrap();
    shard(&other, &b, &key, "1/2");
    let into = dir.path().join("dataset");
    let result = Command::new(env!("CARGO_BIN_EXE_synthd"))
        .arg("merge")
        .args([&a, &b])
        .arg("--into")
        .arg(&into)
        .output()
        .unwrap();
    assert_eq!(result.status.code(), Some(2), "{}", stderr(&result));
    assert!(stderr(&result).contains("differ in pipeline"), "{}", stderr(&result));
    assert!(!into.exists(), "nothing written");
    let other_key = fixed_key(dir.path(), 8);
    shard(&deid_only, &c, &other_key, "1/2");
    refused(&[&a, &c], "differ in site key id", &a);

    // The same shard twice, and a study in two shards.
    let twice = dir.path().join("twice");
    shard(&deid_only, &twice, &key, "0/2");
    refused(&[&a, &twice], "are the same shard", &a);
    let whole = dir.path().join("whole");
    shard(&deid_only, &whole, &key, "0/2");
    shard(&deid_only, &whole, &key, "1/2");
    ok(merge(&[&whole]));
    std::fs::remove_file(whole.join("dataset.json")).unwrap();
    std::fs::remove_file(whole.join("manifest.jsonl")).unwrap();
    let ledgers = whole.join(synthd::ledger::shard::SHARDS_DIR);
    let stolen = {
        let zero = synthd::ledger::shard::ShardLedger::open(&ledgers.join("shard-0000-of-0002.sqlite")).unwrap();
        zero.studies().unwrap().remove(0)
    };
    {
        let one = synthd::ledger::shard::ShardLedger::open(&ledgers.join("shard-0001-of-0002.sqlite")).unwrap();
        one.begin_study(&stolen.study_key, 1).unwrap();
        one.study_written(&stolen.study_key, &stolen.counts).unwrap();
    }
    refused(
        &[&whole],
        &format!("study {} is in shard 0/2", stolen.study_key),
        &whole,
    );

    // A shard that did not finish.
    {
        let one = synthd::ledger::shard::ShardLedger::open(&ledgers.join("shard-0001-of-0002.sqlite")).unwrap();
        one.begin_study(&stolen.study_key, 1).unwrap();
    }
    std::fs::remove_file(ledgers.join("shard-0000-of-0002.sqlite")).unwrap();
    shard(&deid_only, &whole, &key, "0/2");
    let result = merge(&[&whole]);
    assert_eq!(result.status.code(), Some(2), "{}", stderr(&result));
    assert!(stderr(&result).contains("did not finish"), "{}", stderr(&result));
}
