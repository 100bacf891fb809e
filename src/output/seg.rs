//! The inpainting mask as a binary DICOM Segmentation (PS3.3 A.51) that
//! references the synthetic series, so ML users get labels with images.

use super::attrs::{code_item, put_sequence, put_str, put_strs, put_u16, string_of};
use super::synthetic::Provenance;
use super::OutputError;
use crate::keyfile::SiteKey;
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject};

pub const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// One Segment Sequence item: number, label, algorithm, codes.
fn segment_item(number: u16, meaning: &SegmentMeaning) -> InMemDicomObject {
    let mut segment = InMemDicomObject::new_empty();
    put_u16(&mut segment, tags::SEGMENT_NUMBER, number);
    put_str(&mut segment, tags::SEGMENT_LABEL, VR::LO, &meaning.label);
    put_str(&mut segment, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
    put_str(&mut segment, tags::SEGMENT_ALGORITHM_NAME, VR::LO, "synthd");
    let (cv, cs, cm) = &meaning.category;
    put_sequence(
        &mut segment,
        tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
        vec![code_item(cv, cs, cm)],
    );
    let (tv, ts, tm) = &meaning.property_type;
    put_sequence(
        &mut segment,
        tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
        vec![code_item(tv, ts, tm)],
    );
    segment
}

/// What the segment means, as coded concepts (SNOMED CT via SCT).
#[derive(Debug, Clone)]
pub struct SegmentMeaning {
    pub label: String,
    pub category: (String, String, String),
    pub property_type: (String, String, String),
}

impl SegmentMeaning {
    /// A region inpainted with healthy-looking tissue.
    pub fn inpainted_region() -> SegmentMeaning {
        SegmentMeaning {
            label: "inpainted region".to_string(),
            category: ("91723000".into(), "SCT".into(), "Anatomical Structure".into()),
            property_type: ("12738006".into(), "SCT".into(), "Brain".into()),
        }
    }

    /// A lesion component, with the codes the model's manifest gives its plane.
    pub fn component(concept: &crate::synth::manifest::LabelConcept) -> SegmentMeaning {
        let code = |c: &crate::synth::manifest::Code| (c.value.clone(), c.scheme.clone(), c.meaning.clone());
        let name = concept.plane.name();
        SegmentMeaning {
            label: name.strip_prefix("label:").unwrap_or(&name).to_string(),
            category: code(&concept.category),
            property_type: code(&concept.property_type),
        }
    }

    /// A lesion, when the mask came from a lesion segment.
    pub fn lesion() -> SegmentMeaning {
        SegmentMeaning {
            label: "lesion".to_string(),
            category: (
                "49755003".into(),
                "SCT".into(),
                "Morphologically Abnormal Structure".into(),
            ),
            property_type: ("52988006".into(), "SCT".into(), "Lesion".into()),
        }
    }
}

/// Builds the SEG over `instances`: each synthetic instance with its label
/// map (0 = untouched, k = segment k of `segments`; with one segment, any
/// non-zero value). One frame per instance and segment present in it,
/// segment by segment; None when every map is empty.
pub fn build_seg(
    key: &SiteKey,
    instances: &[(&DefaultDicomObject, &[u8])],
    segments: &[SegmentMeaning],
    provenance: &Provenance,
    source_series_uid: &str,
) -> Result<Option<DefaultDicomObject>, OutputError> {
    let single = segments.len() == 1;
    let in_segment = move |value: u8, k: usize| if single { value != 0 } else { value as usize == k };
    let frames: Vec<(usize, &DefaultDicomObject, Vec<u8>)> = (1..=segments.len())
        .flat_map(|k| {
            instances.iter().filter_map(move |(object, map)| {
                let mask: Vec<u8> = map.iter().map(|&v| u8::from(in_segment(v, k))).collect();
                mask.contains(&1).then_some((k, *object, mask))
            })
        })
        .collect();
    let Some((_, first, _)) = frames.first() else {
        return Ok(None);
    };
    let string = |object: &DefaultDicomObject, tag: Tag, name: &'static str| {
        string_of(object, tag).ok_or(OutputError::MissingAttribute(name))
    };
    let rows = first
        .get(tags::ROWS)
        .and_then(|e| e.to_int::<u16>().ok())
        .ok_or(OutputError::MissingAttribute("Rows"))?;
    let columns = first
        .get(tags::COLUMNS)
        .and_then(|e| e.to_int::<u16>().ok())
        .ok_or(OutputError::MissingAttribute("Columns"))?;
    let identity = provenance.identity();
    let series_uid = identity.seg_series_uid(key, source_series_uid);
    let sop_uid = identity.seg_instance_uid(key, source_series_uid);
    let referenced_series = string(first, tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?;

    let mut seg = InMemDicomObject::new_empty();
    // Patient, study and frame of reference come from the (de-identified)
    // synthetic instance, so the SEG lands in the same de-identified study.
    for tag in [
        tags::SPECIFIC_CHARACTER_SET,
        tags::PATIENT_NAME,
        tags::PATIENT_ID,
        tags::PATIENT_BIRTH_DATE,
        tags::PATIENT_SEX,
        tags::PATIENT_IDENTITY_REMOVED,
        tags::DEIDENTIFICATION_METHOD,
        tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
        tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED,
        tags::STUDY_INSTANCE_UID,
        tags::STUDY_DATE,
        tags::STUDY_TIME,
        tags::REFERRING_PHYSICIAN_NAME,
        tags::STUDY_ID,
        tags::ACCESSION_NUMBER,
        tags::FRAME_OF_REFERENCE_UID,
        tags::POSITION_REFERENCE_INDICATOR,
    ] {
        if let Some(element) = first.get(tag) {
            seg.put(element.clone());
        }
    }
    for (tag, vr) in [
        (tags::PATIENT_NAME, VR::PN),
        (tags::PATIENT_ID, VR::LO),
        (tags::PATIENT_BIRTH_DATE, VR::DA),
        (tags::PATIENT_SEX, VR::CS),
        (tags::STUDY_DATE, VR::DA),
        (tags::STUDY_TIME, VR::TM),
        (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
        (tags::STUDY_ID, VR::SH),
        (tags::ACCESSION_NUMBER, VR::SH),
        (tags::POSITION_REFERENCE_INDICATOR, VR::LO),
    ] {
        if seg.get(tag).is_none() {
            seg.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
        }
    }
    let content_date = string_of(first, tags::STUDY_DATE).unwrap_or_else(|| "20000101".to_string());
    let content_time = string_of(first, tags::STUDY_TIME).unwrap_or_else(|| "000000".to_string());

    put_str(&mut seg, tags::SOP_CLASS_UID, VR::UI, SEGMENTATION_STORAGE);
    put_str(&mut seg, tags::SOP_INSTANCE_UID, VR::UI, &sop_uid);
    put_str(&mut seg, tags::MODALITY, VR::CS, "SEG");
    put_str(&mut seg, tags::SERIES_INSTANCE_UID, VR::UI, &series_uid);
    let series_number = first
        .get(tags::SERIES_NUMBER)
        .and_then(|e| e.to_int::<i64>().ok())
        .unwrap_or(1000)
        + 100;
    put_str(&mut seg, tags::SERIES_NUMBER, VR::IS, &series_number.to_string());
    put_str(&mut seg, tags::SERIES_DESCRIPTION, VR::LO, "SYNTHETIC inpainting mask");
    put_str(&mut seg, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(&mut seg, tags::CONTENT_DATE, VR::DA, &content_date);
    put_str(&mut seg, tags::CONTENT_TIME, VR::TM, &content_time);
    put_str(&mut seg, tags::MANUFACTURER, VR::LO, "synthd");
    put_str(&mut seg, tags::MANUFACTURER_MODEL_NAME, VR::LO, "synthd");
    put_str(&mut seg, tags::DEVICE_SERIAL_NUMBER, VR::LO, "0");
    put_str(&mut seg, tags::SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION"));
    put_strs(&mut seg, tags::IMAGE_TYPE, VR::CS, &["DERIVED", "PRIMARY"]);
    put_str(&mut seg, tags::CONTENT_LABEL, VR::CS, "INPAINT_MASK");
    put_str(
        &mut seg,
        tags::CONTENT_DESCRIPTION,
        VR::LO,
        "Region synthesized by diffusion inpainting",
    );
    seg.put(DataElement::new(
        tags::CONTENT_CREATOR_NAME,
        VR::PN,
        PrimitiveValue::Empty,
    ));
    put_str(&mut seg, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    put_str(&mut seg, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put_str(&mut seg, tags::BURNED_IN_ANNOTATION, VR::CS, "NO");

    // Image Pixel: 1-bit binary frames.
    put_u16(&mut seg, tags::SAMPLES_PER_PIXEL, 1);
    put_str(&mut seg, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    put_u16(&mut seg, tags::ROWS, rows);
    put_u16(&mut seg, tags::COLUMNS, columns);
    put_u16(&mut seg, tags::BITS_ALLOCATED, 1);
    put_u16(&mut seg, tags::BITS_STORED, 1);
    put_u16(&mut seg, tags::HIGH_BIT, 0);
    put_u16(&mut seg, tags::PIXEL_REPRESENTATION, 0);
    put_str(&mut seg, tags::NUMBER_OF_FRAMES, VR::IS, &frames.len().to_string());

    let segment_items = segments
        .iter()
        .enumerate()
        .map(|(index, meaning)| segment_item(index as u16 + 1, meaning))
        .collect();
    put_sequence(&mut seg, tags::SEGMENT_SEQUENCE, segment_items);

    // Shared functional groups: pixel measures and orientation of the series.
    let mut measures = InMemDicomObject::new_empty();
    for tag in [tags::PIXEL_SPACING, tags::SLICE_THICKNESS, tags::SPACING_BETWEEN_SLICES] {
        if let Some(element) = first.get(tag) {
            measures.put(element.clone());
        }
    }
    let mut orientation = InMemDicomObject::new_empty();
    if let Some(element) = first.get(tags::IMAGE_ORIENTATION_PATIENT) {
        orientation.put(element.clone());
    }
    let mut shared = InMemDicomObject::new_empty();
    put_sequence(&mut shared, tags::PIXEL_MEASURES_SEQUENCE, vec![measures]);
    put_sequence(&mut shared, tags::PLANE_ORIENTATION_SEQUENCE, vec![orientation]);
    put_sequence(&mut seg, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]);

    let dimension_uid = super::uids::derived_uid(key, "synthd/seg-dimensions", &[&sop_uid]);
    let mut per_frame = Vec::with_capacity(frames.len());
    let mut referenced_instances: Vec<InMemDicomObject> = Vec::with_capacity(instances.len());
    let mut referenced_uids: Vec<String> = Vec::with_capacity(instances.len());
    let mut bits = vec![0u8; (frames.len() * rows as usize * columns as usize).div_ceil(8)];
    let mut bit_index = 0usize;
    for (segment_number, instance, mask) in &frames {
        let position = instances
            .iter()
            .position(|(object, _)| std::ptr::eq(*object, *instance))
            .unwrap_or(0);
        let sop_class = string(instance, tags::SOP_CLASS_UID, "SOPClassUID")?;
        let sop = string(instance, tags::SOP_INSTANCE_UID, "SOPInstanceUID")?;
        let mut source = InMemDicomObject::new_empty();
        put_str(&mut source, tags::REFERENCED_SOP_CLASS_UID, VR::UI, &sop_class);
        put_str(&mut source, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &sop);
        put_sequence(
            &mut source,
            tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
            vec![code_item(
                "121322",
                "DCM",
                "Source image for image processing operation",
            )],
        );
        let mut derivation = InMemDicomObject::new_empty();
        put_sequence(&mut derivation, tags::SOURCE_IMAGE_SEQUENCE, vec![source]);
        put_sequence(
            &mut derivation,
            tags::DERIVATION_CODE_SEQUENCE,
            vec![code_item("113076", "DCM", "Segmentation")],
        );
        let mut content = InMemDicomObject::new_empty();
        content.put(DataElement::new(
            tags::DIMENSION_INDEX_VALUES,
            VR::UL,
            PrimitiveValue::U32(vec![*segment_number as u32, position as u32 + 1].into()),
        ));
        let mut plane = InMemDicomObject::new_empty();
        if let Some(element) = instance.get(tags::IMAGE_POSITION_PATIENT) {
            plane.put(element.clone());
        }
        let mut identification = InMemDicomObject::new_empty();
        put_u16(
            &mut identification,
            tags::REFERENCED_SEGMENT_NUMBER,
            *segment_number as u16,
        );
        let mut group = InMemDicomObject::new_empty();
        put_sequence(&mut group, tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]);
        put_sequence(&mut group, tags::FRAME_CONTENT_SEQUENCE, vec![content]);
        put_sequence(&mut group, tags::PLANE_POSITION_SEQUENCE, vec![plane]);
        put_sequence(&mut group, tags::SEGMENT_IDENTIFICATION_SEQUENCE, vec![identification]);
        per_frame.push(group);

        if !referenced_uids.contains(&sop) {
            let mut referenced = InMemDicomObject::new_empty();
            put_str(&mut referenced, tags::REFERENCED_SOP_CLASS_UID, VR::UI, &sop_class);
            put_str(&mut referenced, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &sop);
            referenced_instances.push(referenced);
            referenced_uids.push(sop.clone());
        }

        // Frames are packed back to back, least significant bit first.
        for &value in mask.iter() {
            if value != 0 {
                bits[bit_index / 8] |= 1 << (bit_index % 8);
            }
            bit_index += 1;
        }
    }
    put_sequence(&mut seg, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame);

    let mut organization = InMemDicomObject::new_empty();
    put_str(
        &mut organization,
        tags::DIMENSION_ORGANIZATION_UID,
        VR::UI,
        &dimension_uid,
    );
    put_sequence(&mut seg, tags::DIMENSION_ORGANIZATION_SEQUENCE, vec![organization]);
    let dimension = |pointer: Tag, group: Tag, description: &str| {
        let mut item = InMemDicomObject::new_empty();
        put_str(&mut item, tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dimension_uid);
        item.put(DataElement::new(
            tags::DIMENSION_INDEX_POINTER,
            VR::AT,
            PrimitiveValue::Tags(vec![pointer].into()),
        ));
        item.put(DataElement::new(
            tags::FUNCTIONAL_GROUP_POINTER,
            VR::AT,
            PrimitiveValue::Tags(vec![group].into()),
        ));
        put_str(&mut item, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, description);
        item
    };
    put_sequence(
        &mut seg,
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            dimension(
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                "Segment Number",
            ),
            dimension(
                tags::IMAGE_POSITION_PATIENT,
                tags::PLANE_POSITION_SEQUENCE,
                "Image Position Patient",
            ),
        ],
    );

    let mut series_reference = InMemDicomObject::new_empty();
    put_str(
        &mut series_reference,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &referenced_series,
    );
    put_sequence(
        &mut series_reference,
        tags::REFERENCED_INSTANCE_SEQUENCE,
        referenced_instances,
    );
    put_sequence(&mut seg, tags::REFERENCED_SERIES_SEQUENCE, vec![series_reference]);

    let mut equipment = super::attrs::items_of(first, tags::CONTRIBUTING_EQUIPMENT_SEQUENCE);
    equipment.retain(|item| {
        item.get(tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE)
            .and_then(|e| e.items())
            .and_then(|items| items.first())
            .and_then(|code| string_of(code, tags::CODE_VALUE))
            .is_some_and(|code| code == "109104")
    });
    if !equipment.is_empty() {
        put_sequence(&mut seg, tags::CONTRIBUTING_EQUIPMENT_SEQUENCE, equipment);
    }
    put_str(
        &mut seg,
        tags::DERIVATION_DESCRIPTION,
        VR::ST,
        &provenance.derivation_description(),
    );

    if bits.len() % 2 == 1 {
        bits.push(0);
    }
    seg.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(bits.into()),
    ));

    let meta = super::file_meta(SEGMENTATION_STORAGE, sop_uid.as_str())?;
    Ok(Some(seg.with_exact_meta(meta)))
}
