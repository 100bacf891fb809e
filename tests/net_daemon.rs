//! `synthd run` with `[dicom.listen]`, fed by real peers: dcmtk's echoscu
//! and storescu, and Orthanc pushing a study (REST `/modalities/{id}/store`).
//! Received instances go through the same intake as dropped files, and a
//! kill -9 mid-receive loses nothing that was acknowledged.

mod daemon_support;
mod net_support;

use daemon_support::*;
use net_support::*;
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use synthd::net::dimse::Status;

fn outputs(layout: &Layout) -> usize {
    files_under(&layout.path("outbox"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .count()
}

#[test]
fn dcmtk_echo_and_store_feed_intake_and_a_stranger_is_refused() {
    let layout = Layout::new();
    let port = free_port();
    add_listen(&layout.config, port, &["STORESCU", "ECHOSCU"], "");
    let daemon = layout.start(&[]);
    wait_for_port(port, Duration::from_secs(20));
    let port_arg = port.to_string();
    let echo = run(
        "echoscu",
        &["-aet", "ECHOSCU", "-aec", "SYNTHD", "127.0.0.1", &port_arg],
    );
    assert!(
        echo.status.success(),
        "echoscu: {}",
        String::from_utf8_lossy(&echo.stderr)
    );
    let stranger = run(
        "echoscu",
        &["-aet", "INTRUDER", "-aec", "SYNTHD", "127.0.0.1", &port_arg],
    );
    assert!(
        !stranger.status.success(),
        "an AE title outside the allow-list was accepted"
    );
    let files = write_study(&layout.dir.path().join("send"), 31, 5);
    let mut args = vec!["-aet", "STORESCU", "-aec", "SYNTHD", "127.0.0.1", &port_arg];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let store = run("storescu", &args);
    assert!(
        store.status.success(),
        "storescu: {}",
        String::from_utf8_lossy(&store.stderr)
    );
    wait_until(Duration::from_secs(30), "5 de-identified outputs", || {
        outputs(&layout) == 5
    });
    wait_until(Duration::from_secs(10), "the inbox emptied", || {
        files_under(&layout.path("inbox")).is_empty()
    });
    // The same instance again is an identical duplicate, recorded as such;
    // another with the same UID and other pixels is kept, in quarantine.
    let conflicting = layout.dir.path().join("conflicting.dcm");
    fs::write(&conflicting, mr_bytes_with(31, 1, 2, 9)).unwrap();
    for file in [files[0].display().to_string(), conflicting.display().to_string()] {
        let again = run(
            "storescu",
            &["-aet", "STORESCU", "-aec", "SYNTHD", "127.0.0.1", &port_arg, &file],
        );
        assert!(
            again.status.success(),
            "storescu: {}",
            String::from_utf8_lossy(&again.stderr)
        );
    }
    wait_until(
        Duration::from_secs(30),
        "a duplicate and a conflicting duplicate",
        || {
            count(&layout.status(), "instances", "duplicate") == 1
                && quarantine_codes(&layout) == ["conflicting-duplicate"]
        },
    );
    assert_eq!(outputs(&layout), 5);
    let log = layout.log();
    assert!(log.contains("association rejected"), "{log}");
    assert_no_phi(&log);
    daemon.stop();
}

#[test]
fn orthanc_pushes_a_study_that_synthd_deidentifies() {
    let layout = Layout::new();
    let port = free_port();
    add_listen(&layout.config, port, &["ORTHANC"], "");
    let daemon = layout.start(&[]);
    wait_for_port(port, Duration::from_secs(20));
    let orthanc = Orthanc::start(port);
    let study = orthanc.upload(&write_study(&layout.dir.path().join("send"), 32, 6));
    let answer = orthanc.post("/modalities/synthd/store", &study);
    assert_eq!(answer["FailedInstancesCount"].as_u64(), Some(0), "{answer}");
    assert_eq!(answer["InstancesCount"].as_u64(), Some(6), "{answer}");
    wait_until(Duration::from_secs(30), "6 de-identified outputs", || {
        outputs(&layout) == 6
    });
    assert_no_phi(&layout.log());
    daemon.stop();
}

#[test]
fn kill_9_during_a_receive_loses_nothing_that_was_acknowledged() {
    let layout = Layout::new();
    let port = free_port();
    add_listen(&layout.config, port, &["TESTSCU"], "");
    let daemon = layout.start(&[]);
    wait_for_port(port, Duration::from_secs(20));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let sending = Arc::new(AtomicBool::new(true));
    let sender = {
        let (acknowledged, sending) = (acknowledged.clone(), sending.clone());
        std::thread::spawn(move || {
            let (mut association, id) = associate_as_testscu(port);
            for instance in 1..=400 {
                let file = mr_bytes(33, 1, instance);
                let group_length = u32::from_le_bytes(file[140..144].try_into().unwrap()) as usize;
                let uid = format!("{STUDY_ROOT}.33.1.{instance}");
                match association.store(id, MR, &uid, &file[144 + group_length..]) {
                    Ok(status) if status == Status::SUCCESS => acknowledged.fetch_add(1, Ordering::SeqCst),
                    _ => break,
                };
            }
            sending.store(false, Ordering::SeqCst);
        })
    };
    wait_until(Duration::from_secs(20), "25 acknowledged instances", || {
        acknowledged.load(Ordering::SeqCst) >= 25
    });
    daemon.kill9();
    sender.join().unwrap();
    assert!(!sending.load(Ordering::SeqCst));
    let acknowledged = acknowledged.load(Ordering::SeqCst);
    assert!(acknowledged < 400, "the kill came after the last instance");
    let daemon = layout.start(&[]);
    // One instance may have been made durable but not yet acknowledged.
    wait_until(
        Duration::from_secs(60),
        "every acknowledged instance de-identified",
        || outputs(&layout) >= acknowledged,
    );
    wait_until(Duration::from_secs(20), "inbox and receiving folders empty", || {
        files_under(&layout.path("inbox")).is_empty()
    });
    let written = outputs(&layout);
    assert!(
        written <= acknowledged + 1,
        "{written} outputs for {acknowledged} acknowledged"
    );
    daemon.stop();
}
