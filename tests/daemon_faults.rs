//! Bad input and a full disk: each bad input is quarantined or refused with
//! its reason code while the daemon keeps running; a full disk pauses intake
//! and loses nothing.

mod daemon_support;

use daemon_support::*;
use std::fs;
use std::time::Duration;

#[test]
fn bad_inputs_are_quarantined_with_reason_codes_and_the_daemon_keeps_running() {
    let layout = Layout::new();
    let mut daemon = layout.start(&[]);
    let inbox = layout.path("inbox");
    fs::write(
        inbox.join("notes.dcm"),
        b"this is a text file, not DICOM; FAKE data only",
    )
    .unwrap();
    fs::write(inbox.join("empty.dcm"), b"").unwrap();
    let whole = mr_bytes(20, 1, 1);
    fs::write(inbox.join("cut.dcm"), &whole[..whole.len() * 2 / 3]).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", inbox.join("passwd.dcm")).unwrap();
    // SAFETY: mkfifo on a path in our temp folder.
    let fifo = std::ffi::CString::new(inbox.join("pipe.dcm").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    // An unreadable file is not tested: the tests run as root, which bypasses
    // permission bits; the daemon leaves such a file in place and warns.
    fs::write(inbox.join("good.dcm"), mr_bytes(21, 1, 1)).unwrap();
    wait_until(Duration::from_secs(15), "the good instance written", || {
        files_under(&layout.path("outbox")).len() == 1
    });
    // The same SOP Instance with other pixels: a conflicting duplicate.
    fs::write(inbox.join("good-again.dcm"), mr_bytes_with(21, 1, 1, 9)).unwrap();
    // The same SOP Instance, identical bytes: recorded and dropped.
    fs::write(inbox.join("good-copy.dcm"), mr_bytes(21, 1, 1)).unwrap();
    wait_until(Duration::from_secs(15), "six quarantine entries", || {
        quarantine_codes(&layout).len() == 6
    });
    wait_until(Duration::from_secs(5), "the inbox emptied", || {
        files_under(&inbox).is_empty()
    });
    assert_eq!(
        quarantine_codes(&layout),
        [
            "conflicting-duplicate",
            "not-a-regular-file",
            "not-a-regular-file",
            "not-dicom",
            "truncated",
            "zero-bytes"
        ]
    );
    assert!(daemon.alive(), "bad input must never stop the daemon");
    let status = layout.status();
    assert_eq!(count(&status, "instances", "duplicate"), 1, "{status}");
    assert_eq!(count(&status, "jobs", "quarantined"), 6, "{status}");
    assert_eq!(files_under(&layout.path("outbox")).len(), 1);
    // The symlink was moved, never followed: /etc/passwd is untouched and not copied.
    assert!(fs::metadata("/etc/passwd").unwrap().len() > 0);
    for entry in fs::read_dir(layout.path("quarantine")).unwrap().flatten() {
        if let Ok(link) = fs::symlink_metadata(entry.path().join("input.link")) {
            assert!(link.file_type().is_symlink());
        }
    }
    // Requeue sends one back; a not-DICOM file comes straight back to quarantine.
    let job = status["recent_quarantines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["code"] == "not-dicom")
        .unwrap()["job"]
        .as_str()
        .unwrap()
        .to_string();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_synthd"))
        .args(["requeue", &job, "--config", layout.config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    wait_until(Duration::from_secs(10), "the requeued input quarantined again", || {
        layout.status()["jobs"]["requeued"] == 1 && quarantine_codes(&layout).len() == 6
    });
    // The conflicting copy's reason says where the other copy is; discarding
    // it removes it for good, recorded in the ledger.
    let conflict = status["recent_quarantines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["code"] == "conflicting-duplicate")
        .unwrap()
        .clone();
    let message = conflict["message"].as_str().unwrap();
    let other = files_under(&layout.path("outbox")).pop().unwrap();
    assert!(
        message.contains(&format!("output {}", other.display())) && message.contains("original "),
        "{message}"
    );
    assert!(message.contains("synthd quarantine discard JOB"), "{message}");
    let job = conflict["job"].as_str().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_synthd"))
        .args([
            "quarantine",
            "discard",
            job,
            "--config",
            layout.config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!("discarded {job} (conflicting-duplicate)")));
    assert!(!layout.path("quarantine").join(job).exists());
    let status = layout.status();
    assert_eq!(count(&status, "jobs", "discarded"), 1, "{status}");
    assert_eq!(count(&status, "instances", "discarded"), 1, "{status}");
    // Only quarantined jobs can be discarded.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_synthd"))
        .args([
            "quarantine",
            "discard",
            job,
            "--config",
            layout.config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is discarded, not quarantined"));
    assert!(daemon.stop().success());
    let log = layout.log();
    assert!(log.contains("reason=not-a-regular-file"), "{log}");
    assert_no_phi(&log);
}

#[test]
fn a_full_disk_pauses_intake_and_loses_nothing() {
    let layout = Layout::new();
    let flag = layout.dir.path().join("disk-full");
    fs::write(&flag, b"").unwrap();
    let daemon = layout.start(&[("SYNTHD_FAULT_ENOSPC_FILE", flag.to_str().unwrap())]);
    for instance in 1..=5 {
        fs::write(
            layout.path("inbox").join(format!("{instance}.dcm")),
            mr_bytes(30, 1, instance),
        )
        .unwrap();
    }
    wait_until(Duration::from_secs(15), "intake paused", || {
        layout.log().contains("intake paused")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(files_under(&layout.path("outbox")).is_empty());
    assert!(
        quarantine_codes(&layout).is_empty(),
        "a full disk must never quarantine data"
    );
    let status = layout.status();
    assert_eq!(count(&status, "instances", "claimed"), 5, "{status}");
    // Space returns.
    fs::remove_file(&flag).unwrap();
    wait_until(Duration::from_secs(20), "all five written after space returned", || {
        files_under(&layout.path("outbox")).len() == 5
    });
    wait_until(Duration::from_secs(5), "the job done", || {
        layout.status()["jobs"]["done"] == 1
    });
    assert!(files_under(&layout.path("work")).is_empty());
    assert!(daemon.stop().success());
    let log = layout.log();
    assert!(log.contains("intake resumed"), "{log}");
    assert_no_phi(&log);
}

#[test]
fn a_failing_outbox_flush_records_nothing_until_it_succeeds() {
    let layout = Layout::new();
    let flag = layout.dir.path().join("flush-fails");
    fs::write(&flag, b"").unwrap();
    let daemon = layout.start(&[("SYNTHD_FAULT_FLUSH_FILE", flag.to_str().unwrap())]);
    for instance in 1..=4 {
        fs::write(
            layout.path("inbox").join(format!("{instance}.dcm")),
            mr_bytes(31, 1, instance),
        )
        .unwrap();
    }
    wait_until(Duration::from_secs(15), "intake paused on the failed flush", || {
        let log = layout.log();
        log.contains("intake paused") && log.contains("flushing the outbox failed")
    });
    std::thread::sleep(Duration::from_secs(1));
    // Outputs may be in place, but none is durable, so none is recorded.
    let status = layout.status();
    assert_eq!(count(&status, "instances", "written"), 0, "{status}");
    assert_eq!(count(&status, "jobs", "done"), 0, "{status}");
    assert!(
        quarantine_codes(&layout).is_empty(),
        "a failed flush must never quarantine data"
    );
    fs::remove_file(&flag).unwrap();
    wait_until(Duration::from_secs(20), "the job done once the flush succeeds", || {
        layout.status()["jobs"]["done"] == 1
    });
    assert_eq!(
        files_under(&layout.path("outbox")).len(),
        4,
        "rewritten, not duplicated"
    );
    assert_eq!(count(&layout.status(), "instances", "written"), 4);
    assert!(files_under(&layout.path("work")).is_empty());
    assert!(daemon.stop().success());
    assert_no_phi(&layout.log());
}

#[test]
fn a_study_whose_only_instance_is_quarantined_is_not_logged_as_written() {
    let layout = Layout::new();
    let daemon = layout.start(&[]);
    // Burned-in annotation: refused by the deid stage, after the claim.
    let staged = layout.dir.path().join("burned.dcm");
    fs::write(&staged, mr_bytes(40, 1, 1)).unwrap();
    let mut object = dicom_object::open_file(&staged).unwrap();
    object.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::BURNED_IN_ANNOTATION,
        dicom_core::VR::CS,
        dicom_core::PrimitiveValue::from("YES"),
    ));
    object.write_to_file(&staged).unwrap();
    fs::rename(&staged, layout.path("inbox").join("burned.dcm")).unwrap();
    wait_until(Duration::from_secs(15), "the study finished", || {
        count(&layout.status(), "jobs", "done") == 1
    });
    assert!(daemon.stop().success());
    let log = layout.log();
    assert_eq!(quarantine_codes(&layout), ["burned-in-annotation"]);
    assert!(!log.contains("study written"), "{log}");
    let line = log
        .lines()
        .find(|line| line.contains("study not written: every instance was quarantined"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("job=job-") && line.contains("study=st-"), "{line}");
}
