//! Reading what PACS exports actually contain: Part 10 files, files with a
//! preamble but no file meta, and raw datasets without either. Every failure
//! becomes a [`Rejection`] with a reason code and a message without PHI.

use crate::phi::Phi;
use crate::quarantine::{ReasonCode, Rejection};
use dicom_dictionary_std::{tags, uids};
use dicom_object::file::{OpenFileOptions, ReadPreamble};
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject};

/// Retired from the standard in 2004 but still found in old archives.
pub(super) const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";
use std::path::Path;

/// The whole file, read once: every check and the parser work on these bytes.
fn contents(path: &Path) -> Result<Vec<u8>, Rejection> {
    std::fs::read(path).map_err(|e| Rejection::new(ReasonCode::NotDicom, format!("cannot open the file: {}", e.kind())))
}

/// Reads a whole instance.
pub fn read_instance(path: &Path) -> Result<DefaultDicomObject, Rejection> {
    read(path, None)
}

/// What intake needs from an instance's header to group and select it.
/// Original UIDs and descriptions identify; they travel as [`Phi`].
#[derive(Debug, Clone)]
pub struct HeaderSummary {
    pub study_instance_uid: Phi<String>,
    pub series_instance_uid: Phi<String>,
    pub sop_instance_uid: Phi<String>,
    pub sop_class_uid: String,
    pub modality: String,
    pub series_description: Phi<String>,
    /// The header itself (no Pixel Data), for pipeline selection.
    pub header: DefaultDicomObject,
}

/// Reads an instance up to (not including) Pixel Data: enough to group and
/// select, without decoding or holding the pixels.
pub fn read_header(path: &Path) -> Result<HeaderSummary, Rejection> {
    let header = read(path, Some(tags::PIXEL_DATA))?;
    let text = |tag| super::engine::string_of(&header, tag).unwrap_or_default();
    let study = text(tags::STUDY_INSTANCE_UID);
    let sop = text(tags::SOP_INSTANCE_UID);
    if study.is_empty() {
        return Err(super::engine::missing(tags::STUDY_INSTANCE_UID, "Study Instance UID"));
    }
    if sop.is_empty() {
        return Err(super::engine::missing(tags::SOP_INSTANCE_UID, "SOP Instance UID"));
    }
    Ok(HeaderSummary {
        study_instance_uid: Phi::new(study),
        series_instance_uid: Phi::new(text(tags::SERIES_INSTANCE_UID)),
        sop_instance_uid: Phi::new(sop),
        sop_class_uid: text(tags::SOP_CLASS_UID),
        modality: text(tags::MODALITY),
        series_description: Phi::new(text(tags::SERIES_DESCRIPTION)),
        header,
    })
}

fn read(path: &Path, until: Option<dicom_core::Tag>) -> Result<DefaultDicomObject, Rejection> {
    let bytes = contents(path)?;
    if until.is_none() {
        if let Some(object) = read_with_trailing_native_pixels(&bytes) {
            return Ok(object);
        }
    }
    read_bytes(&bytes, until)
}

/// The common case read without decoding the pixels: a Part 10 file in a
/// native little-endian transfer syntax whose last element is Pixel Data of
/// defined length. The parser reads everything before it; the pixels are
/// taken as the bytes they are. Through the parser, 16-bit Pixel Data was
/// zero-filled, read, then widened sample by sample, which cost more than
/// the rest of de-identifying an MR slice. `None`: not that case (or the
/// prefix does not parse alone), and the caller reads the whole file as
/// before, so every error is still reported by the one full parse.
fn read_with_trailing_native_pixels(bytes: &[u8]) -> Option<DefaultDicomObject> {
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return None;
    }
    if length_problem(bytes, 132).is_some() {
        return None;
    }
    let (transfer_syntax, dataset_start) = walk_meta(bytes, 132)?.ok()?;
    let explicit = match transfer_syntax.as_str() {
        uids::IMPLICIT_VR_LITTLE_ENDIAN => false,
        uids::EXPLICIT_VR_LITTLE_ENDIAN => true,
        _ => return None,
    };
    let (at, header, vr) = trailing_pixel_data(bytes, dataset_start, explicit)?;
    // Parsed through the Pixel Data header, which stops the parser: ending
    // the slice before it would make the parser read past the end, and
    // dicom-rs captures a backtrace for that error (4% of `synthd deid`).
    let mut object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .read_until(tags::PIXEL_DATA)
        .from_reader(&bytes[..at + header])
        .ok()?;
    if object.get(tags::PIXEL_DATA).is_some() {
        return None;
    }
    object.put(dicom_object::mem::InMemElement::new(
        tags::PIXEL_DATA,
        vr,
        dicom_core::PrimitiveValue::U8(dicom_core::value::C::from_slice(&bytes[at + header..])),
    ));
    Some(object)
}

