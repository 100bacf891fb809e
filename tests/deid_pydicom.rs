//! `synthd deid` over pydicom's bundled test files (written by many other
//! tools): every file is de-identified or quarantined with a reason, every
//! output reads in dcmtk and pydicom, and the mapping is keyed and stable.

mod common;

use common::{files_under, key, pydicom_test_files, python, synthd};
use std::path::Path;
use std::process::Command;

fn run(input: &Path, output: &Path, key: &Path) -> std::process::Output {
    let crosswalk = output.with_extension("csv");
    deid(
        input,
        output,
        key,
        &[
            "--option",
            "retain-longitudinal-modified-dates",
            "--jobs",
            "2",
            "--crosswalk",
            crosswalk.to_str().unwrap(),
        ],
    )
}

/// `synthd deid INPUT --output OUTPUT --key-file KEY`, plus `extra` arguments.
fn deid(input: &Path, output: &Path, key: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "deid",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    synthd(&args)
}

#[test]
fn every_pydicom_file_is_deidentified_or_quarantined_and_readable() {
    let inputs = pydicom_test_files();
    let dir = tempfile::tempdir().unwrap();
    let key_a = key(dir.path(), "a.key");
    let out_a = dir.path().join("a");
    let result = run(&inputs, &out_a, &key_a);
    // Some test files are deliberately broken: exit 3 says files were quarantined.
    assert_eq!(result.status.code(), Some(3), "{}", common::stderr(&result));
    let input_count = files_under(&inputs).len();
    let outputs = files_under(&out_a);
    let quarantine = dir.path().join("a-quarantine");
    let reasons: Vec<_> = files_under(&quarantine)
        .into_iter()
        .filter(|p| p.ends_with("reason.json"))
        .collect();
    assert_eq!(
        outputs.len() + reasons.len(),
        input_count,
        "every input has exactly one outcome"
    );
    assert!(outputs.len() >= 40, "only {} outputs", outputs.len());
    for reason in &reasons {
        let text = std::fs::read_to_string(reason).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(json["code"].as_str().is_some_and(|c| !c.is_empty()), "{text}");
        assert_eq!(json["stage"], "deid");
    }
    for path in &outputs {
        let dump = Command::new("dcmdump").arg("-q").arg(path).output().unwrap();
        assert!(dump.status.success(), "dcmdump cannot read {}", path.display());
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("2.25.") && name.ends_with(".dcm"),
            "output named by new UIDs only: {name}"
        );
    }
    let script = "import sys, pydicom\nfor p in sys.argv[1:]:\n    d = pydicom.dcmread(p)\n    assert d.PatientIdentityRemoved == 'YES', p\n    assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID, p\nprint(len(sys.argv) - 1)";
    let read = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(&outputs)
        .output()
        .unwrap();
    assert!(read.status.success(), "pydicom: {}", common::stderr(&read));

    let crosswalk = std::fs::read_to_string(out_a.with_extension("csv")).unwrap();
    assert!(crosswalk.starts_with("attribute,original,replacement\n"));
    assert!(crosswalk.lines().any(|l| l.starts_with("StudyInstanceUID,")));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out_a.with_extension("csv"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the crosswalk re-identifies: owner only");

    // Same key: byte-identical files at identical paths.
    let out_b = dir.path().join("b");
    run(&inputs, &out_b, &key_a);
    let relative = |root: &Path| -> Vec<_> {
        files_under(root)
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
            .collect()
    };
    assert_eq!(relative(&out_a), relative(&out_b));
    for path in relative(&out_a) {
        assert_eq!(
            std::fs::read(out_a.join(&path)).unwrap(),
            std::fs::read(out_b.join(&path)).unwrap()
        );
    }
    // Another key: other UIDs everywhere.
    let key_c = key(dir.path(), "c.key");
    let out_c = dir.path().join("c");
    run(&inputs, &out_c, &key_c);
    let names_a: std::collections::BTreeSet<_> = relative(&out_a).into_iter().collect();
    let names_c: std::collections::BTreeSet<_> = relative(&out_c).into_iter().collect();
    assert_eq!(names_a.len(), names_c.len());
    assert!(
        names_a.is_disjoint(&names_c),
        "a different key must give different UIDs"
    );
}

