//! A synthetic instance: the de-identified source with new pixels inside the
//! mask, new deterministic UIDs, and provenance that says plainly what it is.

use super::attrs::{code_item, ds, items_of, put_sequence, put_str, put_strs, string_of};
use super::pixels::{self, PixelFormat};
use super::uids::VariantIdentity;
use super::OutputError;
use crate::keyfile::SiteKey;
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject};

/// The private block that carries synthd's own provenance.
pub const PRIVATE_CREATOR: &str = "SYNTHD 1";
pub const PRIVATE_GROUP: u16 = 0x0029;

/// Element offsets inside the `SYNTHD 1` block (0029,xx01...).
pub mod private {
    pub const MODEL_SHA256: u8 = 0x01;
    pub const PIPELINE_NAME: u8 = 0x02;
    pub const PIPELINE_SHA256: u8 = 0x03;
    pub const SEED: u8 = 0x04;
    pub const SAMPLER: u8 = 0x05;
    pub const STEPS: u8 = 0x06;
    pub const MASK_ID: u8 = 0x07;
    pub const VARIANT: u8 = 0x08;
}

/// How one synthetic variant was made.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub pipeline_name: String,
    pub pipeline_sha256: String,
    pub model_name: String,
    pub model_version: String,
    pub model_sha256: String,
    pub sampler: String,
    pub steps: u32,
    pub seed: u64,
    pub variant: u32,
    /// e.g. "generated-ellipsoids" or "seg:<SEG SOP Instance UID>:<segment>".
    pub mask_id: String,
    /// Whether the pipeline keeps descriptors (then Series Description is
    /// prefixed with SYNTHETIC rather than replaced).
    pub keep_descriptors: bool,
}

impl Provenance {
    pub fn identity(&self) -> VariantIdentity<'_> {
        VariantIdentity {
            pipeline: &self.pipeline_name,
            model_sha256: &self.model_sha256,
            variant: self.variant,
        }
    }

    pub fn derivation_description(&self) -> String {
        let short_sha = &self.model_sha256[..self.model_sha256.len().min(12)];
        format!(
            "Synthetic: diffusion inpainting by synthd {}; model {} v{} sha256 {}; sampler {} {} steps; seed {}; variant {}; mask {}",
            env!("CARGO_PKG_VERSION"),
            self.model_name,
            self.model_version,
            short_sha,
            self.sampler,
            self.steps,
            self.seed,
            self.variant,
            self.mask_id
        )
    }
}

