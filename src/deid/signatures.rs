//! Pixel signatures for the Clean Pixel Data Option (PS3.15 E.3.1, code
//! 113101): which images carry burned-in text where, in the style of RSNA
//! CTP's DicomPixelAnonymizer script. A signature names a modality,
//! optionally a manufacturer, model and Image Type value, and an exact image
//! size; an image that matches has its rectangles blanked in every frame.
//!
//! ```toml
//! [[signature]]
//! name = "Acuson Sequoia 640x480"
//! modality = "US"
//! manufacturer = "ACUSON"      # Manufacturer (0008,0070) contains it, any case
//! model = "SEQUOIA"            # Manufacturer's Model Name (0008,1090) contains it, any case
//! rows = 480
//! columns = 640
//! rectangles = [[0, 0, 640, 30]]   # [x, y, width, height] in pixels
//! source = "where this signature comes from"
//! ```

use crate::config::diagnostic::{Diagnostic, Diagnostics};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// A rectangle to blank: `x`, `y` of its top-left pixel, then its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rectangle {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone)]
pub struct Signature {
    pub name: String,
    pub modality: String,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub image_type: Option<String>,
    pub rows: u32,
    pub columns: u32,
    pub rectangles: Vec<Rectangle>,
}

/// The signatures of one file, in file order: the first match wins.
#[derive(Debug, Clone)]
pub struct SignatureSet {
    pub file: PathBuf,
    pub signatures: Vec<Signature>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    signature: Vec<RawSignature>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignature {
    name: Spanned<String>,
    modality: String,
    manufacturer: Option<String>,
    model: Option<String>,
    image_type: Option<String>,
    rows: Spanned<u32>,
    columns: Spanned<u32>,
    rectangles: Spanned<Vec<Spanned<[u32; 4]>>>,
    /// Where the signature comes from; required, so that every one is traceable.
    #[allow(dead_code)]
    source: String,
}

impl SignatureSet {
    pub fn load(file: &Path) -> Result<SignatureSet, Diagnostics> {
        let source = std::fs::read_to_string(file).map_err(|error| {
            Diagnostics(vec![Diagnostic::whole_file(
                file,
                format!("cannot read signature file: {error}"),
            )])
        })?;
        SignatureSet::parse(file, &source)
    }

    /// Parses and checks a signature file: every problem names its line and column.
    pub fn parse(file: &Path, source: &str) -> Result<SignatureSet, Diagnostics> {
        let raw: RawFile =
            toml::from_str(source).map_err(|error| Diagnostics(vec![Diagnostic::from_toml(file, source, &error)]))?;
        let mut problems = Diagnostics::default();
        let at = |span: std::ops::Range<usize>, message: String| Diagnostic::at_span(file, source, span, message);
        if raw.signature.is_empty() {
            problems.push(Diagnostic::whole_file(
                file,
                "no [[signature]] tables; expected at least one signature",
            ));
        }
        let mut signatures = Vec::new();
        for entry in raw.signature {
            let (rows, columns) = (*entry.rows.get_ref(), *entry.columns.get_ref());
            if rows == 0 || columns == 0 {
                problems.push(at(entry.rows.span(), "rows and columns must be at least 1".into()));
            }
            if entry.rectangles.get_ref().is_empty() {
                problems.push(at(
                    entry.rectangles.span(),
                    "no rectangles; expected [[x, y, width, height], ...]".into(),
                ));
            }
            if entry.modality.trim().is_empty() {
                problems.push(at(
                    entry.name.span(),
                    "modality is empty; expected a code such as \"US\"".into(),
                ));
            }
            let mut rectangles = Vec::new();
            for spanned in entry.rectangles.get_ref() {
                let [x, y, width, height] = *spanned.get_ref();
                let inside = u64::from(x) + u64::from(width) <= u64::from(columns)
                    && u64::from(y) + u64::from(height) <= u64::from(rows);
                if width == 0 || height == 0 {
                    problems.push(at(
                        spanned.span(),
                        "the rectangle is empty; expected width and height of at least 1".into(),
                    ));
                } else if !inside {
                    problems.push(at(
                        spanned.span(),
                        format!(
                            "rectangle [{x}, {y}, {width}, {height}] reaches outside the {columns}x{rows} image of this signature"
                        ),
                    ));
                }
                rectangles.push(Rectangle { x, y, width, height });
            }
            signatures.push(Signature {
                name: entry.name.into_inner(),
                modality: entry.modality.trim().to_ascii_uppercase(),
                manufacturer: entry.manufacturer,
                model: entry.model,
                image_type: entry.image_type,
                rows,
                columns,
                rectangles,
            });
        }
        if problems.is_empty() {
            Ok(SignatureSet {
                file: file.to_path_buf(),
                signatures,
            })
        } else {
            Err(problems)
        }
    }

