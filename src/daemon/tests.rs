//! The coordinator driven step by step in-process. The engine here is a
//! test double for the stage seam only (it copies bytes under a
//! content-derived name); the real binary's engine is tested end to end in
//! tests/daemon_*.rs.

use super::*;
use crate::ledger::{InstanceState, JobState};
use crate::quarantine::{ReasonCode, Rejection};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use std::path::Path;

struct CopyEngine;

impl Engine for CopyEngine {
    type Item = Vec<u8>;
    fn deidentify(&self, _pipeline: &str, path: &Path) -> Result<Vec<u8>, Rejection> {
        let bytes = std::fs::read(path).map_err(|e| Rejection::new(ReasonCode::Truncated, e.to_string()))?;
        if bytes.windows(13).any(|w| w == b"REJECT^ME^NOW") {
            return Err(Rejection::new(ReasonCode::ResidualPhi, "planted residual value"));
        }
        Ok(bytes)
    }
    fn encode(&self, item: &Vec<u8>) -> Result<(PathBuf, Vec<u8>), Rejection> {
        let name = crate::ingest::header::hex(&crate::ingest::read_header(item)?.content_digest.as_bytes()[..8]);
        Ok((PathBuf::from(format!("study/{name}.dcm")), item.clone()))
    }
}

pub(crate) fn write_mr(path: &Path, study: &str, sop: &str, patient: &str) {
    write_mr_with_pixels(path, study, sop, patient, 32);
}

/// `count` instances of one study, `0.dcm`, `1.dcm`, ... in `folder`.
fn write_study(folder: &Path, study: &str, count: usize, patient: &str) {
    for n in 0..count {
        write_mr(
            &folder.join(format!("{n}.dcm")),
            study,
            &format!("{study}.{n}"),
            patient,
        );
    }
}

fn write_mr_with_pixels(path: &Path, study: &str, sop: &str, patient: &str, pixel_bytes: usize) {
    let object = InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.4"),
        ),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(sop)),
        DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from("MR")),
        DataElement::new(tags::PATIENT_NAME, VR::PN, PrimitiveValue::from(patient)),
        DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, PrimitiveValue::from(study)),
        DataElement::new(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(format!("{study}.1")),
        ),
        DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(vec![7u8; pixel_bytes])),
    ]);
    let file = object
        .with_meta(FileMetaTableBuilder::new().transfer_syntax("1.2.840.10008.1.2.1"))
        .unwrap();
    file.write_to_file(path).unwrap();
}

fn layout(dir: &Path) -> Config {
    for name in ["inbox", "work", "outbox", "quarantine", "archive", "state", "pipelines"] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
    }
    crate::keyfile::generate(&dir.join("synthd.key")).unwrap();
    std::fs::write(
        dir.join("pipelines/mr.toml"),
        "name = \"mr\"\n[match]\nmodality = [\"MR\"]\n",
    )
    .unwrap();
    let text = "pipelines = [\"pipelines\"]\n[paths]\ninbox = \"inbox\"\nwork = \"work\"\noutbox = \"outbox\"\n\
         quarantine = \"quarantine\"\narchive = \"archive\"\nstate = \"state\"\n\
         [ingest]\nstable_age = \"300ms\"\nrescan_interval = \"100ms\"\nsettle = \"0s\"\n\
         [deid]\nkey_file = \"synthd.key\"\n[daemon]\nmin_free_space = \"1MiB\"\n";
    std::fs::write(dir.join("synthd.toml"), text).unwrap();
    Config::load(&dir.join("synthd.toml")).unwrap()
}

fn start(config: &Config) -> Daemon<CopyEngine> {
    let key = SiteKey::read(&config.key_file).unwrap();
    Daemon::start(
        config.clone(),
        key,
        Box::new(|_, _| Ok(CopyEngine)),
        Options { no_inotify: true },
    )
    .unwrap()
}

