//! Small builders for DICOM elements and code items, in the standard's words.

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

pub use crate::attribute::{put_str, string_of};

pub fn put_strs(object: &mut InMemDicomObject, tag: Tag, vr: VR, values: &[&str]) {
    let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    object.put(DataElement::new(tag, vr, PrimitiveValue::Strs(values.into())));
}

pub fn put_u16(object: &mut InMemDicomObject, tag: Tag, value: u16) {
    object.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
}

pub fn put_sequence(object: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    object.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

/// A Code Sequence Macro item (Code Value, Coding Scheme Designator, Code Meaning).
pub fn code_item(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::CODE_VALUE, VR::SH, value);
    put_str(&mut item, tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme);
    put_str(&mut item, tags::CODE_MEANING, VR::LO, meaning);
    item
}

/// The items of a sequence attribute, empty when absent.
pub fn items_of(object: &InMemDicomObject, tag: Tag) -> Vec<InMemDicomObject> {
    object
        .get(tag)
        .and_then(|e| e.items())
        .map(|items| items.to_vec())
        .unwrap_or_default()
}

/// Decimal String text for a float, short and exact enough for DS (16 chars).
pub fn ds(value: f64) -> String {
    let mut text = format!("{value:.6}");
    while text.contains('.') && (text.ends_with('0') || text.ends_with('.')) {
        text.pop();
    }
    if text.len() > 16 {
        text = format!("{value:.6e}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_are_short() {
        assert_eq!(ds(40.0), "40");
        assert_eq!(ds(-1024.5), "-1024.5");
        assert_eq!(ds(0.1234567), "0.123457");
        assert!(ds(1.0e20).len() <= 16);
    }
}
