//! The de-identifier: walks every element of a dataset, file meta and every
//! sequence item included, and applies Table E.1-1 as the selected options
//! modify it. UIDs, pseudonyms and date shifts are keyed, so every file of a
//! patient, in any run on any machine with the same key, agrees.

use super::dates;
use super::dummy::dummy_value;
use super::iod::{self, AttributeType, Iod};
use super::signatures::{Signature, SignatureSet};
use super::table::{is_repeating_group, Action, Row, Table, EDITION};
use super::uid;
use super::DeidOption;
use crate::config::pipeline::{BurnedInPolicy, DeidProfile};
use crate::keyfile::SiteKey;
use crate::phi::{keyed_digest, Phi};
use crate::quarantine::{ReasonCode, Rejection};
use dicom_core::dictionary::DataDictionary;
use dicom_core::header::Header;
use dicom_core::value::{DataSetSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, StandardDataDictionary};
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

const SAFE_PRIVATE_TSV: &str = include_str!("safe_private.tsv");

#[derive(Debug, thiserror::Error)]
pub enum DeidError {
    #[error(
        "options retain-longitudinal-full-dates and retain-longitudinal-modified-dates exclude each other; choose one"
    )]
    ConflictingDateOptions,
    #[error("cannot encode the de-identified object: {0}")]
    Encode(String),
    #[error("deid.clean_pixel_data: {0}")]
    Signatures(String),
}

/// One original → replacement pair, for the IRB crosswalk.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CrosswalkEntry {
    /// DICOM keyword of the attribute, e.g. PatientID or StudyInstanceUID.
    pub attribute: String,
    pub original: Phi<String>,
    pub replacement: String,
}

/// A de-identified instance and what it is now called.
#[derive(Debug, Clone)]
pub struct Deidentified {
    object: DefaultDicomObject,
    /// The encoding of `object` without Pixel Data, made for the residual
    /// check and reused by `to_bytes` (private: `object` cannot change
    /// behind it).
    encoded_header: Option<Vec<u8>>,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub crosswalk: Vec<CrosswalkEntry>,
}

impl Deidentified {
    /// An instance synthd de-identified earlier, read back (e.g. from the
    /// outbox, for a synthesis step that runs after the files were written).
    pub fn from_written(object: DefaultDicomObject) -> Result<Deidentified, Rejection> {
        Ok(Deidentified {
            study_uid: valid_uid(&object, tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
            series_uid: valid_uid(&object, tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
            sop_instance_uid: valid_uid(&object, tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
            sop_class_uid: string_of(&object, tags::SOP_CLASS_UID).unwrap_or_default(),
            crosswalk: Vec::new(),
            object,
            encoded_header: None,
        })
    }

    pub fn object(&self) -> &DefaultDicomObject {
        &self.object
    }

    /// The Part 10 file bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, DeidError> {
        if let Some(bytes) = self.to_bytes_with_trailing_pixels() {
            return bytes;
        }
        // Sized up front: growing by doubling would copy the pixels again.
        let pixel_bytes = self
            .object
            .get(tags::PIXEL_DATA)
            .and_then(|element| dicom_core::header::HasLength::length(element).get())
            .unwrap_or(0) as usize;
        let mut bytes = Vec::with_capacity(pixel_bytes + 16 * 1024);
        self.object
            .write_all(&mut bytes)
            .map_err(|e| DeidError::Encode(e.to_string()))?;
        Ok(bytes)
    }

    /// The common case of [`Self::to_bytes`]: native Pixel Data, held as
    /// bytes of even length, last in a little-endian dataset. The encoder
    /// writes a clone of every value, and a byte value clones one byte at a
    /// time; so everything before Pixel Data is encoded as usual, and the
    /// Pixel Data element is appended as the encoder would write it. `None`:
    /// not that case.
    fn to_bytes_with_trailing_pixels(&self) -> Option<Result<Vec<u8>, DeidError>> {
        let explicit = match self.object.meta().transfer_syntax().trim_end_matches('\0') {
            dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN => true,
            dicom_dictionary_std::uids::IMPLICIT_VR_LITTLE_ENDIAN => false,
            _ => return None,
        };
        let pixels = self.object.get(tags::PIXEL_DATA)?;
        let Value::Primitive(PrimitiveValue::U8(data)) = pixels.value() else {
            return None;
        };
        let length = u32::try_from(data.len())
            .ok()
            .filter(|n| n % 2 == 0 && *n != u32::MAX)?;
        if !matches!(pixels.vr(), VR::OB | VR::OW) || self.object.iter().any(|e| e.tag() > tags::PIXEL_DATA) {
            return None;
        }
        let mut bytes = match &self.encoded_header {
            Some(header) => {
                let mut bytes = Vec::with_capacity(header.len() + 12 + data.len());
                bytes.extend_from_slice(header);
                bytes
            }
            None => match encode_without_pixels(&self.object, data.len() + 16 * 1024) {
                Ok(bytes) => bytes,
                Err(error) => return Some(Err(error)),
            },
        };
        bytes.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00]);
        if explicit {
            bytes.extend_from_slice(pixels.vr().to_string().as_bytes());
            bytes.extend_from_slice(&[0, 0]);
        }
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes.extend_from_slice(data);
        Some(Ok(bytes))
    }
}

/// Everything in `object` but Pixel Data, with its file meta.
fn without_pixels(object: &DefaultDicomObject) -> DefaultDicomObject {
    InMemDicomObject::from_element_iter(
        object
            .iter()
            .filter(|element| element.tag() != tags::PIXEL_DATA)
            .cloned(),
    )
    .with_exact_meta(object.meta().clone())
}

/// The Part 10 encoding of everything in `object` but Pixel Data.
fn encode_without_pixels(object: &DefaultDicomObject, capacity: usize) -> Result<Vec<u8>, DeidError> {
    let header = without_pixels(object);
    let mut bytes = Vec::with_capacity(capacity);
    header
        .write_all(&mut bytes)
        .map_err(|error| DeidError::Encode(error.to_string()))?;
    Ok(bytes)
}

/// Holds 16-bit native Pixel Data as its little-endian bytes: the encoder
/// writes a `U16` value one sample at a time, which cost a third of the CPU
/// time of de-identifying an MR series. The bytes written are the same.
fn native_pixels_as_bytes(element: InMemElement) -> InMemElement {
    let Value::Primitive(PrimitiveValue::U16(samples)) = element.value() else {
        return element;
    };
    let mut bytes = vec![0u8; samples.len() * 2];
    for (pair, sample) in bytes.chunks_exact_mut(2).zip(samples.iter()) {
        pair.copy_from_slice(&sample.to_le_bytes());
    }
    DataElement::new(element.tag(), element.vr(), PrimitiveValue::U8(bytes.into()))
}

