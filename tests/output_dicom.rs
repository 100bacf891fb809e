//! Synthetic instances and SEGs as other tools see them: dciodvfy (dicom3tools)
//! finds no error that the source does not already have, dcmdump (dcmtk),
//! gdcmdump (gdcm) and pydicom read them, and the provenance is there.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject};
use std::path::{Path, PathBuf};
use std::process::Command;
use synthd::keyfile::SiteKey;
use synthd::output::{self, pixels, seg, synthetic};

const ROWS: usize = 32;
const COLUMNS: usize = 32;

fn put(object: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, value: &str) {
    object.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

/// A de-identified-looking MR slice, as the deid stage would hand it over.
fn mr_slice(index: usize) -> DefaultDicomObject {
    let sop = format!("2.25.1000{index}");
    let mut o = InMemDicomObject::new_empty();
    put(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100");
    put(&mut o, tags::SOP_CLASS_UID, VR::UI, uids::MR_IMAGE_STORAGE);
    put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, &sop);
    put(&mut o, tags::STUDY_DATE, VR::DA, "20240102");
    put(&mut o, tags::STUDY_TIME, VR::TM, "101500");
    put(&mut o, tags::ACCESSION_NUMBER, VR::SH, "");
    put(&mut o, tags::MODALITY, VR::CS, "MR");
    put(&mut o, tags::MANUFACTURER, VR::LO, "");
    put(&mut o, tags::REFERRING_PHYSICIAN_NAME, VR::PN, "");
    put(&mut o, tags::SERIES_DESCRIPTION, VR::LO, "AX T1");
    put(&mut o, tags::PATIENT_NAME, VR::PN, "SYN^3F9A1C2B7D");
    put(&mut o, tags::PATIENT_ID, VR::LO, "SYN-3F9A1C2B7D");
    put(&mut o, tags::PATIENT_BIRTH_DATE, VR::DA, "");
    put(&mut o, tags::PATIENT_SEX, VR::CS, "O");
    put(&mut o, tags::PATIENT_IDENTITY_REMOVED, VR::CS, "YES");
    put(&mut o, tags::DEIDENTIFICATION_METHOD, VR::LO, "test fixture");
    let mut method = InMemDicomObject::new_empty();
    put(&mut method, tags::CODE_VALUE, VR::SH, "113100");
    put(&mut method, tags::CODING_SCHEME_DESIGNATOR, VR::SH, "DCM");
    put(
        &mut method,
        tags::CODE_MEANING,
        VR::LO,
        "Basic Application Confidentiality Profile",
    );
    o.put(DataElement::new(
        tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
        VR::SQ,
        dicom_core::value::DataSetSequence::from(vec![method]),
    ));
    put(&mut o, tags::SCANNING_SEQUENCE, VR::CS, "SE");
    put(&mut o, tags::SEQUENCE_VARIANT, VR::CS, "NONE");
    put(&mut o, tags::SCAN_OPTIONS, VR::CS, "");
    put(&mut o, tags::MR_ACQUISITION_TYPE, VR::CS, "2D");
    put(&mut o, tags::SLICE_THICKNESS, VR::DS, "2");
    put(&mut o, tags::SPACING_BETWEEN_SLICES, VR::DS, "2");
    put(&mut o, tags::REPETITION_TIME, VR::DS, "500");
    put(&mut o, tags::ECHO_TIME, VR::DS, "10");
    put(&mut o, tags::ECHO_TRAIN_LENGTH, VR::IS, "1");
    put(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, "2.25.77");
    put(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, "2.25.88");
    put(&mut o, tags::STUDY_ID, VR::SH, "");
    put(&mut o, tags::SERIES_NUMBER, VR::IS, "3");
    put(&mut o, tags::INSTANCE_NUMBER, VR::IS, &(index + 1).to_string());
    put(&mut o, tags::PATIENT_ORIENTATION, VR::CS, "");
    o.put(DataElement::new(
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        PrimitiveValue::Strs(vec!["-32".into(), "-32".into(), (index as f64 * 2.0).to_string()].into()),
    ));
    o.put(DataElement::new(
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        PrimitiveValue::Strs(["1", "0", "0", "0", "1", "0"].map(String::from).to_vec().into()),
    ));
    put(&mut o, tags::FRAME_OF_REFERENCE_UID, VR::UI, "2.25.99");
    put(&mut o, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
    put(&mut o, tags::SLICE_LOCATION, VR::DS, &(index as f64 * 2.0).to_string());
    o.put(DataElement::new(
        tags::IMAGE_TYPE,
        VR::CS,
        PrimitiveValue::Strs(["ORIGINAL", "PRIMARY", "M", "ND"].map(String::from).to_vec().into()),
    ));
    o.put(DataElement::new(
        tags::SAMPLES_PER_PIXEL,
        VR::US,
        PrimitiveValue::from(1u16),
    ));
    put(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    o.put(DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(ROWS as u16)));
    o.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(COLUMNS as u16),
    ));
    o.put(DataElement::new(
        tags::PIXEL_SPACING,
        VR::DS,
        PrimitiveValue::Strs(vec!["2".into(), "2".into()].into()),
    ));
    o.put(DataElement::new(
        tags::BITS_ALLOCATED,
        VR::US,
        PrimitiveValue::from(16u16),
    ));
    o.put(DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(12u16)));
    o.put(DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(11u16)));
    o.put(DataElement::new(
        tags::PIXEL_REPRESENTATION,
        VR::US,
        PrimitiveValue::from(0u16),
    ));
    let values: Vec<u16> = (0..ROWS * COLUMNS)
        .map(|i| ((i * 7 + index * 13) % 4000) as u16)
        .collect();
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(values.into()),
    ));
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(uids::MR_IMAGE_STORAGE)
        .media_storage_sop_instance_uid(sop.as_str())
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .implementation_class_uid(output::IMPLEMENTATION_CLASS_UID)
        .build()
        .unwrap();
    o.with_exact_meta(meta)
}

