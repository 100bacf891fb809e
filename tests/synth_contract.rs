//! The issue-15 model contract on the tiny random contract model
//! (fixtures/models/tiny/tiny-contract.*: cond planes masked_image, mask,
//! label:necrosis, label:enhancing, label:edema; class_labels task:… and
//! seq:…): manifests naming planes or slots synthd does not know are refused
//! naming them, old manifests keep working, and the engine fills the label
//! planes and class-label slots from the request (real ONNX Runtime, CPU).

use std::path::{Path, PathBuf};
use synthd::config::pipeline::LoadedPipeline;
use synthd::synth::condition::{CondChannel, Sequence};
use synthd::synth::{Engine, EngineOptions, Manifest, SeriesRequest, SliceGeometry, SliceInput, SynthError};

fn tiny(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/models/tiny/tiny-{kind}.onnx"))
}

fn engine(model: &Path, extra: &str) -> Result<Engine, SynthError> {
    let text = format!(
        "name = \"t\"\n[synth]\nmodel = {:?}\nproviders = [\"cpu\"]\nsteps = 4\nbatch = 4\n{extra}\n",
        model.display().to_string()
    );
    let loaded = LoadedPipeline::parse(Path::new("/nonexistent/p.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    let runtime = synthd::runtime::init(None).expect("ONNX Runtime (run scripts/bootstrap-onnxruntime.sh)");
    Engine::new(
        runtime,
        model,
        &loaded.pipeline.synth.unwrap(),
        EngineOptions {
            intra_op_threads: 1,
            cache_dir: std::env::temp_dir().join("synthd-contract-test-cache"),
            lanes: 1,
        },
    )
}

/// A FAKE textured disc with a nested three-component lesion mask in the
/// middle: 1 (core) inside 2 (rim) inside 3 (oedema).
fn slices(count: usize) -> Vec<SliceInput> {
    let (rows, cols) = (32usize, 32usize);
    (0..count)
        .map(|z| {
            let mut values = vec![0.0f32; rows * cols];
            let mut mask = vec![0u8; rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    let d = ((r as f32 - 16.0).powi(2) + (c as f32 - 16.0).powi(2)).sqrt();
                    if d < 13.0 {
                        values[r * cols + c] =
                            500.0 + 80.0 * ((r as f32 * 0.6 + z as f32).sin() * (c as f32 * 0.4).cos());
                    }
                    mask[r * cols + c] = match d {
                        d if d < 2.5 => 1,
                        d if d < 4.5 => 2,
                        d if d < 7.0 => 3,
                        _ => 0,
                    };
                }
            }
            SliceInput {
                id: format!("1.2.826.0.1.3680043.10.999.15.{z}"),
                rows,
                cols,
                values,
                geometry: SliceGeometry::axial(z as f64 * 3.0, 7.5),
                mask: Some(mask),
            }
        })
        .collect()
}

fn components(names: &[&str]) -> Vec<CondChannel> {
    names
        .iter()
        .map(|n| CondChannel::try_from(n.to_string()).unwrap())
        .collect()
}

fn request(sequence: Option<Sequence>, names: &[&str]) -> SeriesRequest {
    SeriesRequest {
        slices: slices(3),
        variant: 0,
        seed: 15,
        sequence,
        components: components(names),
    }
}

fn bits(result: &synthd::synth::SeriesResult) -> Vec<Vec<u32>> {
    result
        .slices
        .iter()
        .map(|s| s.values.iter().map(|v| v.to_bits()).collect())
        .collect()
}

/// The lesion task with masks given by the caller (as a study's SEG gives them).
const LESION_TASK: &str = "task = \"lesion\"\n[synth.mask]\nsource = \"seg\"";

const LESION: [&str; 3] = ["label:necrosis", "label:enhancing", "label:edema"];

fn copy_with_manifest(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let model = dir.join("tiny-contract.onnx");
    std::fs::copy(tiny("contract"), &model).unwrap();
    let manifest = std::fs::read_to_string(tiny("contract").with_extension("toml")).unwrap();
    std::fs::write(dir.join("tiny-contract.toml"), edit(manifest)).unwrap();
    model
}

#[test]
fn the_contract_manifest_parses_with_its_planes_slots_and_codes() {
    let model = tiny("contract");
    let manifest = Manifest::load_sidecar(&model).unwrap().unwrap();
    let planes: Vec<String> = manifest.inputs.cond.iter().map(CondChannel::name).collect();
    assert_eq!(
        planes,
        [
            "masked_image",
            "mask",
            "label:necrosis",
            "label:enhancing",
            "label:edema"
        ]
    );
    let slots: Vec<String> = manifest.inputs.class_labels.iter().map(|s| s.name()).collect();
    assert_eq!(
        slots,
        [
            "task:healthy",
            "task:lesion",
            "seq:T1",
            "seq:T1c",
            "seq:T2",
            "seq:FLAIR"
        ]
    );
    let codes: Vec<(String, String)> = manifest
        .label_planes()
        .iter()
        .map(|l| (l.plane.name(), l.property_type.value.clone()))
        .collect();
    assert_eq!(
        codes,
        [
            ("label:necrosis".to_string(), "6574001".to_string()),
            ("label:enhancing".to_string(), "C113842".to_string()),
            ("label:edema".to_string(), "79654002".to_string()),
        ]
    );
    let runtime = synthd::runtime::init(None).unwrap();
    synthd::synth::contract::validate_model(runtime, &model).expect("the tiny contract model matches its manifest");
    // An old manifest (masked_image + mask, no slots) is still a valid contract.
    let old =
        Manifest::load_sidecar(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/models/tiny/tiny-cond.onnx"))
            .unwrap()
            .unwrap();
    assert!(old.inputs.class_labels.is_empty() && old.labels.is_empty());
}

#[test]
fn unknown_planes_slots_and_uncoded_labels_are_refused_at_start_up_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &str); 5] = [
        (
            "\"label:edema\"]",
            "\"label:edema\", \"edges\"]",
            "unknown cond plane `edges`",
        ),
        (
            "\"seq:FLAIR\"]",
            "\"seq:FLAIR\", \"seq:DWI\"]",
            "unknown class_labels slot `seq:DWI`",
        ),
        (
            "\"label:edema\"]",
            "\"label:edema\", \"label:cyst\"]",
            "`label:cyst` but no [[labels]] entry",
        ),
        (
            "supported = [\"T1\", \"T1c\", \"T2\", \"FLAIR\"]",
            "supported = [\"T1\", \"T1c\", \"T2\"]",
            "`seq:FLAIR` but sequences.supported does not list FLAIR",
        ),
        (
            "plane = \"label:necrosis\"",
            "plane = \"label:Necrosis\"",
            "unknown cond plane `label:Necrosis`",
        ),
    ];
    for (from, to, expected) in cases {
        let model = copy_with_manifest(dir.path(), |m| {
            assert!(m.contains(from), "{from}");
            m.replacen(from, to, 1)
        });
        let text = engine(&model, "").err().expect("refused").to_string();
        assert!(text.contains(expected), "expected {expected:?} in: {text}");
        assert!(text.contains("tiny-contract.toml"), "names the manifest: {text}");
    }
}

