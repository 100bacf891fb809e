//! The metrics listener of a real daemon: counters move as a study and a
//! bad file go through, as synthesized series pass, are flagged or are
//! quarantined by QC (with ONNX Runtime batches counted), and as sends to
//! Orthanc succeed, are retried while it is down or fail for good;
//! `/metrics` agrees with `synthd status --json`, no planted identifier
//! shows, health endpoints, and clients that are slow or hostile on purpose.

mod common;
mod daemon_support;
mod metrics_support;
mod net_support;

use daemon_support::*;
use metrics_support::*;
use net_support::{add_destination, destination, Orthanc};
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

/// Synthesis steps of the QC test's pipelines: each synthesized series is
/// one batch (its 24 slices fit `batch = 32`), so one model run per step.
const STEPS: u32 = 3;

/// The QC test's pipelines: (name, Series Description glob, `[synth.qc]`).
/// The tiny random model fills noise: under the site key the test uses, every
/// series has slices 10–58 % off the original, within 1.0 and not within 0.01.
const QC_PIPELINES: [(&str, &str, &str); 3] = [
    ("tiny-pass", "*PASS*", "max_fill_bias = 1.0"),
    ("tiny-flag", "*FLAG*", "max_fill_bias = 0.01"),
    (
        "tiny-quarantine",
        "*QUARANTINE*",
        "max_fill_bias = 0.01\non_fail = \"quarantine\"",
    ),
];

/// A synthesizing pipeline of the tiny contract model on the CPU, taking
/// the T1 series whose description matches `glob`, masks generated. (Not
/// the study's SEG: a SEG goes to the first pipeline that takes SEG masks,
/// whichever series it references, so three such pipelines would share one.)
fn tiny_pipeline(name: &str, glob: &str, qc: &str) -> String {
    format!(
        "name = \"{name}\"\n[match]\nmodality = [\"MR\"]\nseries_description = [\"{glob}\"]\n\
         [deid]\noptions = [\"retain-longitudinal-modified-dates\"]\n\
         [synth]\nmodel = \"{}\"\nsteps = {STEPS}\nseed = 5\nbatch = 32\nproviders = [\"cpu\"]\n\
         [synth.mask]\ndiameter_mm = [20.0, 30.0]\n[synth.qc]\n{qc}\n",
        common::repo("fixtures/models/tiny/tiny-cond.onnx").display()
    )
}

/// Copies of the demo study (24 T1 slices and the SEG, which follows its
/// T1 series' pipeline), one per QC pipeline, the T1 series described
/// so that exactly that pipeline takes it.
fn qc_studies(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    common::make_studies(dir, QC_PIPELINES.len(), 24);
    QC_PIPELINES
        .iter()
        .enumerate()
        .map(|(k, (_, glob, _))| {
            let study = dir.join(format!("study-{k:03}"));
            let description = format!("AX T1 {}", glob.trim_matches('*'));
            for file in files_under(&study) {
                let mut object = dicom_object::open_file(&file).unwrap();
                if object
                    .element(dicom_dictionary_std::tags::MODALITY)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    == "MR"
                {
                    object.put(dicom_core::DataElement::new(
                        dicom_dictionary_std::tags::SERIES_DESCRIPTION,
                        dicom_core::VR::LO,
                        dicom_core::PrimitiveValue::from(description.as_str()),
                    ));
                    object.write_to_file(&file).unwrap();
                }
            }
            study
        })
        .collect()
}

