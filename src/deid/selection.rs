//! Choosing series by attributes the Basic Profile removes (Series
//! Description, ...): decided on the original header, before de-identification.

use crate::config::pipeline::Selection;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// Whether a pipeline takes this instance: its `[match]` accepts it, or it
/// is a Segmentation the pipeline needs for its masks (`mask.source = "seg"`).
pub fn pipeline_takes(pipeline: &crate::config::pipeline::Pipeline, object: &InMemDicomObject) -> bool {
    let is_seg = super::engine::string_of(object, tags::SOP_CLASS_UID).as_deref() == Some(SEGMENTATION_STORAGE);
    let wants_seg = pipeline
        .synth
        .as_ref()
        .is_some_and(|s| s.mask.source == crate::config::pipeline::MaskSource::Seg);
    (is_seg && wants_seg) || matches(&pipeline.selection, object)
}

const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";

pub fn matches(selection: &Selection, object: &InMemDicomObject) -> bool {
    let text = |tag| super::engine::string_of(object, tag).unwrap_or_default();
    let modality = text(tags::MODALITY);
    if !selection.modality.is_empty() && !selection.modality.iter().any(|m| m.eq_ignore_ascii_case(&modality)) {
        return false;
    }
    let sop_class = text(tags::SOP_CLASS_UID);
    if !selection.sop_classes.is_empty() && !selection.sop_classes.contains(&sop_class) {
        return false;
    }
    let description = text(tags::SERIES_DESCRIPTION);
    if !selection.series_description.is_empty()
        && !selection
            .series_description
            .iter()
            .any(|pattern| glob_match(pattern, &description))
    {
        return false;
    }
    true
}

/// Case-insensitive glob with `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.to_lowercase().chars().collect();
    let text: Vec<char> = text.to_lowercase().chars().collect();
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == '*' {
        p += 1;
    }
    p == pattern.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_case_insensitively() {
        assert!(glob_match("*t1*", "AX T1 POST"));
        assert!(glob_match("ax ?1", "AX T1"));
        assert!(!glob_match("*flair*", "AX T1"));
        assert!(glob_match("*", ""));
    }
}
