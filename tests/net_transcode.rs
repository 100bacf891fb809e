//! Sending compressed outputs to a peer that accepts only little endian:
//! dcmtk's `storescp` without `+xa` takes uncompressed syntaxes only, so
//! synthd decodes JPEG and JPEG 2000 outputs before sending them, and the
//! files storescp writes are little endian with pixels equal to pydicom's
//! decode of the originals. A JPEG-LS output, which synthd cannot decode,
//! becomes a dead letter whose reason names its transfer syntax.

mod common;
mod daemon_support;
mod net_support;

use daemon_support::*;
use net_support::*;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The pydicom test files sent, by their transfer syntax, and the largest
/// difference from pydicom's decode allowed (lossy JPEG: see
/// tests/pixel_decode.rs, LOSSY_JPEG_BOUND).
const SENT: &[(&str, &str, i64)] = &[
    ("SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.70", 0),
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", 2),
    ("693_J2KI.dcm", "1.2.840.10008.1.2.4.91", 0),
];
const UNDECODABLE: (&str, &str) = ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80");

/// dcmtk's storescp with its default (uncompressed only) syntaxes, killed on drop.
struct StoreScp(Child);

impl StoreScp {
    fn start(port: u16, folder: &Path) -> StoreScp {
        fs::create_dir_all(folder).unwrap();
        let child = Command::new("storescp")
            .args(["-aet", "ORTHANC", "-od"])
            .arg(folder)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("storescp runs (dcmtk; scripts/setup.sh installs it)");
        wait_for_port(port, Duration::from_secs(10));
        StoreScp(child)
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// For each file storescp received: the original it came from (through the
/// outbox file with the same SOP Instance UID, by its transfer syntax) and
/// how its pixels compare with pydicom's decode of that original. Arguments:
/// JSON {syntax: original path}, the outbox, the received files.
const CHECK: &str = r#"
import sys, json, pathlib, numpy as np, pydicom
originals = json.loads(sys.argv[1])
outbox = {}
for path in pathlib.Path(sys.argv[2]).rglob("*.dcm"):
    d = pydicom.dcmread(path, stop_before_pixels=True)
    outbox[d.SOPInstanceUID] = d.file_meta.TransferSyntaxUID
for path in sys.argv[3:]:
    got = pydicom.dcmread(path)
    syntax = outbox[got.SOPInstanceUID]
    original = pydicom.dcmread(originals[syntax])
    a, b = original.pixel_array.astype(np.int64), got.pixel_array.astype(np.int64)
    same = a.shape == b.shape
    diff = np.abs(a - b) if same else np.zeros(1)
    print(json.dumps({
        "source_syntax": syntax,
        "received_syntax": got.file_meta.TransferSyntaxUID,
        "same_shape": same,
        "max": int(diff.max()),
        "mean": float(diff.mean()),
        "photometric": got.PhotometricInterpretation,
        "original_photometric": original.PhotometricInterpretation,
        "lossy": got.get("LossyImageCompression", ""),
        "sop_kept": got.SOPInstanceUID == got.file_meta.MediaStorageSOPInstanceUID,
    }))
"#;

#[test]
fn compressed_outputs_reach_a_little_endian_only_peer_decoded_and_undecodable_ones_are_dead_letters() {
    let layout = Layout::new();
    let received = layout.dir.path().join("received");
    let peer_port = free_port();
    let _storescp = StoreScp::start(peer_port, &received);
    add_destination(&layout.config, "storescp", "SYNTHD", peer_port);
    // The pydicom files are OT, CT and MR with no Burned In Annotation: let
    // the de-identification pipeline take them as they are.
    let pipeline = layout.path("pipelines/deid-only.toml");
    let text = fs::read_to_string(&pipeline).unwrap();
    assert!(text.contains("modality = [\"MR\", \"CT\"]"), "{text}");
    let text = text
        .replace("modality = [\"MR\", \"CT\"]", "modality = [\"MR\", \"CT\", \"OT\"]")
        .replacen(
            "[output]\n",
            "[deid.burned_in_unknown]\ndefault = \"accept\"\n\n[output]\n",
            1,
        );
    fs::write(&pipeline, text).unwrap();

    let files = common::pydicom_test_files();
    let staged = layout.dir.path().join("staged");
    fs::create_dir_all(&staged).unwrap();
    let names: Vec<&str> = SENT.iter().map(|s| s.0).chain([UNDECODABLE.0]).collect();
    for name in &names {
        fs::copy(files.join(name), staged.join(name)).unwrap();
    }
    let daemon = layout.start(&[]);
    fs::rename(&staged, layout.path("inbox").join("pydicom")).unwrap();

    wait_until(Duration::from_secs(60), "3 sent and 1 dead letter", || {
        let d = destination(&layout.status(), "storescp");
        d["sent"].as_u64() == Some(3) && d["dead"].as_u64() == Some(1)
    });
    let status = destination(&layout.status(), "storescp");
    let reason = status["last_error"].as_str().unwrap_or_default();
    assert!(
        reason.contains(UNDECODABLE.1) && reason.contains("no decoder") && reason.contains("+xa"),
        "{status}"
    );

    let originals: serde_json::Map<String, serde_json::Value> = SENT
        .iter()
        .map(|(name, syntax, _)| (syntax.to_string(), files.join(name).display().to_string().into()))
        .collect();
    let got = files_under(&received);
    assert_eq!(got.len(), 3, "{got:?}");
    let check = Command::new(common::python())
        .args(["-c", CHECK, &serde_json::Value::Object(originals).to_string()])
        .arg(layout.path("outbox"))
        .args(&got)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let seen: Vec<serde_json::Value> = String::from_utf8(check.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut sources: Vec<&str> = seen.iter().filter_map(|s| s["source_syntax"].as_str()).collect();
    sources.sort();
    assert_eq!(
        sources,
        [
            "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.70",
            "1.2.840.10008.1.2.4.91"
        ]
    );
    for seen in &seen {
        println!("{seen}");
        let &(name, syntax, bound) = SENT.iter().find(|s| s.1 == seen["source_syntax"]).unwrap();
        assert!(
            ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"].contains(&seen["received_syntax"].as_str().unwrap()),
            "{name}: {seen}"
        );
        assert_eq!(seen["same_shape"], true, "{name}: {seen}");
        assert!(seen["max"].as_i64().unwrap() <= bound, "{name}: {seen}");
        assert!(seen["mean"].as_f64().unwrap() < 0.05, "{name}: {seen}");
        assert_eq!(seen["sop_kept"], true, "{name}: {seen}");
        let rgb = seen["original_photometric"] != "MONOCHROME2";
        assert_eq!(
            seen["photometric"],
            if rgb { "RGB" } else { "MONOCHROME2" },
            "{name}: {seen}"
        );
        // Lossy sources stay declared lossy (both said 01 already).
        if syntax != "1.2.840.10008.1.2.4.70" {
            assert_eq!(seen["lossy"], "01", "{name}: {seen}");
        }
    }
    // dcmtk reads every received file.
    for path in &got {
        let dump = run("dcmdump", &["-q", path.to_str().unwrap()]);
        assert!(dump.status.success(), "dcmdump cannot read {}", path.display());
    }
    assert_no_phi(&layout.log());
    daemon.stop();
}
