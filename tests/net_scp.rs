//! The C-STORE SCP in process, driven by synthd's own SCU and by PDUs sent
//! by hand: durable files in the inbox, refusals (calling AE, host, called
//! AE, presentation contexts, the association limit), and nothing left
//! behind by a data set that never completes.

mod daemon_support;

use daemon_support::{mr_bytes, STUDY_ROOT};
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::Pdu;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;
use synthd::config::dicom::{DicomSettings, Listen};
use synthd::net::dimse::{CommandSet, Status, EXPLICIT_VR_LITTLE_ENDIAN, VERIFICATION_SOP_CLASS};
use synthd::net::scu::{Association, Peer, Proposal, ScuError};
use synthd::net::Scp;

const MR: &str = "1.2.840.10008.5.1.4.1.1.4";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `[dicom.listen]` on a free loopback port, allowing TESTSCU from 127.0.0.1.
fn listen(extra: &str) -> Listen {
    let text = format!(
        "[listen]\nae_title = \"SYNTHD\"\nport = {}\nread_timeout = \"1s\"\nidle_timeout = \"5s\"\n{extra}\n\
         [[listen.allow]]\nae_title = \"TESTSCU\"\nhosts = [\"127.0.0.1\"]\n\
         [[listen.allow]]\nae_title = \"ELSEWHERE\"\nhosts = [\"127.0.0.2\"]\n",
        free_port()
    );
    toml::from_str::<DicomSettings>(&text).unwrap().listen.unwrap()
}

fn peer(scp: &Scp, calling: &str, called: &str) -> Peer {
    Peer {
        calling_ae_title: calling.into(),
        called_ae_title: called.into(),
        address: scp.local_addr().to_string(),
        max_pdu: 16384,
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
    }
}

fn proposals(abstract_syntaxes: &[&str]) -> Vec<Proposal> {
    abstract_syntaxes
        .iter()
        .map(|a| Proposal {
            abstract_syntax: a.to_string(),
            transfer_syntaxes: vec![EXPLICIT_VR_LITTLE_ENDIAN.into()],
        })
        .collect()
}

/// The data set of a Part 10 file (what follows its File Meta group).
fn data_set(file: &[u8]) -> Vec<u8> {
    let group_length = u32::from_le_bytes(file[140..144].try_into().unwrap()) as usize;
    file[144 + group_length..].to_vec()
}

fn sop_uid(study: u32, instance: u32) -> String {
    format!("{STUDY_ROOT}.{study}.1.{instance}")
}

/// Every file under `dir`, temporary ones included.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(all_files(&path));
        } else {
            found.push(path);
        }
    }
    found.sort();
    found
}

fn open(scp: &Scp) -> Association {
    Association::open(
        &peer(scp, "TESTSCU", "SYNTHD"),
        &proposals(&[VERIFICATION_SOP_CLASS, MR]),
    )
    .unwrap()
}

#[test]
fn echo_and_store_answer_success_only_for_durable_files_named_by_uid() {
    let inbox = tempfile::tempdir().unwrap();
    let scp = Scp::start(&listen(""), inbox.path()).unwrap();
    let mut association = open(&scp);
    assert_eq!(association.echo().unwrap(), Status::SUCCESS);
    let (id, _) = association.context_for(MR, &[EXPLICIT_VR_LITTLE_ENDIAN]).unwrap();
    for instance in 1..=3 {
        let status = association
            .store(id, MR, &sop_uid(7, instance), &data_set(&mr_bytes(7, 1, instance)))
            .unwrap();
        assert_eq!(status, Status::SUCCESS);
    }
    // A second copy of an instance still in the inbox is kept beside the first.
    let again = association
        .store(id, MR, &sop_uid(7, 1), &data_set(&mr_bytes(7, 1, 1)))
        .unwrap();
    assert_eq!(again, Status::SUCCESS);
    association.release();
    let folder = inbox.path().join("network/TESTSCU");
    let mut expected: Vec<PathBuf> = (1..=3).map(|i| folder.join(format!("{}.dcm", sop_uid(7, i)))).collect();
    expected.push(folder.join(format!("{}~1.dcm", sop_uid(7, 1))));
    expected.sort();
    assert_eq!(all_files(inbox.path()), expected);
    let header = synthd::ingest::read_header(&fs::read(&expected[0]).unwrap()).unwrap();
    assert_eq!(header.sop_instance_uid.expose(), &sop_uid(7, 1));
    assert_eq!(header.study_instance_uid.expose(), &format!("{STUDY_ROOT}.7"));
}

