//! Masks from a study's DICOM SEG: each frame goes to the slice its
//! derivation references. For a model with label planes, segments map onto
//! planes by their Segmented Property Type code (scheme designator + code
//! value, as the manifest's `[[labels]]` give them), never by segment number
//! or label; a SEG of the series with a segment no plane takes is an error
//! (quarantined with `seg-codes-unmatched`), never a silent binary mask.

use super::attrs::{items_of, string_of};
use crate::deid::Deidentified;
use crate::synth::manifest::LabelConcept;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// Which segments become the mask.
pub enum SegmentChoice<'a> {
    /// Models without label planes: the segment with this Segment Label
    /// (empty = the first segment), as a binary mask.
    Label(&'a str),
    /// Models with label planes: every segment, by code; mask value k =
    /// plane k (1-based) of this list.
    Codes(&'a [&'a LabelConcept]),
}

/// A SEG mask for one series: which SEG (and segments) it came from, and a
/// label map per slice.
pub struct SegMask {
    pub id: String,
    pub maps: Vec<Vec<u8>>,
}

/// The mask from the first SEG that references `slices` (one series, in
/// order); None when no SEG does. Err names the unmatched codes.
pub fn from_segs(
    segs: &[&Deidentified],
    slices: &[&Deidentified],
    choice: &SegmentChoice,
) -> Result<Option<SegMask>, String> {
    for seg in segs {
        let object: &InMemDicomObject = seg.object();
        let Some(frames) = frames_of(object, slices) else {
            continue;
        };
        if frames.is_empty() {
            continue;
        }
        let values = segment_values(object, choice)?;
        let in_series: Vec<u16> = frames.iter().map(|f| f.segment).collect();
        if let SegmentChoice::Codes(planes) = choice {
            let unmatched: Vec<String> = items_of(object, tags::SEGMENT_SEQUENCE)
                .iter()
                .filter_map(|item| {
                    let number = item.get(tags::SEGMENT_NUMBER)?.to_int::<u16>().ok()?;
                    (in_series.contains(&number) && !values.iter().any(|(n, _)| *n == number)).then(|| {
                        format!(
                            "segment {number} ({})",
                            type_code(item).map_or("no type code".into(), |(s, v)| format!("{s} {v}"))
                        )
                    })
                })
                .collect();
            if !unmatched.is_empty() {
                let known: Vec<String> = planes
                    .iter()
                    .map(|p| {
                        format!(
                            "{} = {} {}",
                            p.plane.name(),
                            p.property_type.scheme,
                            p.property_type.value
                        )
                    })
                    .collect();
                return Err(format!(
                    "the study's SEG has {} whose Segmented Property Type matches no label plane of the model ({}); \
                     fix the SEG's codes or the model's [[labels]]",
                    unmatched.join(", "),
                    known.join(", ")
                ));
            }
        }
        let mut maps: Vec<Vec<u8>> = slices.iter().map(|s| vec![0u8; pixel_count(s.object())]).collect();
        let mut matched = false;
        for frame in &frames {
            let Some(&(_, value)) = values.iter().find(|(n, _)| *n == frame.segment) else {
                continue;
            };
            let map = &mut maps[frame.slice];
            if map.len() != frame.pixels.len() {
                continue;
            }
            for (cell, &bit) in map.iter_mut().zip(&frame.pixels) {
                // Components are exclusive: where two overlap the one listed first (innermost) wins.
                if bit && (*cell == 0 || value < *cell) {
                    *cell = value;
                }
            }
            matched = true;
        }
        if matched {
            let numbers: Vec<String> = values.iter().map(|(n, _)| n.to_string()).collect();
            return Ok(Some(SegMask {
                id: format!("seg:{}:{}", seg.sop_instance_uid, numbers.join("+")),
                maps,
            }));
        }
    }
    Ok(None)
}

/// `[synth.mask] dilate_mm`: each zero pixel within `radius_mm` (an ellipse
/// in pixels, by the slice's Pixel Spacing [row, column]) of a labelled one
/// takes the largest label there; labelled pixels keep theirs.
pub fn dilate(map: &[u8], rows: usize, cols: usize, spacing_mm: [f64; 2], radius_mm: f64) -> Vec<u8> {
    let disk = disk_offsets(spacing_mm, radius_mm);
    let mut out = map.to_vec();
    for (index, &label) in map.iter().enumerate().filter(|(_, &label)| label != 0) {
        let (row, col) = ((index / cols) as isize, (index % cols) as isize);
        for &(dr, dc) in &disk {
            let (r, c) = (row + dr, col + dc);
            if r < 0 || c < 0 || r >= rows as isize || c >= cols as isize {
                continue;
            }
            let at = r as usize * cols + c as usize;
            if map[at] == 0 {
                out[at] = out[at].max(label);
            }
        }
    }
    out
}

/// The (row, column) offsets within `radius_mm` of a pixel, by Pixel Spacing.
fn disk_offsets(spacing_mm: [f64; 2], radius_mm: f64) -> Vec<(isize, isize)> {
    let reach = |spacing: f64| (radius_mm / spacing.max(1e-6)).floor() as isize;
    let (reach_r, reach_c) = (reach(spacing_mm[0]), reach(spacing_mm[1]));
    let within = |dr: isize, dc: isize| {
        ((dr as f64 * spacing_mm[0]).powi(2) + (dc as f64 * spacing_mm[1]).powi(2)).sqrt() <= radius_mm
    };
    (-reach_r..=reach_r)
        .flat_map(|dr| (-reach_c..=reach_c).map(move |dc| (dr, dc)))
        .filter(|&(dr, dc)| within(dr, dc))
        .collect()
}