fn run_until_idle(daemon: &mut Daemon<CopyEngine>, inbox: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        daemon.step().unwrap();
        let inbox_empty = crate::ingest::scan_inbox(inbox).unwrap().is_empty();
        if inbox_empty && daemon.idle().unwrap() {
            return;
        }
        assert!(Instant::now() < deadline, "daemon did not go idle");
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(folder).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn studies_are_claimed_written_archived_and_duplicates_handled() {
    let dir = tempfile::tempdir().unwrap();
    let config = layout(dir.path());
    let inbox = config.paths.inbox.clone();
    std::fs::create_dir_all(inbox.join("a")).unwrap();
    write_mr(&inbox.join("a/1.dcm"), "1.2.3.100", "1.2.3.100.1", "FAKE^ALPHA");
    write_mr(&inbox.join("a/2.dcm"), "1.2.3.100", "1.2.3.100.2", "FAKE^ALPHA");
    write_mr(&inbox.join("b.dcm"), "1.2.3.200", "1.2.3.200.1", "REJECT^ME^NOW");
    std::fs::write(inbox.join("junk.dcm"), b"not a dicom file at all").unwrap();
    let mut daemon = start(&config);
    run_until_idle(&mut daemon, &inbox);
    assert_eq!(files_under(&config.paths.outbox).len(), 2);
    assert_eq!(files_under(&config.paths.archive).len(), 2);
    assert!(files_under(&config.paths.work).is_empty());
    // Same SOP, same bytes: dropped. Same SOP, other bytes: conflicting duplicate.
    std::fs::copy(&files_under(&config.paths.archive)[0], inbox.join("again.dcm")).unwrap();
    write_mr(&inbox.join("conflict.dcm"), "1.2.3.100", "1.2.3.100.2", "FAKE^OTHER");
    run_until_idle(&mut daemon, &inbox);
    let counts: HashMap<_, _> = daemon.ledger.instance_counts().unwrap().into_iter().collect();
    assert_eq!(counts[&InstanceState::Written], 2);
    assert_eq!(counts[&InstanceState::Duplicate], 1);
    assert_eq!(counts[&InstanceState::Quarantined], 3);
    let reasons: Vec<String> = daemon
        .ledger
        .recent_quarantines(10)
        .unwrap()
        .into_iter()
        .map(|job| job.reason_code.unwrap())
        .collect();
    for code in ["residual-phi", "not-dicom", "conflicting-duplicate"] {
        assert!(reasons.iter().any(|r| r == code), "{code} missing from {reasons:?}");
    }
    for job in daemon.ledger.recent_quarantines(10).unwrap() {
        let folder = config.paths.quarantine.join(job.name());
        let reason = crate::quarantine::read_reason(&folder).unwrap();
        assert_eq!(reason.code.as_str(), job.reason_code.unwrap());
        let copy = std::fs::read(folder.join("input.dcm")).unwrap();
        // Which input it was: its path under the inbox, size and digest.
        let input = reason.input.expect("reason.json names the input");
        assert!(
            ["b.dcm", "junk.dcm", "conflict.dcm"].contains(&input.path.as_str()),
            "{input:?}"
        );
        assert_eq!(input.size, Some(copy.len() as u64));
        use sha2::Digest;
        let digest: String = sha2::Sha256::digest(&copy).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(input.sha256, Some(digest));
    }
}

#[test]
fn an_interrupted_claim_resumes_after_restart_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let config = layout(dir.path());
    let inbox = config.paths.inbox.clone();
    write_study(&inbox, "1.2.3.300", 3, "FAKE^BETA");
    {
        // A stable_age no slow start can outlast, so that this turn records
        // the instances without claiming them.
        let mut recording = config.clone();
        recording.raw.ingest.stable_age = crate::config::units::HumanDuration(std::time::Duration::from_secs(600));
        let mut daemon = start(&recording);
        // Record the instances, then crash mid-claim: job Claiming, one file moved.
        daemon.step().unwrap();
        let ids: Vec<i64> = daemon.ledger.received().unwrap().iter().map(|i| i.id).collect();
        assert_eq!(ids.len(), 3);
        let job = daemon.ledger.begin_claim("st-test", &ids).unwrap();
        let first = daemon.ledger.instance(ids[0]).unwrap().unwrap();
        let work = config.paths.work.join(crate::ledger::job_name(job));
        std::fs::create_dir_all(&work).unwrap();
        // Intake moved each file into its study's receiving folder.
        let received = receiving::Receiving::path(&config.paths.work, &first.study_key, first.id);
        std::fs::rename(received, work.join(first.work_name())).unwrap();
    }
    let mut daemon = start(&config);
    run_until_idle(&mut daemon, &inbox);
    assert_eq!(files_under(&config.paths.outbox).len(), 3);
    assert!(files_under(&config.paths.inbox).is_empty());
    assert!(daemon.ledger.unfinished_jobs().unwrap().is_empty());
    assert_eq!(daemon.ledger.jobs_in(JobState::Done).unwrap().len(), 1);
}

#[test]
fn small_outputs_are_written_by_the_deid_worker_and_large_ones_by_the_output_stage() {
    let dir = tempfile::tempdir().unwrap();
    let config = layout(dir.path());
    let inbox = config.paths.inbox.clone();
    let large = crate::fsutil::DIRECT_WRITE_MIN + 4096 + 6;
    write_mr_with_pixels(&inbox.join("small.dcm"), "1.2.3.400", "1.2.3.400.1", "FAKE^GAMMA", 32);
    write_mr_with_pixels(
        &inbox.join("large.dcm"),
        "1.2.3.400",
        "1.2.3.400.2",
        "FAKE^GAMMA",
        large,
    );
    let inputs: Vec<Vec<u8>> = ["small.dcm", "large.dcm"]
        .iter()
        .map(|name| std::fs::read(inbox.join(name)).unwrap())
        .collect();
    let mut daemon = start(&config);
    run_until_idle(&mut daemon, &inbox);
    let mut written: Vec<Vec<u8>> = files_under(&config.paths.outbox)
        .iter()
        .map(|path| std::fs::read(path).unwrap())
        .collect();
    written.sort_by_key(Vec::len);
    // The test engine copies its input: each output holds its input's bytes.
    assert_eq!(written, inputs);
    assert!(written[1].len() >= crate::fsutil::DIRECT_WRITE_MIN);
    assert_eq!(daemon.ledger.jobs_in(JobState::Done).unwrap().len(), 1);
}

