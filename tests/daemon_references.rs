//! A SEG, SR or presentation state belongs to the study whose series it
//! references: no pipeline's [match] names it, yet it is de-identified with
//! that series (same study, references remapped with the same keyed UIDs)
//! instead of being quarantined; one that references no series a pipeline
//! takes is quarantined as no-matching-pipeline.

mod daemon_support;

use daemon_support::*;
use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, Length, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use std::fs;
use std::path::Path;
use std::time::Duration;

fn demo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/dicom/demo")
}

fn text(object: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    object
        .element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_string()
}

#[test]
fn the_demo_seg_is_deidentified_with_its_mr_series_and_an_orphan_is_quarantined() {
    // synthd init's config: the deid-only pipeline takes MR and CT, not SEG.
    let layout = Layout::new();
    let daemon = layout.start(&[]);
    let staging = layout.path("inbox/.incoming");
    fs::create_dir_all(&staging).unwrap();
    for entry in fs::read_dir(demo()).unwrap().flatten() {
        fs::copy(entry.path(), staging.join(entry.file_name())).unwrap();
    }
    // An orphan: the demo SEG moved to a study of its own, referencing a series nobody sent.
    let mut orphan = dicom_object::open_file(demo().join("SEG000001.dcm")).unwrap();
    orphan.put(DataElement::new(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from("2.25.4417001"),
    ));
    orphan.put(DataElement::new(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from("2.25.4417002"),
    ));
    let item = InMemDicomObject::from_element_iter([DataElement::new(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from("2.25.4417003"),
    )]);
    orphan.put(DataElement::new(
        tags::REFERENCED_SERIES_SEQUENCE,
        VR::SQ,
        DataSetSequence::new(vec![item], Length::UNDEFINED),
    ));
    orphan.write_to_file(staging.join("orphan.dcm")).unwrap();
    fs::rename(&staging, layout.path("inbox/demo")).unwrap();

    wait_until(
        Duration::from_secs(60),
        "the demo study done and the orphan quarantined",
        || {
            let status = layout.status();
            count(&status, "jobs", "done") == 1 && count(&status, "jobs", "quarantined") == 1
        },
    );
    assert!(daemon.stop().success());
    assert_eq!(quarantine_codes(&layout), ["no-matching-pipeline"]);
    let outputs = files_under(&layout.path("outbox"));
    let inputs = fs::read_dir(demo()).unwrap().count();
    assert_eq!(
        outputs.len(),
        inputs,
        "every demo instance, its SEG included: {outputs:#?}"
    );
    let objects: Vec<_> = outputs.iter().map(|p| dicom_object::open_file(p).unwrap()).collect();
    let (segs, slices): (Vec<_>, Vec<_>) = objects
        .iter()
        .partition(|o| text(o, tags::SOP_CLASS_UID) == "1.2.840.10008.5.1.4.1.1.66.4");
    assert_eq!(segs.len(), 1);
    let seg = segs[0];
    let series: std::collections::HashSet<String> = slices.iter().map(|o| text(o, tags::SERIES_INSTANCE_UID)).collect();
    let study = text(slices[0], tags::STUDY_INSTANCE_UID);
    assert_eq!(
        text(seg, tags::STUDY_INSTANCE_UID),
        study,
        "the SEG is in its series' de-identified study"
    );
    let referenced = seg.element(tags::REFERENCED_SERIES_SEQUENCE).unwrap().items().unwrap();
    for item in referenced {
        let uid = text(item, tags::SERIES_INSTANCE_UID);
        assert!(
            series.contains(&uid),
            "its reference {uid} is remapped like the series: {series:?}"
        );
    }
    let original = dicom_object::open_file(demo().join("MR000001.dcm")).unwrap();
    assert!(!series.contains(&text(&original, tags::SERIES_INSTANCE_UID)));
    assert_no_phi(&layout.log());
}
