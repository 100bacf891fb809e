//! De-identification of instances built here, one per case the standard or
//! real archives make hard: invalid but present UIDs, instances of no study.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject};
use synthd::config::pipeline::DeidProfile;
use synthd::deid::{DeidOption, Deidentified, Deidentifier};
use synthd::keyfile::SiteKey;
use synthd::quarantine::ReasonCode;

fn deidentifier(options: &[DeidOption]) -> Deidentifier {
    let profile = DeidProfile {
        options: options.to_vec(),
        ..DeidProfile::default()
    };
    Deidentifier::new(SiteKey::from_bytes([7; 32]), &profile).unwrap()
}

fn text(tag: Tag, vr: VR, value: &str) -> InMemElement {
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}

fn sequence(tag: Tag, items: Vec<InMemDicomObject>) -> InMemElement {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

/// An MR instance with these UIDs (None: absent) and `extra` elements.
fn mr(study: Option<&str>, series: Option<&str>, sop: &str, extra: Vec<InMemElement>) -> DefaultDicomObject {
    let mut object = InMemDicomObject::from_element_iter([
        text(tags::SOP_CLASS_UID, VR::UI, uids::MR_IMAGE_STORAGE),
        text(tags::SOP_INSTANCE_UID, VR::UI, sop),
        text(tags::MODALITY, VR::CS, "MR"),
        text(tags::PATIENT_NAME, VR::PN, "FAKE^BUILT"),
        text(tags::PATIENT_ID, VR::LO, "FAKE-BUILT-1"),
    ]);
    if let Some(study) = study {
        object.put(text(tags::STUDY_INSTANCE_UID, VR::UI, study));
    }
    if let Some(series) = series {
        object.put(text(tags::SERIES_INSTANCE_UID, VR::UI, series));
    }
    for element in extra {
        object.put(element);
    }
    object
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .unwrap()
}

fn uid_of(object: &InMemDicomObject, tag: Tag) -> String {
    object
        .get(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_string()
}

/// A Referenced Series Sequence (kept: no row of Table E.1-1) naming one
/// instance of one series.
fn reference_to(series: &str, sop: &str) -> InMemElement {
    let mut instance = InMemDicomObject::new_empty();
    instance.put(text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, uids::MR_IMAGE_STORAGE));
    instance.put(text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, sop));
    let mut item = InMemDicomObject::new_empty();
    item.put(text(tags::SERIES_INSTANCE_UID, VR::UI, series));
    item.put(sequence(tags::REFERENCED_INSTANCE_SEQUENCE, vec![instance]));
    sequence(tags::REFERENCED_SERIES_SEQUENCE, vec![item])
}

/// The (series, SOP instance) a [`reference_to`] names after de-identification.
fn referenced(deidentified: &Deidentified) -> (String, String) {
    let series = &deidentified
        .object()
        .get(tags::REFERENCED_SERIES_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    let instance = &series.get(tags::REFERENCED_INSTANCE_SEQUENCE).unwrap().items().unwrap()[0];
    (
        uid_of(series, tags::SERIES_INSTANCE_UID),
        uid_of(instance, tags::REFERENCED_SOP_INSTANCE_UID),
    )
}

fn is_valid_uid(value: &str) -> bool {
    value.len() <= 64
        && value
            .split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && (c == "0" || !c.starts_with('0')))
}

mod uids_in_real_archives {
    use super::*;

    const STUDY: &str = "1.2.826.0.1.3680043.10.997.02"; // a leading zero
    const LONG: &str = "1.2.826.0.1.3680043.10.997.1234567890.1234567890.1234567890.12345"; // 66 characters
    const STRAY: &str = "1.2.826.0.1.3680043.10.997.3a"; // a stray letter
    const SPLIT: &str = "1.2.826.0.1.3680043.10.997.4\\5"; // a stray backslash

    /// Two instances of one study with invalid but present UIDs; the second
    /// references the first.
    fn pair() -> (DefaultDicomObject, DefaultDicomObject) {
        let first = mr(
            Some(STUDY),
            Some(SPLIT),
            LONG,
            vec![text(tags::FRAME_OF_REFERENCE_UID, VR::UI, STRAY)],
        );
        let second = mr(
            Some(STUDY),
            Some(SPLIT),
            "1.2.826.0.1.3680043.10.997.5",
            vec![reference_to(SPLIT, LONG)],
        );
        (first, second)
    }

    #[test]
    fn are_remapped_to_valid_uids_consistently_instead_of_quarantined() {
        let deidentifier = deidentifier(&[]);
        let (first, second) = pair();
        let first = deidentifier
            .deidentify_object(first)
            .expect("remapped, not quarantined");
        let second = deidentifier
            .deidentify_object(second)
            .expect("remapped, not quarantined");
        for uid in [&first.study_uid, &first.series_uid, &first.sop_instance_uid] {
            assert!(is_valid_uid(uid) && uid.starts_with("2.25."), "{uid}");
        }
        let frame = uid_of(first.object(), tags::FRAME_OF_REFERENCE_UID);
        assert!(is_valid_uid(&frame) && frame != STRAY);
        // One study, one series, and the reference still points at the first.
        assert_eq!(first.study_uid, second.study_uid);
        assert_eq!(first.series_uid, second.series_uid);
        assert_eq!(
            referenced(&second),
            (first.series_uid.clone(), first.sop_instance_uid.clone())
        );
        let series = first.object().get(tags::SERIES_INSTANCE_UID).unwrap();
        assert_eq!(
            series.to_multi_str().unwrap().len(),
            1,
            "a stray backslash makes no second value"
        );
    }

    #[test]
    fn retain_uids_keeps_valid_uids_and_remaps_only_the_invalid() {
        let deidentifier = deidentifier(&[DeidOption::RetainUids]);
        let valid = "1.2.826.0.1.3680043.10.997.6";
        let (first, _) = pair();
        let mut first = first;
        first.put(text(tags::SOP_INSTANCE_UID, VR::UI, valid));
        let first = deidentifier.deidentify_object(first).unwrap();
        assert_eq!(first.sop_instance_uid, valid);
        assert!(is_valid_uid(&first.study_uid) && first.study_uid != STUDY);
        assert!(is_valid_uid(&first.series_uid));
        assert!(is_valid_uid(&uid_of(first.object(), tags::FRAME_OF_REFERENCE_UID)));
    }

    #[test]
    fn a_missing_study_is_no_study_and_another_missing_uid_is_missing_uid() {
        let deidentifier = deidentifier(&[]);
        let palette = mr(
            None,
            Some("1.2.826.0.1.3680043.10.997.7"),
            "1.2.826.0.1.3680043.10.997.8",
            vec![],
        );
        let rejection = deidentifier.deidentify_object(palette).unwrap_err();
        assert_eq!(rejection.code, ReasonCode::NoStudy);
        assert_eq!(rejection.code.as_str(), "no-study");
        let no_series = mr(Some(STUDY), None, "1.2.826.0.1.3680043.10.997.9", vec![]);
        assert_eq!(
            deidentifier.deidentify_object(no_series).unwrap_err().code,
            ReasonCode::MissingUid
        );

        // The header read of `process` and `deid` says the same.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("palette.dcm");
        mr(None, None, "1.2.826.0.1.3680043.10.997.10", vec![])
            .write_to_file(&path)
            .unwrap();
        assert_eq!(synthd::deid::read_header(&path).unwrap_err().code, ReasonCode::NoStudy);
    }
}
