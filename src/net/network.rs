//! What `synthd run` runs of the network: the C-STORE SCP (`[dicom.listen]`)
//! and the exporter (`[[destinations]]`), started from the config and
//! changed by a `SIGHUP` reload. A reload either applies both sections or
//! neither: a new address that cannot be bound keeps the old listener and
//! the old destinations.

use super::{Exporter, Scp};
use crate::config::dicom::Listen;
use crate::config::Config;
use crate::ledger::LedgerError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot listen on {address}:{port} (dicom.listen): {source}")]
    Listen {
        address: String,
        port: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the send queue: {0}")]
    Ledger(#[from] LedgerError),
}

/// Dropping it stops listening first (a half-received instance is
/// finished), then the senders.
pub struct Network {
    inbox: PathBuf,
    scp: Option<Scp>,
    listen: Option<Listen>,
    exporter: Exporter,
}

impl Network {
    /// Listens and starts the senders; received instances go to the inbox
    /// of `config` (paths are read at start only).
    pub fn start(config: &Config) -> Result<Network, NetworkError> {
        let listen = config.raw.dicom.listen.clone();
        let scp = match &listen {
            Some(settings) => Some(Scp::start(settings, &config.paths.inbox).map_err(|e| listen_error(settings, e))?),
            None => None,
        };
        // Outputs of jobs finished while the exporter was down are queued when it starts.
        let exporter = Exporter::start(config)?;
        Ok(Network {
            inbox: config.paths.inbox.clone(),
            scp,
            listen,
            exporter,
        })
    }

    /// Applies a reloaded config's `[dicom.listen]` and `[[destinations]]`.
    pub fn reconfigure(&mut self, config: &Config) -> Result<(), NetworkError> {
        let previous = self.listen.clone();
        self.apply_listen(config.raw.dicom.listen.as_ref())?;
        if let Err(error) = self.exporter.reconfigure(config) {
            // Back to the old listener, so the refused reload changed nothing.
            if let Err(back) = self.apply_listen(previous.as_ref()) {
                tracing::error!(target: "net", error = %back, "cannot return to the previous dicom.listen");
            }
            return Err(error.into());
        }
        Ok(())
    }

    fn apply_listen(&mut self, wanted: Option<&Listen>) -> Result<(), NetworkError> {
        match (self.scp.as_mut(), wanted) {
            (Some(scp), Some(settings)) => scp.reconfigure(settings).map_err(|e| listen_error(settings, e))?,
            (None, Some(settings)) => {
                self.scp = Some(Scp::start(settings, &self.inbox).map_err(|e| listen_error(settings, e))?);
            }
            (Some(_), None) => {
                // Idle associations are aborted; one mid-instance finishes
                // it, on a thread of its own so the reload does not wait.
                let scp = self.scp.take();
                let _ = std::thread::Builder::new()
                    .name("scp-retire".into())
                    .spawn(move || drop(scp));
                tracing::info!(target: "net", "dicom.listen removed: no longer listening");
            }
            (None, None) => {}
        }
        self.listen = wanted.cloned();
        Ok(())
    }
}

fn listen_error(settings: &Listen, source: std::io::Error) -> NetworkError {
    NetworkError::Listen {
        address: settings.bind.get_ref().clone(),
        port: settings.port,
        source,
    }
}
