//! The output stage: synthetic series with provenance, the mask as a DICOM
//! SEG, `manifest.jsonl`, and previews. Knows DICOM; takes pixels from the
//! synth stage as plain values.

mod attrs;
mod font;
pub mod manifest;
pub mod pixels;
pub mod preview;
pub mod qc;
pub mod seg;
pub mod seg_masks;
pub mod sequence;
pub mod series;
pub mod study;
pub mod synthetic;
pub mod uids;

/// synthd's Implementation Class UID (a fixed 2.25 UID, derived once from
/// the text "synthd implementation class").
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.301011847883464981239478106669186728537";

pub fn implementation_version_name() -> String {
    format!("SYNTHD_{}", env!("CARGO_PKG_VERSION"))
        .chars()
        .take(16)
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("the source instance has no {0}; cannot derive a synthetic instance from it")]
    MissingAttribute(&'static str),
    #[error("unsupported source image: {0}")]
    Unsupported(&'static str),
    #[error("pixel data cannot be decoded: {0}")]
    PixelData(String),
    #[error("cannot encode the output object: {0}")]
    Encode(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The Part 10 file bytes of an object (preamble, meta, dataset).
pub fn encode(object: &dicom_object::DefaultDicomObject) -> Result<Vec<u8>, OutputError> {
    let mut bytes = Vec::new();
    object
        .write_all(&mut bytes)
        .map_err(|e| OutputError::Encode(e.to_string()))?;
    Ok(bytes)
}

/// File meta for an object synthd writes: Explicit VR Little Endian, synthd's
/// implementation class.
pub(crate) fn file_meta(
    sop_class_uid: &str,
    sop_instance_uid: &str,
) -> Result<dicom_object::FileMetaTable, OutputError> {
    dicom_object::FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class_uid)
        .media_storage_sop_instance_uid(sop_instance_uid)
        .transfer_syntax(dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(implementation_version_name())
        .build()
        .map_err(|e| OutputError::Encode(e.to_string()))
}
