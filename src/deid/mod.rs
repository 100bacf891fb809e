//! De-identification per DICOM PS3.15 Annex E. Knows DICOM, knows no model.
//!
//! - `table`: Table E.1-1 as data (`table_e1_1.tsv`), actions and options.
//! - `iod`: compound actions resolved by the attribute's type in the instance's IOD (PS3.3 as data).
//! - `engine`: the walk over every element, sequence item and file meta.
//! - `uid`, `dates`, `dummy`: keyed UIDs, per-patient date shift, dummy values.
//! - `read`: Part 10 files, files without meta, raw datasets; reasons for failures.
//! - `selection`: choosing series on the original header, before anything is removed.
//! - `signatures`, `pixels`: the Clean Pixel Data Option: where burned-in text lies, and blanking it.

mod dates;
mod dummy;
pub mod engine;
mod iod;
pub mod options;
mod pixels;
pub mod read;
pub mod selection;
pub mod signatures;
pub mod table;
pub mod uid;

pub use engine::{CrosswalkEntry, DeidError, Deidentified, Deidentifier};
pub use options::DeidOption;
pub use read::{read_header, read_instance, HeaderSummary};
pub use uid::map_uid;