#[test]
fn received_files_wait_in_their_study_folder_and_survive_a_restart_either_side_of_their_move() {
    let dir = tempfile::tempdir().unwrap();
    let config = layout(dir.path());
    let (inbox, work) = (config.paths.inbox.clone(), config.paths.work.clone());
    write_study(&inbox, "1.2.3.500", 3, "FAKE^DELTA");
    let study = {
        let mut recording = config.clone();
        recording.raw.ingest.stable_age = crate::config::units::HumanDuration(std::time::Duration::from_secs(600));
        let mut daemon = start(&recording);
        daemon.step().unwrap();
        // Taken: recorded, out of the inbox, in the study's receiving folder.
        assert!(files_under(&inbox).is_empty());
        let received = daemon.ledger.received().unwrap();
        assert_eq!(received.len(), 3);
        for instance in &received {
            assert!(receiving::Receiving::path(&work, &instance.study_key, instance.id).is_file());
        }
        // A crash that lost one move: that file is back in the inbox.
        let lost = &received[0];
        std::fs::rename(
            receiving::Receiving::path(&work, &lost.study_key, lost.id),
            &lost.inbox_path,
        )
        .unwrap();
        lost.study_key.clone()
    };
    // The next process moves the lost file again, into the folder an earlier
    // one made, without reading it as a new arrival...
    {
        let mut recording = config.clone();
        recording.raw.ingest.stable_age = crate::config::units::HumanDuration(std::time::Duration::from_secs(600));
        let mut daemon = start(&recording);
        daemon.step().unwrap();
        assert!(files_under(&inbox).is_empty());
        assert_eq!(files_under(&receiving::Receiving::folder(&work, &study)).len(), 3);
        assert_eq!(daemon.ledger.received().unwrap().len(), 3);
    }
    // ...and the study is claimed file by file.
    let mut daemon = start(&config);
    run_until_idle(&mut daemon, &inbox);
    assert_eq!(files_under(&config.paths.outbox).len(), 3);
    assert_eq!(files_under(&config.paths.archive).len(), 3);
    assert!(files_under(&work).is_empty());
    assert!(!receiving::Receiving::folder(&work, &study).exists());
    let counts: HashMap<_, _> = daemon.ledger.instance_counts().unwrap().into_iter().collect();
    assert_eq!(counts[&InstanceState::Written], 3);
    assert_eq!(counts[&InstanceState::Duplicate], 0);
}

#[test]
fn a_file_that_arrived_before_its_study_turned_quiet_but_is_read_after_joins_the_same_job() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path());
    let toml = dir.path().join("synthd.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("settle = \"0s\"", "settle = \"400ms\"")
        .replace("stable_age = \"300ms\"", "stable_age = \"2s\"");
    std::fs::write(&toml, text).unwrap();
    let config = Config::load(&toml).unwrap();
    let inbox = config.paths.inbox.join("s");
    std::fs::create_dir_all(&inbox).unwrap();
    let mut daemon = start(&config);
    for n in 0..3 {
        write_mr(
            &inbox.join(format!("{n}.dcm")),
            "1.2.3.300",
            &format!("1.2.3.300.{n}"),
            "FAKE^GAMMA",
        );
    }
    // Seen, then taken once settled (400 ms), well before stable_age (2 s) ends.
    daemon.step().unwrap();
    std::thread::sleep(Duration::from_millis(450));
    daemon.step().unwrap();
    assert_eq!(daemon.ledger.received().unwrap().len(), 3, "the first three are read");
    // The fourth arrives before the study turns quiet, and is first seen after.
    write_mr(&inbox.join("3.dcm"), "1.2.3.300", "1.2.3.300.3", "FAKE^GAMMA");
    std::thread::sleep(Duration::from_millis(2000));
    daemon.step().unwrap();
    let claimed = |daemon: &Daemon<CopyEngine>| daemon.ledger.job_counts().unwrap().iter().map(|(_, n)| n).sum::<u64>();
    assert_eq!(
        claimed(&daemon),
        0,
        "claimed while a file of the study was still settling"
    );
    run_until_idle(&mut daemon, &config.paths.inbox);
    assert_eq!(claimed(&daemon), 1, "one job for the study");
    assert_eq!(files_under(&config.paths.outbox).len(), 4);
}
