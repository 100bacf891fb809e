//! Multi-series studies through `synthd process` with the tiny random
//! contract model (fixtures/models/tiny/tiny-contract.*), on FAKE studies
//! built here: a generated lesion lands on the same voxels in patient space
//! on a T1 and a FLAIR series of different geometry; each series' sequence
//! comes from `[sequences]` and a series no rule matches is skipped with its
//! reason; a study's SEG maps onto the model's planes by code, and a SEG
//! whose codes match no plane is quarantined; the fidelity check flags or
//! quarantines.

mod common;

use common::{files_under, repo, synthd};
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use synthd::keyfile::SiteKey;
use synthd::output::{self, seg, synthetic};

const STUDY: &str = "1.2.826.0.1.3680043.10.999.15";

fn put(object: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    object.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

fn put_strs(object: &mut InMemDicomObject, tag: Tag, vr: VR, values: &[String]) {
    object.put(DataElement::new(tag, vr, PrimitiveValue::Strs(values.to_vec().into())));
}

/// One series of the FAKE study: axial slices of a bright ball (the "brain",
/// radius 40 mm around the origin) with texture, `n` × `n` pixels of
/// `spacing` mm from (−49, −49), slices every `gap` mm from z = −40.
struct SeriesSpec {
    number: u32,
    description: &'static str,
    contrast: bool,
    n: usize,
    spacing: f64,
    gap: f64,
    slices: usize,
}

fn slice(spec: &SeriesSpec, index: usize) -> DefaultDicomObject {
    let series = format!("{STUDY}.{}", spec.number);
    let sop = format!("{series}.{}", index + 1);
    let z = -40.0 + index as f64 * spec.gap;
    let mut o = InMemDicomObject::new_empty();
    put(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100");
    put(&mut o, tags::SOP_CLASS_UID, VR::UI, uids::MR_IMAGE_STORAGE);
    put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, &sop);
    put(&mut o, tags::STUDY_DATE, VR::DA, "20240102");
    put(&mut o, tags::STUDY_TIME, VR::TM, "101500");
    put(&mut o, tags::MODALITY, VR::CS, "MR");
    put(&mut o, tags::SERIES_DESCRIPTION, VR::LO, spec.description);
    put(&mut o, tags::PATIENT_NAME, VR::PN, "FAKE^PATIENT");
    put(&mut o, tags::PATIENT_ID, VR::LO, "FAKE-15");
    put(&mut o, tags::SCANNING_SEQUENCE, VR::CS, "SE");
    if spec.contrast {
        put(&mut o, tags::CONTRAST_BOLUS_AGENT, VR::LO, "GADOLINIUM");
    }
    put(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, STUDY);
    put(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, &series);
    put(&mut o, tags::SERIES_NUMBER, VR::IS, &spec.number.to_string());
    put(&mut o, tags::INSTANCE_NUMBER, VR::IS, &(index + 1).to_string());
    put_strs(
        &mut o,
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        &["-49".into(), "-49".into(), z.to_string()],
    );
    put_strs(
        &mut o,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        &["1", "0", "0", "0", "1", "0"].map(String::from),
    );
    put(&mut o, tags::FRAME_OF_REFERENCE_UID, VR::UI, &format!("{STUDY}.9"));
    o.put(DataElement::new(
        tags::SAMPLES_PER_PIXEL,
        VR::US,
        PrimitiveValue::from(1u16),
    ));
    put(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    o.put(DataElement::new(
        tags::ROWS,
        VR::US,
        PrimitiveValue::from(spec.n as u16),
    ));
    o.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(spec.n as u16),
    ));
    put_strs(
        &mut o,
        tags::PIXEL_SPACING,
        VR::DS,
        &[spec.spacing.to_string(), spec.spacing.to_string()],
    );
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
    let values: Vec<u16> = (0..spec.n * spec.n)
        .map(|i| {
            let (x, y) = (
                -49.0 + (i % spec.n) as f64 * spec.spacing,
                -49.0 + (i / spec.n) as f64 * spec.spacing,
            );
            if x * x + y * y + z * z < 40.0 * 40.0 {
                (1500.0 + 300.0 * (x * 0.2).sin() * (y * 0.15 + z * 0.1).cos()) as u16
            } else {
                0
            }
        })
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

const T1: SeriesSpec = SeriesSpec {
    number: 1,
    description: "AX T1",
    contrast: false,
    n: 50,
    spacing: 2.0,
    gap: 4.0,
    slices: 21,
};
/// Every FLAIR pixel centre is also a T1 pixel centre (twice the spacing, every other slice).
const FLAIR: SeriesSpec = SeriesSpec {
    number: 2,
    description: "AX T2 FLAIR",
    contrast: false,
    n: 25,
    spacing: 4.0,
    gap: 8.0,
    slices: 11,
};
const DWI: SeriesSpec = SeriesSpec {
    number: 3,
    description: "DWI B1000",
    contrast: false,
    n: 25,
    spacing: 4.0,
    gap: 8.0,
    slices: 3,
};

fn write_series(dir: &Path, spec: &SeriesSpec) -> Vec<DefaultDicomObject> {
    let objects: Vec<DefaultDicomObject> = (0..spec.slices).map(|i| slice(spec, i)).collect();
    for (i, o) in objects.iter().enumerate() {
        o.write_to_file(dir.join(format!("s{}-{i}.dcm", spec.number))).unwrap();
    }
    objects
}

/// A SEG of `series` with nested discs (1 inside 2 inside 3) around (0, 0)
/// on the slices near z = 0, its segments coded by `codes` (scheme, value).
fn write_seg(dir: &Path, series: &[DefaultDicomObject], codes: &[(&str, &str)]) {
    let maps: Vec<Vec<u8>> = series
        .iter()
        .enumerate()
        .map(|(index, _)| {
            let z = -40.0 + index as f64 * T1.gap;
            (0..T1.n * T1.n)
                .map(|i| {
                    let (x, y) = (-49.0 + (i % T1.n) as f64 * 2.0, -49.0 + (i / T1.n) as f64 * 2.0);
                    let d = (x * x + y * y + z * z).sqrt();
                    match d {
                        d if d < 4.0 => 1,
                        d if d < 7.0 => 2,
                        d if d < 12.0 => 3,
                        _ => 0,
                    }
                })
                .collect()
        })
        .collect();
    let segments: Vec<seg::SegmentMeaning> = codes
        .iter()
        .map(|(scheme, value)| seg::SegmentMeaning {
            label: format!("finding {value}"),
            category: (
                "49755003".into(),
                "SCT".into(),
                "Morphologically Altered Structure".into(),
            ),
            property_type: (value.to_string(), scheme.to_string(), "Finding".into()),
        })
        .collect();
    let frames: Vec<(&DefaultDicomObject, &[u8])> = series.iter().zip(&maps).map(|(o, m)| (o, m.as_slice())).collect();
    let provenance = synthetic::Provenance {
        pipeline_name: "annotation".into(),
        pipeline_sha256: "00".repeat(32),
        model_name: "reader".into(),
        model_version: "1".into(),
        model_sha256: "00".repeat(32),
        sampler: "none".into(),
        steps: 0,
        seed: 0,
        variant: 0,
        mask_id: "manual".into(),
        keep_descriptors: true,
    };
    let seg = seg::build_seg(
        &SiteKey::from_bytes([9; 32]),
        &frames,
        &segments,
        &provenance,
        "annotation",
    )
    .unwrap()
    .unwrap();
    seg.write_to_file(dir.join("seg.dcm")).unwrap();
}

fn pipeline(dir: &Path, synth_extra: &str) -> PathBuf {
    let path = dir.join("p.toml");
    let text = format!(
        r#"name = "contract-test"
[match]
modality = ["MR"]
[deid]
options = ["retain-longitudinal-modified-dates", "clean-descriptors"]
[synth]
model = "{model}"
sampler = "ddim"
timestep_spacing = "trailing"
steps = 3
seed = 5
batch = 8
providers = ["cpu"]
{synth_extra}
[sequences.FLAIR]
series_description = ["*FLAIR*"]
[sequences.T1c]
series_description = ["*T1*"]
contrast = true
[sequences.T1]
series_description = ["*T1*"]
contrast = false
[output]
preview = true
csv = true
"#,
        model = repo("fixtures/models/tiny/tiny-contract.onnx").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

const LESION_ADD: &str = r#"task = "lesion"
[synth.lesion]
count = 1
irregularity = 0.3
components = [
  { plane = "label:necrosis", size_mm = [8.0, 10.0] },
  { plane = "label:enhancing", size_mm = [3.0, 4.0] },
  { plane = "label:edema", size_mm = [4.0, 6.0] },
]"#;

struct Run {
    code: Option<i32>,
    stdout: String,
    output: PathBuf,
    quarantine: PathBuf,
    _dir: tempfile::TempDir,
}

fn process(build: impl Fn(&Path), synth_extra: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    build(&input);
    // A fixed key: UIDs, and so the study's lesion seed, are the same every run.
    let key = dir.path().join("site.key");
    std::fs::write(&key, [15u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let pipeline = pipeline(dir.path(), synth_extra);
    let output = dir.path().join("out");
    let result = synthd(&[
        "process",
        "--pipeline",
        pipeline.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    let stdout = format!(
        "{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    Run {
        code: result.status.code(),
        stdout,
        quarantine: dir.path().join("out-quarantine"),
        output,
        _dir: dir,
    }
}

fn manifest(output: &Path) -> Vec<serde_json::Value> {
    let path = files_under(output)
        .into_iter()
        .find(|p| p.ends_with("manifest.jsonl"))
        .expect("manifest.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn text(object: &InMemDicomObject, tag: Tag) -> String {
    object
        .get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .unwrap_or_default()
}

fn items(object: &InMemDicomObject, tag: Tag) -> Vec<InMemDicomObject> {
    object
        .get(tag)
        .and_then(|e| e.items())
        .map(|i| i.to_vec())
        .unwrap_or_default()
}

/// A written SEG as label maps keyed by slice z (mm × 10), with its segments' type codes.
fn read_seg(path: &Path) -> (Vec<String>, BTreeMap<i64, Vec<u8>>) {
    let seg = dicom_object::open_file(path).unwrap();
    let codes = items(&seg, tags::SEGMENT_SEQUENCE)
        .iter()
        .map(|s| {
            let code = &items(s, tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE)[0];
            format!(
                "{} {}",
                text(code, tags::CODING_SCHEME_DESIGNATOR),
                text(code, tags::CODE_VALUE)
            )
        })
        .collect();
    let rows = seg.get(tags::ROWS).unwrap().to_int::<usize>().unwrap();
    let cols = seg.get(tags::COLUMNS).unwrap().to_int::<usize>().unwrap();
    let bits = seg.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap().to_vec();
    let mut maps: BTreeMap<i64, Vec<u8>> = BTreeMap::new();
    for (frame, group) in items(&seg, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .iter()
        .enumerate()
    {
        let segment = items(group, tags::SEGMENT_IDENTIFICATION_SEQUENCE)[0]
            .get(tags::REFERENCED_SEGMENT_NUMBER)
            .unwrap()
            .to_int::<u8>()
            .unwrap();
        let position = items(group, tags::PLANE_POSITION_SEQUENCE)[0]
            .get(tags::IMAGE_POSITION_PATIENT)
            .unwrap()
            .to_multi_float64()
            .unwrap();
        let map = maps
            .entry((position[2] * 10.0).round() as i64)
            .or_insert_with(|| vec![0; rows * cols]);
        for (pixel, cell) in map.iter_mut().enumerate() {
            let bit = frame * rows * cols + pixel;
            if bits[bit / 8] >> (bit % 8) & 1 == 1 {
                assert_eq!(*cell, 0, "components are exclusive");
                *cell = segment;
            }
        }
    }
    (codes, maps)
}

#[test]
fn a_generated_lesion_lands_on_the_same_voxels_of_t1_and_flair() {
    let run = process(
        |dir| {
            write_series(dir, &T1);
            write_series(dir, &FLAIR);
            write_series(dir, &DWI);
        },
        LESION_ADD,
    );
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    assert!(run.stdout.contains("2 synthetic"), "{}", run.stdout);
    assert!(
        run.stdout.contains("1 not synthesized")
            && run.stdout.contains("matches none of the pipeline's [sequences] rules"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("DWI"),
        "no descriptor value in the summary: {}",
        run.stdout
    );
    let entries = manifest(&run.output);
    let sequences: std::collections::BTreeSet<String> = entries
        .iter()
        .filter(|e| e["kind"] == "synthetic")
        .map(|e| e["sequence"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sequences, ["FLAIR", "T1"].map(String::from).into());
    let skipped: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["kind"] == "source" && e["not_synthesized"].is_string())
        .collect();
    assert_eq!(skipped.len(), DWI.slices, "the DWI series' rows say why");
    for e in entries.iter().filter(|e| e["kind"] == "synthetic") {
        assert!(e["qc_pass"].as_bool().unwrap(), "{e}");
        if e["mask_voxels"].as_u64().unwrap() > 0 {
            assert_eq!(
                e["qc"]["reference"], "none",
                "a lesion fill is measured, not judged: {e}"
            );
        } else {
            assert!(e["qc"].is_null(), "no mask, no numbers: {e}");
        }
    }
    // One SEG per synthetic series, a segment per component with its codes.
    let mut by_sequence = BTreeMap::new();
    for e in entries.iter().filter(|e| e["kind"] == "seg") {
        let (codes, maps) = read_seg(
            &run.output
                .join(study_dir(&run.output))
                .join(e["path"].as_str().unwrap()),
        );
        assert_eq!(codes, ["SCT 6574001", "NCIt C113842", "SCT 79654002"]);
        by_sequence.insert(e["sequence"].as_str().unwrap().to_string(), maps);
    }
    let (t1, flair) = (&by_sequence["T1"], &by_sequence["FLAIR"]);
    // Every FLAIR voxel centre is a T1 voxel centre: compare them all, lesion or not.
    let mut shared = [0usize; 4];
    let empty = vec![0u8; T1.n * T1.n];
    for i in 0..FLAIR.slices {
        let z = ((-40.0 + i as f64 * FLAIR.gap) * 10.0).round() as i64;
        let (t1_map, flair_map) = (t1.get(&z).unwrap_or(&empty), flair.get(&z).unwrap_or(&empty));
        for r in 0..FLAIR.n {
            for c in 0..FLAIR.n {
                let (a, b) = (t1_map[2 * r * T1.n + 2 * c], flair_map[r * FLAIR.n + c]);
                assert_eq!(a, b, "z {z}: T1 and FLAIR disagree at FLAIR pixel ({r}, {c})");
                shared[b as usize] += 1;
            }
        }
    }
    assert!(
        shared[3] > 0 && shared[1] + shared[2] > 0,
        "every component on shared voxels: {shared:?}"
    );
}

fn study_dir(output: &Path) -> PathBuf {
    let manifest = files_under(output)
        .into_iter()
        .find(|p| p.ends_with("manifest.jsonl"))
        .unwrap();
    manifest.parent().unwrap().strip_prefix(output).unwrap().to_path_buf()
}

const CODES: [(&str, &str); 3] = [("SCT", "6574001"), ("NCIt", "C113842"), ("SCT", "79654002")];

#[test]
fn a_study_seg_maps_onto_planes_by_code_and_unknown_codes_are_quarantined() {
    let remove = "[synth.mask]\nsource = \"seg\"\n";
    // Segments listed in another order than the model's planes: codes decide.
    let reordered = [CODES[2], CODES[0], CODES[1]];
    let run = process(
        |dir| {
            let t1 = write_series(dir, &T1);
            write_seg(dir, &t1, &reordered);
        },
        remove,
    );
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    let entries = manifest(&run.output);
    let synthetic: Vec<&serde_json::Value> = entries.iter().filter(|e| e["kind"] == "synthetic").collect();
    assert_eq!(synthetic.len(), T1.slices);
    let painted: u64 = synthetic.iter().map(|e| e["mask_voxels"].as_u64().unwrap()).sum();
    assert!(painted > 50, "{painted}");
    for e in &synthetic {
        if e["mask_voxels"].as_u64().unwrap() > 0 {
            assert_eq!(
                e["qc"]["reference"], "ring",
                "healthy fill over a lesion is judged against its ring"
            );
            assert!(e["qc"]["ring_mean"].as_f64().is_some(), "{e}");
        }
    }

    // A SEG whose segment codes match no plane: quarantined, never a binary mask.
    let run = process(
        |dir| {
            let t1 = write_series(dir, &T1);
            write_seg(dir, &t1, &[CODES[0], ("SCT", "52988006"), CODES[2]]);
        },
        remove,
    );
    assert_eq!(run.code, Some(3), "{}", run.stdout);
    let entries = manifest(&run.output);
    assert!(entries.iter().all(|e| e["kind"] == "source"), "nothing synthesized");
    let reason = files_under(&run.quarantine)
        .into_iter()
        .find(|p| p.ends_with("reason.json"))
        .expect("a reason.json");
    let reason: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(reason).unwrap()).unwrap();
    assert_eq!(reason["code"], "seg-codes-unmatched");
    let message = reason["message"].as_str().unwrap();
    assert!(
        message.contains("segment 2 (SCT 52988006)") && message.contains("label:edema = SCT 79654002"),
        "{message}"
    );
}

#[test]
fn the_fidelity_check_flags_or_quarantines_a_biased_fill() {
    // The random tiny model fills with noise: far from the tissue it replaces.
    let run = process(
        |dir| {
            write_series(dir, &T1);
        },
        "[synth.mask]\ndiameter_mm = [20.0, 30.0]\n[synth.qc]\nmax_fill_bias = 0.01\n",
    );
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    assert!(run.stdout.contains("(1 flagged by QC)"), "{}", run.stdout);
    let entries = manifest(&run.output);
    let judged: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["kind"] == "synthetic" && e["qc"].is_object())
        .collect();
    assert!(!judged.is_empty());
    for e in &judged {
        let qc = &e["qc"];
        assert_eq!(qc["reference"], "original", "healthy over healthy: {e}");
        for field in ["fill_mean", "fill_std", "original_mean", "original_std", "fill_bias"] {
            assert!(qc[field].is_number(), "{field} in {qc}");
        }
    }
    assert!(judged.iter().any(|e| e["qc_pass"] == false));
    let preview = files_under(&run.output)
        .into_iter()
        .find(|p| p.ends_with("preview.png"))
        .expect("the flagged series is written with its preview");
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(preview).unwrap()));
    let info = decoder.read_info().unwrap().info().clone();
    assert!(
        (info.height + 2) % (T1.n as u32 + 2) != 0,
        "the preview has a QC text strip: {}",
        info.height
    );

    let run = process(
        |dir| {
            write_series(dir, &T1);
        },
        "[synth.mask]\ndiameter_mm = [20.0, 30.0]\n[synth.qc]\nmax_fill_bias = 0.01\non_fail = \"quarantine\"\n",
    );
    assert_eq!(run.code, Some(3), "{}", run.stdout);
    assert!(manifest(&run.output).iter().all(|e| e["kind"] == "source"));
    let reason = files_under(&run.quarantine)
        .into_iter()
        .find(|p| p.ends_with("reason.json"))
        .expect("a reason.json");
    let reason: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(reason).unwrap()).unwrap();
    assert_eq!(reason["code"], "synthesis-qc-failed");
    assert!(reason["message"].as_str().unwrap().contains(" bias "), "{reason}");
}

#[test]
fn validate_refuses_a_pipeline_its_contract_model_cannot_serve() {
    let dir = tempfile::tempdir().unwrap();
    let model = repo("fixtures/models/tiny/tiny-contract.onnx");
    let check = |name: &str, body: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        let text = format!(
            "name = \"{name}\"\n[deid]\noptions = [\"clean-descriptors\"]\n[synth]\nmodel = \"{}\"\nproviders = [\"cpu\"]\n{body}",
            model.display()
        );
        std::fs::write(&path, text).unwrap();
        let output = synthd(&["validate", path.to_str().unwrap()]);
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = check("no-sequences", "");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("no [sequences] table") && stderr.contains("seq:FLAIR"),
        "{stderr}"
    );
    let (code, stderr) = check(
        "by-label",
        "[synth.mask]\nsource = \"seg\"\nsegment_label = \"lesion\"\n[sequences.T1]\nscanning_sequence = [\"SE\"]\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("map onto them by their Segmented Property Type code"),
        "{stderr}"
    );
    let (code, stderr) = check(
        "bad-component",
        "task = \"lesion\"\n[synth.lesion]\ncomponents = [{ plane = \"label:cyst\", size_mm = [4.0, 8.0] }]\n\
         [sequences.T1]\nscanning_sequence = [\"SE\"]\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("`label:cyst` is not a label plane of the model"),
        "{stderr}"
    );
    let (code, stderr) = check(
        "fine",
        &format!("{LESION_ADD}\n[sequences.T1]\nscanning_sequence = [\"SE\"]\n"),
    );
    assert_eq!(code, Some(0), "{stderr}");
}