#[test]
fn refuses_a_group_readable_key_and_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    let key = key(dir.path(), "k");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = dir.path().join("o");
    let result = synthd(&[
        "deid",
        dir.path().to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(result.status.code(), Some(1), "a bad key is a failure");
    assert!(
        common::stderr(&result).contains("expected 0600"),
        "{}",
        common::stderr(&result)
    );
    let result = synthd(&["deid", "x", "--output", "y", "--option", "keep-everything"]);
    assert_eq!(result.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn identical_copies_are_dropped_and_a_conflicting_copy_is_quarantined_whatever_the_order() {
    let original = std::fs::read(pydicom_test_files().join("CT_small.dcm")).unwrap();
    let mut conflicting = original.clone();
    // A different pixel value, same SOP Instance UID (inside Pixel Data,
    // which ends the file but for 138 bytes of trailing padding).
    let inside_pixels = conflicting.len() - 1000;
    conflicting[inside_pixels] ^= 0x01;
    let dir = tempfile::tempdir().unwrap();
    let key = key(dir.path(), "k");
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    // "a" sorts first, so it wins; "b" is identical, "c" conflicts.
    std::fs::write(inputs.join("a.dcm"), &original).unwrap();
    std::fs::write(inputs.join("b.dcm"), &original).unwrap();
    std::fs::write(inputs.join("c.dcm"), &conflicting).unwrap();
    let mut outputs = Vec::new();
    for (run, jobs) in [("one", "1"), ("two", "2"), ("again", "2")] {
        let out = dir.path().join(run);
        let result = deid(&inputs, &out, &key, &["--jobs", jobs]);
        assert_eq!(result.status.code(), Some(3), "{}", common::stderr(&result));
        let stdout = String::from_utf8_lossy(&result.stdout);
        assert!(
            stdout.contains("de-identified 1 of 3") && stdout.contains("dropped 1 identical duplicate"),
            "{stdout}"
        );
        assert!(stdout.contains("conflicting-duplicate: 1"), "{stdout}");
        let reasons: Vec<_> = files_under(&dir.path().join(format!("{run}-quarantine")))
            .into_iter()
            .filter(|p| p.ends_with("reason.json"))
            .collect();
        assert_eq!(reasons.len(), 1);
        let written = files_under(&out);
        assert_eq!(written.len(), 1);
        outputs.push(std::fs::read(&written[0]).unwrap());
    }
    // The winner is always "a": the same bytes whatever the worker count.
    assert!(outputs.windows(2).all(|pair| pair[0] == pair[1]));
    let alone = dir.path().join("alone");
    std::fs::create_dir(&alone).unwrap();
    std::fs::write(alone.join("a.dcm"), &original).unwrap();
    let out = dir.path().join("alone-out");
    deid(&alone, &out, &key, &[]);
    assert_eq!(std::fs::read(&files_under(&out)[0]).unwrap(), outputs[0]);
}

#[test]
fn an_identifying_value_left_in_a_kept_attribute_is_caught_by_the_residual_check() {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    // Image Type is not in Table E.1-1 and is kept; a site that writes the
    // Patient ID into it (seen in the wild) must not leak it.
    let mut object = dicom_object::open_file(pydicom_test_files().join("CT_small.dcm")).unwrap();
    let planted = "ZQ7731X";
    object.put(DataElement::new(
        tags::PATIENT_ID,
        VR::LO,
        PrimitiveValue::from(planted),
    ));
    object.put(DataElement::new(
        tags::IMAGE_TYPE,
        VR::CS,
        PrimitiveValue::Strs(["ORIGINAL", "PRIMARY", planted].iter().map(|s| s.to_string()).collect()),
    ));
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    object.write_to_file(inputs.join("ct.dcm")).unwrap();
    let key = key(dir.path(), "k");
    let out = dir.path().join("out");
    let result = deid(&inputs, &out, &key, &[]);
    assert_eq!(result.status.code(), Some(3), "{}", common::stderr(&result));
    assert!(files_under(&out).is_empty(), "nothing may be written");
    let reason = files_under(&dir.path().join("out-quarantine"))
        .into_iter()
        .find(|p| p.ends_with("reason.json"))
        .expect("a quarantine entry");
    let text = std::fs::read_to_string(reason).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["code"], "residual-phi", "{text}");
    assert!(json["message"].as_str().unwrap().contains("PatientID"), "{text}");
    assert!(!text.contains(planted), "the reason must not repeat the value");
    let all_output = format!("{}{}", String::from_utf8_lossy(&result.stdout), common::stderr(&result));
    assert!(!all_output.contains(planted), "{all_output}");
}
