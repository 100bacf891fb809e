//! Crash safety: `kill -9` at seeded random moments while 200 instances flow
//! through, a restart each time; at the end every instance is in the outbox
//! exactly once, the inbox and work folders are empty, and the ledger agrees.

mod daemon_support;

use daemon_support::*;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::fs;
use std::time::Duration;

const STUDIES: u32 = 20;
const PER_STUDY: u32 = 10;

#[test]
fn twenty_kill_9_rounds_lose_and_duplicate_nothing() {
    let layout = Layout::new();
    let inbox = layout.path("inbox");
    let feeder = {
        let inbox = inbox.clone();
        std::thread::spawn(move || {
            for study in 1..=STUDIES {
                let folder = inbox.join(format!("s{study}"));
                fs::create_dir_all(&folder).unwrap();
                for instance in 1..=PER_STUDY {
                    let path = folder.join(format!("{instance}.dcm"));
                    let bytes = mr_bytes(100 + study, 1, instance);
                    if instance % 2 == 0 {
                        write_renamed(&path, &bytes);
                    } else {
                        fs::write(&path, &bytes).unwrap();
                    }
                    std::thread::sleep(Duration::from_millis(25));
                }
            }
        })
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4417);
    for round in 0..20 {
        let claims_before = layout.log().matches("study claimed").count();
        let daemon = layout.start(&[]);
        if round % 2 == 0 {
            std::thread::sleep(Duration::from_millis(rng.random_range(40..700)));
        } else {
            // Odd rounds aim inside a job: a few ms after a claim, while files move and outputs are written.
            let deadline = std::time::Instant::now() + Duration::from_millis(1500);
            while layout.log().matches("study claimed").count() == claims_before && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(0..25)));
        }
        daemon.kill9();
    }
    feeder.join().unwrap();
    let total = (STUDIES * PER_STUDY) as usize;
    let daemon = layout.start(&[]);
    wait_until(
        Duration::from_secs(40),
        "every instance through after the crashes",
        || {
            let status = layout.status();
            count(&status, "instances", "written") as usize == total
                && count(&status, "jobs", "done") + count(&status, "jobs", "quarantined")
                    == [
                        "claiming",
                        "claimed",
                        "deidentified",
                        "synthesized",
                        "written",
                        "done",
                        "quarantining",
                        "quarantined",
                    ]
                    .iter()
                    .map(|s| count(&status, "jobs", s))
                    .sum::<u64>()
        },
    );
    assert!(daemon.stop().success());

    let outputs = files_under(&layout.path("outbox"));
    assert_eq!(outputs.len(), total, "exactly one output per input: {outputs:?}");
    let mut sops = HashSet::new();
    for output in &outputs {
        let object = dicom_object::open_file(output).unwrap();
        let sop = object
            .element(dicom_dictionary_std::tags::SOP_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(sops.insert(sop), "two outputs for one instance");
    }
    assert!(
        files_under(&inbox).is_empty(),
        "inbox not empty: {:?}",
        files_under(&inbox)
    );
    assert!(files_under(&layout.path("work")).is_empty(), "work not empty");
    assert!(quarantine_codes(&layout).is_empty(), "nothing here is bad input");
    assert_eq!(
        files_under(&layout.path("archive")).len(),
        total,
        "every original archived once"
    );
    let status = layout.status();
    assert_eq!(count(&status, "instances", "written"), total as u64, "{status}");
    assert_eq!(count(&status, "instances", "received"), 0, "{status}");
    assert_eq!(count(&status, "instances", "claimed"), 0, "{status}");
    assert_eq!(count(&status, "instances", "duplicate"), 0, "{status}");
    let log = layout.log();
    let resumes = log.matches("resuming unfinished jobs").count();
    assert!(
        resumes >= 1,
        "no kill landed inside a job; the test proved nothing:\n{log}"
    );
    assert_no_phi(&log);
}
