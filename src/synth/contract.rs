//! The model contract: what the ONNX graph must declare for its manifest
//! (docs/model-contract.md). Checked when an engine starts and by
//! `synthd validate`, so a model that disagrees with its manifest fails before
//! any study reaches it.

use super::error::SynthError;
use super::manifest::{self, Manifest, TimestepDtype};
use crate::runtime::RuntimeInfo;
use ort::session::Session;
use ort::value::{Outlet, TensorElementType};
use std::path::{Path, PathBuf};

pub const SAMPLE: &str = "sample";
pub const TIMESTEP: &str = "timestep";
pub const COND: &str = "cond";
pub const CLASS_LABELS: &str = "class_labels";

/// How the graph wants its timestep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestepInput {
    pub dtype: TimestepDtype,
    /// A rank-0 timestep shared by the whole batch instead of one per sample.
    pub scalar: bool,
}

/// The manifest for a model: the sidecar TOML, else the JSON in the ONNX
/// metadata key `synthd.manifest`.
pub fn find_manifest(model: &Path, session: Option<&Session>) -> Result<(Manifest, PathBuf), SynthError> {
    if let Some(found) = Manifest::load_sidecar(model)? {
        return Ok((found, manifest::sidecar_path(model)));
    }
    if let Some(json) = session
        .and_then(|s| s.metadata().ok())
        .and_then(|m| m.custom(manifest::METADATA_KEY))
    {
        return Ok((Manifest::from_json(model, &json)?, model.to_path_buf()));
    }
    Err(SynthError::Manifest {
        path: manifest::sidecar_path(model),
        reason: format!(
            "not found, and the model has no `{}` metadata; write the sidecar manifest described in docs/model-contract.md",
            manifest::METADATA_KEY
        ),
    })
}

/// Every way the graph's inputs and outputs disagree with the manifest.
pub fn differences(inputs: &[Outlet], outputs: &[Outlet], manifest: &Manifest) -> Vec<String> {
    let mut problems = Vec::new();
    let g = &manifest.geometry;
    let (h, w) = (g.height as i64, g.width as i64);
    let c = manifest.inputs.sample_channels as i64;
    let find = |name: &str| inputs.iter().find(|o| o.name() == name);
    let expect_tensor =
        |problems: &mut Vec<String>, what: &str, outlet: Option<&Outlet>, dims: &[Option<i64>], dtype| {
            let Some(outlet) = outlet else {
                problems.push(format!("the graph has no input `{what}`"));
                return;
            };
            check_tensor(problems, &format!("input `{what}`"), outlet, dims, dtype);
        };
    expect_tensor(
        &mut problems,
        SAMPLE,
        find(SAMPLE),
        &[None, Some(c), Some(h), Some(w)],
        TensorElementType::Float32,
    );
    let k = manifest.inputs.cond.len() as i64;
    if k > 0 {
        expect_tensor(
            &mut problems,
            COND,
            find(COND),
            &[None, Some(k), Some(h), Some(w)],
            TensorElementType::Float32,
        );
    } else if find(COND).is_some() {
        problems.push("the graph has a `cond` input but inputs.cond is empty".into());
    }
    let l = manifest.inputs.class_labels.len() as i64;
    if l > 0 {
        expect_tensor(
            &mut problems,
            CLASS_LABELS,
            find(CLASS_LABELS),
            &[None, Some(l)],
            TensorElementType::Float32,
        );
    } else if find(CLASS_LABELS).is_some() {
        problems.push("the graph has a `class_labels` input but inputs.class_labels is empty".into());
    }
    match find(TIMESTEP) {
        None => problems.push("the graph has no input `timestep`".into()),
        Some(outlet) => {
            let declared = outlet.dtype().tensor_type();
            let wanted = match manifest.inputs.timestep_dtype {
                TimestepDtype::Float32 => TensorElementType::Float32,
                TimestepDtype::Int64 => TensorElementType::Int64,
            };
            if declared != Some(wanted) {
                problems.push(format!(
                    "input `timestep` is {declared:?} but inputs.timestep_dtype says {:?}",
                    manifest.inputs.timestep_dtype
                ));
            }
            let rank = outlet.dtype().tensor_shape().map_or(0, |s| s.len());
            if rank > 1 {
                problems.push(format!("input `timestep` has rank {rank}; expected [N] or a scalar"));
            }
        }
    }
    for outlet in inputs {
        if ![SAMPLE, TIMESTEP, COND, CLASS_LABELS].contains(&outlet.name()) {
            problems.push(format!(
                "the graph has an input `{}` the contract does not know (expected sample, timestep, cond, class_labels)",
                outlet.name()
            ));
        }
    }
    match outputs {
        [output] => {
            let oc = manifest.output_channels() as i64;
            check_tensor(
                &mut problems,
                &format!("output `{}`", output.name()),
                output,
                &[None, Some(oc), Some(h), Some(w)],
                TensorElementType::Float32,
            );
        }
        _ => problems.push(format!("the graph has {} outputs; expected exactly one", outputs.len())),
    }
    problems
}