/// Builds a synthetic instance from a de-identified `source` and its new
/// stored pixel values (same bits and representation as the source).
pub fn build_instance(
    key: &SiteKey,
    source: &DefaultDicomObject,
    stored: &[i32],
    provenance: &Provenance,
) -> Result<DefaultDicomObject, OutputError> {
    let format = PixelFormat::of(source)?;
    if stored.len() != format.pixel_count() {
        return Err(OutputError::PixelData(format!(
            "{} synthetic values for a {}x{} image",
            stored.len(),
            format.rows,
            format.columns
        )));
    }
    let required = |tag, name| string_of(source, tag).ok_or(OutputError::MissingAttribute(name));
    let source_sop_class = required(tags::SOP_CLASS_UID, "SOPClassUID")?;
    let source_sop = required(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?;
    let source_series = required(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?;
    let identity = provenance.identity();
    let series_uid = identity.series_uid(key, &source_series);
    let sop_uid = identity.instance_uid(key, &source_sop);

    let mut object: InMemDicomObject = (**source).clone();

    put_str(&mut object, tags::SOP_INSTANCE_UID, VR::UI, &sop_uid);
    put_str(&mut object, tags::SERIES_INSTANCE_UID, VR::UI, &series_uid);
    let source_series_number = object
        .get(tags::SERIES_NUMBER)
        .and_then(|e| e.to_int::<i64>().ok())
        .unwrap_or(0);
    let series_number = 1000 + source_series_number.rem_euclid(1000) * 10 + provenance.variant as i64 % 10;
    put_str(&mut object, tags::SERIES_NUMBER, VR::IS, &series_number.to_string());

    put_str(&mut object, tags::SYNTHETIC_DATA, VR::CS, "YES");
    // Values 1 and 2 say what the image is; later values (required by some
    // IODs, e.g. MR) keep the source's, or OTHER.
    let mut image_type = vec!["DERIVED".to_string(), "SECONDARY".to_string()];
    let source_type: Vec<String> = source
        .get(tags::IMAGE_TYPE)
        .and_then(|e| e.to_multi_str().ok())
        .map(|v| v.iter().map(|s| s.trim().to_string()).collect())
        .unwrap_or_default();
    match source_type.get(2..) {
        Some(rest) if !rest.is_empty() => image_type.extend(rest.iter().cloned()),
        _ => image_type.push("OTHER".to_string()),
    }
    let image_type: Vec<&str> = image_type.iter().map(String::as_str).collect();
    put_strs(&mut object, tags::IMAGE_TYPE, VR::CS, &image_type);
    put_str(&mut object, tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
    let description = match string_of(source, tags::SERIES_DESCRIPTION) {
        Some(text) if provenance.keep_descriptors => truncate(&format!("SYNTHETIC {text}"), 64),
        _ => "SYNTHETIC".to_string(),
    };
    put_str(&mut object, tags::SERIES_DESCRIPTION, VR::LO, &description);
    put_str(
        &mut object,
        tags::DERIVATION_DESCRIPTION,
        VR::ST,
        &provenance.derivation_description(),
    );
    // No code in CID 7203 names generative synthesis, so a private coding
    // scheme says it exactly rather than borrowing a code that means otherwise.
    put_sequence(
        &mut object,
        tags::DERIVATION_CODE_SEQUENCE,
        vec![code_item("SYNTHD-INPAINT", "99SYNTHD", "Diffusion model inpainting")],
    );

    let mut source_item = InMemDicomObject::new_empty();
    put_str(
        &mut source_item,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        &source_sop_class,
    );
    put_str(&mut source_item, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &source_sop);
    put_sequence(
        &mut source_item,
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![code_item(
            "121322",
            "DCM",
            "Source image for image processing operation",
        )],
    );
    put_sequence(&mut object, tags::SOURCE_IMAGE_SEQUENCE, vec![source_item]);

    let mut instance_item = InMemDicomObject::new_empty();
    put_str(
        &mut instance_item,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        &source_sop_class,
    );
    put_str(
        &mut instance_item,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        &source_sop,
    );
    let mut series_item = InMemDicomObject::new_empty();
    put_str(&mut series_item, tags::SERIES_INSTANCE_UID, VR::UI, &source_series);
    put_sequence(
        &mut series_item,
        tags::REFERENCED_INSTANCE_SEQUENCE,
        vec![instance_item],
    );
    put_sequence(&mut object, tags::REFERENCED_SERIES_SEQUENCE, vec![series_item]);

    let mut equipment = items_of(source, tags::CONTRIBUTING_EQUIPMENT_SEQUENCE);
    equipment.push(synthesizing_equipment(source, provenance));
    put_sequence(&mut object, tags::CONTRIBUTING_EQUIPMENT_SEQUENCE, equipment);

    put_str(
        &mut object,
        tags::ALGORITHM_NAME,
        VR::LO,
        &truncate(&provenance.model_name, 64),
    );
    put_str(
        &mut object,
        tags::ALGORITHM_VERSION,
        VR::LO,
        &truncate(&provenance.model_version, 64),
    );

    put_private(&mut object, provenance)?;

    let (center, width) = pixels::window(&format, stored);
    put_str(&mut object, tags::WINDOW_CENTER, VR::DS, &ds(center.round()));
    put_str(&mut object, tags::WINDOW_WIDTH, VR::DS, &ds(width.round().max(1.0)));
    object.remove_element(tags::WINDOW_CENTER_WIDTH_EXPLANATION);
    object.remove_element(tags::VOILUT_SEQUENCE);
    object.remove_element(tags::SMALLEST_IMAGE_PIXEL_VALUE);
    object.remove_element(tags::LARGEST_IMAGE_PIXEL_VALUE);
    object.remove_element(tags::PIXEL_PADDING_VALUE);
    object.remove_element(tags::LOSSY_IMAGE_COMPRESSION_RATIO);
    object.remove_element(tags::LOSSY_IMAGE_COMPRESSION_METHOD);
    let pixel_vr = if format.bits_allocated == 8 { VR::OB } else { VR::OW };
    object.put(DataElement::new(
        tags::PIXEL_DATA,
        pixel_vr,
        pixels::pixel_data_value(&format, stored),
    ));

    let meta = super::file_meta(source_sop_class.as_str(), sop_uid.as_str())?;
    Ok(object.with_exact_meta(meta))
}

/// The 109100 "Synthesizing Equipment" item. Its Contribution DateTime is the
/// de-identified study's date and time when present (not the wall clock), so
/// that reruns are byte-identical; the wall-clock time is in manifest.jsonl.
fn synthesizing_equipment(source: &InMemDicomObject, provenance: &Provenance) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_sequence(
        &mut item,
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![code_item("109100", "DCM", "Synthesizing Equipment")],
    );
    put_str(&mut item, tags::MANUFACTURER, VR::LO, "synthd");
    put_str(&mut item, tags::MANUFACTURER_MODEL_NAME, VR::LO, "synthd");
    put_str(&mut item, tags::SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION"));
    if let Some(date) = string_of(source, tags::STUDY_DATE) {
        let time = string_of(source, tags::STUDY_TIME).unwrap_or_default();
        let time: String = time.chars().take(6).collect();
        put_str(
            &mut item,
            tags::CONTRIBUTION_DATE_TIME,
            VR::DT,
            &format!("{date}{time}"),
        );
    }
    put_str(
        &mut item,
        tags::CONTRIBUTION_DESCRIPTION,
        VR::ST,
        &provenance.derivation_description(),
    );
    item
}

fn put_private(object: &mut InMemDicomObject, provenance: &Provenance) -> Result<(), OutputError> {
    let entries: [(u8, VR, String); 8] = [
        (private::MODEL_SHA256, VR::LO, provenance.model_sha256.clone()),
        (private::PIPELINE_NAME, VR::LO, provenance.pipeline_name.clone()),
        (private::PIPELINE_SHA256, VR::LO, provenance.pipeline_sha256.clone()),
        (private::SEED, VR::LO, provenance.seed.to_string()),
        (private::SAMPLER, VR::LO, provenance.sampler.clone()),
        (private::STEPS, VR::IS, provenance.steps.to_string()),
        (private::MASK_ID, VR::LO, truncate(&provenance.mask_id, 64)),
        (private::VARIANT, VR::IS, provenance.variant.to_string()),
    ];
    let block = private_block(object)?;
    for (element, vr, value) in entries {
        let tag = Tag(PRIVATE_GROUP, (block << 8) | element as u16);
        object.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
    }
    Ok(())
}

/// The private block of `SYNTHD 1` in group 0029: an existing reservation,
/// else the first free Private Creator slot in (0029,0010)-(0029,00FF).
/// (dicom-object's own helper reserves from (gggg,0001), which PS3.5 7.8.1
/// does not allow.)
fn private_block(object: &mut InMemDicomObject) -> Result<u16, OutputError> {
    let mut free = None;
    for slot in 0x10u16..=0xFF {
        match object.get(Tag(PRIVATE_GROUP, slot)) {
            Some(element) if element.to_str().is_ok_and(|s| s.trim_end() == PRIVATE_CREATOR) => return Ok(slot),
            Some(_) => {}
            None if free.is_none() => free = Some(slot),
            None => {}
        }
    }
    let slot = free.ok_or(OutputError::Encode("no free private block in group 0029".to_string()))?;
    object.put(DataElement::new(
        Tag(PRIVATE_GROUP, slot),
        VR::LO,
        PrimitiveValue::from(PRIVATE_CREATOR),
    ));
    Ok(slot)
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}
