//! `synthd validate FILE...`: check daemon configs, pipelines and pixel signature files before
//! anything runs. Exit 0 when all are valid, 2 when any is not.

use crate::config::{self, Config, LoadedPipeline};
use std::path::PathBuf;

pub fn run(files: &[PathBuf]) -> i32 {
    let mut invalid = 0;
    for file in files {
        match check(file) {
            Ok(summary) => println!("ok: {}: {summary}", file.display()),
            Err(problems) => {
                invalid += 1;
                eprintln!("{problems}");
            }
        }
    }
    if invalid > 0 {
        eprintln!(
            "error: {invalid} of {} file(s) invalid; fix the lines above and run `synthd validate` again",
            files.len()
        );
        2
    } else {
        0
    }
}

fn check(file: &PathBuf) -> Result<String, config::Diagnostics> {
    let source = std::fs::read_to_string(file).map_err(|error| {
        config::Diagnostics(vec![config::Diagnostic::whole_file(
            file,
            format!("cannot read: {error}"),
        )])
    })?;
    if crate::deid::signatures::looks_like_signatures(&source) {
        let set = crate::deid::signatures::SignatureSet::parse(file, &source)?;
        Ok(format!("{} pixel signature(s)", set.signatures.len()))
    } else if config::looks_like_pipeline(&source) {
        let loaded = LoadedPipeline::parse(file, source)?;
        check_models(&[&loaded], None)?;
        let kind = if loaded.pipeline.synth.is_some() {
            "synthesis"
        } else {
            "de-identify and forward"
        };
        Ok(format!("pipeline {:?} ({kind})", loaded.name()))
    } else {
        let config = Config::parse(file, &source)?;
        if let Some(listen) = &config.metrics {
            listen
                .check_available()
                .map_err(|problem| config::Diagnostics(vec![problem]))?;
        }
        let pipelines: Vec<&LoadedPipeline> = config.pipelines.iter().collect();
        check_models(&pipelines, config.onnxruntime_library.as_deref())?;
        let names: Vec<&str> = config.pipelines.iter().map(LoadedPipeline::name).collect();
        Ok(format!(
            "daemon config with {} pipeline(s): {}",
            names.len(),
            names.join(", ")
        ))
    }
}

/// Checks each synthesis pipeline's model against its manifest (names, ranks,
/// static dims, dtypes, sha256) with a CPU session.
fn check_models(pipelines: &[&LoadedPipeline], library: Option<&std::path::Path>) -> Result<(), config::Diagnostics> {
    let mut problems = config::Diagnostics::default();
    for pipeline in pipelines {
        let Some(model) = pipeline.model_path().filter(|m| m.is_file()) else {
            continue;
        };
        let checked = crate::runtime::init(library)
            .map_err(|error| format!("cannot check model {} against its manifest: {error}", model.display()))
            .and_then(|runtime| {
                crate::synth::contract::validate_model(runtime, &model).map_err(|error| error.to_string())
            });
        match checked {
            Err(message) => problems.push(config::Diagnostic::whole_file(&pipeline.file, message)),
            Ok(manifest) => {
                for message in crate::output::series::check_pipeline(&pipeline.pipeline, &manifest) {
                    problems.push(config::Diagnostic::whole_file(
                        &pipeline.file,
                        format!("{message} (model {})", model.display()),
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
