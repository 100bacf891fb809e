//! The SCP writes a data set to disk as its PDUs arrive: a 128 MiB
//! instance from dcmtk's storescu lands whole while the daemon's peak
//! memory (VmHWM) grows by far less than the instance, and an instance cut
//! off by A-ABORT after megabytes were written leaves no file behind.

mod daemon_support;
mod net_support;

use daemon_support::*;
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::Pdu;
use net_support::*;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use synthd::net::dimse::{CommandSet, EXPLICIT_VR_LITTLE_ENDIAN};

const PIXELS: usize = 128 << 20;

/// An MR instance of 8192 × 8192 16-bit pixels (128 MiB), written without
/// holding its pixels in memory: the small header from the fixtures, then
/// the Pixel Data element appended by hand.
fn write_large_instance(path: &Path) {
    let small = mr_bytes(71, 1, 1);
    let object = dicom_object::from_reader(&small[128..]).unwrap();
    let mut object = object.into_inner();
    let us = |value: u16| dicom_core::PrimitiveValue::from(value);
    object.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::ROWS,
        dicom_core::VR::US,
        us(8192),
    ));
    object.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::COLUMNS,
        dicom_core::VR::US,
        us(8192),
    ));
    object.remove_element(dicom_dictionary_std::tags::PIXEL_DATA);
    let file = object
        .with_meta(dicom_object::meta::FileMetaTableBuilder::new().transfer_syntax(EXPLICIT_VR_LITTLE_ENDIAN))
        .unwrap();
    let mut out = std::io::BufWriter::new(fs::File::create(path).unwrap());
    file.write_all(&mut out).unwrap();
    // (7FE0,0010) OW, explicit VR little endian: tag, VR, 2 reserved bytes, 4-byte length.
    out.write_all(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]).unwrap();
    out.write_all(&(PIXELS as u32).to_le_bytes()).unwrap();
    let chunk = vec![0x5Au8; 1 << 20];
    for _ in 0..PIXELS / chunk.len() {
        out.write_all(&chunk).unwrap();
    }
    out.flush().unwrap();
}

/// Peak resident memory of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn network_files(layout: &Layout) -> Vec<PathBuf> {
    files_under(&layout.path("inbox").join("network"))
}

#[test]
fn a_large_instance_streams_to_disk_and_an_aborted_one_leaves_nothing() {
    // Intake reads a whole file to digest it; a long settle keeps it away
    // from the instance while the receive's memory is measured.
    let layout = Layout::with(&[("settle = \"200ms\"", "settle = \"60s\"")]);
    let port = free_port();
    add_listen(&layout.config, port, &["STORESCU", "TESTSCU"], "");
    let daemon = layout.start(&[]);
    wait_for_port(port, Duration::from_secs(20));
    let large = layout.dir.path().join("large.dcm");
    write_large_instance(&large);
    let before = vm_hwm_kib(daemon.child.id());

    let port_arg = port.to_string();
    let stored = run(
        "storescu",
        &[
            "-aet",
            "STORESCU",
            "-aec",
            "SYNTHD",
            "127.0.0.1",
            &port_arg,
            large.to_str().unwrap(),
        ],
    );
    assert!(
        stored.status.success(),
        "storescu: {}",
        String::from_utf8_lossy(&stored.stderr)
    );
    let grown_mib = (vm_hwm_kib(daemon.child.id()) - before) / 1024;
    eprintln!("daemon VmHWM {before} KiB before, grew {grown_mib} MiB receiving 128 MiB");
    let files = network_files(&layout);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(fs::metadata(&files[0]).unwrap().len() > PIXELS as u64);
    let header = synthd::ingest::read_header_from(fs::File::open(&files[0]).unwrap()).unwrap();
    assert_eq!(header.sop_instance_uid.expose(), &format!("{STUDY_ROOT}.71.1.1"));
    assert!(
        grown_mib < 32,
        "receiving a 128 MiB instance raised the daemon's peak memory by {grown_mib} MiB"
    );

    // Half an instance, then A-ABORT: its temporary file goes.
    let (mut association, id) = associate_as_testscu(port);
    let command = CommandSet::c_store_rq(1, MR, &format!("{STUDY_ROOT}.71.1.2"));
    association
        .raw()
        .send(&synthd::net::dimse::command_pdu(id, &command))
        .unwrap();
    let fragment = vec![0u8; 16000];
    for _ in 0..256 {
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: id,
                value_type: PDataValueType::Data,
                is_last: false,
                data: fragment.clone(),
            }],
        };
        association.raw().send(&pdu).unwrap();
    }
    let partial = |layout: &Layout| {
        network_files(layout)
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".partial"))
            .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
            .collect::<Vec<u64>>()
    };
    wait_until(Duration::from_secs(10), "the partial instance on disk", || {
        partial(&layout).first().is_some_and(|&size| size >= 2 << 20)
    });
    association.abort();
    wait_until(Duration::from_secs(10), "the partial instance removed", || {
        partial(&layout).is_empty()
    });
    assert_eq!(network_files(&layout).len(), 1);
    assert_no_phi(&layout.log());
    assert!(daemon.stop().success());
}
