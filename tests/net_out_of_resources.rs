//! The send queue against peers that refuse: one answers C-STORE with
//! Out of Resources (0xA7xx) a few times and then takes everything, the
//! other refuses every instance for good (0xA9xx, 0xCxxx). synthd must
//! retry the first with growing pauses and deliver each instance exactly
//! once, and dead-letter the second's at the first answer.
//!
//! Neither Orthanc nor dcmtk's storescp can be told to answer 0xA700, so
//! the peer here is a small C-STORE SCP written for this test on dicom-ul's
//! acceptor. It decodes and encodes its command sets with dicom-object
//! (not synthd's `net::dimse`), so a mistake there cannot hide itself.

mod daemon_support;
mod net_support;

use daemon_support::*;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::{Pdu, ServerAssociationOptions};
use net_support::*;
use std::collections::HashMap;
use std::fs;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const IMPLICIT: &str = "1.2.840.10008.1.2";
const EXPLICIT: &str = "1.2.840.10008.1.2.1";

/// One C-STORE-RQ the peer answered.
#[derive(Debug, Clone)]
struct Attempt {
    at: Instant,
    sop_instance_uid: String,
    status: u16,
}

/// A C-STORE SCP on loopback that answers the n-th C-STORE-RQ (counted
/// over all associations, from 0) with `answer(n)` and records each one.
struct Peer {
    port: u16,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Peer {
    fn start(answer: impl Fn(usize) -> u16 + Send + Sync + 'static) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let answer = Arc::new(answer);
        let thread = {
            let (attempts, stop) = (attempts.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(false).unwrap();
                            let (attempts, answer) = (attempts.clone(), answer.clone());
                            std::thread::spawn(move || serve(stream, &attempts, &*answer));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Peer {
            port,
            attempts,
            stop,
            thread: Some(thread),
        }
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves one association until the requestor releases or aborts it.
fn serve(stream: std::net::TcpStream, attempts: &Mutex<Vec<Attempt>>, answer: &(dyn Fn(usize) -> u16 + Sync)) {
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let options = ServerAssociationOptions::new()
        .accept_any()
        .ae_title("ORTHANC")
        .with_abstract_syntax(MR)
        .with_transfer_syntax(EXPLICIT)
        .with_transfer_syntax(IMPLICIT);
    let Ok(mut association) = options.establish(stream) else {
        return;
    };
    let (mut command, mut data) = (Vec::new(), Vec::new());
    let mut request: Option<InMemDicomObject> = None;
    loop {
        let values = match association.receive() {
            Ok(Pdu::PData { data }) => data,
            Ok(Pdu::ReleaseRQ) => {
                let _ = association.send(&Pdu::ReleaseRP);
                return;
            }
            _ => return,
        };
        for value in values {
            match value.value_type {
                PDataValueType::Command => {
                    command.extend_from_slice(&value.data);
                    if value.is_last {
                        request = Some(decode(&std::mem::take(&mut command)));
                    }
                }
                PDataValueType::Data => {
                    data.extend_from_slice(&value.data);
                    if !value.is_last {
                        continue;
                    }
                    data.clear();
                    let rq = request.take().expect("a data set follows its command");
                    let uid = text(&rq, 0x1000);
                    let status = {
                        let mut log = attempts.lock().unwrap();
                        let status = answer(log.len());
                        log.push(Attempt {
                            at: Instant::now(),
                            sop_instance_uid: uid.clone(),
                            status,
                        });
                        status
                    };
                    let response = PDataValue {
                        presentation_context_id: value.presentation_context_id,
                        value_type: PDataValueType::Command,
                        is_last: true,
                        data: c_store_rsp(&rq, status),
                    };
                    if association.send(&Pdu::PData { data: vec![response] }).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

fn implicit() -> &'static dicom_transfer_syntax_registry::TransferSyntax {
    TransferSyntaxRegistry.get(IMPLICIT).unwrap()
}

fn decode(bytes: &[u8]) -> InMemDicomObject {
    InMemDicomObject::read_dataset_with_ts(bytes, implicit()).expect("a command set in Implicit VR Little Endian")
}

fn text(object: &InMemDicomObject, element: u16) -> String {
    let value = object.element(Tag(0x0000, element)).unwrap().to_str().unwrap();
    value.trim_end_matches(['\0', ' ']).to_string()
}

/// The C-STORE-RSP to `rq` (PS3.7 9.3.1.2), Command Group Length first.
fn c_store_rsp(rq: &InMemDicomObject, status: u16) -> Vec<u8> {
    let message_id = rq.element(Tag(0x0000, 0x0110)).unwrap().to_int::<u16>().unwrap();
    let ui = |element, value: String| DataElement::new(Tag(0x0000, element), VR::UI, PrimitiveValue::from(value));
    let us = |element, value: u16| DataElement::new(Tag(0x0000, element), VR::US, PrimitiveValue::from(value));
    let rsp = InMemDicomObject::from_element_iter([
        ui(0x0002, text(rq, 0x0002)),
        us(0x0100, 0x8001),
        us(0x0120, message_id),
        us(0x0800, 0x0101),
        us(0x0900, status),
        ui(0x1000, text(rq, 0x1000)),
    ]);
    let mut body = Vec::new();
    rsp.write_dataset_with_ts(&mut body, implicit()).unwrap();
    let mut out = vec![0, 0, 0, 0, 4, 0, 0, 0];
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The SOP Instance UIDs of the DICOM files in the outbox.
fn output_uids(layout: &Layout) -> Vec<String> {
    let mut uids: Vec<String> = files_under(&layout.path("outbox"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .map(|p| {
            let object = dicom_object::open_file(p).unwrap();
            let uid = object.meta().media_storage_sop_instance_uid();
            uid.trim_end_matches(['\0', ' ']).to_string()
        })
        .collect();
    uids.sort();
    uids
}

fn counts(layout: &Layout, name: &str) -> (u64, u64, u64) {
    let d = destination(&layout.status(), name);
    let n = |key: &str| d[key].as_u64().unwrap_or(0);
    (n("queued"), n("sent"), n("dead"))
}

#[test]
fn out_of_resources_is_retried_with_backoff_and_delivered_once_and_refusals_die_at_once() {
    const INSTANCES: u32 = 5;
    // Four refusals in a row, each a different 0xA7xx, then Success.
    let busy = Peer::start(|n| [0xA700, 0xA701, 0xA7FE, 0xA710].get(n).copied().unwrap_or(0x0000));
    // Every instance refused for good, alternately 0xA9xx and 0xCxxx.
    let picky = Peer::start(|n| if n % 2 == 0 { 0xA900 } else { 0xC002 });
    let layout = Layout::new();
    // retry_initial 200ms, retry_max 1s: pauses of at least 100, 200, 400, 500 ms.
    add_destination(&layout.config, "busy", "SYNTHD", busy.port);
    add_destination(&layout.config, "picky", "SYNTHD", picky.port);
    let daemon = layout.start(&[]);
    wait_until(Duration::from_secs(10), "serving", || layout.log().contains("serving"));
    let inbox = layout.path("inbox").join("study");
    fs::create_dir_all(&inbox).unwrap();
    for instance in 1..=INSTANCES {
        fs::write(inbox.join(format!("{instance}.dcm")), mr_bytes(51, 1, instance)).unwrap();
    }
    wait_until(Duration::from_secs(30), "the outputs written", || {
        output_uids(&layout).len() == INSTANCES as usize
    });
    let outputs = output_uids(&layout);
    let total = outputs.len() as u64;
    wait_until(Duration::from_secs(30), "every output delivered to busy", || {
        counts(&layout, "busy") == (0, total, 0)
    });
    wait_until(Duration::from_secs(10), "every output dead-lettered for picky", || {
        counts(&layout, "picky") == (0, 0, total)
    });
    // Longer than any backoff: nothing more may arrive at either peer.
    std::thread::sleep(Duration::from_millis(1500));

    let attempts = busy.attempts();
    assert_eq!(attempts.len() as u64, total + 4, "{attempts:#?}");
    let mut delivered: HashMap<&str, usize> = HashMap::new();
    for attempt in attempts.iter().filter(|a| a.status == 0) {
        *delivered.entry(&attempt.sop_instance_uid).or_default() += 1;
    }
    let mut uids: Vec<&str> = delivered.keys().copied().collect();
    uids.sort();
    assert_eq!(uids, outputs, "busy got every output");
    assert!(
        delivered.values().all(|&n| n == 1),
        "an instance stored twice: {delivered:?}"
    );
    // Each refusal pauses the destination: initial · 2^(k-1), at most the
    // maximum, times at least 0.5. The next attempt comes after the pause.
    for (k, least_ms) in [100u64, 200, 400, 500].into_iter().enumerate() {
        let gap = attempts[k + 1].at - attempts[k].at;
        assert!(
            gap >= Duration::from_millis(least_ms),
            "pause after refusal {} was {gap:?}, below {least_ms} ms",
            k + 1
        );
    }
    let busy_status = destination(&layout.status(), "busy");
    assert!(
        busy_status["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("Out of Resources"),
        "{busy_status}"
    );
    assert!(busy_status["last_success"].as_f64() > busy_status["last_error_at"].as_f64());

    // Refusals for good: one attempt per instance, none retried.
    let refused = picky.attempts();
    assert_eq!(refused.len() as u64, total, "dead letters were retried: {refused:#?}");
    let mut tried: Vec<&str> = refused.iter().map(|a| a.sop_instance_uid.as_str()).collect();
    tried.sort();
    assert_eq!(tried, outputs);
    let ledger = synthd::ledger::Ledger::open_existing(&layout.path("state")).unwrap();
    let dead = ledger.dead_letters(100).unwrap();
    assert_eq!(dead.len() as u64, total);
    for (name, _, reason) in &dead {
        assert_eq!(name, "picky");
        assert!(
            reason.contains("(0xA900)") || reason.contains("(0xC002)"),
            "the reason names the status: {reason}"
        );
    }
    assert!(dead
        .iter()
        .any(|(_, _, r)| r.contains("Data Set does not match SOP Class")));
    assert!(dead.iter().any(|(_, _, r)| r.contains("Cannot understand")));
    status_lists_the_dead_letters(&layout, total);
    assert_no_phi(&layout.log());
    assert!(daemon.stop().success());
}

/// `synthd status` shows each dead letter (all `total` of them here, as
/// they are fewer than it lists) by its outbox-relative file and reason.
fn status_lists_the_dead_letters(layout: &Layout, total: u64) {
    let status = layout.status();
    let letters = status["dead_letters"]
        .as_array()
        .expect("dead_letters in status --json");
    assert_eq!(letters.len() as u64, total, "{status:#}");
    let outbox = layout.path("outbox");
    for letter in letters {
        assert_eq!(letter["destination"], "picky");
        let path = letter["path"].as_str().unwrap();
        assert!(!path.starts_with('/'), "relative to the outbox: {path}");
        assert!(outbox.join(path).is_file(), "{path} is a file in the outbox");
        assert!(letter["reason"].as_str().unwrap().contains("(0x"), "{letter}");
    }
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_synthd"))
        .args(["status", "--config", layout.config.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.matches("    dead: ").count() as u64, total, "{text}");
}