/// Walks a file meta group (always explicit VR little endian) starting at
/// `start`: `Ok((transfer syntax UID, empty when absent; offset where the
/// dataset begins))`, or `Err(offset)` of an element whose value runs past
/// the end of the file. `None` when an element header cannot be read.
fn walk_meta(bytes: &[u8], start: usize) -> Option<Result<(String, usize), usize>> {
    let mut at = start;
    let mut transfer_syntax = String::new();
    while at + 8 <= bytes.len() && u16::from_le_bytes([bytes[at], bytes[at + 1]]) == 0x0002 {
        let (length, header) = explicit_length(&bytes[at..], false)?;
        let Some(value) = bytes.get(at + header..at + header + length) else {
            return Some(Err(at));
        };
        if u16::from_le_bytes([bytes[at + 2], bytes[at + 3]]) == 0x0010 {
            transfer_syntax = String::from_utf8_lossy(value).trim_end_matches(['\0', ' ']).to_string();
        }
        at += header + length;
    }
    Some(Ok((transfer_syntax, at)))
}

/// (offset, header length, VR) of a top-level Pixel Data element whose
/// defined, even length ends exactly at the end of the file, found by
/// walking the element headers (and the items of undefined-length
/// sequences) from `start`. `None` for anything else; a walk that goes
/// wrong on a malformed file leaves a prefix the parser refuses.
fn trailing_pixel_data(bytes: &[u8], start: usize, explicit: bool) -> Option<(usize, usize, dicom_core::VR)> {
    use dicom_core::VR;
    let mut at = start;
    while at + 8 <= bytes.len() {
        let tag = tag_at(bytes, at);
        let (length, header) = element_length(bytes, at, explicit)?;
        if tag == (0x7FE0, 0x0010) {
            let vr = if !explicit {
                VR::OW // as the implicit VR decoder reads Pixel Data
            } else {
                match &bytes[at + 4..at + 6] {
                    b"OB" => VR::OB,
                    b"OW" => VR::OW,
                    _ => return None,
                }
            };
            let fits = length != UNDEFINED && length % 2 == 0 && at + header + length as usize == bytes.len();
            return fits.then_some((at, header, vr));
        }
        at = past_element(bytes, at, (length, header), explicit)?;
    }
    None
}

/// The offset just past the element at `at` with this (length, header
/// length): its value, or the items of an undefined-length sequence.
fn past_element(bytes: &[u8], at: usize, (length, header): (u32, usize), explicit: bool) -> Option<usize> {
    if length != UNDEFINED {
        return at.checked_add(header)?.checked_add(length as usize);
    }
    if explicit && &bytes[at + 4..at + 6] != b"SQ" {
        return None;
    }
    skip_items(bytes, at + header, explicit)
}

const UNDEFINED: u32 = 0xFFFF_FFFF;

fn tag_at(bytes: &[u8], at: usize) -> (u16, u16) {
    (
        u16::from_le_bytes([bytes[at], bytes[at + 1]]),
        u16::from_le_bytes([bytes[at + 2], bytes[at + 3]]),
    )
}

/// (value length, header length) of the little-endian element at `at`.
fn element_length(bytes: &[u8], at: usize, explicit: bool) -> Option<(u32, usize)> {
    if explicit {
        let (length, header) = explicit_length(bytes.get(at..)?, false)?;
        Some((length as u32, header))
    } else {
        Some((u32::from_le_bytes(bytes.get(at + 4..at + 8)?.try_into().ok()?), 8))
    }
}