/// (segment number, mask value) for the segments the choice takes.
fn segment_values(object: &InMemDicomObject, choice: &SegmentChoice) -> Result<Vec<(u16, u8)>, String> {
    let items = items_of(object, tags::SEGMENT_SEQUENCE);
    let number = |item: &InMemDicomObject| item.get(tags::SEGMENT_NUMBER).and_then(|e| e.to_int::<u16>().ok());
    Ok(match choice {
        SegmentChoice::Label(label) => items
            .iter()
            .find(|item| {
                label.is_empty() || string_of(item, tags::SEGMENT_LABEL).is_some_and(|l| l.eq_ignore_ascii_case(label))
            })
            .and_then(number)
            .map(|n| vec![(n, 1)])
            .unwrap_or_default(),
        SegmentChoice::Codes(planes) => items
            .iter()
            .filter_map(|item| {
                let (scheme, value) = type_code(item)?;
                let plane = planes
                    .iter()
                    .position(|p| p.property_type.same_concept(&scheme, &value))?;
                Some((number(item)?, plane as u8 + 1))
            })
            .collect(),
    })
}

/// (Coding Scheme Designator, Code Value) of a segment's Segmented Property Type.
fn type_code(item: &InMemDicomObject) -> Option<(String, String)> {
    let code = items_of(item, tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE)
        .into_iter()
        .next()?;
    Some((
        string_of(&code, tags::CODING_SCHEME_DESIGNATOR)?,
        string_of(&code, tags::CODE_VALUE)?,
    ))
}

struct Frame {
    segment: u16,
    slice: usize,
    pixels: Vec<bool>,
}

/// The frames of a SEG that reference one of `slices`; None when the SEG's
/// pixel data cannot be read.
fn frames_of(object: &InMemDicomObject, slices: &[&Deidentified]) -> Option<Vec<Frame>> {
    let rows = object.get(tags::ROWS)?.to_int::<usize>().ok()?;
    let cols = object.get(tags::COLUMNS)?.to_int::<usize>().ok()?;
    let bits = object.get(tags::PIXEL_DATA)?.to_bytes().ok()?;
    // With one segment, writers often put the segment identification in the
    // shared functional groups instead of every frame's.
    let shared_segment = items_of(object, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
        .first()
        .and_then(|shared| items_of(shared, tags::SEGMENT_IDENTIFICATION_SEQUENCE).first().cloned())
        .and_then(|i| {
            i.get(tags::REFERENCED_SEGMENT_NUMBER)
                .and_then(|e| e.to_int::<u16>().ok())
        });
    let mut frames = Vec::new();
    for (index, group) in items_of(object, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .iter()
        .enumerate()
    {
        let segment = items_of(group, tags::SEGMENT_IDENTIFICATION_SEQUENCE)
            .first()
            .and_then(|i| {
                i.get(tags::REFERENCED_SEGMENT_NUMBER)
                    .and_then(|e| e.to_int::<u16>().ok())
            })
            .or(shared_segment);
        let referenced = items_of(group, tags::DERIVATION_IMAGE_SEQUENCE)
            .iter()
            .flat_map(|d| items_of(d, tags::SOURCE_IMAGE_SEQUENCE))
            .find_map(|s| string_of(&s, tags::REFERENCED_SOP_INSTANCE_UID));
        let (Some(segment), Some(slice)) = (
            segment,
            referenced.and_then(|uid| slices.iter().position(|s| s.sop_instance_uid == uid)),
        ) else {
            continue;
        };
        let pixels = (0..rows * cols)
            .map(|pixel| {
                let bit = index * rows * cols + pixel;
                bits.get(bit / 8).is_some_and(|byte| byte >> (bit % 8) & 1 == 1)
            })
            .collect();
        frames.push(Frame { segment, slice, pixels });
    }
    Some(frames)
}

fn pixel_count(object: &InMemDicomObject) -> usize {
    let get = |tag| object.get(tag).and_then(|e| e.to_int::<usize>().ok()).unwrap_or(0);
    get(tags::ROWS) * get(tags::COLUMNS)
}

#[cfg(test)]
mod tests {
    use super::dilate;

    fn count(map: &[u8]) -> usize {
        map.iter().filter(|&&v| v != 0).count()
    }

    #[test]
    fn dilate_grows_by_millimetres_along_each_axis_and_keeps_labels() {
        let (rows, cols) = (9, 9);
        let mut map = vec![0u8; rows * cols];
        map[4 * cols + 4] = 2;
        // 1 mm pixels, 2 mm: the disk of radius 2 (13 pixels).
        let grown = dilate(&map, rows, cols, [1.0, 1.0], 2.0);
        assert_eq!(count(&grown), 13);
        assert!(grown.iter().all(|&v| v == 0 || v == 2));
        // Rows 2 mm apart, columns 1 mm: one row up and down, two columns each way.
        let grown = dilate(&map, rows, cols, [2.0, 1.0], 2.0);
        assert_eq!(grown[3 * cols + 4], 2);
        assert_eq!(grown[2 * cols + 4], 0);
        assert_eq!(grown[4 * cols + 6], 2);
        assert_eq!(grown[4 * cols + 7], 0);
        // A labelled pixel keeps its own label; zero radius changes nothing.
        map[4 * cols + 5] = 1;
        let grown = dilate(&map, rows, cols, [1.0, 1.0], 1.0);
        assert_eq!(
            (grown[4 * cols + 4], grown[4 * cols + 5], grown[4 * cols + 6]),
            (2, 1, 1)
        );
        assert_eq!(grown[3 * cols + 4], 2);
        assert_eq!(dilate(&map, rows, cols, [1.0, 1.0], 0.0), map);
    }
}