/// Attributes whose original values must never survive, searched for in the
/// output bytes by the residual-PHI self-check (unless an option keeps them).
const IDENTIFYING: &[(Tag, &str)] = &[
    (tags::PATIENT_NAME, "PatientName"),
    (tags::PATIENT_ID, "PatientID"),
    (Tag(0x0010, 0x1000), "OtherPatientIDs"),
    (tags::OTHER_PATIENT_NAMES, "OtherPatientNames"),
    (tags::PATIENT_BIRTH_NAME, "PatientBirthName"),
    (tags::PATIENT_MOTHER_BIRTH_NAME, "PatientMotherBirthName"),
    (tags::PATIENT_ADDRESS, "PatientAddress"),
    (tags::PATIENT_TELEPHONE_NUMBERS, "PatientTelephoneNumbers"),
    (tags::ACCESSION_NUMBER, "AccessionNumber"),
    (tags::STUDY_ID, "StudyID"),
    (tags::INSTITUTION_NAME, "InstitutionName"),
    (tags::INSTITUTION_ADDRESS, "InstitutionAddress"),
    (tags::INSTITUTIONAL_DEPARTMENT_NAME, "InstitutionalDepartmentName"),
    (tags::REFERRING_PHYSICIAN_NAME, "ReferringPhysicianName"),
    (tags::PERFORMING_PHYSICIAN_NAME, "PerformingPhysicianName"),
    (tags::NAME_OF_PHYSICIANS_READING_STUDY, "NameOfPhysiciansReadingStudy"),
    (tags::REQUESTING_PHYSICIAN, "RequestingPhysician"),
    (tags::OPERATORS_NAME, "OperatorsName"),
    (tags::STATION_NAME, "StationName"),
    (tags::DEVICE_SERIAL_NUMBER, "DeviceSerialNumber"),
];

const SECONDARY_CAPTURE_ROOT: &str = "1.2.840.10008.5.1.4.1.1.7";

/// What happens to an image's pixels.
enum PixelPlan<'a> {
    Keep,
    /// Clean Pixel Data: blank this signature's rectangles in every frame.
    Clean(&'a Signature),
}

pub struct Deidentifier {
    key: SiteKey,
    profile: DeidProfile,
    options: BTreeSet<DeidOption>,
    table: &'static Table,
    safe_private: HashSet<(String, u16, u8)>,
    signatures: Option<SignatureSet>,
}

