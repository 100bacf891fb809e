//! `synthd process` keeps quarantined originals out of the output tree: no
//! file under the output carries an original identifying value, the
//! quarantine (beside the output, or where `--quarantine` says) names each
//! input, and the run ends non-zero (3: finished, some inputs quarantined)
//! with a line counting quarantines by reason.

mod common;

use common::{files_under, key, python, repo, stderr, synthd};
use std::path::{Path, PathBuf};

/// The fake identifying values `fixtures/deid/make_series.py` writes.
const IDENTIFYING: &[&str] = &[
    "BENCH^FAKE",
    "FAKE-BENCH-1",
    "FAKEACC9",
    "Fake Bench Hospital",
    "FAKE^DOCTOR",
    "1.2.826.0.1.3680043.10.998",
];

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Three MR instances, one of them also cut short under a telling name in
/// a subfolder, and a text file that names the patient.
fn inputs(dir: &Path) -> PathBuf {
    let input = dir.join("input");
    std::fs::create_dir_all(input.join("sub")).unwrap();
    let made = std::process::Command::new(python())
        .arg(repo("fixtures/deid/make_series.py"))
        .arg("3")
        .arg(&input)
        .status()
        .unwrap();
    assert!(made.success());
    let whole = std::fs::read(input.join("MR00000.dcm")).unwrap();
    std::fs::write(input.join("sub/BENCH_FAKE.dcm"), &whole[..whole.len() / 2]).unwrap();
    std::fs::write(input.join("notes.txt"), "BENCH^FAKE FAKE-BENCH-1 FAKEACC9\n").unwrap();
    input
}

fn pipeline(dir: &Path) -> PathBuf {
    let path = dir.join("deid.toml");
    std::fs::write(
        &path,
        "name = \"deid\"\n[match]\nmodality = [\"MR\"]\n[deid]\noptions = [\"clean-descriptors\"]\n",
    )
    .unwrap();
    path
}

fn process(dir: &Path, input: &Path, output: &Path, extra: &[&str]) -> Run {
    let key = match dir.join("site.key") {
        made if made.exists() => made,
        _ => key(dir, "site.key"),
    };
    let pipeline = pipeline(dir);
    let mut args = vec![
        "process",
        "--pipeline",
        pipeline.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let result = synthd(&args);
    Run {
        code: result.status.code(),
        stdout: String::from_utf8_lossy(&result.stdout).into_owned(),
        stderr: stderr(&result),
    }
}

/// The first identifying value found in `bytes` (any case) or in `path`.
fn identifying_in(path: &Path, bytes: &[u8]) -> Option<&'static str> {
    let haystack = String::from_utf8_lossy(bytes).to_ascii_uppercase();
    let name = path.to_string_lossy().to_ascii_uppercase();
    IDENTIFYING
        .iter()
        .copied()
        .chain(["BENCH"])
        .find(|value| haystack.contains(&value.to_ascii_uppercase()) || name.contains(&value.to_ascii_uppercase()))
}

#[test]
fn no_file_under_the_output_carries_an_original_identifying_value() {
    let dir = tempfile::tempdir().unwrap();
    let input = inputs(dir.path());
    let output = dir.path().join("out");
    // What an earlier synthd left inside the output: moved out by this run.
    let legacy = output.join("quarantine/q-00112233aabbccdd");
    std::fs::create_dir_all(&legacy).unwrap();
    std::fs::copy(input.join("sub/BENCH_FAKE.dcm"), legacy.join("input.dcm")).unwrap();
    std::fs::write(legacy.join("reason.json"), "{\"code\": \"truncated\"}\n").unwrap();

    let run = process(dir.path(), &input, &output, &[]);
    assert_eq!(run.code, Some(3), "{}{}", run.stdout, run.stderr);
    let quarantine = dir.path().join("out-quarantine");
    let line = format!(
        "quarantined 2 input(s) (not-dicom: 1, truncated: 1) in {}",
        quarantine.display()
    );
    assert!(run.stdout.contains(&line), "{}", run.stdout);
    assert!(run.stderr.contains(&line), "{}", run.stderr);
    assert!(run.stdout.contains("3 de-identified source"), "{}", run.stdout);

    let written = files_under(&output);
    assert!(
        written
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
            .count()
            == 3
    );
    for path in &written {
        let found = identifying_in(path.strip_prefix(&output).unwrap(), &std::fs::read(path).unwrap());
        assert_eq!(found, None, "{} carries an original identifying value", path.display());
    }
    assert!(
        !output.join("quarantine").exists(),
        "the old quarantine left the output"
    );

    // The quarantine holds the originals, identifiers and all (so the
    // search above would have found them), each named in its reason.json.
    let entries: Vec<PathBuf> = std::fs::read_dir(&quarantine)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        entries.len(),
        3,
        "two from this run, one moved out of the output: {entries:?}"
    );
    assert!(quarantine.join("q-00112233aabbccdd/input.dcm").is_file());
    let mut named = Vec::new();
    for entry in entries.iter().filter(|e| !e.ends_with("q-00112233aabbccdd")) {
        let copy = std::fs::read(entry.join("input.dcm")).unwrap();
        assert!(identifying_in(Path::new(""), &copy).is_some());
        let reason: serde_json::Value =
            serde_json::from_slice(&std::fs::read(entry.join("reason.json")).unwrap()).unwrap();
        let recorded = &reason["input"];
        let original = input.join(recorded["path"].as_str().unwrap());
        assert_eq!(std::fs::read(&original).unwrap(), copy);
        assert_eq!(recorded["size"].as_u64(), Some(copy.len() as u64));
        let sha = std::process::Command::new("sha256sum").arg(&original).output().unwrap();
        let sha = String::from_utf8(sha.stdout).unwrap();
        assert_eq!(recorded["sha256"].as_str(), sha.split_whitespace().next());
        named.push(recorded["path"].as_str().unwrap().to_string());
    }
    named.sort();
    assert_eq!(named, ["notes.txt", "sub/BENCH_FAKE.dcm"]);
    // Logs name no input.
    assert!(
        identifying_in(Path::new(""), run.stderr.as_bytes()).is_none(),
        "{}",
        run.stderr
    );
}

#[test]
fn a_quarantine_inside_the_output_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let input = inputs(dir.path());
    let output = dir.path().join("out");
    let inside = output.join("rejects");
    let run = process(dir.path(), &input, &output, &["--quarantine", inside.to_str().unwrap()]);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("lies inside the output"), "{}", run.stderr);
    assert!(!output.exists());

    // Elsewhere, as configured: used as given.
    let elsewhere = dir.path().join("held");
    let run = process(
        dir.path(),
        &input,
        &output,
        &["--quarantine", elsewhere.to_str().unwrap()],
    );
    assert_eq!(run.code, Some(3), "{}{}", run.stdout, run.stderr);
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 2);
    assert!(!dir.path().join("out-quarantine").exists());
}
