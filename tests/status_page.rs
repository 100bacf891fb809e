//! The status page in a real browser: Debian's `chromium`, headless, loads
//! it while the daemon takes a study and after, and the test asserts what
//! the DOM shows (and saves a screenshot under target/tmp/).

mod daemon_support;
mod metrics_support;

use daemon_support::*;
use metrics_support::*;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs headless chromium with `args` then the page's URL; its stdout.
fn chromium(port: u16, profile: &Path, args: &[&str]) -> String {
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium is installed by scripts/setup.sh");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "chromium failed: {:?}", output.status);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn chromium_shows_the_study_the_quarantine_and_no_identifier() {
    let (layout, port) = metrics_layout_with(&[("stable_age = \"1s\"", "stable_age = \"3s\"")]);
    let daemon = layout.start(&[]);
    wait_until(Duration::from_secs(20), "/healthz to answer 200", || {
        get(port, "/healthz").is_some_and(|r| r.status == 200)
    });
    let profile = layout.dir.path().join("chromium-profile");
    let inbox = layout.path("inbox");
    for instance in 1..=3 {
        write_renamed(&inbox.join(format!("i{instance}.dcm")), &mr_bytes(7, 1, instance));
    }
    fs::write(inbox.join(format!("{FAKE_ID}.dcm")), b"not DICOM").unwrap();

    // While the study waits for stable_age (3 s) or is being processed.
    let during = chromium(port, &profile, &["--dump-dom"]);
    assert!(during.contains("<h1>synthd status</h1>"), "{during}");
    assert!(during.contains(r#"id="intake" data-state="running""#), "{during}");
    assert!(during.contains(r#"<tr data-pipeline="deid-only">"#), "{during}");
    assert!(
        during.contains("oldest waiting study") || during.contains("data-study=\"st-"),
        "the page shows neither a waiting nor a processed study:\n{during}"
    );
    assert_no_phi(&during);

    wait_until(Duration::from_secs(30), "the study done", || {
        count(&layout.status(), "jobs", "done") == 1
    });
    let study = layout
        .log()
        .lines()
        .find(|line| line.contains("study claimed"))
        .and_then(|line| line.split("study=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a 'study claimed' line names the study")
        .to_string();
    // The page's ledger figures are at most 1 s old.
    std::thread::sleep(Duration::from_millis(1100));
    let after = chromium(port, &profile, &["--dump-dom"]);
    assert!(
        after.contains(&format!(r#"data-study="{study}" data-state="done""#)),
        "{after}"
    );
    assert!(after.contains(r#"<tr data-reason="not-dicom">"#), "{after}");
    assert!(
        after.contains(r#"<span id="written-last-hour" data-value="3">"#),
        "{after}"
    );
    assert!(
        after.contains(r#"<tr data-state="done"><td>done</td><td class="n">1</td></tr>"#),
        "{after}"
    );
    assert!(after.contains("none: outputs stay in the outbox"), "{after}");
    assert_no_phi(&after);

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = fs::remove_file(&screenshot);
    chromium(
        port,
        &profile,
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,1400",
            "--hide-scrollbars",
        ],
    );
    let png = fs::read(&screenshot).expect("chromium saved the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
    eprintln!("status page screenshot: {}", screenshot.display());

    daemon.stop();
    assert_no_phi(&layout.log());
}
