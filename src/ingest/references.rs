//! Objects that describe other series of their study: a Segmentation, a
//! Structured Report or Key Object Selection, a Presentation State. No
//! pipeline's `[match]` names them (they have no pixels of their own to
//! synthesize), yet they belong with the series they reference: they are
//! de-identified by that series' pipeline, in the same study, so their
//! references are remapped with the same keyed UIDs.
//!
//! Intake records such an object's referenced series as keyed digests (the
//! ledger never holds a UID); the claim gives it the pipeline of a series it
//! references, or quarantines it as `no-matching-pipeline` when none of its
//! study's series is taken by a pipeline.

use crate::keyfile::SiteKey;
use crate::phi::keyed_digest;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// SOP Class UID prefixes of objects that reference series, as data
/// (PS3.4 Annex B): prefix, what they are.
pub const REFERENCE_CLASSES: &[(&str, &str)] = &[
    // 66.1 spatial registration, 66.2 fiducials, 66.3 deformable
    // registration, 66.4 segmentation, 66.5 surface segmentation.
    ("1.2.840.10008.5.1.4.1.1.66.", "segmentation or registration"),
    // Structured reports of every kind, Key Object Selection (88.59).
    (
        "1.2.840.10008.5.1.4.1.1.88.",
        "structured report or key object selection",
    ),
    // Grayscale, colour, pseudo-colour, blending, ... presentation states.
    ("1.2.840.10008.5.1.4.1.1.11.", "presentation state"),
];

/// How deep sequences are searched for references (SR content trees nest;
/// evidence and referenced-series sequences sit within the first levels).
const MAX_DEPTH: usize = 6;

/// Whether the SOP class is one that references series.
pub fn is_reference_class(sop_class_uid: &str) -> bool {
    REFERENCE_CLASSES
        .iter()
        .any(|(prefix, _)| sop_class_uid.starts_with(prefix))
}

/// The keyed digest that names a series in the ledger.
pub fn series_digest(key: &SiteKey, series_instance_uid: &str) -> String {
    crate::ingest::header::hex(&keyed_digest(key, "synthd/series", &[series_instance_uid.as_bytes()]))
}

/// The instance's own Series Instance UID.
pub fn own_series(object: &InMemDicomObject) -> Option<String> {
    text(object, tags::SERIES_INSTANCE_UID)
}

/// Every Series Instance UID found in a Referenced Series Sequence
/// (0008,1115) anywhere in the data set: top level for SEG and presentation
/// states, inside Current Requested Procedure Evidence Sequence for SR and
/// Key Object Selection. Sorted, without repeats.
pub fn referenced_series(object: &InMemDicomObject) -> Vec<String> {
    let mut found = Vec::new();
    collect(object, 0, &mut found);
    found.sort();
    found.dedup();
    found
}

fn collect(object: &InMemDicomObject, depth: usize, found: &mut Vec<String>) {
    if depth > MAX_DEPTH {
        return;
    }
    for element in object {
        let Some(items) = element.items() else { continue };
        for item in items {
            if element.header().tag == tags::REFERENCED_SERIES_SEQUENCE {
                found.extend(text(item, tags::SERIES_INSTANCE_UID));
            }
            collect(item, depth + 1, found);
        }
    }
}

fn text(object: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    object
        .element_opt(tag)
        .ok()
        .flatten()
        .and_then(|element| element.to_str().ok())
        .map(|value| value.trim_end_matches(['\0', ' ']).to_string())
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::value::DataSetSequence;
    use dicom_core::{DataElement, Length, PrimitiveValue, VR};

    fn item(series: &str) -> InMemDicomObject {
        InMemDicomObject::from_element_iter([DataElement::new(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(series),
        )])
    }

    fn sequence(tag: dicom_core::Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
        DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
    }

    #[test]
    fn references_are_found_at_the_top_and_inside_sr_evidence() {
        let seg = InMemDicomObject::from_element_iter([
            DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.9")),
            sequence(tags::REFERENCED_SERIES_SEQUENCE, vec![item("1.2.3"), item("1.2.3")]),
        ]);
        assert_eq!(referenced_series(&seg), ["1.2.3"]);
        assert_eq!(own_series(&seg).as_deref(), Some("1.2.9"));
        let evidence = InMemDicomObject::from_element_iter([sequence(
            tags::REFERENCED_SERIES_SEQUENCE,
            vec![item("1.2.4"), item("1.2.5")],
        )]);
        let sr = InMemDicomObject::from_element_iter([sequence(
            tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
            vec![evidence],
        )]);
        assert_eq!(referenced_series(&sr), ["1.2.4", "1.2.5"]);
        assert!(is_reference_class("1.2.840.10008.5.1.4.1.1.66.4"));
        assert!(is_reference_class("1.2.840.10008.5.1.4.1.1.88.22"));
        assert!(is_reference_class("1.2.840.10008.5.1.4.1.1.11.1"));
        assert!(!is_reference_class("1.2.840.10008.5.1.4.1.1.4"));
    }
}