/// The offset just past the Sequence Delimitation Item of an
/// undefined-length sequence whose first item starts at `at`.
fn skip_items(bytes: &[u8], mut at: usize, explicit: bool) -> Option<usize> {
    loop {
        let length = u32::from_le_bytes(bytes.get(at + 4..at + 8)?.try_into().ok()?);
        match tag_at(bytes.get(..at + 8)?, at) {
            (0xFFFE, 0xE0DD) => return Some(at + 8),
            (0xFFFE, 0xE000) if length == UNDEFINED => at = skip_item_elements(bytes, at + 8, explicit)?,
            (0xFFFE, 0xE000) => at = at.checked_add(8)?.checked_add(length as usize)?,
            _ => return None,
        }
    }
}

/// The offset just past the Item Delimitation Item of an undefined-length
/// item whose first element starts at `at`.
fn skip_item_elements(bytes: &[u8], mut at: usize, explicit: bool) -> Option<usize> {
    loop {
        bytes.get(at..at + 8)?;
        if tag_at(bytes, at) == (0xFFFE, 0xE00D) {
            return Some(at + 8);
        }
        at = past_element(bytes, at, element_length(bytes, at, explicit)?, explicit)?;
    }
}

fn read_bytes(bytes: &[u8], until: Option<dicom_core::Tag>) -> Result<DefaultDicomObject, Rejection> {
    if bytes.is_empty() {
        return Err(Rejection::new(ReasonCode::ZeroBytes, "the file is empty (0 bytes)"));
    }
    let part10 = bytes.len() >= 132 && &bytes[128..132] == b"DICM";
    let bare_meta = bytes.len() >= 4 && &bytes[..4] == b"DICM";
    if part10 || bare_meta {
        if let Some(problem) = length_problem(bytes, if part10 { 132 } else { 4 }) {
            return Err(problem);
        }
        let options = OpenFileOptions::new().read_preamble(if part10 {
            ReadPreamble::Always
        } else {
            ReadPreamble::Never
        });
        let options = match until {
            Some(tag) => options.read_until(tag),
            None => options,
        };
        return options
            .from_reader(bytes)
            .map_err(|e| classify(&e.to_string(), bytes.len() as u64));
    }
    read_raw_dataset(bytes, until)
}

/// A quick walk over the top-level element headers that finds a defined
/// length running past the end of the file before the parser does: some
/// parsers spend seconds on such a file trying to honour a gigabyte length.
fn length_problem(bytes: &[u8], start: usize) -> Option<Rejection> {
    let truncated = |at: usize| {
        Some(Rejection::new(
            ReasonCode::Truncated,
            format!(
                "an element at byte {at} declares more bytes than the file holds ({} bytes)",
                bytes.len()
            ),
        ))
    };
    let (transfer_syntax, mut at) = match walk_meta(bytes, start)? {
        Ok(walked) => walked,
        Err(at) => return truncated(at),
    };
    let (explicit, big_endian) = match transfer_syntax.as_str() {
        uids::IMPLICIT_VR_LITTLE_ENDIAN => (false, false),
        EXPLICIT_VR_BIG_ENDIAN => (true, true),
        // Deflated datasets cannot be walked without inflating them.
        uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN => return None,
        _ => (true, false),
    };
    while at + 8 <= bytes.len() {
        let (length, header) = if explicit {
            explicit_length(&bytes[at..], big_endian)?
        } else {
            (u32::from_le_bytes(bytes[at + 4..at + 8].try_into().ok()?) as usize, 8)
        };
        if length == 0xFFFF_FFFF {
            if explicit && &bytes[at + 4..at + 6] == b"UN" {
                // CP-246: a sequence hidden in UN with undefined length. The
                // DICOM parser used here stalls for tens of seconds on it.
                return Some(Rejection::new(
                    ReasonCode::UnsupportedTransferSyntax,
                    format!(
                        "an element at byte {at} is a UN of undefined length (CP-246), which synthd cannot read yet"
                    ),
                ));
            }
            return None; // undefined length: nested items, leave it to the parser
        }
        if at + header + length > bytes.len() {
            return truncated(at);
        }
        at += header + length;
    }
    None
}