fn provenance() -> synthetic::Provenance {
    synthetic::Provenance {
        pipeline_name: "brain-mri-inpaint".into(),
        pipeline_sha256: "11".repeat(32),
        model_name: "test-model".into(),
        model_version: "1".into(),
        model_sha256: "ab".repeat(32),
        sampler: "ddim".into(),
        steps: 25,
        seed: 42,
        variant: 0,
        mask_id: "generated-ellipsoids".into(),
        keep_descriptors: true,
    }
}

fn mask(index: usize) -> Vec<u8> {
    (0..ROWS * COLUMNS)
        .map(|i| {
            let (y, x) = ((i / COLUMNS) as i64 - 16, (i % COLUMNS) as i64 - 16);
            u8::from(x * x + y * y < 36 + index as i64)
        })
        .collect()
}

struct Written {
    _dir: tempfile::TempDir,
    sources: Vec<PathBuf>,
    synthetic: Vec<PathBuf>,
    seg: PathBuf,
}

fn write_all() -> Written {
    let dir = tempfile::tempdir().unwrap();
    let key = SiteKey::from_bytes([3; 32]);
    let provenance = provenance();
    let mut sources = Vec::new();
    let mut synthetic_paths = Vec::new();
    let mut synthetic_objects = Vec::new();
    let mut masks = Vec::new();
    for index in 0..3 {
        let source = mr_slice(index);
        let source_path = dir.path().join(format!("source{index}.dcm"));
        std::fs::write(&source_path, output::encode(&source).unwrap()).unwrap();
        sources.push(source_path);
        let format = pixels::PixelFormat::of(&source).unwrap();
        let stored = pixels::stored_values(&source, &format).unwrap();
        let synthetic_real = vec![2500.0f32; stored.len()];
        let mask = mask(index);
        let composed = pixels::compose(&format, &stored, &synthetic_real, &mask);
        let instance = synthetic::build_instance(&key, &source, &composed, &provenance).unwrap();
        let path = dir.path().join(format!("synthetic{index}.dcm"));
        std::fs::write(&path, output::encode(&instance).unwrap()).unwrap();
        synthetic_paths.push(path);
        synthetic_objects.push(instance);
        masks.push(mask);
    }
    let frames: Vec<(&DefaultDicomObject, &[u8])> = synthetic_objects
        .iter()
        .zip(&masks)
        .map(|(o, m)| (o, m.as_slice()))
        .collect();
    let seg = seg::build_seg(
        &key,
        &frames,
        &[seg::SegmentMeaning::inpainted_region()],
        &provenance,
        "2.25.88",
    )
    .unwrap()
    .expect("masks are not empty");
    let seg_path = dir.path().join("seg.dcm");
    std::fs::write(&seg_path, output::encode(&seg).unwrap()).unwrap();
    Written {
        _dir: dir,
        sources,
        synthetic: synthetic_paths,
        seg: seg_path,
    }
}

