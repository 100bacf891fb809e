//! Reading and writing one attribute's text value, shared by the stages
//! (de-identification, output, pixel decoding) so that each trims and
//! writes values the same way.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_object::InMemDicomObject;

/// The string value of an attribute, with trailing NUL and space padding
/// removed; None when absent, not a string, or empty.
pub fn string_of(object: &InMemDicomObject, tag: Tag) -> Option<String> {
    object
        .get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .filter(|s| !s.is_empty())
}

/// Puts a one-valued string attribute, replacing any value it had.
pub fn put_str(object: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    object.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}
