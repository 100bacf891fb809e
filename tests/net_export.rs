//! The send side against a real PACS: Orthanc pushes a study to synthd,
//! synthd de-identifies it and sends the outputs back over C-STORE; while
//! Orthanc is down they wait in the queue and go when it returns; a
//! destination that refuses synthd gets dead letters, which `synthd
//! requeue --dead-letters` takes back; a restart sends nothing twice.

mod daemon_support;
mod net_support;

use daemon_support::*;
use net_support::*;
use std::time::Duration;

fn outputs(layout: &Layout) -> u64 {
    files_under(&layout.path("outbox"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .count() as u64
}

fn sent(layout: &Layout, name: &str) -> (u64, u64, u64) {
    let d = destination(&layout.status(), name);
    let n = |key: &str| d[key].as_u64().unwrap_or(0);
    (n("queued"), n("sent"), n("dead"))
}

#[test]
fn a_study_pushed_by_orthanc_comes_back_deidentified_and_waits_while_orthanc_is_down() {
    let layout = Layout::new();
    let port = free_port();
    add_listen(&layout.config, port, &["ORTHANC", "STORESCU"], "");
    let mut orthanc = Orthanc::start(port);
    add_destination(&layout.config, "orthanc", "SYNTHD", orthanc.dicom);
    // Orthanc knows SYNTHD only: it refuses this calling AE title, for good.
    add_destination(&layout.config, "stranger", "STRANGER", orthanc.dicom);
    let validate = common_validate(&layout);
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
    let daemon = layout.start(&[]);
    wait_for_port(port, Duration::from_secs(20));

    let study = orthanc.upload(&write_study(&layout.dir.path().join("send"), 41, 6));
    let answer = orthanc.post("/modalities/synthd/store", &study);
    assert_eq!(answer["FailedInstancesCount"].as_u64(), Some(0), "{answer}");
    orthanc.delete(&format!("/studies/{study}"));
    wait_until(Duration::from_secs(30), "6 outputs", || outputs(&layout) >= 6);
    let first = outputs(&layout);
    wait_until(Duration::from_secs(30), "every output acknowledged by Orthanc", || {
        sent(&layout, "orthanc") == (0, first, 0)
    });
    assert_eq!(orthanc.instance_count() as u64, first);
    let tags = orthanc.all_tags();
    for planted in [FAKE_NAME, FAKE_ID, FAKE_ACCESSION, STUDY_ROOT, "FAKE GENERAL HOSPITAL"] {
        assert!(!tags.contains(planted), "Orthanc holds the original value {planted:?}");
    }
    wait_until(Duration::from_secs(30), "the stranger's sends dead-lettered", || {
        sent(&layout, "stranger") == (0, 0, first)
    });
    let stranger = destination(&layout.status(), "stranger");
    assert!(
        stranger["last_error"].as_str().unwrap_or("").contains("rejected"),
        "{stranger}"
    );

    // Orthanc down: the next study's outputs wait in the queue, retried.
    orthanc.stop();
    let files = write_study(&layout.dir.path().join("send2"), 42, 4);
    let port_arg = port.to_string();
    let mut args = vec!["-aet", "STORESCU", "-aec", "SYNTHD", "127.0.0.1", &port_arg];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let store = run("storescu", &args);
    assert!(
        store.status.success(),
        "storescu: {}",
        String::from_utf8_lossy(&store.stderr)
    );
    wait_until(Duration::from_secs(30), "4 more outputs", || {
        outputs(&layout) >= first + 4
    });
    let total = outputs(&layout);
    wait_until(
        Duration::from_secs(20),
        "the new outputs queued after failed attempts",
        || {
            let d = destination(&layout.status(), "orthanc");
            d["queued"].as_u64() == Some(total - first) && d["last_error_at"].as_f64() > d["last_success"].as_f64()
        },
    );
    orthanc.resume();
    wait_until(
        Duration::from_secs(30),
        "the queue delivered once Orthanc is back",
        || sent(&layout, "orthanc") == (0, total, 0),
    );
    assert_eq!(orthanc.instance_count() as u64, total);

    // A restart resumes the queue and sends nothing that was acknowledged.
    let queued_lines = layout.log().matches("outputs queued for sending").count();
    daemon.kill9();
    let daemon = layout.start(&[]);
    wait_for_port(port, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sent(&layout, "orthanc"), (0, total, 0));
    assert_eq!(layout.log().matches("outputs queued for sending").count(), queued_lines);

    // Dead letters go back in the queue on request (and die again here).
    let requeue = daemon_support_requeue(&layout, "stranger");
    assert!(
        requeue.contains(&format!("requeued {total} dead letter(s)")),
        "{requeue}"
    );
    wait_until(Duration::from_secs(30), "the requeued sends dead again", || {
        sent(&layout, "stranger") == (0, 0, total)
    });
    assert_no_phi(&layout.log());
    daemon.stop();
}

fn common_validate(layout: &Layout) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_synthd"))
        .args(["validate", layout.config.to_str().unwrap()])
        .output()
        .unwrap()
}

fn daemon_support_requeue(layout: &Layout, destination: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_synthd"))
        .args([
            "requeue",
            "--dead-letters",
            "--destination",
            destination,
            "--config",
            layout.config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}