#[test]
fn unparsable_or_mismatched_data_sets_fail_and_nothing_is_written() {
    let inbox = tempfile::tempdir().unwrap();
    let scp = Scp::start(&listen(""), inbox.path()).unwrap();
    let mut association = open(&scp);
    let (id, _) = association.context_for(MR, &[EXPLICIT_VR_LITTLE_ENDIAN]).unwrap();
    let garbage = association.store(id, MR, &sop_uid(8, 1), &[0xFF; 64]).unwrap();
    assert_eq!(garbage.0 & 0xF000, 0xC000, "{garbage}");
    let other_instance = association
        .store(id, MR, &sop_uid(8, 2), &data_set(&mr_bytes(8, 1, 1)))
        .unwrap();
    assert_eq!(other_instance.0 & 0xF000, 0xC000, "{other_instance}");
    let escaping = association
        .store(id, MR, "1.2.3/../../x", &data_set(&mr_bytes(8, 1, 1)))
        .unwrap();
    assert_eq!(escaping.0 & 0xF000, 0xC000, "{escaping}");
    let truncated = data_set(&mr_bytes(8, 1, 3));
    let cut = association.store(id, MR, &sop_uid(8, 3), &truncated[..40]).unwrap();
    assert!(!cut.is_success() && !cut.is_warning(), "{cut}");
    // The association is still usable after refusals.
    assert_eq!(association.echo().unwrap(), Status::SUCCESS);
    association.release();
    assert_eq!(all_files(inbox.path()), Vec::<PathBuf>::new());
}

#[test]
fn peers_are_refused_by_calling_ae_host_called_ae_and_presentation_contexts() {
    let inbox = tempfile::tempdir().unwrap();
    let scp = Scp::start(&listen(""), inbox.path()).unwrap();
    let attempts = [
        ("INTRUDER", "SYNTHD", vec![VERIFICATION_SOP_CLASS]),
        ("ELSEWHERE", "SYNTHD", vec![VERIFICATION_SOP_CLASS]),
        ("TESTSCU", "NOTSYNTHD", vec![VERIFICATION_SOP_CLASS]),
        // Study Root Query/Retrieve FIND: not a storage SOP class.
        ("TESTSCU", "SYNTHD", vec!["1.2.840.10008.5.1.4.1.2.2.1"]),
    ];
    for (calling, called, syntaxes) in attempts {
        match Association::open(&peer(&scp, calling, called), &proposals(&syntaxes)) {
            Err(ScuError::Rejected { transient, .. }) => assert!(!transient, "{calling} → {called}"),
            Err(other) => panic!("{calling} → {called}: expected an A-ASSOCIATE-RJ, got {other}"),
            Ok(_) => panic!("{calling} → {called} was accepted"),
        }
    }
}

#[test]
fn associations_beyond_the_limit_are_refused_while_the_others_continue() {
    let inbox = tempfile::tempdir().unwrap();
    let scp = Scp::start(&listen("max_associations = 2"), inbox.path()).unwrap();
    let mut first = open(&scp);
    let mut second = open(&scp);
    match Association::open(&peer(&scp, "TESTSCU", "SYNTHD"), &proposals(&[VERIFICATION_SOP_CLASS])) {
        Err(ScuError::Rejected { transient, .. }) => assert!(transient, "local-limit-exceeded is transient"),
        Err(other) => panic!("expected an A-ASSOCIATE-RJ, got {other}"),
        Ok(_) => panic!("a third association was accepted"),
    }
    assert_eq!(first.echo().unwrap(), Status::SUCCESS);
    assert_eq!(second.echo().unwrap(), Status::SUCCESS);
    first.release();
    let mut third = None;
    for _ in 0..50 {
        if let Ok(association) =
            Association::open(&peer(&scp, "TESTSCU", "SYNTHD"), &proposals(&[VERIFICATION_SOP_CLASS]))
        {
            third = Some(association);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        third.expect("a slot freed by the release").echo().unwrap(),
        Status::SUCCESS
    );
    second.release();
}

/// Sends a C-STORE-RQ and the first half of its data set, never the rest.
fn send_half_an_instance(association: &mut Association, instance: u32) {
    let (id, _) = association.context_for(MR, &[EXPLICIT_VR_LITTLE_ENDIAN]).unwrap();
    let data = data_set(&mr_bytes(9, 1, instance));
    let command = CommandSet::c_store_rq(1, MR, &sop_uid(9, instance));
    association
        .raw()
        .send(&synthd::net::dimse::command_pdu(id, &command))
        .unwrap();
    let half = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: id,
            value_type: PDataValueType::Data,
            is_last: false,
            data: data[..data.len() / 2].to_vec(),
        }],
    };
    association.raw().send(&half).unwrap();
}

#[test]
fn an_abort_or_a_timeout_mid_instance_leaves_nothing_in_the_inbox() {
    let inbox = tempfile::tempdir().unwrap();
    let scp = Scp::start(&listen(""), inbox.path()).unwrap();
    let mut aborted = open(&scp);
    send_half_an_instance(&mut aborted, 1);
    aborted.abort();
    let mut stalled = open(&scp);
    send_half_an_instance(&mut stalled, 2);
    // read_timeout is 1s: synthd gives up on the half instance and aborts.
    std::thread::sleep(Duration::from_millis(2500));
    match stalled.raw().receive() {
        Ok(Pdu::AbortRQ { .. }) | Err(_) => {}
        Ok(other) => panic!("expected A-ABORT after the read timeout, got {other:?}"),
    }
    assert_eq!(all_files(inbox.path()), Vec::<PathBuf>::new());
    // The SCP still serves a well-behaved peer afterwards.
    let mut association = open(&scp);
    assert_eq!(association.echo().unwrap(), Status::SUCCESS);
    association.release();
}
