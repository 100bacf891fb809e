//! Helpers shared by the integration tests: the binary, Python, temp keys.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn synthd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_synthd"))
        .args(args)
        .env_remove("SYNTHD_CONFIG")
        .output()
        .expect("synthd runs")
}

pub fn python() -> String {
    std::env::var("SYNTHD_PYTHON").unwrap_or_else(|_| format!("{}/.venv/bin/python", env!("CARGO_MANIFEST_DIR")))
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A fresh 0600 key file in `dir`.
pub fn key(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let output = synthd(&["keygen", path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    path
}

/// pydicom's bundled test files (from the pinned pydicom wheel in the venv).
pub fn pydicom_test_files() -> PathBuf {
    let output = Command::new(python())
        .args([
            "-c",
            "import pydicom.data, os; print(os.path.join(os.path.dirname(pydicom.data.__file__), 'test_files'))",
        ])
        .output()
        .expect("python with pydicom runs (scripts/setup.sh installs it)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// Every regular file under `dir`, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `synthd process` of the demo study with `pipeline` into `output`, however it ends.
pub fn run_process_demo(pipeline: &Path, output: &Path, key: &Path) -> Output {
    synthd(&[
        "process",
        "--pipeline",
        pipeline.to_str().unwrap(),
        "--input",
        repo("fixtures/dicom/demo").to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ])
}

/// `synthd process` of the demo study with `pipeline` into `output`; asserts
/// success and returns stdout.
pub fn process_demo(pipeline: &Path, output: &Path, key: &Path) -> String {
    let result = run_process_demo(pipeline, output, key);
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    assert_eq!(result.status.code(), Some(0), "{stdout}{}", stderr(&result));
    stdout
}

/// `count` copies of the demo study as distinct studies (new UIDs, own
/// Patient ID) under `dir/study-KKK/`, each with its first `slices` MR
/// slices and the SEG (fixtures/dicom/make_studies.py).
pub fn make_studies(dir: &Path, count: usize, slices: usize) -> PathBuf {
    let output = Command::new(python())
        .arg(repo("fixtures/dicom/make_studies.py"))
        .arg(dir)
        .arg(count.to_string())
        .args(["--slices", &slices.to_string()])
        .output()
        .expect("python with pydicom runs (scripts/setup.sh installs it)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    dir.to_path_buf()
}

/// A key file with fixed bytes, so which shard owns which study is the
/// same on every run of a test.
pub fn fixed_key(dir: &Path, byte: u8) -> PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(format!("fixed-{byte}.key"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    file.write_all(&[byte; 32]).unwrap();
    path
}

/// Every file under `root` except synthd's own state (`.synthd/`) and the
/// dataset card, by relative path, with its bytes; in manifests the
/// timings (`ort_seconds`, `total_seconds`), which differ from run to run,
/// are left out.
pub fn dataset_files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files_under(root)
        .into_iter()
        .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
        .filter(|p| !p.starts_with(".synthd") && p != Path::new("dataset.json"))
        .map(|p| {
            let bytes = std::fs::read(root.join(&p)).unwrap();
            let bytes = match p.file_name().and_then(|n| n.to_str()) {
                Some("manifest.jsonl") => without_timings_jsonl(&bytes),
                Some("manifest.csv") => without_timings_csv(&bytes),
                _ => bytes,
            };
            (p, bytes)
        })
        .collect()
}

fn without_timings_jsonl(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(bytes).lines() {
        let mut row: serde_json::Value = serde_json::from_str(line).unwrap();
        let object = row.as_object_mut().unwrap();
        object.remove("ort_seconds");
        object.remove("total_seconds");
        out.extend(serde_json::to_vec(&row).unwrap());
        out.push(b'\n');
    }
    out
}

fn without_timings_csv(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').collect();
        out.push_str(&fields[..fields.len().saturating_sub(2)].join(","));
        out.push('\n');
    }
    out.into_bytes()
}

/// Asserts two dataset trees hold the same files with the same bytes,
/// naming the first difference (never printing the bytes).
pub fn assert_same_files(a: &Path, b: &Path) {
    let (x, y) = (dataset_files(a), dataset_files(b));
    let names = |files: &[(PathBuf, Vec<u8>)]| files.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&x),
        names(&y),
        "{} and {} hold different files",
        a.display(),
        b.display()
    );
    for ((path, p), (_, q)) in x.iter().zip(&y) {
        assert!(
            p == q,
            "{} differs between {} and {}",
            path.display(),
            a.display(),
            b.display()
        );
    }
}
