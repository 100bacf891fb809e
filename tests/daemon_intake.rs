//! The real daemon binary taking studies from its inbox: slow senders,
//! atomic renames, `.ready` markers, rescans without inotify, SIGHUP reload.

mod daemon_support;

use daemon_support::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

#[test]
fn three_slowly_copied_studies_are_each_processed_once_after_stable_age() {
    let layout = Layout::new();
    let daemon = layout.start(&[]);
    let inbox = layout.path("inbox");
    let mut last_arrival = Instant::now();
    for study in 1..=3u32 {
        let folder = inbox.join(format!("study{study}"));
        fs::create_dir_all(&folder).unwrap();
        for instance in 1..=4u32 {
            let path = folder.join(format!("im{instance}.dcm"));
            let bytes = mr_bytes(study, 1, instance);
            // Study 3's sender renames finished files into place; the others write in place, slowly.
            if study == 3 {
                write_renamed(&path, &bytes);
            } else {
                write_slowly(&path, &bytes);
            }
            last_arrival = Instant::now();
            std::thread::sleep(Duration::from_millis(80));
        }
    }
    wait_until(Duration::from_secs(20), "12 outputs", || {
        files_under(&layout.path("outbox")).len() >= 12
    });
    // No study is complete before stable_age (1 s) has passed since its last instance.
    assert!(last_arrival.elapsed() >= Duration::from_millis(900));
    std::thread::sleep(Duration::from_millis(1500));
    let outputs = files_under(&layout.path("outbox"));
    assert_eq!(outputs.len(), 12, "{outputs:?}");
    for output in &outputs {
        let object = dicom_object::open_file(output).unwrap();
        let name = object
            .element(dicom_dictionary_std::tags::PATIENT_NAME)
            .unwrap()
            .to_str()
            .unwrap();
        assert!(!name.contains("FAKEPATIENT"), "output keeps the patient name");
    }
    assert!(files_under(&inbox).is_empty(), "{:?}", files_under(&inbox));
    assert!(files_under(&layout.path("work")).is_empty());
    let archived = files_under(&layout.path("archive"));
    assert_eq!(archived.len(), 12);
    for original in &archived {
        // Written by this test with the default umask (0644); originals hold PHI.
        let mode = fs::metadata(original).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{}", original.display());
    }
    let status = layout.status();
    assert_eq!(count(&status, "jobs", "done"), 3, "{status}");
    assert_eq!(count(&status, "instances", "written"), 12, "{status}");
    // The emptied drop folders go once quiet for stable_age (1 s).
    wait_until(Duration::from_secs(10), "the empty study folders removed", || {
        fs::read_dir(&inbox).unwrap().count() == 0
    });
    assert!(inbox.is_dir(), "the inbox itself stays");
    assert!(daemon.stop().success(), "SIGTERM must exit 0");
    let log = layout.log();
    assert_eq!(log.matches("study claimed").count(), 3, "{log}");
    assert_eq!(log.matches("study written").count(), 3, "{log}");
    assert_eq!(log.matches("study finished").count(), 3, "{log}");
    assert!(log.contains("summary"), "{log}");
    assert_no_phi(&log);
}

