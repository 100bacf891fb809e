//! Helpers for the daemon tests: a layout from `synthd init` with short
//! durations, small MR fixtures with obviously FAKE patient values, the real
//! binary started and stopped (or killed), and checks on files and logs.
#![allow(dead_code)]

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Patient values planted in every fixture; none may appear in any log.
pub const FAKE_NAME: &str = "FAKEPATIENT^ZEBULON";
pub const FAKE_ID: &str = "FAKEID-4417";
pub const FAKE_ACCESSION: &str = "FAKEACC-8812";
/// Study UIDs are `{STUDY_ROOT}.{n}`; the originals must not appear in logs either.
pub const STUDY_ROOT: &str = "1.2.826.0.1.3680043.99.4417";

pub struct Layout {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Layout {
    /// `synthd init` plus the durations the tests use: settle 200ms, stable_age 1s, rescan 500ms.
    pub fn new() -> Layout {
        Layout::with(&[])
    }

    /// Like [`Layout::new`], with extra `key = value` replacements applied to synthd.toml.
    pub fn with(replacements: &[(&str, &str)]) -> Layout {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("synthd");
        let output = Command::new(env!("CARGO_BIN_EXE_synthd"))
            .args(["init", root.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let config = root.join("synthd.toml");
        let mut text = fs::read_to_string(&config).unwrap();
        let mut all = vec![
            ("stable_age = \"60s\"", "stable_age = \"1s\""),
            ("rescan_interval = \"30s\"", "rescan_interval = \"500ms\""),
            ("settle = \"2s\"", "settle = \"200ms\""),
            ("min_free_space = \"512MiB\"", "min_free_space = \"1MiB\""),
            ("shutdown_timeout = \"30s\"", "shutdown_timeout = \"5s\""),
            ("summary_interval = \"5m\"", "summary_interval = \"1s\""),
        ];
        all.extend_from_slice(replacements);
        for (from, to) in all {
            assert!(text.contains(from), "synthd init no longer writes {from}");
            text = text.replace(from, to);
        }
        fs::write(&config, text).unwrap();
        Layout { dir, config }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("synthd")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }

    pub fn start(&self, env: &[(&str, &str)]) -> Daemon {
        let log = self.dir.path().join("daemon.log");
        let file = fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_synthd"));
        command
            .args(["run", "--allow-root", "--config", self.config.to_str().unwrap()])
            .env_remove("SYNTHD_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        for (key, value) in env {
            command.env(key, value);
        }
        Daemon {
            child: command.spawn().unwrap(),
            log,
        }
    }

    /// `synthd status --json`.
    pub fn status(&self) -> serde_json::Value {
        let output = Command::new(env!("CARGO_BIN_EXE_synthd"))
            .args(["status", "--json", "--config", self.config.to_str().unwrap()])
            .output()
            .unwrap();
        // `--json` reports its error on stdout.
        assert!(
            output.status.success(),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, signal) }, 0);
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "daemon did not stop within 15 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bytes of a small MR instance (4x4, 16-bit) with FAKE patient values.
pub fn mr_bytes(study: u32, series: u32, instance: u32) -> Vec<u8> {
    mr_bytes_with(study, series, instance, 7)
}

/// As [`mr_bytes`], with the pixel value chosen (to make conflicting copies).
pub fn mr_bytes_with(study: u32, series: u32, instance: u32, pixel: u8) -> Vec<u8> {
    let study_uid = format!("{STUDY_ROOT}.{study}");
    let series_uid = format!("{study_uid}.{series}");
    let sop_uid = format!("{series_uid}.{instance}");
    let text = |tag, vr, value: &str| DataElement::new(tag, vr, PrimitiveValue::from(value));
    let number = |tag, value: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(value));
    let object = InMemDicomObject::from_element_iter([
        text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100"),
        text(tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.4"),
        text(tags::SOP_INSTANCE_UID, VR::UI, &sop_uid),
        text(tags::STUDY_DATE, VR::DA, "20240105"),
        text(tags::ACCESSION_NUMBER, VR::SH, FAKE_ACCESSION),
        text(tags::MODALITY, VR::CS, "MR"),
        text(tags::INSTITUTION_NAME, VR::LO, "FAKE GENERAL HOSPITAL"),
        text(tags::SERIES_DESCRIPTION, VR::LO, "FAKE T1 AXIAL"),
        text(tags::PATIENT_NAME, VR::PN, FAKE_NAME),
        text(tags::PATIENT_ID, VR::LO, FAKE_ID),
        text(tags::PATIENT_BIRTH_DATE, VR::DA, "19700101"),
        text(tags::PATIENT_SEX, VR::CS, "O"),
        text(tags::STUDY_INSTANCE_UID, VR::UI, &study_uid),
        text(tags::SERIES_INSTANCE_UID, VR::UI, &series_uid),
        text(tags::STUDY_ID, VR::SH, "FAKE1"),
        text(tags::SERIES_NUMBER, VR::IS, &series.to_string()),
        text(tags::INSTANCE_NUMBER, VR::IS, &instance.to_string()),
        number(tags::SAMPLES_PER_PIXEL, 1),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        number(tags::ROWS, 4),
        number(tags::COLUMNS, 4),
        number(tags::BITS_ALLOCATED, 16),
        number(tags::BITS_STORED, 12),
        number(tags::HIGH_BIT, 11),
        number(tags::PIXEL_REPRESENTATION, 0),
        DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(vec![pixel; 32])),
    ]);
    let file = object
        .with_meta(FileMetaTableBuilder::new().transfer_syntax("1.2.840.10008.1.2.1"))
        .unwrap();
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).unwrap();
    bytes
}

/// Writes `bytes` in place in two halves with a pause shorter than the settle time, as a slow sender does.
pub fn write_slowly(path: &Path, bytes: &[u8]) {
    let mut file = fs::File::create(path).unwrap();
    let half = bytes.len() / 2;
    file.write_all(&bytes[..half]).unwrap();
    file.flush().unwrap();
    std::thread::sleep(Duration::from_millis(60));
    file.write_all(&bytes[half..]).unwrap();
}

/// Writes under a temporary name, then renames into place (what careful senders do).
pub fn write_renamed(path: &Path, bytes: &[u8]) {
    let temp = path.with_extension("partial");
    fs::write(&temp, bytes).unwrap();
    fs::rename(&temp, path).unwrap();
}

/// Regular files under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let Ok(listing) = fs::read_dir(&folder) else { continue };
        for entry in listing.flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

/// Polls `check` every 100 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The log holds none of the planted patient values or original UIDs.
pub fn assert_no_phi(log: &str) {
    for planted in [
        FAKE_NAME,
        "FAKEPATIENT",
        FAKE_ID,
        FAKE_ACCESSION,
        STUDY_ROOT,
        "FAKE GENERAL HOSPITAL",
    ] {
        assert!(
            !log.contains(planted),
            "a log line holds the planted value {planted:?}:\n{log}"
        );
    }
}

/// Quarantine reason codes, from the quarantine folders' reason.json files.
pub fn quarantine_codes(layout: &Layout) -> Vec<String> {
    let mut codes: Vec<String> = fs::read_dir(layout.path("quarantine"))
        .unwrap()
        .flatten()
        .filter_map(|entry| fs::read_to_string(entry.path().join("reason.json")).ok())
        .map(|text| {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            value["code"].as_str().unwrap().to_string()
        })
        .collect();
    codes.sort();
    codes
}

pub fn count(status: &serde_json::Value, table: &str, state: &str) -> u64 {
    status[table][state].as_u64().unwrap_or(0)
}
