//! `synthd validate FILE...`: check daemon configs and pipelines before
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
    if config::looks_like_pipeline(&source) {
        let loaded = LoadedPipeline::parse(file, source)?;
        let kind = if loaded.pipeline.synth.is_some() {
            "synthesis"
        } else {
            "de-identify and forward"
        };
        Ok(format!("pipeline {:?} ({kind})", loaded.name()))
    } else {
        let config = Config::parse(file, &source)?;
        let names: Vec<&str> = config.pipelines.iter().map(LoadedPipeline::name).collect();
        Ok(format!(
            "daemon config with {} pipeline(s): {}",
            names.len(),
            names.join(", ")
        ))
    }
}
