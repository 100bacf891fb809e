//! Compound actions of Table E.1-1 (Z/D, X/Z, X/D, X/Z/D, X/Z/U*) resolved by
//! the attribute's type in the instance's IOD: de-identifying instances of
//! several IODs adds no dciodvfy error about a missing or empty attribute
//! that such an action decided, while attributes the IOD leaves optional are
//! still removed.

mod common;

use common::{key, pydicom_test_files, python, repo, synthd};
use dicom_dictionary_std::tags;
use dicom_object::open_file;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use synthd::deid::table::Table;
use synthd::deid::DeidOption;

/// pydicom test files of different IODs, each with the Table E.1-1
/// attributes whose action is compound that its IOD requires.
const PYDICOM_FIXTURES: [&str; 9] = [
    "CT_small.dcm",     // CT Image
    "MR_small.dcm",     // MR Image
    "rtplan.dcm",       // RT Plan: Operators' Name Type 2 in RT Series
    "rtdose.dcm",       // RT Dose
    "rtstruct.dcm",     // RT Structure Set (no file meta)
    "reportsi.dcm",     // Basic Text SR: Content Date/Time Type 1
    "test-SR.dcm",      // Comprehensive SR
    "waveform_ecg.dcm", // 12-lead ECG: Acquisition DateTime Type 1
    "liver_1frame.dcm", // Segmentation: functional groups, references
];

/// Fixtures whose output must have no new dciodvfy error of any kind. The SR
/// documents are left out: the Basic Profile's D on Content Sequence and
/// Verifying Observer Sequence leaves one empty item, whose Type 1 attributes
/// dciodvfy then misses (not a compound action). The planted MR carries
/// every attribute at once, some against their conditions.
const NO_NEW_ERRORS: [&str; 7] = [
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
    "rtstruct.dcm",
    "waveform_ecg.dcm",
    // X/Z/U* on a Type 2 reference sequence keeps its items: the references
    // the Common Instance Reference module lists stay referenced.
    "liver_1frame.dcm",
];

/// Keywords of the Table E.1-1 rows whose action is compound in the Basic
/// Profile or any option column.
fn compound_keywords() -> BTreeSet<String> {
    Table::standard()
        .rows
        .iter()
        .filter(|row| {
            !row.keyword.is_empty()
                && (row.basic.is_compound()
                    || DeidOption::ALL
                        .iter()
                        .any(|&option| row.option(option).is_some_and(|action| action.is_compound())))
        })
        .map(|row| row.keyword.clone())
        .collect()
}

/// dciodvfy's error lines for one file.
fn dciodvfy_errors(path: &Path) -> BTreeSet<String> {
    let output = Command::new("dciodvfy")
        .arg(path)
        .output()
        .expect("dciodvfy (Debian dicom3tools, scripts/setup.sh) is installed");
    let text = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
    text.lines()
        .filter(|line| line.starts_with("Error"))
        .map(str::to_string)
        .collect()
}

/// The attribute a "Missing attribute" or "Empty attribute" error names
/// (`... Element=<ContentDate> Module=<...>`), if the line is such an error.
fn missing_or_empty(line: &str) -> Option<&str> {
    if !(line.contains("Missing attribute") || line.contains("Empty attribute")) {
        return None;
    }
    let start = line.find("Element=<")? + "Element=<".len();
    let end = start + line[start..].find('>')?;
    Some(&line[start..end])
}

/// De-identifies one file alone (so the single output is its own) and
/// returns the output's path.
fn deidentify(input: &Path, work: &Path, key: &Path) -> PathBuf {
    let name = input.file_stem().unwrap().to_str().unwrap();
    let in_dir = work.join(format!("{name}-in"));
    let out_dir = work.join(format!("{name}-out"));
    std::fs::create_dir_all(&in_dir).unwrap();
    std::fs::copy(input, in_dir.join(input.file_name().unwrap())).unwrap();
    let result = synthd(&[
        "deid",
        in_dir.to_str().unwrap(),
        "--output",
        out_dir.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
        "--jobs",
        "1",
    ]);
    if result.status.code() != Some(0) {
        let reasons: Vec<String> = common::files_under(&work.join(format!("{name}-out-quarantine")))
            .iter()
            .filter(|p| p.ends_with("reason.json"))
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect();
        panic!(
            "{name}: exit {:?}\nstdout: {}\nstderr: {}\nquarantine: {reasons:#?}",
            result.status.code(),
            String::from_utf8_lossy(&result.stdout),
            common::stderr(&result)
        );
    }
    let written = common::files_under(&out_dir);
    assert_eq!(written.len(), 1, "{name}: one output");
    written[0].clone()
}

/// A planted MR instance (fixtures/deid/make_planted.py): every Table E.1-1
/// attribute present with a fake value, compound ones included.
fn planted_mr(work: &Path) -> PathBuf {
    let dir = work.join("planted");
    std::fs::create_dir_all(&dir).unwrap();
    let output = Command::new(python())
        .arg(repo("fixtures/deid/make_planted.py"))
        .arg(repo("src/deid/table_e1_1.tsv"))
        .arg(&dir)
        .arg("1")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    dir.join("planted00.dcm")
}

