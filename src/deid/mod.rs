//! De-identification per DICOM PS3.15 Annex E. Knows DICOM, knows no model.

pub mod options;
pub mod table;

pub use options::DeidOption;
