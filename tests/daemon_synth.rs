//! End to end through the daemon: drop the demo study into the inbox and get
//! the de-identified series, the synthetic series, its SEG, the manifest and
//! a preview in the outbox; `synthd process` writes the same files.

mod common;

use common::{files_under, repo, synthd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

fn dicom_files(root: &Path) -> Vec<PathBuf> {
    files_under(root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm" || e == "png"))
        .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
        .collect()
}

/// A site from `synthd init` with short durations and only the tiny-model
/// pipeline (SEG masks, `steps` sampler steps); returns (site, config, pipeline).
fn site_with_tiny_pipeline(dir: &Path, steps: u32) -> (PathBuf, PathBuf, PathBuf) {
    let site = dir.join("site");
    assert!(synthd(&["init", site.to_str().unwrap()]).status.success());
    let config = site.join("synthd.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("stable_age = \"60s\"", "stable_age = \"1s\"")
        .replace("rescan_interval = \"30s\"", "rescan_interval = \"300ms\"")
        .replace("settle = \"2s\"", "settle = \"200ms\"")
        .replace("/pipelines/deid-only.toml\"]", "/pipelines\"]");
    std::fs::write(&config, text).unwrap();
    // Only the test's pipeline: `init` also installs the example pipelines.
    for entry in std::fs::read_dir(site.join("pipelines")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let pipeline = site.join("pipelines/tiny-seg.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"tiny-seg\"\n[match]\nmodality = [\"MR\"]\n[deid]\noptions = [\"retain-longitudinal-modified-dates\"]\n\
             [synth]\nmodel = \"{}\"\nsteps = {steps}\nseed = 5\nproviders = [\"cpu\"]\n[synth.mask]\nsource = \"seg\"\n\
             [output]\npreview = true\n",
            repo("fixtures/models/tiny/tiny-cond.onnx").display()
        ),
    )
    .unwrap();
    (site, config, pipeline)
}

fn start_daemon(config: &Path, log: &Path) -> Daemon {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Daemon(
        Command::new(env!("CARGO_BIN_EXE_synthd"))
            .args(["run", "--allow-root", "--config", config.to_str().unwrap()])
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Copies the demo study into a hidden folder, then renames it in: an atomic arrival.
fn drop_demo_study(site: &Path) {
    let staging = site.join("inbox/.incoming");
    copy_dir(&repo("fixtures/dicom/demo"), &staging);
    std::fs::rename(&staging, site.join("inbox/demo")).unwrap();
}

fn status(config: &Path) -> serde_json::Value {
    let output = synthd(&["status", "--json", "--config", config.to_str().unwrap()]);
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn the_daemon_synthesizes_the_demo_study_like_process_does() {
    let dir = tempfile::tempdir().unwrap();
    let (site, config, pipeline) = site_with_tiny_pipeline(dir.path(), 3);
    let _daemon = start_daemon(&config, &dir.path().join("daemon.log"));
    drop_demo_study(&site);

    let outbox = site.join("outbox");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = files_under(&outbox).iter().any(|p| p.ends_with("preview.png"))
            && files_under(&site.join("inbox")).is_empty()
            && files_under(&site.join("work")).is_empty();
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not finish the study: {}",
            std::fs::read_to_string(dir.path().join("daemon.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let from_daemon = dicom_files(&outbox);
    // The de-identified study (T1 and FLAIR slices, SEG), a synthetic slice per
    // slice of both series (the SEG is drawn on T1; FLAIR shares its Frame of
    // Reference, so the mask is carried to it), and per series the mask's
    // SEG and a preview.
    let (slices, flair) = (48, 24);
    assert_eq!(
        from_daemon.len(),
        (slices + flair + 1) + (slices + flair) + 2 + 2,
        "{from_daemon:#?}"
    );
    let manifest = files_under(&outbox)
        .into_iter()
        .find(|p| p.ends_with("manifest.jsonl"))
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(manifest).unwrap().lines().count(),
        (slices + flair + 1) + (slices + flair) + 2
    );
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    for planted in ["FAKE", "Fake", "DEMO^"] {
        assert!(!log.contains(planted), "a patient value reached the log: {planted}");
    }

    let processed = dir.path().join("processed");
    common::process_demo(&pipeline, &processed, &site.join("synthd.key"));
    assert_eq!(
        dicom_files(&processed),
        from_daemon,
        "process and run write the same files"
    );
    for file in &from_daemon {
        assert_eq!(
            std::fs::read(outbox.join(file)).unwrap(),
            std::fs::read(processed.join(file)).unwrap(),
            "{} differs between run and process",
            file.display()
        );
    }
}

#[test]
fn sigterm_during_synthesis_waits_for_it_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    // Enough sampler steps that the stop lands while the model runs, and
    // time to finish it however loaded the machine is.
    let (site, config, _) = site_with_tiny_pipeline(dir.path(), 100);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("shutdown_timeout = \"30s\"", "shutdown_timeout = \"600s\""),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");
    let mut daemon = start_daemon(&config, &log);
    drop_demo_study(&site);
    // Every instance written: the synth stage has the study now.
    let deadline = Instant::now() + Duration::from_secs(120);
    let inputs = std::fs::read_dir(repo("fixtures/dicom/demo")).unwrap().count();
    while status(&config)["instances"]["written"] != inputs {
        assert!(Instant::now() < deadline, "{}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(daemon.0.id() as libc::pid_t, libc::SIGTERM) }, 0);
    assert!(daemon.0.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let stopping = text.find("stopping").expect("the stop is logged");
    let written = text
        .lines()
        .find(|line| line.contains("synthesis written"))
        .unwrap_or_else(|| panic!("no synthesis line: {text}"));
    assert!(
        text.find("synthesis written").unwrap() > stopping,
        "synthesis finished before the stop; make it slower: {text}"
    );
    assert!(
        written.contains("study=st-") && written.contains("job=job-"),
        "{written}"
    );
    let after = status(&config);
    assert_eq!(after["jobs"]["done"], 1, "{after}");
    assert!(files_under(&site.join("outbox"))
        .iter()
        .any(|p| p.ends_with("preview.png")));
    // A restart finds nothing to redo.
    let _again = start_daemon(&config, &log);
    std::thread::sleep(Duration::from_secs(2));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("synthesis written").count(), 1, "{text}");
}
