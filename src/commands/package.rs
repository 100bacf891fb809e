//! `synthd package-assets DIR` (hidden): the generated files the Debian
//! package ships (`[package.metadata.deb]` in Cargo.toml lists them), made
//! from the same definitions the binary uses, so they cannot drift: man
//! pages from the clap definitions (`clap_mangen`), shell completions
//! (`clap_complete`), the example `/etc/synthd/synthd.toml` and the example
//! pipelines with their model paths pointing at the packaged models.

use super::init::{config_text, model_line};
use super::init_system::{system_paths, PACKAGED_MODELS};
use super::{EXAMPLE_PIPELINES, REFERENCE_PIPELINES};
use anyhow::{Context, Result};
use clap_complete::Shell;
use std::fs;
use std::path::Path;

pub fn write(dir: &Path, mut command: clap::Command) -> Result<i32> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    let pipelines = dir.join("pipelines");
    let reference = dir.join("reference-pipelines");
    for folder in [&man, &completions, &pipelines, &reference] {
        fs::create_dir_all(folder).with_context(|| format!("package-assets: cannot create {}", folder.display()))?;
    }
    // synthd.1 and one page per subcommand (synthd-run.1, ...).
    clap_mangen::generate_to(command.clone(), &man).context("package-assets: man pages")?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command, "synthd", &completions)
            .with_context(|| format!("package-assets: {shell} completions"))?;
    }
    let config = dir.join("synthd.toml");
    fs::write(&config, config_text(&system_paths(), "the synthd package"))
        .with_context(|| format!("package-assets: cannot write {}", config.display()))?;
    // Enabled examples go to /etc/synthd/pipelines; all of them, plus the
    // reference-only ones, to /usr/share/synthd/pipelines.
    let enabled = EXAMPLE_PIPELINES.iter().map(|entry| (entry, true));
    for ((file_name, text), example) in enabled.chain(REFERENCE_PIPELINES.iter().map(|entry| (entry, false))) {
        let folders = if example {
            vec![&pipelines, &reference]
        } else {
            vec![&reference]
        };
        for folder in folders {
            let target = folder.join(file_name);
            fs::write(&target, packaged_pipeline_text(text))
                .with_context(|| format!("package-assets: cannot write {}", target.display()))?;
        }
    }
    println!(
        "wrote man pages, completions, synthd.toml and pipelines in {}",
        dir.display()
    );
    Ok(0)
}

/// An example pipeline whose model is the packaged copy.
fn packaged_pipeline_text(text: &str) -> String {
    match model_line(text) {
        Some(model) => {
            let name = Path::new(&model)
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or(model.clone());
            text.replacen(&format!("\"{model}\""), &format!("\"{PACKAGED_MODELS}/{name}\""), 1)
        }
        None => text.to_string(),
    }
}