/// (value length, header length) of an explicit VR element header.
fn explicit_length(bytes: &[u8], big_endian: bool) -> Option<(usize, usize)> {
    if bytes.len() < 8 {
        return None;
    }
    let vr = &bytes[4..6];
    let long = matches!(
        vr,
        b"OB" | b"OW" | b"OF" | b"OD" | b"OL" | b"OV" | b"SQ" | b"UN" | b"UT" | b"UC" | b"UR" | b"SV" | b"UV"
    );
    let read16 = |b: &[u8]| {
        if big_endian {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        }
    };
    let read32 = |b: &[u8]| {
        let array: [u8; 4] = b.try_into().expect("4 bytes");
        if big_endian {
            u32::from_be_bytes(array)
        } else {
            u32::from_le_bytes(array)
        }
    };
    if long {
        if bytes.len() < 12 {
            return None;
        }
        Some((read32(&bytes[8..12]) as usize, 12))
    } else {
        Some((read16(&bytes[6..8]) as usize, 8))
    }
}

/// Datasets without file meta (with or without a 128-byte preamble): the
/// transfer syntax is inferred by trying implicit, then explicit VR little
/// endian, and kept only when the result looks like a composite instance.
fn read_raw_dataset(bytes: &[u8], until: Option<dicom_core::Tag>) -> Result<DefaultDicomObject, Rejection> {
    let mut last_error = String::from("no transfer syntax could be inferred");
    for offset in [0usize, 128] {
        if bytes.len() <= offset + 8 {
            continue;
        }
        for ts_uid in [
            uids::IMPLICIT_VR_LITTLE_ENDIAN,
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
            EXPLICIT_VR_BIG_ENDIAN,
        ] {
            use dicom_transfer_syntax_registry::entries;
            let (ts, explicit, big_endian) = match ts_uid {
                uids::EXPLICIT_VR_LITTLE_ENDIAN => (entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(), true, false),
                EXPLICIT_VR_BIG_ENDIAN => (entries::EXPLICIT_VR_BIG_ENDIAN.erased(), true, true),
                _ => (entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(), false, false),
            };
            if !plausible_start(&bytes[offset..], explicit, big_endian)
                || !top_level_fits(&bytes[offset..], explicit, big_endian)
            {
                continue;
            }
            match InMemDicomObject::read_dataset_with_ts(&bytes[offset..], &ts) {
                Ok(mut dataset) => {
                    if let Some(tag) = until {
                        dataset.remove_element(tag);
                    }
                    let class = super::engine::string_of(&dataset, tags::SOP_CLASS_UID);
                    let instance = super::engine::string_of(&dataset, tags::SOP_INSTANCE_UID);
                    if let (Some(class), Some(instance)) = (class, instance) {
                        let meta = FileMetaTableBuilder::new()
                            .media_storage_sop_class_uid(class)
                            .media_storage_sop_instance_uid(instance)
                            .transfer_syntax(ts_uid)
                            .build()
                            .map_err(|e| Rejection::new(ReasonCode::NoFileMeta, e.to_string()))?;
                        return Ok(dataset.with_exact_meta(meta));
                    }
                    last_error = "a dataset without SOP Class UID or SOP Instance UID".to_string();
                }
                Err(error) => last_error = error.to_string(),
            }
        }
    }
    if looks_like_dataset(bytes) {
        Err(Rejection::new(
            ReasonCode::NoFileMeta,
            format!(
                "no file meta and the transfer syntax cannot be inferred ({})",
                redact(&last_error)
            ),
        ))
    } else {
        Err(Rejection::new(
            ReasonCode::NotDicom,
            "not a DICOM file: no DICM marker and no readable dataset",
        ))
    }
}

/// Whether every top-level element's defined length stays inside the bytes
/// under this guess of the encoding. A wrong guess reads some text as a
/// gigabyte length, and the parser would allocate it before failing (an ICC
/// profile read as implicit VR asked for 1.9 GB).
fn top_level_fits(bytes: &[u8], explicit: bool, big_endian: bool) -> bool {
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let (length, header) = if explicit {
            match explicit_length(&bytes[at..], big_endian) {
                Some(found) => found,
                None => return false,
            }
        } else {
            let word: [u8; 4] = bytes[at + 4..at + 8].try_into().expect("4 bytes");
            (u32::from_le_bytes(word) as usize, 8)
        };
        if length == 0xFFFF_FFFF {
            return true; // undefined length: nested items, left to the parser
        }
        match at.checked_add(header).and_then(|end| end.checked_add(length)) {
            Some(end) if end <= bytes.len() => at = end,
            _ => return false,
        }
    }
    true
}