fn check_tensor(
    problems: &mut Vec<String>,
    what: &str,
    outlet: &Outlet,
    dims: &[Option<i64>],
    dtype: TensorElementType,
) {
    let declared = outlet.dtype().tensor_type();
    if declared != Some(dtype) {
        problems.push(format!("{what} is {declared:?}; expected {dtype:?}"));
    }
    let Some(shape) = outlet.dtype().tensor_shape() else {
        problems.push(format!("{what} is not a tensor"));
        return;
    };
    if shape.len() != dims.len() {
        problems.push(format!(
            "{what} has rank {} (shape {shape}); expected rank {}",
            shape.len(),
            dims.len()
        ));
        return;
    }
    for (axis, (&declared, expected)) in shape.iter().zip(dims).enumerate() {
        // Symbolic dimensions (-1) accept any size.
        if let Some(expected) = expected {
            if declared >= 0 && declared != *expected {
                problems.push(format!(
                    "{what} axis {axis} is {declared}; the manifest implies {expected}"
                ));
            }
        }
    }
}

/// The timestep input's dtype and rank as the graph declares them.
pub fn timestep_input(inputs: &[Outlet]) -> TimestepInput {
    let outlet = inputs.iter().find(|o| o.name() == TIMESTEP);
    let dtype = match outlet.and_then(|o| o.dtype().tensor_type()) {
        Some(TensorElementType::Int64) => TimestepDtype::Int64,
        _ => TimestepDtype::Float32,
    };
    let scalar = outlet
        .and_then(|o| o.dtype().tensor_shape())
        .is_some_and(|s| s.is_empty());
    TimestepInput { dtype, scalar }
}

/// `synthd validate`'s model check: the manifest parses, the file's sha256
/// matches it, and a CPU session's graph agrees with it.
pub fn validate_model(runtime: &RuntimeInfo, model: &Path) -> Result<Manifest, SynthError> {
    let session = Session::builder(&runtime.environment)
        .and_then(|mut b| b.commit_from_file(model))
        .map_err(|error| SynthError::ModelRead {
            path: model.to_path_buf(),
            reason: format!("ONNX Runtime cannot load it: {error}"),
        })?;
    let (manifest, manifest_path) = find_manifest(model, Some(&session))?;
    let mut problems = Vec::new();
    let actual = manifest::sha256_file(model)?;
    if actual != manifest.model.sha256.to_ascii_lowercase() {
        problems.push(format!(
            "sha256 of the file is {actual}, the manifest says {}",
            manifest.model.sha256
        ));
    }
    problems.extend(differences(session.inputs(), session.outputs(), &manifest));
    if problems.is_empty() {
        Ok(manifest)
    } else {
        Err(SynthError::ContractMismatch {
            model: model.to_path_buf(),
            manifest: manifest_path,
            differences: problems.join("; "),
        })
    }
}
