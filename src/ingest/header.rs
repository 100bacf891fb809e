//! The header read that groups instances into studies: File Meta and the
//! data set up to Pixel Data, from bytes already in memory (the same bytes
//! are digested, so a file changing under us cannot split the two).

use crate::phi::Phi;
use crate::quarantine::{ReasonCode, Rejection};
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use sha2::{Digest, Sha256};

/// What intake needs from one instance. Identifying values are `Phi`.
#[derive(Debug, Clone)]
pub struct Header {
    pub study_instance_uid: Phi<String>,
    pub sop_instance_uid: Phi<String>,
    pub sop_class_uid: String,
    pub modality: String,
    pub series_description: Phi<String>,
    /// SHA-256 of the whole file, hex: tells identical from conflicting duplicates.
    pub content_digest: String,
    /// The data set up to Pixel Data, for pipeline selection.
    pub dataset: InMemDicomObject,
}

/// Reads the header of a DICOM Part 10 file held in `bytes`.
pub fn read_header(bytes: &[u8]) -> Result<Header, Rejection> {
    if bytes.is_empty() {
        return Err(Rejection::new(
            ReasonCode::ZeroBytes,
            "the file is empty; the sender may have failed mid-transfer, send it again",
        ));
    }
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err(Rejection::new(
            ReasonCode::NotDicom,
            "no DICM prefix at byte 128; expected a DICOM Part 10 file (PS3.10 section 7.1)",
        ));
    }
    let mut header = read_header_from(bytes)?;
    header.content_digest = hex(&Sha256::digest(bytes));
    Ok(header)
}

/// The header of a Part 10 file from `reader`, which is read up to Pixel
/// Data only; `content_digest` is left empty (the SCP checks an instance
/// as it lands, intake digests it later).
pub fn read_header_from(reader: impl std::io::Read) -> Result<Header, Rejection> {
    let object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .read_until(tags::PIXEL_DATA)
        .from_reader(reader)
        .map_err(|error| classify_read_error(&error))?;
    let text = |tag| {
        object
            .element_opt(tag)
            .ok()
            .flatten()
            .and_then(|element| element.to_str().ok())
            .map(|value| value.trim_end_matches(['\0', ' ']).to_string())
    };
    let study = text(tags::STUDY_INSTANCE_UID)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Rejection::new(
                ReasonCode::NoStudy,
                "Study Instance UID (0020,000D) is missing: the instance belongs to no study (e.g. a Color Palette); synthd handles study instances only",
            )
        })?;
    let sop = text(tags::SOP_INSTANCE_UID)
        .filter(|v| !v.is_empty())
        .or_else(|| {
            Some(
                object
                    .meta()
                    .media_storage_sop_instance_uid()
                    .trim_end_matches('\0')
                    .to_string(),
            )
        })
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Rejection::new(ReasonCode::MissingUid, "SOP Instance UID (0008,0018) is missing"))?;
    let sop_class = text(tags::SOP_CLASS_UID).unwrap_or_else(|| {
        object
            .meta()
            .media_storage_sop_class_uid()
            .trim_end_matches('\0')
            .to_string()
    });
    let header = Header {
        study_instance_uid: Phi::new(study),
        sop_instance_uid: Phi::new(sop),
        sop_class_uid: sop_class,
        modality: text(tags::MODALITY).unwrap_or_default(),
        series_description: Phi::new(text(tags::SERIES_DESCRIPTION).unwrap_or_default()),
        content_digest: String::new(),
        dataset: object.into_inner(),
    };
    Ok(header)
}

fn classify_read_error(error: &dicom_object::ReadError) -> Rejection {
    // The error chain says why; its Display never quotes element values.
    let mut chain = format!("{error}");
    let mut source = std::error::Error::source(error);
    let mut eof = false;
    while let Some(inner) = source {
        chain.push_str(&format!(": {inner}"));
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            eof |= io.kind() == std::io::ErrorKind::UnexpectedEof;
        }
        source = inner.source();
    }
    let lower = chain.to_lowercase();
    if eof || lower.contains("unexpected end") || lower.contains("fill whole buffer") || lower.contains("eof") {
        Rejection::new(
            ReasonCode::Truncated,
            "the file ends inside its header; the transfer was cut short, send it again",
        )
    } else if lower.contains("transfer syntax") {
        Rejection::new(
            ReasonCode::UnsupportedTransferSyntax,
            "the transfer syntax is not supported; convert the file to an uncompressed or JPEG 2000 syntax",
        )
    } else if lower.contains("meta") {
        Rejection::new(
            ReasonCode::NoFileMeta,
            "the File Meta Information group cannot be read; expected a DICOM Part 10 file",
        )
    } else {
        Rejection::new(ReasonCode::NotDicom, "the data set cannot be parsed as DICOM")
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_foreign_bytes_are_refused_with_codes() {
        assert_eq!(read_header(b"").unwrap_err().code, ReasonCode::ZeroBytes);
        assert_eq!(read_header(b"hello, not dicom").unwrap_err().code, ReasonCode::NotDicom);
        let mut almost = vec![0u8; 128];
        almost.extend_from_slice(b"DICM");
        almost.extend_from_slice(&[2, 0, 0, 0]);
        let code = read_header(&almost).unwrap_err().code;
        assert!(matches!(code, ReasonCode::Truncated | ReasonCode::NoFileMeta), "{code}");
    }

    #[test]
    fn real_pydicom_file_groups_by_study() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".venv/lib/python3.11/site-packages/pydicom/data/test_files/MR_small.dcm");
        let Ok(bytes) = std::fs::read(&path) else {
            panic!("{} missing; run scripts/setup.sh", path.display());
        };
        let header = read_header(&bytes).unwrap();
        assert_eq!(header.modality, "MR");
        assert!(!header.study_instance_uid.expose().is_empty());
        assert_eq!(header.content_digest.len(), 64);
        let cut = read_header(&bytes[..400]).unwrap_err();
        assert_eq!(cut.code, ReasonCode::Truncated, "{cut}");
    }
}
