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
    if study.is_empty() || sop.is_empty() {
        return Err(Rejection::new(
            ReasonCode::InvalidUid,
            "the header has no Study Instance UID or SOP Instance UID",
        ));
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
    read_bytes(&contents(path)?, until)
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
    // The file meta group is always explicit VR little endian.
    let mut at = start;
    let mut transfer_syntax = String::new();
    while at + 8 <= bytes.len() && u16::from_le_bytes([bytes[at], bytes[at + 1]]) == 0x0002 {
        let (length, header) = explicit_length(&bytes[at..], false)?;
        if at + header + length > bytes.len() {
            return truncated(at);
        }
        if u16::from_le_bytes([bytes[at + 2], bytes[at + 3]]) == 0x0010 {
            transfer_syntax = String::from_utf8_lossy(&bytes[at + header..at + header + length])
                .trim_end_matches(['\0', ' '])
                .to_string();
        }
        at += header + length;
    }
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

    /// The head of an ICC colour profile (as shipped in pydicom's test
    /// files): read as implicit VR it declares a 1.9 GB element.
    const ICC_HEAD: &[u8] = b"\x00\x00\x22\x38lcms\x04\x00\x00\x00mntrRGB XYZ \x07\xdd\x00\x03\x00\x19\x00\x11";

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
