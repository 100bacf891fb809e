//! `synthd run`: the daemon systemd starts next to a PACS.

use crate::config::Config;
use crate::daemon::{system, Daemon, DeidEngine, Options};
use crate::keyfile::SiteKey;
use crate::metrics;
use crate::net::Network;
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::{Arc, Mutex};

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
    // Bound before anything starts, so a taken address stops the start-up at its key.
    let listener = match &config.metrics {
        Some(listen) => {
            let listener = listen
                .bind()
                .map_err(|problem| anyhow::anyhow!("{problem}"))
                .context("run: cannot start the metrics listener")?;
            Some((listen.addr, listener))
        }
        None => None,
    };
    system::install_signal_handlers().context("run: cannot install signal handlers")?;
    let network = config.clone();
    let mut daemon = Daemon::start(config, key, Box::new(DeidEngine::build), Options::from_env())
        .with_context(|| format!("run: cannot start with {}", config_file.display()))?;
    if let Some((addr, listener)) = listener {
        metrics::serve(listener, metrics::Limits::default()).context("run: cannot start the metrics listener")?;
        if addr.ip().is_loopback() {
            tracing::info!(target: "metrics", %addr, "serving /metrics, /healthz, /readyz and the status page");
        } else {
            tracing::warn!(target: "metrics", %addr, "serving /metrics, /healthz, /readyz and the status page to the network: \
                 counts, keyed study ids, reason codes and pipeline names (no patient values); restrict access with a firewall");
        }
    }
    // Listening starts once the daemon is up (its inbox exists, crash
    // recovery done) and stops after it drained: what arrives meanwhile is
    // durable in the inbox for the next start. Dropping it aborts idle
    // associations and lets a half-received instance finish. A reload
    // applies `[dicom.listen]` and `[[destinations]]` (net/network.rs).
    let network = Network::start(&network).context("run")?;
    let network = Arc::new(Mutex::new(Some(network)));
    let reloaded = network.clone();
    daemon.on_reload(Box::new(move |config| {
        let mut network = reloaded.lock().unwrap_or_else(|e| e.into_inner());
        match network.as_mut() {
            Some(network) => network.reconfigure(config).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }));
    let ran = daemon.run();
    drop(network.lock().unwrap_or_else(|e| e.into_inner()).take());
    ran.context("run: the coordinator stopped")?;
    Ok(0)
}