/// dciodvfy's error lines. Debian's dicom3tools (2022) predates Synthetic
/// Data (0008,001C), added to the standard in 2023, and calls it unknown; that
/// one line is the tool's age, not our error, so it is left out.
fn dciodvfy_errors(path: &Path) -> Vec<String> {
    let output = Command::new("dciodvfy")
        .arg(path)
        .output()
        .expect("dciodvfy (Debian dicom3tools) is installed");
    let text = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
    text.lines()
        .filter(|line| line.starts_with("Error"))
        .filter(|line| !line.contains("(0x0008,0x001c)"))
        .map(|line| line.to_string())
        .collect()
}

fn python() -> String {
    std::env::var("SYNTHD_PYTHON").unwrap_or_else(|_| format!("{}/.venv/bin/python", env!("CARGO_MANIFEST_DIR")))
}

#[test]
fn synthetic_instances_add_no_dciodvfy_errors() {
    let written = write_all();
    let source_errors = dciodvfy_errors(&written.sources[0]);
    for path in &written.synthetic {
        let new_errors: Vec<String> = dciodvfy_errors(path)
            .into_iter()
            .filter(|e| !source_errors.contains(e))
            .collect();
        assert!(new_errors.is_empty(), "{}: {new_errors:#?}", path.display());
    }
}

#[test]
fn seg_passes_dciodvfy() {
    let written = write_all();
    let errors = dciodvfy_errors(&written.seg);
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn dcmtk_and_gdcm_read_every_output() {
    let written = write_all();
    for path in written.synthetic.iter().chain([&written.seg]) {
        let dcmdump = Command::new("dcmdump").arg("-q").arg(path).output().unwrap();
        assert!(
            dcmdump.status.success(),
            "dcmdump {}: {}",
            path.display(),
            String::from_utf8_lossy(&dcmdump.stderr)
        );
        let gdcm = Command::new("gdcmdump").arg(path).output().unwrap();
        assert!(
            gdcm.status.success(),
            "gdcmdump {}: {}",
            path.display(),
            String::from_utf8_lossy(&gdcm.stderr)
        );
    }
}

#[test]
fn pydicom_reads_the_provenance() {
    let written = write_all();
    let script = r#"
import sys, pydicom
src = pydicom.dcmread(sys.argv[1])
syn = pydicom.dcmread(sys.argv[2])
seg = pydicom.dcmread(sys.argv[3])
assert syn.SyntheticData == "YES", syn.SyntheticData
assert list(syn.ImageType) == ["DERIVED", "SECONDARY", "M", "ND"], syn.ImageType
assert syn.BurnedInAnnotation == "NO"
assert syn.SeriesDescription == "SYNTHETIC AX T1", syn.SeriesDescription
assert "ddim" in syn.DerivationDescription and "seed 42" in syn.DerivationDescription
assert syn.DerivationCodeSequence[0].CodeValue == "SYNTHD-INPAINT"
ref = syn.SourceImageSequence[0]
assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
assert syn.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
equipment = syn.ContributingEquipmentSequence[-1]
assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109100"
assert equipment.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Synthesizing Equipment"
assert equipment.Manufacturer == "synthd"
assert syn.AlgorithmName == "test-model"
block = syn.private_block(0x0029, "SYNTHD 1")
assert block[0x01].value == "ab" * 32
assert block[0x02].value == "brain-mri-inpaint"
assert block[0x04].value == "42"
assert syn.SOPInstanceUID != src.SOPInstanceUID and syn.SOPInstanceUID.startswith("2.25.")
assert syn.file_meta.MediaStorageSOPInstanceUID == syn.SOPInstanceUID
assert syn.StudyInstanceUID == src.StudyInstanceUID
assert (syn.BitsAllocated, syn.BitsStored, syn.PixelRepresentation) == (src.BitsAllocated, src.BitsStored, src.PixelRepresentation)
import numpy as np
a, b = src.pixel_array, syn.pixel_array
inside = b != a
assert inside.any()
assert seg.SegmentationType == "BINARY" and seg.NumberOfFrames == 3
frames = seg.pixel_array
assert frames.shape == (3, 32, 32)
assert not ((frames[0] == 0) & inside).any(), "every changed pixel lies inside the SEG mask"
assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == syn.SeriesInstanceUID
print("ok")
"#;
    let output = Command::new(python())
        .args(["-c", script])
        .arg(&written.sources[0])
        .arg(&written.synthetic[0])
        .arg(&written.seg)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn outputs_are_byte_identical_across_runs() {
    let first = write_all();
    let second = write_all();
    for (a, b) in first
        .synthetic
        .iter()
        .chain([&first.seg])
        .zip(second.synthetic.iter().chain([&second.seg]))
    {
        assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap(), "{}", a.display());
    }
}