impl Deidentifier {
    pub fn new(key: SiteKey, profile: &DeidProfile) -> Result<Deidentifier, DeidError> {
        let options: BTreeSet<DeidOption> = profile.options.iter().copied().collect();
        if options.contains(&DeidOption::RetainLongitudinalFullDates)
            && options.contains(&DeidOption::RetainLongitudinalModifiedDates)
        {
            return Err(DeidError::ConflictingDateOptions);
        }
        let safe_private = SAFE_PRIVATE_TSV
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("creator\t") && !l.trim().is_empty())
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('\t').collect();
                Some((
                    cells.first()?.to_string(),
                    u16::from_str_radix(cells.get(1)?, 16).ok()?,
                    u8::from_str_radix(cells.get(2)?, 16).ok()?,
                ))
            })
            .collect();
        let signatures = match &profile.clean_pixel_data {
            Some(file) => {
                Some(SignatureSet::load(file).map_err(|problems| DeidError::Signatures(problems.to_string()))?)
            }
            None => None,
        };
        Ok(Deidentifier {
            key,
            profile: profile.clone(),
            options,
            table: Table::standard(),
            safe_private,
            signatures,
        })
    }

    pub fn options(&self) -> &BTreeSet<DeidOption> {
        &self.options
    }

    pub fn deidentify_file(&self, path: &Path) -> Result<Deidentified, Rejection> {
        let object = super::read::read_instance(path)?;
        self.deidentify_object(object)
    }

    pub fn deidentify_object(&self, mut original: DefaultDicomObject) -> Result<Deidentified, Rejection> {
        let plan = self.pixel_plan(&original)?;
        if let PixelPlan::Clean(signature) = &plan {
            super::pixels::decode_for_cleaning(&mut original, &signature.name)?;
        }
        // Pixel Data is in no row of the table and always kept: move it to
        // the output rather than copy it through the walk.
        let pixels = original.take(tags::PIXEL_DATA);
        let text = |tag| string_of(&original, tag).unwrap_or_default();
        let patient_id = text(tags::PATIENT_ID);
        let sop_class_uid = text(tags::SOP_CLASS_UID);
        if sop_class_uid.is_empty() || text(tags::SOP_INSTANCE_UID).is_empty() {
            return Err(Rejection::new(
                ReasonCode::NotDicom,
                "the dataset has no SOP Class UID or SOP Instance UID; it is not a composite instance",
            ));
        }
        let shift = self
            .options
            .contains(&DeidOption::RetainLongitudinalModifiedDates)
            .then(|| dates::shift_days(&self.key, &patient_id, self.profile.date_shift_days));
        let pseudonym = self.pseudonym(&patient_id, &text(tags::PATIENT_NAME));
        let mut walk = Walk {
            d: self,
            shift,
            terms: identifying_terms(&original, 3),
            iod: Iod::of_sop_class(&sop_class_uid),
            item_path: Vec::new(),
            pseudonym,
            crosswalk: BTreeMap::new(),
            kept_identifying: BTreeSet::new(),
            cleaning: 0,
        };
        let mut object = walk.dataset(&original, true);
        let cleaned = match plan {
            PixelPlan::Clean(signature) => Some(signature),
            PixelPlan::Keep => None,
        };
        self.attribute(&mut object, shift, cleaned);

        let sop_instance_uid = valid_uid(&object, tags::SOP_INSTANCE_UID, "SOP Instance UID")?;
        let study_uid = valid_uid(&object, tags::STUDY_INSTANCE_UID, "Study Instance UID")?;
        let series_uid = valid_uid(&object, tags::SERIES_INSTANCE_UID, "Series Instance UID")?;
        let transfer_syntax = original.meta().transfer_syntax().trim_end_matches('\0').to_string();
        let meta = dicom_object::FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(sop_class_uid.as_str())
            .media_storage_sop_instance_uid(sop_instance_uid.as_str())
            .transfer_syntax(transfer_syntax.as_str())
            .implementation_class_uid(crate::output::IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(crate::output::implementation_version_name())
            .build()
            .map_err(|e| Rejection::new(ReasonCode::NotDicom, format!("cannot build file meta: {e}")))?;
        let mut object = object.with_exact_meta(meta);
        // Encoded before the pixels go back in: the residual check searches
        // these bytes, and `to_bytes` writes them.
        let mut encoded_header = Vec::new();
        object.write_all(&mut encoded_header).map_err(|_| {
            Rejection::new(
                ReasonCode::UnsupportedTransferSyntax,
                "the de-identified instance cannot be encoded in its transfer syntax",
            )
        })?;
        if let Some(pixels) = pixels {
            let little_endian = transfer_syntax != super::read::EXPLICIT_VR_BIG_ENDIAN;
            let mut pixels = if little_endian {
                native_pixels_as_bytes(pixels)
            } else {
                pixels
            };
            if let Some(signature) = cleaned {
                let geometry = super::pixels::Geometry::of(&original)?;
                pixels = super::pixels::blank(pixels, &geometry, &signature.rectangles)?;
            }
            object.put(pixels);
        }

        self.residual_check(&original, &encoded_header, &object, &walk.kept_identifying)?;

        let crosswalk = walk
            .crosswalk
            .into_iter()
            .map(|((attribute, original), replacement)| CrosswalkEntry {
                attribute,
                original: Phi::new(original),
                replacement,
            })
            .collect();
        Ok(Deidentified {
            object,
            encoded_header: Some(encoded_header),
            study_uid,
            series_uid,
            sop_instance_uid,
            sop_class_uid,
            crosswalk,
        })
    }

    /// Whether an image's pixels are kept, cleaned by a signature, or its
    /// burned-in text risk quarantines it (PS3.15 E.3.1: without the Clean
    /// Pixel Data Option, burned-in identification must not remain).
    fn pixel_plan(&self, object: &InMemDicomObject) -> Result<PixelPlan<'_>, Rejection> {
        if object.get(tags::PIXEL_DATA).is_none() {
            return Ok(PixelPlan::Keep);
        }
        let modality = string_of(object, tags::MODALITY).unwrap_or_default();
        let signature = self.signatures.as_ref().and_then(|set| set.find(object, &modality));
        let no_signature = || match &self.signatures {
            Some(set) => format!(
                "no signature of {} matches its modality, manufacturer, model and size",
                set.file.display()
            ),
            None => "the pipeline names no pixel signatures (deid.clean_pixel_data)".to_string(),
        };
        match (string_of(object, tags::BURNED_IN_ANNOTATION).as_deref(), signature) {
            (Some("YES"), Some(signature)) => Ok(PixelPlan::Clean(signature)),
            (Some("YES"), None) if self.profile.accept_burned_in => Ok(PixelPlan::Keep),
            (Some("YES"), None) => Err(Rejection::new(
                ReasonCode::BurnedInAnnotation,
                format!(
                    "Burned In Annotation (0028,0301) is YES and {}; add a signature, or set deid.accept_burned_in = true only for pixels cleaned elsewhere",
                    no_signature()
                ),
            )),
            (Some("NO"), _) => Ok(PixelPlan::Keep),
            (_, signature) => {
                let sop_class = string_of(object, tags::SOP_CLASS_UID).unwrap_or_default();
                let kind = if sop_class.starts_with(SECONDARY_CAPTURE_ROOT) { "SC" } else { modality.as_str() };
                match (self.profile.burned_in_policy(kind), signature) {
                    (BurnedInPolicy::Accept, _) => Ok(PixelPlan::Keep),
                    (BurnedInPolicy::Clean, Some(signature)) => Ok(PixelPlan::Clean(signature)),
                    (policy, _) => Err(Rejection::new(
                        ReasonCode::BurnedInAnnotationUnknown,
                        format!(
                            "Burned In Annotation (0028,0301) is absent on a {} image, which often carries burned-in text, {}; \
                             add a signature, or set deid.burned_in_unknown.{} = \"accept\" to accept such images",
                            if kind.is_empty() { "modality-less" } else { kind },
                            if policy == BurnedInPolicy::Clean { no_signature() } else { "and the pipeline quarantines them".to_string() },
                            if kind.is_empty() { "default" } else { kind },
                        ),
                    )),
                }
            }
        }
    }

    /// Keyed pseudonyms: `<prefix>-<10 hex>` and `<prefix>^<10 hex>`.
    fn pseudonym(&self, patient_id: &str, patient_name: &str) -> (String, String) {
        let basis = if patient_id.is_empty() {
            patient_name
        } else {
            patient_id
        };
        let digest = keyed_digest(&self.key, "synthd/patient", &[basis.as_bytes()]);
        let hex: String = digest[..5].iter().map(|b| format!("{b:02X}")).collect();
        let prefix = &self.profile.pseudonym_prefix;
        (format!("{prefix}-{hex}"), format!("{prefix}^{hex}"))
    }

    /// (0012,0062..0064), (0028,0303) and the De-identifying Equipment item;
    /// with pixels `cleaned` by a signature, the Clean Pixel Data Option
    /// (113101) and Burned In Annotation NO.
    fn attribute(&self, object: &mut InMemDicomObject, shift: Option<i64>, cleaned: Option<&Signature>) {
        put_str(object, tags::PATIENT_IDENTITY_REMOVED, VR::CS, "YES");
        let mut method = vec![format!("DICOM PS3.15 {EDITION} E.1-1 Basic Profile")];
        method.extend(self.options.iter().map(|o| truncate(o.standard_name(), 64)));
        if let Some(signature) = cleaned {
            method.push(truncate(&format!("Clean Pixel Data Option: {}", signature.name), 64));
            put_str(object, tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
        }
        object.put(DataElement::new(
            tags::DEIDENTIFICATION_METHOD,
            VR::LO,
            PrimitiveValue::Strs(method.into()),
        ));
        let mut codes = vec![code_item("113100", "Basic Application Confidentiality Profile")];
        for option in &self.options {
            let (code, meaning) = match option {
                DeidOption::RetainSafePrivate => ("113111", "Retain Safe Private Option"),
                DeidOption::RetainUids => ("113110", "Retain UIDs Option"),
                DeidOption::RetainDeviceIdentity => ("113109", "Retain Device Identity Option"),
                DeidOption::RetainInstitutionIdentity => ("113112", "Retain Institution Identity Option"),
                DeidOption::RetainPatientCharacteristics => ("113108", "Retain Patient Characteristics Option"),
                DeidOption::RetainLongitudinalFullDates => {
                    ("113106", "Retain Longitudinal Temporal Information Full Dates Option")
                }
                DeidOption::RetainLongitudinalModifiedDates => (
                    "113107",
                    "Retain Longitudinal Temporal Information Modified Dates Option",
                ),
                DeidOption::CleanDescriptors => ("113105", "Clean Descriptors Option"),
                DeidOption::CleanStructuredContent => ("113104", "Clean Structured Content Option"),
                DeidOption::CleanGraphics => ("113103", "Clean Graphics Option"),
            };
            codes.push(code_item(code, meaning));
        }
        if cleaned.is_some() {
            codes.push(code_item("113101", "Clean Pixel Data Option"));
        }
        object.put(DataElement::new(
            tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(codes),
        ));
        let temporal = if shift.is_some() {
            "MODIFIED"
        } else if self.options.contains(&DeidOption::RetainLongitudinalFullDates) {
            "UNMODIFIED"
        } else {
            "REMOVED"
        };
        put_str(
            object,
            tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED,
            VR::CS,
            temporal,
        );

        let mut equipment: Vec<InMemDicomObject> = object
            .get(tags::CONTRIBUTING_EQUIPMENT_SEQUENCE)
            .and_then(|e| e.items())
            .map(|items| items.to_vec())
            .unwrap_or_default();
        let mut item = InMemDicomObject::new_empty();
        item.put(DataElement::new(
            tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![code_item("109104", "De-identifying Equipment")]),
        ));
        put_str(&mut item, tags::MANUFACTURER, VR::LO, "synthd");
        put_str(&mut item, tags::MANUFACTURER_MODEL_NAME, VR::LO, "synthd");
        put_str(&mut item, tags::SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION"));
        put_str(
            &mut item,
            tags::CONTRIBUTION_DESCRIPTION,
            VR::ST,
            &format!("De-identified per DICOM PS3.15 {EDITION} Annex E, keyed UIDs and pseudonyms"),
        );
        equipment.push(item);
        object.put(DataElement::new(
            tags::CONTRIBUTING_EQUIPMENT_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(equipment),
        ));
    }

    /// Defence in depth: the encoded output must not contain the original's
    /// identifying values, except those an option deliberately keeps.
    /// `encoded_header` is the output's encoding without Pixel Data.
    fn residual_check(
        &self,
        original: &InMemDicomObject,
        encoded_header: &[u8],
        output: &DefaultDicomObject,
        kept: &BTreeSet<&'static str>,
    ) -> Result<(), Rejection> {
        if self.residual_in(original, encoded_header, kept).is_none() {
            return Ok(());
        }
        // Values that name products, not people or places, may equal an
        // identifying value by chance (Institution Name "TOSHIBA" beside
        // Manufacturer "TOSHIBA"): a hit is searched again with them left
        // out. Hits are rare, so most instances are encoded only once.
        let mut header_only = without_pixels(output);
        blank_product_names(&mut header_only);
        let mut bytes = Vec::new();
        if header_only.write_all(&mut bytes).is_err() {
            return Err(Rejection::new(
                ReasonCode::UnsupportedTransferSyntax,
                "the de-identified instance cannot be encoded in its transfer syntax",
            ));
        }
        match self.residual_in(original, &bytes, kept) {
            Some(rejection) => Err(rejection),
            None => Ok(()),
        }
    }

    /// The residual check's search of `bytes`: the rejection for the first
    /// identifying value of the original found in them.
    fn residual_in(
        &self,
        original: &InMemDicomObject,
        bytes: &[u8],
        kept: &BTreeSet<&'static str>,
    ) -> Option<Rejection> {
        let haystack = bytes.to_ascii_uppercase();
        for &(tag, keyword) in IDENTIFYING {
            if kept.contains(keyword) {
                continue;
            }
            let Some(value) = string_of(original, tag) else {
                continue;
            };
            // The whole value in any case; its parts (name components, words)
            // only as written and when long enough not to be common words.
            let whole = value.trim().to_ascii_uppercase();
            let found_whole = whole.len() >= 4 && contains(&haystack, whole.as_bytes());
            let found_part = parts_of(&value)
                .iter()
                .filter(|part| part.chars().count() >= 5)
                .any(|part| contains(bytes, part.as_bytes()));
            if found_whole || found_part {
                return Some(Rejection::new(
                    ReasonCode::ResidualPhi,
                    format!("the value of {keyword} of the original still appears in the de-identified output"),
                ));
            }
        }
        if !self.options.contains(&DeidOption::RetainUids) {
            for (tag, keyword) in [
                (tags::STUDY_INSTANCE_UID, "StudyInstanceUID"),
                (tags::SERIES_INSTANCE_UID, "SeriesInstanceUID"),
                (tags::SOP_INSTANCE_UID, "SOPInstanceUID"),
                (tags::FRAME_OF_REFERENCE_UID, "FrameOfReferenceUID"),
            ] {
                if let Some(value) = string_of(original, tag) {
                    if !uid::is_registered(&value) && contains_uid(bytes, &value) {
                        return Some(Rejection::new(
                            ReasonCode::ResidualPhi,
                            format!("the original {keyword} still appears in the de-identified output"),
                        ));
                    }
                }
            }
        }
        None
    }
}