/// The first element of a dataset is in a low even group with a sane tag.
fn plausible_start(bytes: &[u8], explicit: bool, big_endian: bool) -> bool {
    if bytes.len() < 8 {
        return false;
    }
    let group = if big_endian {
        u16::from_be_bytes([bytes[0], bytes[1]])
    } else {
        u16::from_le_bytes([bytes[0], bytes[1]])
    };
    let plausible_group = group == 0x0008 || group == 0x0002 || (group <= 0x0010 && group % 2 == 0);
    if !plausible_group {
        return false;
    }
    if explicit {
        bytes[4].is_ascii_uppercase() && bytes[5].is_ascii_uppercase()
    } else {
        !(bytes[4].is_ascii_uppercase() && bytes[5].is_ascii_uppercase())
    }
}

fn looks_like_dataset(bytes: &[u8]) -> bool {
    plausible_start(bytes, true, false) || plausible_start(bytes, false, false) || plausible_start(bytes, true, true)
}

fn classify(error: &str, length: u64) -> Rejection {
    let lower = error.to_lowercase();
    if lower.contains("transfer syntax") || lower.contains("unsupported") {
        Rejection::new(
            ReasonCode::UnsupportedTransferSyntax,
            format!("the transfer syntax is not supported: {}", redact(error)),
        )
    } else if lower.contains("end of")
        || lower.contains("eof")
        || lower.contains("unexpected end")
        || lower.contains("fill whole buffer")
        || lower.contains("could not read")
    {
        Rejection::new(
            ReasonCode::Truncated,
            format!(
                "the file ends inside a data element ({length} bytes): {}",
                redact(error)
            ),
        )
    } else if lower.contains("meta") {
        Rejection::new(
            ReasonCode::NoFileMeta,
            format!("the file meta group is unreadable: {}", redact(error)),
        )
    } else {
        Rejection::new(
            ReasonCode::NotDicom,
            format!("cannot parse the file as DICOM: {}", redact(error)),
        )
    }
}