#[test]
fn class_label_slots_come_from_the_task_and_the_series_sequence() {
    let healthy = engine(&tiny("contract"), "").unwrap();
    let t1 = healthy.inpaint_series(&request(Some(Sequence::T1), &[])).unwrap();
    let t1_again = healthy.inpaint_series(&request(Some(Sequence::T1), &[])).unwrap();
    let flair = healthy.inpaint_series(&request(Some(Sequence::FLAIR), &[])).unwrap();
    assert!(bits(&t1) == bits(&t1_again), "deterministic");
    assert!(bits(&t1) != bits(&flair), "the seq:… slot reached the model");
    // A sequence the model has no slot for, or none at all: a clear error, never a guess.
    let no_sequence = healthy.inpaint_series(&request(None, &[])).unwrap_err();
    assert!(
        matches!(&no_sequence, SynthError::Conditioning(m) if m.contains("[sequences]")),
        "{no_sequence}"
    );
    // The task slot: the same request under task = "lesion" differs.
    let lesion = engine(&tiny("contract"), LESION_TASK).unwrap();
    let as_lesion = lesion.inpaint_series(&request(Some(Sequence::T1), &LESION)).unwrap();
    assert!(
        bits(&as_lesion) != bits(&t1),
        "the task:… slot or label planes reached the model"
    );
    // Pixels outside the mask are kept exactly, and the label map comes back.
    for (input, output) in slices(3).iter().zip(&as_lesion.slices) {
        assert_eq!(output.mask, *input.mask.as_ref().unwrap());
        for (i, &m) in output.mask.iter().enumerate() {
            if m == 0 {
                assert_eq!(output.values[i].to_bits(), input.values[i].to_bits());
            }
        }
    }
}

#[test]
fn label_planes_carry_each_component_and_are_zero_for_the_healthy_task() {
    let lesion = engine(&tiny("contract"), LESION_TASK).unwrap();
    let run = |names: &[&str]| {
        bits(
            &lesion
                .inpaint_series(&request(Some(Sequence::T1), names))
                .unwrap_or_else(|e| panic!("{e}")),
        )
    };
    let nested = run(&LESION);
    let swapped = run(&["label:edema", "label:enhancing", "label:necrosis"]);
    assert!(nested != swapped, "which plane a component fills reaches the model");
    // The healthy task ignores components: every label plane is 0.
    let healthy = engine(&tiny("contract"), "").unwrap();
    let plain = healthy.inpaint_series(&request(Some(Sequence::T1), &[])).unwrap();
    let with_components = healthy.inpaint_series(&request(Some(Sequence::T1), &LESION)).unwrap();
    assert!(bits(&plain) == bits(&with_components), "healthy label planes are all 0");
    // A component the model has no plane for, or none at all, is refused.
    let error = lesion
        .inpaint_series(&request(
            Some(Sequence::T1),
            &["label:cyst", "label:enhancing", "label:edema"],
        ))
        .unwrap_err();
    assert!(
        matches!(&error, SynthError::Conditioning(m) if m.contains("`label:cyst`") && m.contains("label:necrosis")),
        "{error}"
    );
    let error = lesion.inpaint_series(&request(Some(Sequence::T1), &[])).unwrap_err();
    assert!(matches!(error, SynthError::Conditioning(_)), "{error}");
    let error = lesion
        .inpaint_series(&request(Some(Sequence::T1), &LESION[..2]))
        .unwrap_err();
    assert!(
        matches!(&error, SynthError::BadSlice { reason, .. } if reason.contains("mask value 3")),
        "{error}"
    );
}

#[test]
fn a_lesion_pipeline_needs_a_model_with_label_planes() {
    let text = engine(&tiny("cond"), LESION_TASK).err().expect("refused").to_string();
    assert!(
        text.contains("synth.task") && text.contains("label:<name> cond planes") && text.contains("tiny-cond.onnx"),
        "{text}"
    );
}
