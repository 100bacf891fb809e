//! De-identification checked attribute by attribute against Table E.1-1, on
//! generated instances that carry a distinct fake value in every attribute
//! the table names (plus nested sequences, private blocks, overlays, file meta).

mod common;

use common::{key, python, repo, synthd};
use dicom_core::Tag;
use dicom_object::{open_file, DefaultDicomObject};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use synthd::deid::table::{Action, Table, TagPattern};
use synthd::deid::DeidOption;

struct Fixture {
    dir: tempfile::TempDir,
    key: PathBuf,
}

fn planted() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let status = Command::new(python())
        .arg(repo("fixtures/deid/make_planted.py"))
        .arg(repo("src/deid/table_e1_1.tsv"))
        .arg(&input)
        .arg("1")
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let key = key(dir.path(), "site.key");
    Fixture { dir, key }
}

/// Runs `synthd deid` with `options`; returns (original, de-identified).
fn deidentify(
    fixture: &Fixture,
    options: &[DeidOption],
    name: &str,
) -> (DefaultDicomObject, DefaultDicomObject, PathBuf) {
    let out = fixture.dir.path().join(name);
    let mut args = vec![
        "deid".to_string(),
        fixture.dir.path().join("in").display().to_string(),
        "--output".into(),
        out.display().to_string(),
        "--key-file".into(),
        fixture.key.display().to_string(),
        "--jobs".into(),
        "1".into(),
    ];
    for option in options {
        args.push("--option".into());
        args.push(option.name().into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = synthd(&args);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        common::stderr(&output)
    );
    let written = common::files_under(&out);
    assert_eq!(written.len(), 1, "one output file");
    let original = open_file(fixture.dir.path().join("in/planted00.dcm")).unwrap();
    let deidentified = open_file(&written[0]).unwrap();
    (original, deidentified, written[0].clone())
}

fn text(object: &DefaultDicomObject, tag: Tag) -> Option<String> {
    object.get(tag).map(|e| {
        e.to_str()
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            .unwrap_or_default()
    })
}

fn is_empty(object: &DefaultDicomObject, tag: Tag) -> bool {
    match object.get(tag) {
        Some(element) => match element.items() {
            Some(items) => items.is_empty(),
            None => text(object, tag).unwrap_or_default().is_empty(),
        },
        None => false,
    }
}

#[test]
fn basic_profile_applies_every_row_of_the_table() {
    let fixture = planted();
    let (original, output, path) = deidentify(&fixture, &[], "basic");
    let table = Table::standard();
    let mut checked = 0;
    for row in &table.rows {
        let TagPattern::Exact(tag) = row.tag else { continue };
        if original.get(tag).is_none() || tag == Tag(0x0010, 0x0010) || tag == Tag(0x0010, 0x0020) {
            continue;
        }
        checked += 1;
        let before = text(&original, tag);
        let after = text(&output, tag);
        let present = output.get(tag).is_some();
        let changed_or_absent = !present || after != before || output.get(tag).unwrap().items().is_some();
        let ok = match row.basic {
            Action::Remove => !present,
            Action::Zero => is_empty(&output, tag),
            Action::Dummy => {
                present && (output.get(tag).unwrap().items().is_some() || (after != before && !is_empty(&output, tag)))
            }
            Action::Keep => after == before,
            Action::Uid => after.as_deref().is_some_and(|v| v.starts_with("2.25.")) && after != before,
            Action::RemoveOrZero => !present || is_empty(&output, tag),
            Action::RemoveOrDummy | Action::RemoveOrZeroOrDummy | Action::ZeroOrDummy => changed_or_absent,
            Action::RemoveOrZeroOrUid => changed_or_absent,
            Action::Clean => after != before,
        };
        assert!(
            ok,
            "{} ({}): basic action {} not applied: {:?} -> {:?}",
            row.keyword,
            row.name,
            row.basic.code(),
            before,
            after
        );
    }
    assert!(checked > 500, "only {checked} table rows were planted");
    let bytes = std::fs::read(&path).unwrap();
    let haystack = String::from_utf8_lossy(&bytes);
    assert!(!haystack.contains("PLANTED"), "a planted identifying value survived");
    assert!(!haystack.contains("ZZID"), "a planted name, ID or institution survived");
    assert!(!haystack.contains("FAKEFAMILY"), "the patient's name survived");
    assert!(!haystack.contains("FAKE-PID-0001"));
    assert!(
        !haystack.contains("1.2.826.0.1.3680043.10.999"),
        "an original UID survived"
    );
}

#[test]
fn pseudonyms_attribution_and_meta_are_written() {
    let fixture = planted();
    let (_, output, _) = deidentify(&fixture, &[DeidOption::RetainLongitudinalModifiedDates], "attribution");
    let patient_id = text(&output, Tag(0x0010, 0x0020)).unwrap();
    assert!(
        patient_id.starts_with("ANON-") && patient_id.len() == 15,
        "{patient_id}"
    );
    assert_eq!(text(&output, Tag(0x0012, 0x0062)).as_deref(), Some("YES"));
    let method = text(&output, Tag(0x0012, 0x0063)).unwrap();
    assert!(
        method.contains("PS3.15 2026c") && method.contains("Modified Dates"),
        "{method}"
    );
    let codes: Vec<String> = output
        .get(Tag(0x0012, 0x0064))
        .unwrap()
        .items()
        .unwrap()
        .iter()
        .map(|item| {
            item.get(Tag(0x0008, 0x0100))
                .unwrap()
                .to_str()
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    assert_eq!(codes, ["113100", "113107"]);
    assert_eq!(text(&output, Tag(0x0028, 0x0303)).as_deref(), Some("MODIFIED"));
    let equipment = output.get(Tag(0x0018, 0xA001)).unwrap().items().unwrap();
    let purpose = equipment
        .last()
        .unwrap()
        .get(Tag(0x0040, 0xA170))
        .unwrap()
        .items()
        .unwrap()[0]
        .get(Tag(0x0008, 0x0100))
        .unwrap()
        .to_str()
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(purpose, "109104");
    assert_eq!(
        output.meta().media_storage_sop_instance_uid().trim_end_matches('\0'),
        text(&output, Tag(0x0008, 0x0018)).unwrap()
    );
    assert!(output.meta().source_application_entity_title().is_none());
}

#[test]
fn each_option_changes_exactly_what_the_table_says() {
    let fixture = planted();
    let table = Table::standard();
    let (original, basic, _) = deidentify(&fixture, &[], "none");
    // Attributes the de-identifier writes itself to describe what it did.
    let attribution: BTreeSet<Tag> = [
        Tag(0x0012, 0x0063),
        Tag(0x0012, 0x0064),
        Tag(0x0028, 0x0303),
        Tag(0x0018, 0xA001),
    ]
    .into();
    for option in DeidOption::ALL {
        let (_, with, _) = deidentify(&fixture, &[option], option.name());
        let tags: BTreeSet<Tag> = basic
            .tags()
            .chain(with.tags())
            .filter(|t| t.group() % 2 == 0 && !attribution.contains(t))
            .collect();
        let changed: BTreeSet<Tag> = tags
            .into_iter()
            .filter(|&tag| {
                let a = basic.get(tag).map(|e| format!("{:?}", e.value()));
                let b = with.get(tag).map(|e| format!("{:?}", e.value()));
                a != b
            })
            .filter(|tag| !super_is_overlay(*tag))
            .collect();
        // Every planted sequence item holds a Referring Physician's Name and a
        // Referenced SOP Instance UID: a sequence changes when the option
        // names it or either of those nested rows.
        let names = |keyword: &str| {
            let row = table.by_keyword(keyword).unwrap();
            row.option(option).is_some_and(|a| a != row.basic)
        };
        let nested_changes = names("ReferringPhysicianName") || names("ReferencedSOPInstanceUID");
        let expected: BTreeSet<Tag> = table
            .rows
            .iter()
            .filter_map(|row| match row.tag {
                TagPattern::Exact(tag) if original.get(tag).is_some() => {
                    let is_sequence = original.get(tag).unwrap().items().is_some();
                    let named = row.option(option).is_some_and(|a| a != row.basic);
                    (named || (is_sequence && nested_changes && has_items(&with, tag) && has_items(&basic, tag)))
                        .then_some(tag)
                }
                _ => None,
            })
            .filter(|tag| *tag != Tag(0x0010, 0x0010) && *tag != Tag(0x0010, 0x0020))
            .collect();
        assert_eq!(
            changed,
            expected,
            "option {option}: changed {:?} but the table names {:?}",
            changed.difference(&expected).collect::<Vec<_>>(),
            expected.difference(&changed).collect::<Vec<_>>()
        );
        match option {
            DeidOption::RetainSafePrivate => {
                assert!(with.get(Tag(0x0019, 0x100C)).is_some(), "safe private b value kept");
                assert!(with.get(Tag(0x0019, 0x1010)).is_none() && with.get(Tag(0x0009, 0x1001)).is_none());
                assert!(basic.get(Tag(0x0019, 0x100C)).is_none());
            }
            DeidOption::CleanGraphics => {
                assert!(with.get(Tag(0x6002, 0x3000)).is_some(), "ROI overlay kept");
                assert!(with.get(Tag(0x6000, 0x3000)).is_none(), "graphics overlay removed");
                assert!(basic.get(Tag(0x6002, 0x3000)).is_none());
            }
            _ => {}
        }
    }
}

#[test]
fn clean_descriptors_scrubs_names_out_of_kept_text() {
    let fixture = planted();
    let (original, output, _) = deidentify(&fixture, &[DeidOption::CleanDescriptors], "clean");
    let series = Tag(0x0008, 0x103E);
    let before = text(&original, series).unwrap();
    let after = text(&output, series).unwrap();
    assert!(before.contains("FAKEFAMILY"));
    assert!(!after.contains("FAKEFAMILY"), "{after}");
    assert_eq!(after.len(), before.len(), "cleaning keeps the length");
    assert!(
        after.starts_with(&before[..5]),
        "cleaning keeps what identifies no one: {after}"
    );
}

fn has_items(object: &DefaultDicomObject, tag: Tag) -> bool {
    object
        .get(tag)
        .and_then(|e| e.items())
        .is_some_and(|items| items.iter().any(|item| item.iter().next().is_some()))
}

fn super_is_overlay(tag: Tag) -> bool {
    (0x6000..=0x601E).contains(&tag.group())
}

#[test]
fn same_key_same_bytes_other_key_other_uids() {
    let fixture = planted();
    let (_, first, first_path) = deidentify(&fixture, &[DeidOption::RetainLongitudinalModifiedDates], "a");
    let (_, _, second_path) = deidentify(&fixture, &[DeidOption::RetainLongitudinalModifiedDates], "b");
    assert_eq!(
        std::fs::read(&first_path).unwrap(),
        std::fs::read(&second_path).unwrap()
    );
    let other = Fixture {
        key: key(fixture.dir.path(), "other.key"),
        dir: fixture.dir,
    };
    let (_, third, _) = deidentify(&other, &[DeidOption::RetainLongitudinalModifiedDates], "c");
    let study = |o: &DefaultDicomObject| text(o, Tag(0x0020, 0x000D)).unwrap();
    assert_ne!(study(&first), study(&third));
}