/// One de-identification pass over one instance.
struct Walk<'a> {
    d: &'a Deidentifier,
    shift: Option<i64>,
    /// Identifying strings of this instance, replaced inside cleaned text.
    terms: Vec<String>,
    /// The instance's IOD, when its SOP class is known: compound actions
    /// follow the attribute's type in it.
    iod: Option<Iod>,
    /// Keywords of the sequences whose items are being walked, outermost first.
    item_path: Vec<String>,
    pseudonym: (String, String),
    crosswalk: BTreeMap<(String, String), String>,
    /// Identifying attributes an option kept (excluded from the residual check).
    kept_identifying: BTreeSet<&'static str>,
    /// How many sequences cleaned by C enclose the current item.
    cleaning: usize,
}

impl Walk<'_> {
    fn dataset(&mut self, source: &InMemDicomObject, top: bool) -> InMemDicomObject {
        let dropped_overlays = self.overlay_groups_to_drop(source);
        let safe_blocks = self.safe_private_blocks(source);
        let mut out = InMemDicomObject::new_empty();
        for element in source.iter() {
            let tag = element.tag();
            if tag.element() == 0 && tag.group() != 0xFFFE {
                continue; // group lengths are recomputed by the writer, if at all
            }
            if is_repeating_group(tag.group(), 0x6000) && dropped_overlays.contains(&tag.group()) {
                continue;
            }
            if tag.group() % 2 == 1 {
                if self.keep_private(tag, &safe_blocks) {
                    out.put(element.clone());
                }
                continue;
            }
            if let Some(new) = self.element(element, top) {
                out.put(new);
            }
        }
        out
    }

    /// Overlay planes removed whole: all of them under the Basic Profile
    /// (Overlay Data is X); with Clean Graphics, graphics overlays (type G,
    /// which may draw text) go and ROI overlays (type R, shapes) stay.
    fn overlay_groups_to_drop(&self, source: &InMemDicomObject) -> BTreeSet<u16> {
        let clean_graphics = self.d.options.contains(&DeidOption::CleanGraphics);
        source
            .tags()
            .map(|t| t.group())
            .filter(|&g| is_repeating_group(g, 0x6000))
            .filter(|&group| {
                if !clean_graphics {
                    return true;
                }
                let kind = source
                    .get(Tag(group, 0x0040))
                    .and_then(|e| e.to_str().ok())
                    .map(|s| s.trim().to_string());
                kind.as_deref() != Some("R")
            })
            .collect()
    }

    /// Private blocks `(group, block)` whose creator is on the safe list.
    fn safe_private_blocks(&self, source: &InMemDicomObject) -> BTreeMap<(u16, u8), String> {
        let mut blocks = BTreeMap::new();
        if !self.d.options.contains(&DeidOption::RetainSafePrivate) {
            return blocks;
        }
        for element in source.iter() {
            let tag = element.tag();
            if tag.group() % 2 == 1 && (0x10..=0xFF).contains(&tag.element()) {
                if let Ok(creator) = element.to_str() {
                    let creator = creator.trim().to_string();
                    if self
                        .d
                        .safe_private
                        .iter()
                        .any(|(c, g, _)| *c == creator && *g == tag.group())
                    {
                        blocks.insert((tag.group(), tag.element() as u8), creator);
                    }
                }
            }
        }
        blocks
    }

    fn keep_private(&self, tag: Tag, safe_blocks: &BTreeMap<(u16, u8), String>) -> bool {
        let group = tag.group();
        let element = tag.element();
        if (0x10..=0xFF).contains(&element) {
            return safe_blocks.contains_key(&(group, element as u8));
        }
        let block = (element >> 8) as u8;
        match safe_blocks.get(&(group, block)) {
            Some(creator) => self.d.safe_private.contains(&(creator.clone(), group, element as u8)),
            None => false,
        }
    }

    fn effective(&self, row: &Row) -> Action {
        // PS3.15 E.1.1 (para_85507f78-806f-4866-8c58-cc9bea84c73d of the
        // 2026c DocBook source): "A requirement for an Option, when
        // implemented, overrides any requirement for the underlying
        // Profile." The standard says nothing of two options that disagree
        // except that the two Retain Longitudinal Temporal Information
        // Options exclude each other (E.3.6, refused in `new`). In Table
        // E.1-1 (2026c) the only such rows are 11 device dates, K under Retain
        // Device Identity and C under Retain Longitudinal Modified Dates.
        let mut chosen: Option<Action> = None;
        for option in &self.d.options {
            if let Some(action) = row.option(*option) {
                // When several selected options name one attribute, the more
                // protective wins: C (clean) over K (keep).
                chosen = Some(match (chosen, action) {
                    (Some(Action::Clean), _) | (_, Action::Clean) => Action::Clean,
                    (_, other) => other,
                });
            }
        }
        chosen.unwrap_or(row.basic)
    }

    fn element(&mut self, element: &InMemElement, top: bool) -> Option<InMemElement> {
        let tag = element.tag();
        let vr = element.vr();
        if top && tag == tags::PATIENT_ID {
            let pseudonym = self.pseudonym.0.clone();
            self.record("PatientID", element, &pseudonym);
            return Some(DataElement::new(tag, VR::LO, PrimitiveValue::from(pseudonym)));
        }
        if top && tag == tags::PATIENT_NAME {
            let pseudonym = self.pseudonym.1.clone();
            self.record("PatientName", element, &pseudonym);
            return Some(DataElement::new(tag, VR::PN, PrimitiveValue::from(pseudonym)));
        }
        let row = self.d.table.row(tag);
        let action = match row {
            Some(row) => {
                let action = self.effective(row);
                let known = if action.is_compound() {
                    self.attribute_type(&row.keyword)
                } else {
                    None
                };
                iod::resolve(action, known, vr == VR::SQ)
            }
            None => self.default_action(element),
        };
        // Retain UIDs keeps UIDs as they are; an invalid one (leading zeros,
        // over 64 characters, stray characters: common in real archives)
        // would make the output invalid, so it alone is remapped.
        let action = if action == Action::Keep && vr == VR::UI && self.retain_uids() && has_invalid_uid(element) {
            Action::Uid
        } else {
            action
        };
        if top && action == Action::Keep {
            if let Some(&(_, keyword)) = IDENTIFYING.iter().find(|(t, _)| *t == tag) {
                self.kept_identifying.insert(keyword);
            }
        }
        match action {
            Action::Remove => None,
            Action::Keep => Some(self.keep(element)),
            Action::Zero => Some(self.zero(element)),
            Action::Dummy => Some(self.dummy(element)),
            Action::Clean => self.clean(element),
            Action::Uid => Some(self.uid(element)),
            compound => {
                // resolve() leaves no compound action; treat any as the most protective.
                debug_assert!(false, "unresolved compound action {}", compound.code());
                None
            }
        }
    }

    /// Attributes the table does not name: UIDs that are not registered are
    /// remapped, dates are shifted when dates are modified, the rest is kept.
    fn default_action(&self, element: &InMemElement) -> Action {
        match element.vr() {
            VR::UI => {
                let values = multi_str(element);
                if values.iter().all(|v| v.is_empty() || is_standard_uid(v)) || self.retain_uids() {
                    Action::Keep
                } else {
                    Action::Uid
                }
            }
            VR::DA | VR::DT if self.shift.is_some() => Action::Clean,
            // Free text inside a cleaned sequence (an SR's Text Value under
            // Clean Structured Content): identifying terms are scrubbed.
            VR::LO | VR::SH | VR::ST | VR::LT | VR::UT | VR::UC | VR::PN if self.cleaning > 0 => Action::Clean,
            _ => Action::Keep,
        }
    }

    fn retain_uids(&self) -> bool {
        self.d.options.contains(&DeidOption::RetainUids)
    }

    fn keep(&mut self, element: &InMemElement) -> InMemElement {
        match element.value() {
            Value::Sequence(sequence) => self.sequence(element.tag(), sequence.items()),
            _ => element.clone(),
        }
    }

    /// The type of the attribute `keyword` at the current item path, in the
    /// instance's IOD; `None` when either is unknown.
    fn attribute_type(&self, keyword: &str) -> Option<AttributeType> {
        let iod = self.iod?;
        if self.item_path.is_empty() {
            iod.attribute_type(keyword)
        } else {
            iod.attribute_type(&format!("{}>{keyword}", self.item_path.join(">")))
        }
    }

    fn sequence(&mut self, tag: Tag, items: &[InMemDicomObject]) -> InMemElement {
        self.item_path.push(keyword_of(tag));
        let items: Vec<InMemDicomObject> = items.iter().map(|item| self.dataset(item, false)).collect();
        self.item_path.pop();
        DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
    }

    fn zero(&self, element: &InMemElement) -> InMemElement {
        match element.vr() {
            VR::SQ => DataElement::new(element.tag(), VR::SQ, DataSetSequence::<InMemDicomObject>::from(vec![])),
            vr => DataElement::new(element.tag(), vr, PrimitiveValue::Empty),
        }
    }

    fn dummy(&mut self, element: &InMemElement) -> InMemElement {
        match element.value() {
            Value::Sequence(sequence) => self.dummy_sequence(element.tag(), sequence.items()),
            _ if element.vr() == VR::UI => self.uid(element),
            _ => DataElement::new(element.tag(), element.vr(), dummy_value(element.vr())),
        }
    }

    /// D on a sequence. PS3.15 E.1.1: "in the case of Sequences, the action
    /// is applicable to the Sequence and all of its contents". So each item
    /// stays, with every value in it a dummy: one empty item in place of an
    /// SR's Content Sequence would break the Type 1 attributes of its items
    /// (Relationship Type, Value Type, Concept Name Code Sequence). Kept as
    /// they are: code strings (enumerated values such as Value Type identify
    /// no one, and a dummy would make them invalid) and numbers; UIDs are
    /// remapped by their own rows, so references inside stay valid; private
    /// elements go.
    fn dummy_sequence(&mut self, tag: Tag, items: &[InMemDicomObject]) -> InMemElement {
        let items: Vec<InMemDicomObject> = items
            .iter()
            .map(|item| {
                let mut out = InMemDicomObject::new_empty();
                for element in item
                    .iter()
                    .filter(|e| e.tag().group() % 2 == 0 && e.tag().element() != 0)
                {
                    let dummied = match element.vr() {
                        VR::SQ => Some(self.dummy(element)),
                        // A UID by its own row (or remapped when none names
                        // it), so that Retain UIDs still keeps it.
                        VR::UI => {
                            self.item_path.push(keyword_of(tag));
                            let uid = self.element(element, false);
                            self.item_path.pop();
                            uid
                        }
                        VR::CS
                        | VR::US
                        | VR::UL
                        | VR::SS
                        | VR::SL
                        | VR::FL
                        | VR::FD
                        | VR::DS
                        | VR::IS
                        | VR::SV
                        | VR::UV => Some(element.clone()),
                        _ => Some(self.dummy(element)),
                    };
                    if let Some(dummied) = dummied {
                        out.put(dummied);
                    }
                }
                out
            })
            .collect();
        DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
    }

    fn clean(&mut self, element: &InMemElement) -> Option<InMemElement> {
        let tag = element.tag();
        match element.vr() {
            VR::SQ => {
                self.cleaning += 1;
                let cleaned = self.keep(element);
                self.cleaning -= 1;
                Some(cleaned)
            }
            VR::UI => Some(self.uid(element)),
            VR::DA | VR::DT => {
                let Some(days) = self.shift else {
                    return Some(self.zero(element));
                };
                let is_dt = element.vr() == VR::DT;
                let shifted: Option<Vec<String>> = multi_str(element)
                    .iter()
                    .map(|value| {
                        if value.trim().is_empty() {
                            Some(String::new())
                        } else if is_dt {
                            dates::shift_dt(value, days)
                        } else {
                            dates::shift_da(value, days)
                        }
                    })
                    .collect();
                // A value that is not a date cannot be shifted; it is emptied, never kept.
                Some(match shifted {
                    Some(values) => DataElement::new(tag, element.vr(), PrimitiveValue::Strs(values.into())),
                    None => self.zero(element),
                })
            }
            VR::LO | VR::SH | VR::ST | VR::LT | VR::UT | VR::UC | VR::PN | VR::CS | VR::AE => {
                let values: Vec<String> = multi_str(element).iter().map(|v| self.scrub(v)).collect();
                Some(DataElement::new(tag, element.vr(), PrimitiveValue::Strs(values.into())))
            }
            // Times, numbers and binary data (curves, ROI overlays) carry no identity
            // once dates are handled; they are kept.
            _ => Some(element.clone()),
        }
    }

    /// Replaces every identifying term of this instance inside free text with
    /// X's of the same length (keeps VR lengths and character repertoires).
    fn scrub(&self, text: &str) -> String {
        let mut result = text.to_string();
        for term in &self.terms {
            let upper = result.to_uppercase();
            let needle = term.to_uppercase();
            let mut search_from = 0;
            while let Some(found) = upper[search_from..].find(&needle) {
                let start = search_from + found;
                let end = start + needle.len();
                if result.is_char_boundary(start) && result.is_char_boundary(end) {
                    result.replace_range(start..end, &"X".repeat(end - start));
                }
                search_from = end;
            }
        }
        result
    }

    fn uid(&mut self, element: &InMemElement) -> InMemElement {
        if element.vr() == VR::SQ {
            return self.keep(element);
        }
        // Reached only when the effective action is U: rows that Retain UIDs
        // does not mark K (e.g. Digital Signature UID) are remapped even then.
        let keyword = keyword_of(element.tag());
        let mut values = multi_str(element);
        // A single-valued UID with a stray backslash is one (invalid) UID,
        // mapped whole, not two.
        if values.len() > 1 && SINGLE_VALUED_UIDS.contains(&element.tag()) {
            values = vec![values.join("\\")];
        }
        let mapped: Vec<String> = values
            .iter()
            .map(|original| {
                let original = original.trim_end_matches('\0').trim();
                if original.is_empty() || is_standard_uid(original) {
                    return original.to_string();
                }
                let replacement = uid::map_uid(&self.d.key, original);
                self.crosswalk
                    .insert((keyword.clone(), original.to_string()), replacement.clone());
                replacement
            })
            .collect();
        DataElement::new(element.tag(), VR::UI, PrimitiveValue::Strs(mapped.into()))
    }

    fn record(&mut self, attribute: &str, element: &InMemElement, replacement: &str) {
        let original = element.to_str().map(|s| s.trim().to_string()).unwrap_or_default();
        if !original.is_empty() {
            self.crosswalk
                .insert((attribute.to_string(), original), replacement.to_string());
        }
    }
}

