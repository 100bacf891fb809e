//! `synthd validate` on synthesis pipelines (the model is checked against its
//! manifest) and `synthd bench` (figures and the final JSON line), through the
//! real binary on the tiny test model.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn synthd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_synthd"))
        .args(args)
        .env(
            "ORT_DYLIB_PATH",
            root().join(".bootstrap/onnxruntime/libonnxruntime.so"),
        )
        .output()
        .unwrap()
}

#[test]
fn validate_accepts_a_model_that_matches_its_manifest_and_names_what_differs_otherwise() {
    let ok = synthd(&["validate", root().join("bench/tiny-cond.toml").to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("fixtures/models/tiny/tiny-cond.onnx"),
        dir.path().join("m.onnx"),
    )
    .unwrap();
    let manifest = std::fs::read_to_string(root().join("fixtures/models/tiny/tiny-cond.toml")).unwrap();
    std::fs::write(
        dir.path().join("m.toml"),
        manifest.replace("timestep_dtype = \"float32\"", "timestep_dtype = \"int64\""),
    )
    .unwrap();
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        "name = \"p\"\n[synth]\nmodel = \"m.onnx\"\nproviders = [\"cpu\"]\n",
    )
    .unwrap();
    let bad = synthd(&["validate", pipeline.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("p.toml"), "{stderr}");
    assert!(stderr.contains("m.onnx disagrees with its manifest"), "{stderr}");
    assert!(
        stderr.contains("input `timestep` is Some(Float32) but inputs.timestep_dtype says Int64"),
        "{stderr}"
    );
}

#[test]
fn bench_prints_figures_and_a_json_summary() {
    let out = synthd(&[
        "bench",
        "--pipeline",
        root().join("bench/tiny-cond.toml").to_str().unwrap(),
        "--steps",
        "3",
        "--batch",
        "2",
        "--slices",
        "3",
        "--threads",
        "1",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("provider: cpu"), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("step ")).count(), 3, "{stdout}");
    let json: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    for key in ["ort_seconds", "total_seconds", "overhead_ratio", "slices_per_second"] {
        assert!(json[key].as_f64().unwrap() > 0.0, "{key}: {json}");
    }
    assert_eq!(json["provider"], "cpu");
    assert_eq!(json["steps"], 3);
    assert_eq!(json["batch"], 2);
    assert_eq!(json["model_runs"], 2 * 3, "two batches (2 + 1) × three steps");
    assert!(json["ms_per_slice_step"].as_f64().unwrap() > 0.0, "{json}");
}

#[test]
fn bench_feeds_a_contract_model_its_planes_and_slots() {
    let out = synthd(&[
        "bench",
        "--pipeline",
        root().join("bench/tiny-contract.toml").to_str().unwrap(),
        "--steps",
        "2",
        "--batch",
        "2",
        "--slices",
        "2",
        "--threads",
        "1",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("conditioning: task lesion sequence T1 components [label:necrosis]"),
        "{stdout}"
    );
    let json: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(json["overhead_ratio"].as_f64().unwrap() > 0.0, "{json}");
}