#[test]
fn compound_actions_add_no_missing_or_empty_attribute_errors() {
    let work = tempfile::tempdir().unwrap();
    let key = key(work.path(), "site.key");
    let compound = compound_keywords();
    assert!(compound.contains("ContentDate") && compound.contains("SourceImageSequence"));

    let pydicom_files = pydicom_test_files();
    let mut inputs: Vec<PathBuf> = PYDICOM_FIXTURES.iter().map(|name| pydicom_files.join(name)).collect();
    inputs.push(planted_mr(work.path()));

    let mut new_errors = Vec::new();
    for input in &inputs {
        let name = input.file_name().unwrap().to_str().unwrap();
        let output = deidentify(input, work.path(), &key);
        let before = dciodvfy_errors(input);
        for line in dciodvfy_errors(&output).difference(&before) {
            let decided_by_compound = missing_or_empty(line).is_some_and(|keyword| compound.contains(keyword));
            if decided_by_compound || NO_NEW_ERRORS.contains(&name) {
                new_errors.push(format!("{name}: {line}"));
            }
        }
    }
    assert!(new_errors.is_empty(), "{new_errors:#?}");
}

#[test]
fn optional_attributes_are_removed_and_required_ones_kept() {
    let work = tempfile::tempdir().unwrap();
    let key = key(work.path(), "site.key");
    let pydicom_files = pydicom_test_files();

    // CT Image: Institution Name and Station Name (X/Z/D) are Type 3.
    let ct = open_file(deidentify(&pydicom_files.join("CT_small.dcm"), work.path(), &key)).unwrap();
    assert!(ct.get(tags::INSTITUTION_NAME).is_none(), "Type 3 X/Z/D removed");
    assert!(ct.get(tags::STATION_NAME).is_none(), "Type 3 X/Z/D removed");
    // Content Date (Z/D) is 2C in General Image: present, emptied.
    let content_date = ct.get(tags::CONTENT_DATE).expect("Type 2C Z/D kept");
    assert!(content_date.to_str().unwrap().trim().is_empty(), "Type 2C Z/D zeroed");

    // 12-lead ECG: Content Date (Z/D) and Acquisition DateTime (X/Z/D) are
    // Type 1 in Waveform Identification: a dummy value, not the original.
    let input = pydicom_files.join("waveform_ecg.dcm");
    let original = open_file(&input).unwrap();
    let ecg = open_file(deidentify(&input, work.path(), &key)).unwrap();
    for tag in [tags::CONTENT_DATE, tags::ACQUISITION_DATE_TIME] {
        let value = ecg.get(tag).expect("Type 1 kept").to_str().unwrap().trim().to_string();
        assert!(!value.is_empty(), "{tag}: Type 1 has a value");
        assert_ne!(
            Some(value),
            original.get(tag).map(|e| e.to_str().unwrap().trim().to_string())
        );
    }
}

/// Writes the Electromyogram instance of fixtures/deid/make_newer_iod.py
/// (fake identifiers) to `work/<name>.dcm`, under `sop_class` if given.
fn electromyogram(work: &Path, name: &str, sop_class: Option<&str>) -> PathBuf {
    let path = work.join(format!("{name}.dcm"));
    let mut command = Command::new(python());
    command.arg(repo("fixtures/deid/make_newer_iod.py")).arg(&path);
    command.args(sop_class);
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    path
}

fn text_of(object: &dicom_object::DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    object
        .get(tag)
        .map(|element| element.to_str().unwrap().trim_end_matches(['\0', ' ']).to_string())
}

/// Electromyogram Waveform Storage is a SOP class PS3.3 2020a lacks and the
/// 2026b data knows: its compound actions follow the Electromyogram IOD's
/// types. The same content under an unknown SOP class gets the conservative
/// choice (present, with a dummy), which shows the types were consulted.
#[test]
fn a_sop_class_newer_than_2020a_is_resolved_by_its_iod_types() {
    let work = tempfile::tempdir().unwrap();
    let key = key(work.path(), "site.key");
    let input = electromyogram(work.path(), "emg", None);
    let unknown_input = electromyogram(
        work.path(),
        "unknown",
        Some("2.25.271828182845904523536028747135266249"),
    );
    let original = open_file(&input).unwrap();
    let known = open_file(deidentify(&input, work.path(), &key)).unwrap();
    let unknown = open_file(deidentify(&unknown_input, work.path(), &key)).unwrap();

    // Type 3 in the Electromyogram IOD (General Equipment, General Series):
    // X/Z/D and X/D remove them.
    for tag in [
        tags::INSTITUTION_NAME,
        tags::STATION_NAME,
        tags::OPERATORS_NAME,
        tags::SERIES_DATE,
        tags::SERIES_TIME,
        tags::PROTOCOL_NAME,
    ] {
        let planted = text_of(&original, tag).expect("planted");
        assert_eq!(text_of(&known, tag), None, "{tag}: Type 3 removed");
        let conservative = text_of(&unknown, tag).expect("unknown SOP class: kept");
        assert!(!conservative.is_empty() && conservative != planted, "{tag}: a dummy");
    }
    // Type 1 (Waveform Identification, Enhanced General Equipment): a dummy value.
    for tag in [
        tags::ACQUISITION_DATE_TIME,
        tags::DEVICE_SERIAL_NUMBER,
        tags::CONTENT_DATE,
    ] {
        let planted = text_of(&original, tag).expect("planted");
        let value = text_of(&known, tag).expect("Type 1 kept");
        assert!(
            !value.is_empty() && value != planted,
            "{tag}: Type 1 gets a dummy, got {value:?}"
        );
    }
}