/// UIDs that name one thing (VM 1) and that instances are filed by.
const SINGLE_VALUED_UIDS: &[Tag] = &[
    tags::STUDY_INSTANCE_UID,
    tags::SERIES_INSTANCE_UID,
    tags::SOP_INSTANCE_UID,
    tags::FRAME_OF_REFERENCE_UID,
    tags::MEDIA_STORAGE_SOP_INSTANCE_UID,
];

/// A registered UID (SOP class, transfer syntax, coding scheme), kept as
/// is. An invalid value under the DICOM root is no registered UID.
fn is_standard_uid(value: &str) -> bool {
    uid::is_registered(value) && uid::is_valid(value)
}

fn has_invalid_uid(element: &InMemElement) -> bool {
    multi_str(element)
        .iter()
        .any(|value| !value.trim().is_empty() && !uid::is_valid(value.trim()))
}

fn keyword_of(tag: Tag) -> String {
    StandardDataDictionary
        .by_tag(tag)
        .map(|entry| entry.alias.to_string())
        .unwrap_or_else(|| format!("({:04X},{:04X})", tag.group(), tag.element()))
}

fn multi_str(element: &InMemElement) -> Vec<String> {
    element
        .to_multi_str()
        .map(|values| {
            values
                .iter()
                .map(|v| v.trim_end_matches(['\0', ' ']).to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) use crate::attribute::string_of;

/// The identifying strings of an instance: whole values and their name or
/// word components, at least `min_len` characters long.
fn identifying_terms(object: &InMemDicomObject, min_len: usize) -> Vec<String> {
    let mut terms: Vec<String> = IDENTIFYING
        .iter()
        .filter_map(|&(tag, _)| string_of(object, tag))
        .flat_map(|value| terms_of(&value, min_len))
        .collect();
    // Longest first, so that a whole name is replaced before its parts.
    terms.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    terms.dedup();
    terms
}

fn terms_of(value: &str, min_len: usize) -> Vec<String> {
    let mut terms = vec![value.trim().to_string()];
    terms.extend(parts_of(value));
    terms.retain(|t| t.chars().count() >= min_len);
    terms
}

/// Name components and words of a value.
fn parts_of(value: &str) -> Vec<String> {
    value
        .split(['^', '=', '\\', ' ', ','])
        .map(|part| part.trim().to_string())
        .filter(|part| !part.is_empty())
        .collect()
}

/// The instance's UID as one valid UID. A missing one is the instance's
/// fault; an invalid one cannot come out of the walk, which remaps every
/// invalid UID it keeps.
fn valid_uid(object: &InMemDicomObject, tag: Tag, name: &str) -> Result<String, Rejection> {
    match string_of(object, tag) {
        None => Err(missing(tag, name)),
        Some(value) if uid::is_valid(&value) => Ok(value),
        Some(_) => Err(Rejection::new(
            ReasonCode::InvalidUid,
            format!("the {name} is not a valid UID after de-identification"),
        )),
    }
}

/// The rejection of an instance without the required UID `tag`: with no
/// Study Instance UID it belongs to no study (`no-study`: Color Palettes,
/// for one), otherwise `missing-uid`.
pub(super) fn missing(tag: Tag, name: &str) -> Rejection {
    if tag == tags::STUDY_INSTANCE_UID {
        Rejection::new(
            ReasonCode::NoStudy,
            "the instance has no Study Instance UID (0020,000D): it belongs to no study (e.g. a Color Palette); synthd handles study instances only",
        )
    } else {
        Rejection::new(
            ReasonCode::MissingUid,
            format!("the required {name} is missing; the instance cannot be named or referenced"),
        )
    }
}

fn blank_product_names(object: &mut InMemDicomObject) {
    for tag in [
        tags::MANUFACTURER,
        tags::MANUFACTURER_MODEL_NAME,
        tags::SOFTWARE_VERSIONS,
    ] {
        object.remove_element(tag);
    }
    let sequences: Vec<Tag> = object.iter().filter(|e| e.vr() == VR::SQ).map(|e| e.tag()).collect();
    for tag in sequences {
        if let Some(element) = object.get(tag) {
            let mut items: Vec<InMemDicomObject> = element.items().map(|i| i.to_vec()).unwrap_or_default();
            for item in &mut items {
                blank_product_names(item);
            }
            object.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
        }
    }
}

/// Whether `uid` occurs as a whole UID (not as the prefix of a longer one).
fn contains_uid(haystack: &[u8], uid: &str) -> bool {
    let needle = uid.as_bytes();
    let is_uid_byte = |b: u8| b.is_ascii_digit() || b == b'.';
    !needle.is_empty()
        && memchr::memmem::find_iter(haystack, needle).any(|at| {
            (at == 0 || !is_uid_byte(haystack[at - 1]))
                && haystack.get(at + needle.len()).is_none_or(|&b| !is_uid_byte(b))
        })
}

/// Whether `needle` occurs in `haystack`. An all-digit value (a numeric
/// Patient ID or Accession Number) counts only as a whole number: inside
/// the 39-digit keyed UIDs of the output it would otherwise turn up by
/// chance, and which chance depends on the site key.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return false;
    }
    if !needle.iter().all(u8::is_ascii_digit) {
        return memchr::memmem::find(haystack, needle).is_some();
    }
    let is_number_byte = |b: u8| b.is_ascii_digit() || b == b'.';
    memchr::memmem::find_iter(haystack, needle).any(|at| {
        (at == 0 || !is_number_byte(haystack[at - 1]))
            && haystack.get(at + needle.len()).is_none_or(|&b| !is_number_byte(b))
    })
}

fn put_str(object: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    object.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

fn code_item(value: &str, meaning: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::CODE_VALUE, VR::SH, value);
    put_str(&mut item, tags::CODING_SCHEME_DESIGNATOR, VR::SH, "DCM");
    put_str(&mut item, tags::CODE_MEANING, VR::LO, meaning);
    item
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::contains;

    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::{tags, uids};
    use dicom_object::mem::InMemElement;

    /// A deidentifier with the default profile under a fresh key.
    fn deidentifier() -> super::Deidentifier {
        let dir = tempfile::tempdir().unwrap();
        crate::keyfile::generate(&dir.path().join("k")).unwrap();
        let key = crate::keyfile::SiteKey::read(&dir.path().join("k")).unwrap();
        super::Deidentifier::new(key, &Default::default()).unwrap()
    }

    /// A minimal MR instance with fake UIDs, `extra` elements and Pixel Data last.
    fn mr(
        transfer_syntax: &str,
        extra: impl IntoIterator<Item = InMemElement>,
        pixels: InMemElement,
    ) -> dicom_object::DefaultDicomObject {
        let mut object = dicom_object::InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.4"),
            ),
            DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.3.4.5")),
            DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.3.4")),
            DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.3.4.1")),
            DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from("MR")),
            pixels,
        ]);
        for element in extra {
            object.put(element);
        }
        object
            .with_meta(dicom_object::FileMetaTableBuilder::new().transfer_syntax(transfer_syntax))
            .unwrap()
    }

    #[test]
    fn trailing_pixels_are_appended_exactly_as_the_encoder_writes_them() {
        let deidentifier = deidentifier();
        let instance = |transfer_syntax: &str, vr: VR, pixels: usize| {
            let name = DataElement::new(tags::PATIENT_NAME, VR::PN, PrimitiveValue::from("FAKE^ENCODE"));
            let pixels = DataElement::new(tags::PIXEL_DATA, vr, PrimitiveValue::from(vec![7u8; pixels]));
            deidentifier
                .deidentify_object(mr(transfer_syntax, [name], pixels))
                .unwrap()
        };
        for (transfer_syntax, vr) in [
            (uids::EXPLICIT_VR_LITTLE_ENDIAN, VR::OW),
            (uids::EXPLICIT_VR_LITTLE_ENDIAN, VR::OB),
            (uids::IMPLICIT_VR_LITTLE_ENDIAN, VR::OW),
        ] {
            let deidentified = instance(transfer_syntax, vr, 64);
            let appended = deidentified
                .to_bytes_with_trailing_pixels()
                .expect("the common case")
                .unwrap();
            let mut encoded = Vec::new();
            deidentified.object.write_all(&mut encoded).unwrap();
            assert_eq!(appended, encoded, "{transfer_syntax} {vr}");
            // Without the header encoded by the residual check, the same bytes.
            let uncached = super::Deidentified::from_written(deidentified.object.clone()).unwrap();
            assert!(uncached.encoded_header.is_none());
            assert_eq!(uncached.to_bytes().unwrap(), encoded, "{transfer_syntax} {vr}");
        }
        // Odd lengths and big endian take the encoder's own path.
        assert!(instance(uids::EXPLICIT_VR_LITTLE_ENDIAN, VR::OB, 63)
            .to_bytes_with_trailing_pixels()
            .is_none());
        assert!(instance(super::super::read::EXPLICIT_VR_BIG_ENDIAN, VR::OW, 64)
            .to_bytes_with_trailing_pixels()
            .is_none());
    }

    #[test]
    fn a_product_name_equal_to_an_identifying_value_is_not_residual_phi() {
        let deidentifier = deidentifier();
        let instance = |institution: &str| {
            let extra = [
                DataElement::new(tags::MANUFACTURER, VR::LO, PrimitiveValue::from("FAKEVENDOR")),
                DataElement::new(tags::INSTITUTION_NAME, VR::LO, PrimitiveValue::from(institution)),
            ];
            let pixels = DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(vec![7u8; 64]));
            mr(uids::EXPLICIT_VR_LITTLE_ENDIAN, extra, pixels)
        };
        // The institution shares the vendor's name: the search of the output
        // finds it in Manufacturer, and the second search, without product
        // names, clears it.
        let deidentified = deidentifier.deidentify_object(instance("FAKEVENDOR")).unwrap();
        let bytes = deidentified.to_bytes().unwrap();
        assert!(contains(&bytes, b"FAKEVENDOR"));
        assert!(deidentified
            .object
            .get(tags::INSTITUTION_NAME)
            .is_none_or(|e| e.to_str().unwrap().is_empty()));
        // An institution nobody else names leaves no trace either way.
        let other = deidentifier
            .deidentify_object(instance("FAKE GENERAL HOSPITAL"))
            .unwrap();
        assert!(!contains(&other.to_bytes().unwrap(), b"FAKE GENERAL HOSPITAL"));
    }

    #[test]
    fn a_numeric_value_is_found_only_as_a_whole_number() {
        // A keyed UID may hold the digits of a Patient ID by chance.
        assert!(!contains(b"\x00UI2.25.123499000456\x00", b"99000"));
        assert!(!contains(b"DS0.990001", b"99000"));
        assert!(contains(b"LO99000 ", b"99000"));
        assert!(contains(b"CSORIGINAL\\99000", b"99000"));
    }

    #[test]
    fn native_16_bit_pixels_are_held_as_the_same_little_endian_bytes() {
        use super::native_pixels_as_bytes;
        use dicom_core::value::PrimitiveValue;
        use dicom_core::{DataElement, VR};
        use dicom_dictionary_std::tags;
        let element = native_pixels_as_bytes(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16([0x0102, 0xfffe, 7].into_iter().collect()),
        ));
        assert_eq!(element.vr(), VR::OW);
        assert_eq!(element.to_bytes().unwrap().as_ref(), [0x02, 0x01, 0xfe, 0xff, 7, 0]);
    }

    #[test]
    fn other_values_are_found_anywhere() {
        assert!(contains(b"LOSMITHSON", b"SMITH"));
        assert!(contains(b"CSPRIMARY\\ZQ7731X", b"ZQ7731X"));
        assert!(!contains(b"LOSMITH", b""));
    }
}