#[test]
fn rescans_find_files_without_inotify_and_a_ready_marker_completes_a_study_at_once() {
    let layout = Layout::with(&[("stable_age = \"1s\"", "stable_age = \"1h\"")]);
    let daemon = layout.start(&[("SYNTHD_INOTIFY", "off")]);
    let folder = layout.path("inbox").join("study7");
    fs::create_dir_all(&folder).unwrap();
    for instance in 1..=3 {
        fs::write(folder.join(format!("{instance}.dcm")), mr_bytes(7, 1, instance)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        files_under(&layout.path("outbox")).is_empty(),
        "stable_age is 1 h: nothing may be claimed yet"
    );
    fs::write(folder.join("study.ready"), b"").unwrap();
    wait_until(Duration::from_secs(10), "3 outputs after the .ready marker", || {
        files_under(&layout.path("outbox")).len() == 3
    });
    wait_until(Duration::from_secs(5), "the marker consumed", || {
        files_under(&folder).is_empty()
    });
    assert!(daemon.stop().success());
    let log = layout.log();
    assert!(log.contains("inotify off"), "{log}");
    assert_no_phi(&log);
}

#[test]
fn sighup_with_a_broken_config_keeps_the_running_one() {
    let layout = Layout::new();
    let mut daemon = layout.start(&[]);
    wait_until(Duration::from_secs(10), "serving", || layout.log().contains("serving"));
    let good = fs::read_to_string(&layout.config).unwrap();
    fs::write(&layout.config, good.replace("[daemon]", "[daemon]\nno_such_key = 1")).unwrap();
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), "reload refused", || {
        layout.log().contains("reload refused")
    });
    assert!(daemon.alive(), "a broken config must not stop the daemon");
    // Still serving with the old config.
    fs::write(layout.path("inbox").join("a.dcm"), mr_bytes(8, 1, 1)).unwrap();
    wait_until(Duration::from_secs(10), "output after the refused reload", || {
        files_under(&layout.path("outbox")).len() == 1
    });
    // A valid config reloads; what only a restart applies is said so.
    assert!(good.contains("deid_workers = 2"));
    fs::write(&layout.config, good.replace("deid_workers = 2", "deid_workers = 1")).unwrap();
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), "reloaded", || {
        layout.log().contains("reloaded config and pipelines")
    });
    assert!(daemon.stop().success());
    let log = layout.log();
    assert!(log.contains("no_such_key"), "the refusal says which key: {log}");
    assert!(
        log.contains("worker counts or queue_depth changed; they take effect at the next restart"),
        "{log}"
    );
    assert_no_phi(&log);
}

#[test]
fn a_late_instance_starts_a_follow_up_job_in_the_same_deidentified_study() {
    let layout = Layout::new();
    let daemon = layout.start(&[]);
    let inbox = layout.path("inbox");
    for instance in 1..=2 {
        fs::write(inbox.join(format!("{instance}.dcm")), mr_bytes(40, 1, instance)).unwrap();
    }
    wait_until(Duration::from_secs(10), "first job written", || {
        files_under(&layout.path("outbox")).len() == 2
    });
    // A folder moved in at once (one rename): its files raise no events of their own.
    let staging = layout.dir.path().join("late");
    fs::create_dir_all(&staging).unwrap();
    fs::write(staging.join("3.dcm"), mr_bytes(40, 1, 3)).unwrap();
    fs::rename(&staging, inbox.join("late")).unwrap();
    wait_until(Duration::from_secs(10), "follow-up job written", || {
        files_under(&layout.path("outbox")).len() == 3
    });
    let studies: Vec<_> = fs::read_dir(layout.path("outbox")).unwrap().flatten().collect();
    assert_eq!(
        studies.len(),
        1,
        "keyed UIDs put the late instance in the same de-identified study"
    );
    // An output is visible before the flush that makes it durable; only
    // then is its job recorded as done.
    wait_until(Duration::from_secs(10), "both jobs done", || {
        count(&layout.status(), "jobs", "done") == 2
    });
    assert!(daemon.stop().success());
    assert_no_phi(&layout.log());
}

#[test]
fn the_config_log_format_json_makes_every_daemon_line_json() {
    let layout = Layout::with(&[("format = \"text\"", "format = \"json\"")]);
    let daemon = layout.start(&[]);
    fs::write(layout.path("inbox").join("a.dcm"), mr_bytes(9, 1, 1)).unwrap();
    wait_until(Duration::from_secs(10), "one output", || {
        files_under(&layout.path("outbox")).len() == 1
    });
    assert!(daemon.stop().success());
    let log = layout.log();
    let lines: Vec<&str> = log.lines().filter(|line| !line.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            event.get("timestamp").is_some() && event.get("level").is_some(),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|line| line.contains("\"message\":\"serving\"")),
        "{log}"
    );
    assert_no_phi(&log);
}
