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

/// Every byte string of `needle` (any case) in `haystack`.
fn contains_text(haystack: &[u8], needle: &str) -> bool {
    let haystack = String::from_utf8_lossy(haystack).to_ascii_uppercase();
    haystack.contains(&needle.to_ascii_uppercase())
}

fn item(elements: Vec<InMemElement>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

fn code(value: &str, meaning: &str) -> InMemElement {
    sequence(
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![item(vec![
            text(tags::CODE_VALUE, VR::SH, value),
            text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, "DCM"),
            text(tags::CODE_MEANING, VR::LO, meaning),
        ])],
    )
}

/// An instance of `sop_class` with the usual fake identity and UIDs.
fn instance(sop_class: &str, sop: &str, modality: &str, extra: Vec<InMemElement>) -> DefaultDicomObject {
    let mut object = mr(
        Some("1.2.826.0.1.3680043.10.996.1"),
        Some("1.2.826.0.1.3680043.10.996.2"),
        sop,
        extra,
    );
    object.put(text(tags::SOP_CLASS_UID, VR::UI, sop_class));
    object.put(text(tags::MODALITY, VR::CS, modality));
    object
}

mod leaks {
    use super::*;

    const NAME: &str = "FAKE^BUILT";

    #[test]
    fn waveform_annotation_text_and_multiplex_group_labels_do_not_survive() {
        // A 12-lead ECG whose labels and annotation name the patient.
        let channel = item(vec![text(Tag(0x003A, 0x0203), VR::SH, "BUILTCHAN")]);
        let group = item(vec![
            text(Tag(0x003A, 0x0020), VR::SH, "BUILTGROUP"),
            sequence(Tag(0x003A, 0x0200), vec![channel]),
            text(Tag(0x003A, 0x0005), VR::US, "1"),
        ]);
        let annotation = item(vec![
            text(Tag(0x0070, 0x0006), VR::ST, "Patient FAKE^BUILT coughed"),
            text(Tag(0x0040, 0xA180), VR::US, "1"),
        ]);
        let ecg = instance(
            "1.2.840.10008.5.1.4.1.1.9.1.1",
            "1.2.826.0.1.3680043.10.996.3",
            "ECG",
            vec![
                sequence(Tag(0x5400, 0x0100), vec![group]),
                sequence(Tag(0x0040, 0xB020), vec![annotation]),
            ],
        );
        for options in [&[][..], &[DeidOption::CleanDescriptors][..]] {
            let out = deidentifier(options).deidentify_object(ecg.clone()).unwrap();
            let bytes = out.to_bytes().unwrap();
            for planted in ["BUILTCHAN", "BUILTGROUP", "coughed", NAME] {
                assert!(!contains_text(&bytes, planted), "{planted} survived with {options:?}");
            }
            assert!(
                out.object().get(Tag(0x5400, 0x0100)).is_some(),
                "the waveform itself stays"
            );
        }
    }

    /// An SR whose content names a UID, an image and the patient.
    fn report(image_sop: &str) -> DefaultDicomObject {
        let uid_item = item(vec![
            text(tags::RELATIONSHIP_TYPE, VR::CS, "HAS OBS CONTEXT"),
            text(tags::VALUE_TYPE, VR::CS, "UIDREF"),
            code("121018", "Procedure Study Instance UID"),
            text(tags::UID, VR::UI, "1.2.826.0.1.3680043.10.996.1"),
        ]);
        let image_item = item(vec![
            text(tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS"),
            text(tags::VALUE_TYPE, VR::CS, "IMAGE"),
            sequence(
                tags::REFERENCED_SOP_SEQUENCE,
                vec![item(vec![
                    text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, uids::MR_IMAGE_STORAGE),
                    text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, image_sop),
                ])],
            ),
        ]);
        let text_item = item(vec![
            text(tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS"),
            text(tags::VALUE_TYPE, VR::CS, "TEXT"),
            code("121071", "Finding"),
            text(tags::TEXT_VALUE, VR::UT, "Seen with FAKE^BUILT"),
        ]);
        instance(
            uids::COMPREHENSIVE_SR_STORAGE,
            "1.2.826.0.1.3680043.10.996.4",
            "SR",
            vec![
                text(tags::VALUE_TYPE, VR::CS, "CONTAINER"),
                code("18748-4", "Diagnostic Imaging Report"),
                sequence(tags::CONTENT_SEQUENCE, vec![uid_item, image_item, text_item]),
            ],
        )
    }

