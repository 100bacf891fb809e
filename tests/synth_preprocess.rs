//! synthd's preprocessing against the demo model's own training code:
//! fixtures/models/preprocess-vectors.json holds what
//! fixtures/models/train/common.py (percentile map, `to_model_grid`) makes of
//! a demo slice and of an anisotropic formula image, written by
//! fixtures/models/train/make_preprocess_vectors.py. The model is only as
//! good as the match between what it was trained on and what it is fed, so
//! the Rust tensors must agree within 1e-4 (model units, range [−1, 1]).

use serde::Deserialize;
use std::path::Path;
use synthd::output::pixels::{self, PixelFormat};
use synthd::synth::manifest::Manifest;
use synthd::synth::tensor::{self, Placement};

#[derive(Deserialize)]
struct Vectors {
    demo: Demo,
    anisotropic: Anisotropic,
}

#[derive(Deserialize)]
struct Demo {
    file: String,
    lower: f32,
    upper: f32,
    pixel_spacing_mm: [f64; 2],
    grid: [usize; 2],
    values: Vec<f32>,
}

#[derive(Deserialize)]
struct Anisotropic {
    rows: usize,
    cols: usize,
    pixel_spacing_mm: [f64; 2],
    grid: [usize; 2],
    values: Vec<f32>,
}

const TOLERANCE: f32 = 1e-4;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn vectors() -> Vectors {
    let path = root().join("fixtures/models/preprocess-vectors.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Real-world values of a DICOM file, as the output stage hands them to the engine.
fn real_values(path: &Path) -> (usize, usize, Vec<f32>) {
    let object = dicom_object::open_file(path).unwrap();
    let format = PixelFormat::of(&object).unwrap();
    let stored = pixels::stored_values(&object, &format).unwrap();
    (
        format.rows,
        format.columns,
        stored.iter().map(|&v| format.to_real(v)).collect(),
    )
}

/// Asserts the grids agree within TOLERANCE, naming the worst pixel.
fn assert_grids_agree(got: &[f32], want: &[f32], columns: usize) {
    assert_eq!(got.len(), want.len());
    let (worst, at) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0.0, 0), |(w, wi), (i, d)| if d > w { (d, i) } else { (w, wi) });
    assert!(
        worst <= TOLERANCE,
        "grid pixel ({}, {}): Rust {} vs training code {} (|Δ| = {worst})",
        at / columns,
        at % columns,
        got[at],
        want[at]
    );
}

#[test]
fn demo_slice_matches_the_training_preprocessing() {
    let v = vectors().demo;
    let manifest = Manifest::load_sidecar(&root().join("fixtures/models/brain-inpaint-96.onnx"))
        .unwrap()
        .expect("the demo model has a sidecar manifest");
    assert_eq!(
        [manifest.geometry.height as usize, manifest.geometry.width as usize],
        v.grid
    );
    // Volume scope: statistics over the whole demo series.
    let mut series: Vec<Vec<f32>> = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(root().join("fixtures/dicom/demo"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("MR"))
        .collect();
    names.sort();
    for path in &names {
        series.push(real_values(path).2);
    }
    let views: Vec<&[f32]> = series.iter().map(Vec::as_slice).collect();
    let norm = tensor::normalizations(&manifest.intensity, &views)[0];
    assert_eq!((norm.lower, norm.upper), (v.lower, v.upper), "series percentiles");

    let (rows, cols, values) = real_values(&root().join(&v.file));
    let model_units: Vec<f32> = values.iter().map(|&x| norm.forward(x)).collect();
    let placement = Placement::fit(rows, cols, v.pixel_spacing_mm, v.grid[0], v.grid[1]);
    let grid = placement.to_grid(&model_units, norm.range[0]);
    assert_grids_agree(&grid, &v.values, v.grid[1]);
}

#[test]
fn anisotropic_pixels_match_the_training_preprocessing() {
    let v = vectors().anisotropic;
    let image: Vec<f32> = (0..v.rows * v.cols)
        .map(|i| {
            let (r, c) = ((i / v.cols) as f64, (i % v.cols) as f64);
            ((0.3 * r).sin() * (0.2 * c).cos() + 0.01 * r) as f32
        })
        .collect();
    let placement = Placement::fit(v.rows, v.cols, v.pixel_spacing_mm, v.grid[0], v.grid[1]);
    let grid = placement.to_grid(&image, -1.0);
    assert_grids_agree(&grid, &v.values, v.grid[1]);
}
