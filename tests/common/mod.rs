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

/// `synthd process` of the demo study with `pipeline` into `output`; asserts
/// success and returns stdout.
pub fn process_demo(pipeline: &Path, output: &Path, key: &Path) -> String {
    let result = synthd(&[
        "process",
        "--pipeline",
        pipeline.to_str().unwrap(),
        "--input",
        repo("fixtures/dicom/demo").to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    assert_eq!(result.status.code(), Some(0), "{stdout}{}", stderr(&result));
    stdout
}