    fn content(out: &Deidentified) -> Vec<InMemDicomObject> {
        out.object()
            .get(tags::CONTENT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn uids_in_sr_content_items_are_remapped_like_the_instances_they_name() {
        let image_sop = "1.2.826.0.1.3680043.10.996.5";
        let image = mr(
            Some("1.2.826.0.1.3680043.10.996.1"),
            Some("1.2.826.0.1.3680043.10.996.2"),
            image_sop,
            vec![],
        );
        for options in [&[][..], &[DeidOption::CleanStructuredContent][..]] {
            let d = deidentifier(options);
            let image = d.deidentify_object(image.clone()).unwrap();
            let sr = d.deidentify_object(report(image_sop)).unwrap();
            let items = content(&sr);
            assert_eq!(items.len(), 3, "{options:?}");
            assert_eq!(uid_of(&items[0], tags::UID), image.study_uid, "{options:?}");
            let referenced = &items[1].get(tags::REFERENCED_SOP_SEQUENCE).unwrap().items().unwrap()[0];
            assert_eq!(
                uid_of(referenced, tags::REFERENCED_SOP_INSTANCE_UID),
                image.sop_instance_uid
            );
            assert!(!contains_text(&sr.to_bytes().unwrap(), NAME), "{options:?}");
        }
    }

    #[test]
    fn d_on_a_sequence_keeps_each_item_with_its_type_1_attributes() {
        let sr = deidentifier(&[])
            .deidentify_object(report("1.2.826.0.1.3680043.10.996.5"))
            .unwrap();
        for item in content(&sr) {
            // Relationship Type, Value Type: present with their enumerated values.
            assert!(["HAS OBS CONTEXT", "CONTAINS"].contains(&uid_of(&item, tags::RELATIONSHIP_TYPE).trim()));
            assert!(!uid_of(&item, tags::VALUE_TYPE).trim().is_empty());
            if let Some(concept) = item.get(tags::CONCEPT_NAME_CODE_SEQUENCE) {
                let concept = &concept.items().unwrap()[0];
                for tag in [tags::CODE_VALUE, tags::CODING_SCHEME_DESIGNATOR, tags::CODE_MEANING] {
                    assert!(
                        !uid_of(concept, tag).trim().is_empty(),
                        "Type 1 {tag} is present and not empty"
                    );
                }
            }
        }
    }
}

mod clean_pixel_data {
    use super::*;
    use synthd::config::pipeline::BurnedInPolicy;

    const ROWS: usize = 480;
    const COLUMNS: usize = 640;

    fn starter() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("signatures/ctp-starter.toml")
    }

    fn with_signatures(burned_in_unknown: &[(&str, BurnedInPolicy)]) -> Deidentifier {
        let profile = DeidProfile {
            clean_pixel_data: Some(starter()),
            burned_in_unknown: burned_in_unknown.iter().map(|(m, p)| (m.to_string(), *p)).collect(),
            ..DeidProfile::default()
        };
        Deidentifier::new(SiteKey::from_bytes([7; 32]), &profile).unwrap()
    }

    /// A two-frame RGB ultrasound clip of an Acuson Sequoia, every sample 200,
    /// Burned In Annotation absent.
    fn clip(transfer_syntax: &str) -> DefaultDicomObject {
        let mut object = instance(
            "1.2.840.10008.5.1.4.1.1.3.1",
            "1.2.826.0.1.3680043.10.996.6",
            "US",
            vec![
                text(tags::MANUFACTURER, VR::LO, "ACUSON"),
                text(tags::MANUFACTURER_MODEL_NAME, VR::LO, "SEQUOIA"),
                DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(ROWS as u16)),
                DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(COLUMNS as u16)),
                text(tags::NUMBER_OF_FRAMES, VR::IS, "2"),
                DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(3u16)),
                text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB"),
                DataElement::new(tags::PLANAR_CONFIGURATION, VR::US, PrimitiveValue::from(0u16)),
                DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(8u16)),
                DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(8u16)),
                DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(7u16)),
                DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0u16)),
                DataElement::new(
                    tags::PIXEL_DATA,
                    VR::OB,
                    PrimitiveValue::from(vec![200u8; ROWS * COLUMNS * 3 * 2]),
                ),
            ],
        );
        object.meta_mut().transfer_syntax = transfer_syntax.to_string();
        object
    }

    fn pixels(out: &Deidentified) -> Vec<u8> {
        out.object().get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap().to_vec()
    }

    #[test]
    fn a_matching_image_is_blanked_in_every_frame_and_declared_clean() {
        let out = with_signatures(&[])
            .deidentify_object(clip(uids::EXPLICIT_VR_LITTLE_ENDIAN))
            .unwrap();
        let data = pixels(&out);
        let frame = ROWS * COLUMNS * 3;
        for (index, &sample) in data.iter().enumerate() {
            // The Sequoia signature: [0, 0, 640, 30], the top 30 rows.
            let row = (index % frame) / (COLUMNS * 3);
            assert_eq!(sample, if row < 30 { 0 } else { 200 }, "sample {index}, row {row}");
        }
        assert_eq!(uid_of(out.object(), tags::BURNED_IN_ANNOTATION), "NO");
        let codes = out
            .object()
            .get(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        assert!(codes.iter().any(|c| uid_of(c, tags::CODE_VALUE) == "113101"));
        // And in the file as written.
        let written = dicom_object::from_reader(&out.to_bytes().unwrap()[128..]).unwrap();
        assert_eq!(
            written.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap().as_ref(),
            &data[..]
        );
    }

    #[test]
    fn an_image_no_signature_matches_is_quarantined_unless_its_modality_is_accepted() {
        let mut other = clip(uids::EXPLICIT_VR_LITTLE_ENDIAN);
        other.put(DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(240u16)));
        let rejection = with_signatures(&[]).deidentify_object(other.clone()).unwrap_err();
        assert_eq!(rejection.code, ReasonCode::BurnedInAnnotationUnknown);
        assert!(rejection.message.contains("no signature of"), "{}", rejection.message);
        let accepted = with_signatures(&[("US", BurnedInPolicy::Accept)])
            .deidentify_object(other)
            .unwrap();
        assert!(pixels(&accepted).iter().all(|&s| s == 200));
        // Declared YES and matching: cleaned; quarantined by policy: not.
        let mut declared = clip(uids::EXPLICIT_VR_LITTLE_ENDIAN);
        declared.put(text(tags::BURNED_IN_ANNOTATION, VR::CS, "YES"));
        assert!(with_signatures(&[]).deidentify_object(declared).is_ok());
        let refused = with_signatures(&[("US", BurnedInPolicy::Quarantine)])
            .deidentify_object(clip(uids::EXPLICIT_VR_LITTLE_ENDIAN))
            .unwrap_err();
        assert_eq!(refused.code, ReasonCode::BurnedInAnnotationUnknown);
        // CT accepts by default, with or without signatures.
        let mut ct = clip(uids::EXPLICIT_VR_LITTLE_ENDIAN);
        ct.put(text(tags::MODALITY, VR::CS, "CT"));
        assert!(deidentifier(&[]).deidentify_object(ct).is_ok());
    }

    #[test]
    fn compressed_pixels_that_match_but_cannot_be_decoded_are_quarantined_naming_the_syntax() {
        use dicom_core::value::{PixelFragmentSequence, Value};
        let compressed = |transfer_syntax: &str| {
            let mut object = clip(transfer_syntax);
            object.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                Value::PixelSequence(PixelFragmentSequence::new(
                    Vec::<u32>::new(),
                    vec![vec![0xFF, 0xD8, 0xFF, 0xD9]],
                )),
            ));
            object
        };
        // A JPEG Baseline stream with no image in it: decoded, and found broken.
        let broken = with_signatures(&[])
            .deidentify_object(compressed("1.2.840.10008.1.2.4.50"))
            .unwrap_err();
        assert_eq!(broken.code, ReasonCode::InvalidPixelData);
        assert!(
            broken.message.contains("1.2.840.10008.1.2.4.50") && broken.message.contains("cannot be decoded"),
            "{}",
            broken.message
        );
        // JPEG-LS: this build has no decoder for it.
        let unsupported = with_signatures(&[])
            .deidentify_object(compressed("1.2.840.10008.1.2.4.80"))
            .unwrap_err();
        assert_eq!(unsupported.code, ReasonCode::UnsupportedTransferSyntax);
        assert!(
            unsupported.message.contains("1.2.840.10008.1.2.4.80") && unsupported.message.contains("decompress"),
            "{}",
            unsupported.message
        );
    }

    #[test]
    fn validate_names_file_line_and_column_of_a_bad_signature() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("signatures.toml");
        let good = std::fs::read_to_string(starter()).unwrap();
        let validate = |text: &str| {
            std::fs::write(&file, text).unwrap();
            std::process::Command::new(env!("CARGO_BIN_EXE_synthd"))
                .args(["validate", file.to_str().unwrap()])
                .output()
                .unwrap()
        };
        let ok = validate(&good);
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
        assert!(String::from_utf8_lossy(&ok.stdout).contains("7 pixel signature(s)"));
        let outside = good.replacen("[[0, 0, 640, 30]]", "[[0, 0, 641, 30]]", 1);
        let line = outside.lines().position(|l| l.contains("[[0, 0, 641, 30]]")).unwrap() + 1;
        let refused = validate(&outside);
        assert_eq!(refused.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&refused.stderr).to_string();
        assert!(
            stderr.starts_with(&format!(
                "{}:{line}:15: `signature.rectangles`: rectangle [0, 0, 641, 30] reaches outside the 640x480 image",
                file.display()
            )),
            "{stderr}"
        );
        let malformed = validate(&good.replacen("rows = 480", "rows = -480", 1));
        assert_eq!(malformed.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&malformed.stderr).contains(&format!("{}:", file.display())));
    }
}