#[test]
fn synthetic_series_count_by_qc_outcome_and_onnx_batches_by_provider() {
    let (layout, port) = metrics_layout_with(&[("/pipelines/deid-only.toml\"]", "/pipelines-qc\"]")]);
    let pipelines = layout.path("pipelines-qc");
    fs::create_dir(&pipelines).unwrap();
    for (name, glob, qc) in QC_PIPELINES {
        fs::write(pipelines.join(format!("{name}.toml")), tiny_pipeline(name, glob, qc)).unwrap();
    }
    // A fixed key: the keyed UIDs seed the noise, so the fills (and the QC
    // verdicts) are the same on every run.
    fs::write(layout.path("synthd.key"), [0x5a_u8; 32]).unwrap();
    let studies = qc_studies(&layout.dir.path().join("studies"));
    let daemon = layout.start(&[]);
    wait_until(Duration::from_secs(30), "/healthz to answer 200", || {
        get(port, "/healthz").is_some_and(|r| r.status == 200)
    });
    let before = scrape(port);

    for study in &studies {
        // Staged beside the inbox's folders, then renamed in: an atomic arrival.
        let name = study.file_name().unwrap();
        let staging = layout.path("inbox").join(format!(".{}", name.to_string_lossy()));
        fs::create_dir(&staging).unwrap();
        for file in files_under(study) {
            fs::copy(&file, staging.join(file.file_name().unwrap())).unwrap();
        }
        fs::rename(&staging, layout.path("inbox").join(name)).unwrap();
    }
    wait_until(Duration::from_secs(180), "the three studies done", || {
        count(&layout.status(), "jobs", "done") == 3
    });
    let after = scrape(port);
    let moved = |series: &str| delta(&before, &after, series);

    for (k, (pipeline, _, _)) in QC_PIPELINES.iter().enumerate() {
        for (j, qc) in ["pass", "flagged", "quarantined"].iter().enumerate() {
            let series = format!(r#"synthd_synthetic_series_total{{pipeline="{pipeline}",qc="{qc}"}}"#);
            assert_eq!(
                moved(&series),
                f64::from(u8::from(j == k)),
                "{series}; daemon log:\n{}",
                layout.log()
            );
        }
        let provider = format!(r#"synthd_execution_provider{{pipeline="{pipeline}",provider="cpu"}}"#);
        assert_eq!(value(&after, &provider), 1.0, "{provider}");
    }
    let synthetic_families = after.keys().filter(|s| s.starts_with("synthd_synthetic_series_total{"));
    assert_eq!(
        synthetic_families.count(),
        3,
        "one series per pipeline and outcome seen"
    );
    // Every series ran one batch per step, the quarantined one included,
    // all on the CPU provider.
    let batches = moved(r#"synthd_onnx_batch_seconds_count{provider="cpu"}"#);
    assert_eq!(batches, f64::from(STEPS) * QC_PIPELINES.len() as f64);
    assert!(moved(r#"synthd_onnx_batch_seconds_sum{provider="cpu"}"#) > 0.0);
    assert_eq!(
        value(&after, r#"synthd_onnx_batch_seconds_bucket{provider="cpu",le="+Inf"}"#),
        value(&after, r#"synthd_onnx_batch_seconds_count{provider="cpu"}"#)
    );
    assert!(
        after
            .keys()
            .all(|s| !s.starts_with("synthd_onnx_batch_seconds") || s.contains(r#"provider="cpu""#)),
        "batches ran only on the CPU provider"
    );
    assert_eq!(moved(r#"synthd_quarantines_total{reason="synthesis-qc-failed"}"#), 1.0);

    // `synthd status --json` tells the same story.
    let status = layout.status();
    assert_eq!(status["qc_flagged"]["series"], 1, "{status}");
    assert_eq!(status["qc_flagged"]["recent"][0]["pipeline"], "tiny-flag", "{status}");
    assert_eq!(quarantine_codes(&layout), ["synthesis-qc-failed"]);
    wait_until(Duration::from_secs(5), "/metrics to agree with status --json", || {
        agrees(&scrape(port), &layout.status())
    });
    // The quarantined series was not written; the other two were, with their verdicts.
    let synthetic: Vec<serde_json::Value> = files_under(&layout.path("outbox"))
        .iter()
        .filter(|p| p.ends_with("manifest.jsonl"))
        .flat_map(|p| {
            fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .map(|line| serde_json::from_str::<serde_json::Value>(&line).unwrap())
        .filter(|e| e["kind"] == "synthetic")
        .collect();
    let verdicts = |pipeline: &str| -> Vec<bool> {
        synthetic
            .iter()
            .filter(|e| e["pipeline"] == pipeline && e["qc"].is_object())
            .map(|e| e["qc_pass"].as_bool().unwrap())
            .collect()
    };
    assert!(!verdicts("tiny-pass").is_empty() && verdicts("tiny-pass").iter().all(|pass| *pass));
    assert!(verdicts("tiny-flag").contains(&false));
    assert!(!synthetic.iter().any(|e| e["pipeline"] == "tiny-quarantine"));
    assert_no_phi(&get(port, "/metrics").unwrap().body);
    daemon.stop();
}

/// How many "will retry" lines the log has for `destination`.
fn retries_logged(layout: &Layout, destination: &str) -> usize {
    layout
        .log()
        .lines()
        .filter(|line| {
            line.contains("send failed; will retry") && line.contains(&format!("destination={destination} "))
        })
        .count()
}

#[test]
fn sends_count_by_destination_and_outcome_and_agree_with_status() {
    let (layout, port) = metrics_layout();
    let mut orthanc = Orthanc::start(metrics_support::free_port());
    add_destination(&layout.config, "orthanc", "SYNTHD", orthanc.dicom);
    // Orthanc knows SYNTHD only: it refuses this calling AE title, for good.
    add_destination(&layout.config, "stranger", "STRANGER", orthanc.dicom);
    let daemon = layout.start(&[]);
    wait_until(Duration::from_secs(30), "/healthz to answer 200", || {
        get(port, "/healthz").is_some_and(|r| r.status == 200)
    });
    let before = scrape(port);
    let sent = |name: &str| {
        let d = destination(&layout.status(), name);
        let n = |key: &str| d[key].as_u64().unwrap_or(0);
        (n("queued"), n("sent"), n("dead"))
    };
    let drop_study = |study: u32, count: u32| {
        for instance in 1..=count {
            let path = layout.path("inbox").join(format!("{study}-{instance}.dcm"));
            write_renamed(&path, &mr_bytes(study, 1, instance));
        }
    };

    drop_study(51, 3);
    wait_until(
        Duration::from_secs(60),
        "3 sent to orthanc, 3 dead for the stranger",
        || sent("orthanc") == (0, 3, 0) && sent("stranger") == (0, 0, 3),
    );
    // Orthanc down: the next study's sends fail and are retried until it is back.
    orthanc.stop();
    drop_study(52, 2);
    wait_until(Duration::from_secs(60), "sends to the stopped peer retried", || {
        retries_logged(&layout, "orthanc") >= 2 && retries_logged(&layout, "stranger") >= 1
    });
    orthanc.resume();
    wait_until(
        Duration::from_secs(60),
        "the queue delivered once Orthanc is back",
        || sent("orthanc") == (0, 5, 0) && sent("stranger") == (0, 0, 5),
    );
    let after = scrape(port);
    let moved = |destination: &str, outcome: &str| {
        delta(
            &before,
            &after,
            &format!(r#"synthd_sends_total{{destination="{destination}",outcome="{outcome}"}}"#),
        )
    };
    assert_eq!(moved("orthanc", "ok"), 5.0);
    assert_eq!(moved("orthanc", "failed"), 0.0);
    assert_eq!(moved("stranger", "ok"), 0.0);
    assert_eq!(moved("stranger", "failed"), 5.0);
    // Each retry is one failed attempt, logged once.
    for name in ["orthanc", "stranger"] {
        let retried = moved(name, "retried");
        assert!(retried >= 1.0, "{name}: {retried}");
        assert_eq!(retried, retries_logged(&layout, name) as f64, "{name}");
    }
    // `synthd status --json` counts the same sends: sent = ok, dead = failed.
    let status = layout.status();
    for name in ["orthanc", "stranger"] {
        let d = destination(&status, name);
        let total = |outcome: &str| {
            value(
                &after,
                &format!(r#"synthd_sends_total{{destination="{name}",outcome="{outcome}"}}"#),
            )
        };
        assert_eq!(d["sent"].as_f64(), Some(total("ok")), "{name}: {d}");
        assert_eq!(d["dead"].as_f64(), Some(total("failed")), "{name}: {d}");
        assert_eq!(d["queued"].as_u64(), Some(0), "{name}: {d}");
    }
    wait_until(Duration::from_secs(5), "/metrics to agree with status --json", || {
        agrees(&scrape(port), &layout.status())
    });
    assert_no_phi(&get(port, "/metrics").unwrap().body);
    // The status page lists both destinations and where they send.
    let page = get(port, "/").unwrap().body;
    for name in ["orthanc", "stranger"] {
        let row = format!("<tr><td>{name}</td><td>ORTHANC@127.0.0.1:{}</td></tr>", orthanc.dicom);
        assert!(page.contains(&row), "{row} missing from the page:\n{page}");
    }
    daemon.stop();
}