    /// The first signature `header` matches.
    pub fn find(&self, header: &InMemDicomObject, modality: &str) -> Option<&Signature> {
        let text = |tag| super::engine::string_of(header, tag).unwrap_or_default();
        let number = |tag| header.get(tag).and_then(|e| e.to_int::<u32>().ok());
        let (rows, columns) = (number(tags::ROWS)?, number(tags::COLUMNS)?);
        let (manufacturer, model, image_type) = (
            text(tags::MANUFACTURER),
            text(tags::MANUFACTURER_MODEL_NAME),
            text(tags::IMAGE_TYPE),
        );
        self.signatures.iter().find(|s| {
            s.modality.eq_ignore_ascii_case(modality)
                && s.rows == rows
                && s.columns == columns
                && contains(&manufacturer, s.manufacturer.as_deref())
                && contains(&model, s.model.as_deref())
                && contains(&image_type, s.image_type.as_deref())
        })
    }
}

/// Whether a TOML file is a signature file: `[[signature]]` tables and no
/// pipeline `name` or config `[paths]`.
pub fn looks_like_signatures(source: &str) -> bool {
    match toml::from_str::<toml::Table>(source) {
        Ok(table) => table.contains_key("signature") && !table.contains_key("name") && !table.contains_key("paths"),
        Err(_) => source.contains("[[signature]]"),
    }
}

/// CTP's `containsIgnoreCase`; no constraint matches anything.
fn contains(value: &str, wanted: Option<&str>) -> bool {
    wanted.is_none_or(|wanted| value.to_lowercase().contains(&wanted.to_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[signature]]
name = "a"
modality = "US"
manufacturer = "ACUSON"
rows = 480
columns = 640
rectangles = [[0, 0, 640, 30]]
source = "test"
"#;

    #[test]
    fn a_rectangle_outside_the_image_is_an_error_at_its_line_and_column() {
        let text = GOOD.replace("[[0, 0, 640, 30]]", "[[0, 0, 640, 30], [600, 10, 41, 5]]");
        let problems = SignatureSet::parse(Path::new("s.toml"), &text).unwrap_err();
        let line = problems.to_string();
        assert!(
            line.starts_with(
                "s.toml:8:32: `signature.rectangles`: rectangle [600, 10, 41, 5] reaches outside the 640x480 image"
            ),
            "{line}"
        );
    }

    #[test]
    fn malformed_files_name_file_line_and_column() {
        let problems = SignatureSet::parse(Path::new("s.toml"), &GOOD.replace("rows = 480", "rows = \"480\""))
            .unwrap_err()
            .to_string();
        assert!(problems.starts_with("s.toml:6:8: `signature.rows`:"), "{problems}");
        let problems = SignatureSet::parse(Path::new("s.toml"), &GOOD.replace("rows = 480", "row = 480"))
            .unwrap_err()
            .to_string();
        assert!(
            problems.starts_with("s.toml:6:1:") && problems.contains("unknown key `row`"),
            "{problems}"
        );
        let problems = SignatureSet::parse(Path::new("s.toml"), &GOOD.replace("source = \"test\"\n", ""))
            .unwrap_err()
            .to_string();
        assert!(problems.contains("missing key `source`"), "{problems}");
    }

    #[test]
    fn a_signature_matches_modality_size_and_names_in_any_case() {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        let set = SignatureSet::parse(Path::new("s.toml"), GOOD).unwrap();
        let header = |manufacturer: &str, rows: u16| {
            InMemDicomObject::from_element_iter([
                DataElement::new(tags::MANUFACTURER, VR::LO, PrimitiveValue::from(manufacturer)),
                DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(rows)),
                DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(640u16)),
            ])
        };
        assert_eq!(set.find(&header("Acuson Corp", 480), "us").unwrap().name, "a");
        assert!(set.find(&header("Acuson Corp", 481), "US").is_none());
        assert!(set.find(&header("Other", 480), "US").is_none());
        assert!(set.find(&header("ACUSON", 480), "CT").is_none());
    }
}
