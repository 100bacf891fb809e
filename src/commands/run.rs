//! `synthd run`: the daemon systemd starts next to a PACS.

use crate::config::Config;
use crate::daemon::{system, Daemon, DeidEngine, Options};
use crate::keyfile::SiteKey;
use anyhow::{Context, Result};
use std::path::Path;

pub fn run(config_file: &Path, allow_root: bool) -> Result<i32> {
    if system::running_as_root() && !allow_root {
        eprintln!(
            "error: synthd run refuses to run as root: it holds the only copy of studies and should run as the \
             synthd user (see systemd/synthd.service); pass --allow-root to override"
        );
        return Ok(2);
    }
    let config = Config::load(config_file)
        .map_err(|problems| anyhow::anyhow!("{problems}"))
        .with_context(|| format!("run: invalid config {}", config_file.display()))?;
    let key = SiteKey::read(&config.key_file)
        .map_err(anyhow::Error::msg)
        .context("run: key file")?;
    system::install_signal_handlers().context("run: cannot install signal handlers")?;
    let mut daemon = Daemon::start(config, key, Box::new(DeidEngine::build), Options::from_env())
        .with_context(|| format!("run: cannot start with {}", config_file.display()))?;
    daemon.run().context("run: the coordinator stopped")?;
    Ok(0)
}