/// Parser messages name tags and offsets, not values; this keeps only the
/// first line and caps the length, so no value can ride along.
fn redact(error: &str) -> String {
    let line = error.lines().next().unwrap_or_default();
    line.chars().take(160).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::Tag;

    /// The head of an ICC colour profile (as shipped in pydicom's test
    /// files): read as implicit VR it declares a 1.9 GB element.
    const ICC_HEAD: &[u8] = b"\x00\x00\x22\x38lcms\x04\x00\x00\x00mntrRGB XYZ \x07\xdd\x00\x03\x00\x19\x00\x11";

    /// A Part 10 file with a few header elements and `pixels` as Pixel Data
    /// (OW), followed by `trailer` elements.
    fn part10(transfer_syntax: &str, pixels: Vec<u8>, trailer: &[dicom_object::mem::InMemElement]) -> Vec<u8> {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        let mut object = InMemDicomObject::new_empty();
        object.put(DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.5.1.4.1.1.4",
        ));
        object.put(DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4"));
        object.put(DataElement::new(tags::PATIENT_NAME, VR::PN, "Fake^Patient"));
        object.put(DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(2u16)));
        object.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U8(pixels.into()),
        ));
        for element in trailer {
            object.put(element.clone());
        }
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.4")
            .media_storage_sop_instance_uid("1.2.3.4")
            .transfer_syntax(transfer_syntax)
            .build()
            .unwrap();
        let mut bytes = Vec::new();
        object.with_exact_meta(meta).write_all(&mut bytes).unwrap();
        bytes
    }

    fn encoded(object: &DefaultDicomObject) -> Vec<u8> {
        let mut bytes = Vec::new();
        object.write_all(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn trailing_native_pixels_are_taken_as_bytes_and_encode_as_the_full_parse_does() {
        for transfer_syntax in [uids::EXPLICIT_VR_LITTLE_ENDIAN, uids::IMPLICIT_VR_LITTLE_ENDIAN] {
            let bytes = part10(transfer_syntax, (0u8..=255).collect(), &[]);
            let fast = read_with_trailing_native_pixels(&bytes).expect("the fast path applies");
            let value = fast.get(tags::PIXEL_DATA).unwrap().value();
            assert!(matches!(
                value,
                dicom_core::value::Value::Primitive(dicom_core::PrimitiveValue::U8(_))
            ));
            let full = read_bytes(&bytes, None).unwrap();
            assert_eq!(encoded(&fast), encoded(&full), "{transfer_syntax}");
            assert_eq!(encoded(&fast), bytes);
        }
    }

    #[test]
    fn pixel_values_shaped_like_a_pixel_data_header_are_still_pixels() {
        // The last 16 bytes of the pixels read as "(7FE0,0010) OW, 4 bytes".
        let mut pixels = vec![1u8; 64];
        pixels.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0, 4, 0, 0, 0, 9, 9, 9, 9]);
        let bytes = part10(uids::EXPLICIT_VR_LITTLE_ENDIAN, pixels.clone(), &[]);
        let object = read_with_trailing_native_pixels(&bytes).expect("the fast path applies");
        assert_eq!(
            object.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap().as_ref(),
            &pixels[..]
        );
    }

    #[test]
    fn undefined_length_sequences_before_pixel_data_are_walked_through() {
        use dicom_core::value::DataSetSequence;
        use dicom_core::{DataElement, Length, PrimitiveValue, VR};
        let inner = InMemDicomObject::from_element_iter([DataElement::new(
            tags::CODE_VALUE,
            VR::SH,
            PrimitiveValue::from("113100"),
        )]);
        let nested = DataElement::new(
            tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(vec![inner], Length::UNDEFINED),
        );
        let item = InMemDicomObject::from_element_iter([nested]);
        // Sorts before Pixel Data and after the other header elements.
        let sequence = DataElement::new(
            tags::REFERENCED_IMAGE_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(vec![item.clone(), item], Length::UNDEFINED),
        );
        for transfer_syntax in [uids::EXPLICIT_VR_LITTLE_ENDIAN, uids::IMPLICIT_VR_LITTLE_ENDIAN] {
            let bytes = part10(transfer_syntax, vec![3u8; 40], std::slice::from_ref(&sequence));
            assert!(
                memchr::memmem::find(&bytes, &[0xFE, 0xFF, 0xDD, 0xE0]).is_some(),
                "a delimited sequence"
            );
            let fast = read_with_trailing_native_pixels(&bytes).expect("the fast path applies");
            assert_eq!(encoded(&fast), bytes, "{transfer_syntax}");
        }
    }

    #[test]
    fn elements_after_pixel_data_leave_the_file_to_the_full_parse() {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        let padding = DataElement::new(Tag(0xFFFC, 0xFFFC), VR::OB, PrimitiveValue::U8(vec![0u8; 8].into()));
        let bytes = part10(uids::EXPLICIT_VR_LITTLE_ENDIAN, vec![5u8; 32], &[padding]);
        assert!(read_with_trailing_native_pixels(&bytes).is_none());
        assert!(read_bytes(&bytes, None).unwrap().get(Tag(0xFFFC, 0xFFFC)).is_some());
    }

    #[test]
    fn a_wrong_encoding_guess_with_a_huge_length_is_refused_before_parsing() {
        assert!(!top_level_fits(ICC_HEAD, false, false));
        let rejection = read_bytes(ICC_HEAD, None).unwrap_err();
        assert!(
            matches!(rejection.code, ReasonCode::NoFileMeta | ReasonCode::NotDicom),
            "{rejection:?}"
        );
    }

    #[test]
    fn a_raw_dataset_whose_elements_fit_is_walked_to_the_end() {
        // (0008,0016) UI "1.2" and (0008,0018) UI "1.3", implicit VR LE.
        let mut bytes = Vec::new();
        for (element, value) in [(0x0016u16, b"1.2\0"), (0x0018u16, b"1.3\0")] {
            bytes.extend_from_slice(&0x0008u16.to_le_bytes());
            bytes.extend_from_slice(&element.to_le_bytes());
            bytes.extend_from_slice(&4u32.to_le_bytes());
            bytes.extend_from_slice(value);
        }
        assert!(top_level_fits(&bytes, false, false));
        bytes.truncate(bytes.len() - 2);
        assert!(!top_level_fits(&bytes, false, false));
    }
}
