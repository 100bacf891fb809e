//! The metrics listener of a real daemon: counters move as a study and a
//! bad file go through, `/metrics` agrees with `synthd status --json`, no
//! planted identifier shows, health endpoints, and clients that are slow or
//! hostile on purpose.

mod daemon_support;
mod metrics_support;

use daemon_support::*;
use metrics_support::*;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn counters_move_with_a_study_and_a_bad_file_and_agree_with_status() {
    let (layout, port) = metrics_layout();
    let daemon = layout.start(&[]);
    wait_until(Duration::from_secs(20), "/healthz to answer 200", || {
        get(port, "/healthz").is_some_and(|r| r.status == 200)
    });
    let ready = get(port, "/readyz").unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    let before = scrape(port);

    let inbox = layout.path("inbox");
    for instance in 1..=3 {
        write_renamed(&inbox.join(format!("i{instance}.dcm")), &mr_bytes(1, 1, instance));
    }
    // A file name is a place senders put patient names: it must not leak either.
    fs::write(inbox.join(format!("{FAKE_NAME}.dcm")), b"this is not DICOM at all").unwrap();
    wait_until(
        Duration::from_secs(30),
        "the study done and the bad file quarantined",
        || {
            let status = layout.status();
            count(&status, "jobs", "done") == 1 && count(&status, "jobs", "quarantined") == 1
        },
    );
    let after = scrape(port);
    let moved = |series: &str| delta(&before, &after, series);
    assert_eq!(moved(r#"synthd_instances_total{state="received"}"#), 3.0);
    assert_eq!(moved(r#"synthd_instances_total{state="written"}"#), 3.0);
    assert_eq!(moved(r#"synthd_instances_total{state="quarantined"}"#), 1.0);
    assert_eq!(moved(r#"synthd_quarantines_total{reason="not-dicom"}"#), 1.0);
    assert_eq!(moved(r#"synthd_quarantines_total{reason="truncated"}"#), 0.0);
    for state in ["claimed", "written", "done"] {
        assert_eq!(
            moved(&format!(r#"synthd_studies_total{{state="{state}"}}"#)),
            1.0,
            "{state}"
        );
    }
    assert_eq!(moved(r#"synthd_stage_seconds_count{stage="deid"}"#), 3.0);
    assert_eq!(moved(r#"synthd_stage_seconds_count{stage="encode"}"#), 3.0);
    assert_eq!(moved(r#"synthd_stage_seconds_count{stage="write"}"#), 3.0);
    assert_eq!(moved(r#"synthd_stage_seconds_count{stage="intake"}"#), 4.0);
    assert_eq!(moved("synthd_study_latency_seconds_count"), 1.0);
    let latency = value(&after, "synthd_study_latency_seconds_sum");
    assert!(latency > 0.0 && latency < 20.0, "latency {latency}");
    assert!(moved("synthd_coordinator_turns_total") > 0.0);
    assert_eq!(value(&after, r#"synthd_intake_paused{cause="none"}"#), 0.0);
    assert!(value(&after, "synthd_outbox_free_bytes") > 0.0);
    assert_eq!(
        value(
            &after,
            r#"synthd_execution_provider{pipeline="deid-only",provider="none"}"#
        ),
        1.0
    );

    // The ledger gauges count what `synthd status --json` counts (read at most 1 s apart).
    wait_until(Duration::from_secs(5), "/metrics to agree with status --json", || {
        agrees(&scrape(port), &layout.status())
    });

    let text = get(port, "/metrics").unwrap().body;
    assert_no_phi(&text);
    promtool_accepts(&text);
    daemon.stop();
    assert_no_phi(&layout.log());
}

/// Every job and instance state of `status --json` has the same count in /metrics.
fn agrees(metrics: &std::collections::BTreeMap<String, f64>, status: &serde_json::Value) -> bool {
    ["jobs", "instances"].iter().all(|table| {
        let states = status[table].as_object().expect("status --json has jobs and instances");
        !states.is_empty()
            && states.iter().all(|(state, n)| {
                let series = format!("synthd_ledger_{table}{{state=\"{state}\"}}");
                metrics.get(&series).copied() == n.as_f64()
            })
    })
}

/// `promtool check metrics` lints the exposition (names, units, help).
fn promtool_accepts(text: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) is installed by scripts/setup.sh");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn health_endpoints_methods_and_paths() {
    let (layout, port) = metrics_layout();
    let daemon = layout.start(&[]);
    wait_until(Duration::from_secs(20), "/healthz to answer 200", || {
        get(port, "/healthz").is_some_and(|r| r.status == 200)
    });
    let health = get(port, "/healthz").unwrap();
    assert!(
        health.body.starts_with("ok: coordinator loop turned"),
        "{}",
        health.body
    );
    assert!(health.head.contains("Server: synthd/"), "{}", health.head);
    assert_eq!(get(port, "/nope").unwrap().status, 404);
    assert_eq!(get(port, "/metrics/extra").unwrap().status, 404);
    for method in ["POST", "PUT", "DELETE", "HEAD"] {
        let reply = request(port, method, "/metrics").unwrap();
        assert_eq!(reply.status, 405, "{method}");
        assert!(reply.head.contains("Allow: GET"), "{}", reply.head);
    }

    // An unwritable outbox makes the daemon not ready, and pauses intake.
    let outbox = layout.path("outbox");
    let held = outbox.with_extension("held");
    fs::rename(&outbox, &held).unwrap();
    wait_until(Duration::from_secs(10), "/readyz to say not ready", || {
        get(port, "/readyz").is_some_and(|r| r.status == 503 && r.body.contains("intake paused (outbox-unavailable)"))
    });
    let paused = scrape(port);
    assert_eq!(
        value(&paused, r#"synthd_intake_paused{cause="outbox-unavailable"}"#),
        1.0
    );
    assert!(!paused.contains_key(r#"synthd_intake_paused{cause="none"}"#));
    fs::rename(&held, &outbox).unwrap();
    wait_until(Duration::from_secs(20), "/readyz to say ready again", || {
        get(port, "/readyz").is_some_and(|r| r.status == 200)
    });
    daemon.stop();
}

#[test]
fn slow_and_hostile_clients_cannot_stall_the_listener() {
    let (layout, port) = metrics_layout();
    let daemon = layout.start(&[]);
    wait_until(Duration::from_secs(20), "/healthz to answer 200", || {
        get(port, "/healthz").is_some_and(|r| r.status == 200)
    });
    let rss_before = rss_kib(daemon.child.id());

    // Slowloris: many connections that send a partial head, a byte at a time.
    let mut slow: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    for stream in &mut slow {
        let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ");
    }
    // A head that never ends: 4 MiB without a line break.
    let huge = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = stream.write_all(b"GET / HTTP/1.1\r\nX-Huge: ");
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..64 {
            if stream.write_all(&chunk).is_err() {
                break;
            }
        }
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        String::from_utf8_lossy(&reply).into_owned()
    });

    for _ in 0..6 {
        for stream in &mut slow {
            let _ = stream.write_all(b"a");
        }
        let started = Instant::now();
        let reply = get(port, "/metrics").expect("a scrape gets through the slow clients");
        assert_eq!(reply.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "scrape took {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let huge_reply = huge.join().unwrap();
    assert!(!huge_reply.contains(" 200 "), "an endless head was answered 200");
    assert!(
        huge_reply.is_empty() || huge_reply.starts_with("HTTP/1.1 431"),
        "{huge_reply}"
    );

    // Every slow client was cut off by its head deadline (2 s) or evicted.
    let mut open = 0;
    for stream in &mut slow {
        stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut byte = [0u8; 1];
        if matches!(stream.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            open += 1;
        }
    }
    assert_eq!(open, 0, "{open} slow connections are still held open");
    let rss_after = rss_kib(daemon.child.id());
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert_eq!(get(port, "/healthz").unwrap().status, 200);
    daemon.stop();
}

#[test]
fn a_start_after_a_kill_is_reported_unclean_and_one_after_a_stop_is_not() {
    let (layout, port) = metrics_layout();
    let up = |what: &str| {
        wait_until(Duration::from_secs(20), what, || {
            get(port, "/healthz").is_some_and(|r| r.status == 200)
        })
    };
    let first = layout.start(&[]);
    up("the first start");
    assert_eq!(
        value(&scrape(port), "synthd_unclean_start"),
        0.0,
        "a first start is clean"
    );
    first.kill9();

    let second = layout.start(&[]);
    up("the start after a kill");
    let after_kill = scrape(port);
    assert_eq!(value(&after_kill, "synthd_unclean_start"), 1.0);
    assert!(value(&after_kill, "synthd_start_time_seconds") > 1.0e9);
    assert!(second.stop().success());

    let third = layout.start(&[]);
    up("the start after a stop");
    assert_eq!(value(&scrape(port), "synthd_unclean_start"), 0.0);
    third.stop();
}
