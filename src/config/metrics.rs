//! `[metrics]`: where the Prometheus endpoint and status page listen.
//!
//! Off when the table is absent; `listen` defaults to loopback. A
//! non-loopback address exposes counts, reason codes, keyed study ids and
//! pipeline names (never a patient value) to whoever can reach it, so it
//! must be written out explicitly (docs/metrics.md).

use super::diagnostic::Diagnostic;
use serde::Deserialize;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// The address used when `[metrics]` is present without `listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// `IP:PORT`, e.g. "127.0.0.1:9464" or "[::1]:9464".
    pub listen: Option<Spanned<String>>,
}

/// A parsed `metrics.listen`, with where it was written (for start-up errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsListen {
    pub addr: SocketAddr,
    /// The key's location: a diagnostic without its message.
    at: Diagnostic,
}

impl MetricsListen {
    /// Parses the `[metrics]` table; a malformed address is a diagnostic at its value.
    pub fn parse(file: &Path, source: &str, settings: &MetricsSettings) -> Result<MetricsListen, Diagnostic> {
        let (text, at) = match &settings.listen {
            Some(listen) => (
                listen.get_ref().as_str(),
                Diagnostic::at_span(file, source, listen.span(), ""),
            ),
            None => (DEFAULT_LISTEN, metrics_table_at(file, source)),
        };
        let addr: SocketAddr = text.trim().parse().map_err(|_| {
            with_message(
                &at,
                format!(
                    "{text:?} is not an IP:PORT address; expected e.g. \"{DEFAULT_LISTEN}\" (loopback) or \
                 \"0.0.0.0:9464\" to expose metrics and the status page to the network (no host names)"
                ),
            )
        })?;
        Ok(MetricsListen { addr, at })
    }

    /// A problem with this address, located at its key.
    pub fn problem(&self, message: impl Into<String>) -> Diagnostic {
        with_message(&self.at, message)
    }

    /// Binds the address; a taken or forbidden one is a diagnostic at its key.
    pub fn bind(&self) -> Result<TcpListener, Diagnostic> {
        TcpListener::bind(self.addr).map_err(|error| {
            let hint = match error.kind() {
                std::io::ErrorKind::AddrInUse => "another program listens there; choose a free port",
                std::io::ErrorKind::AddrNotAvailable => "no interface of this host has that address",
                std::io::ErrorKind::PermissionDenied => "ports below 1024 need privileges; choose 1024 or above",
                _ => "choose another address",
            };
            self.problem(format!("cannot listen on {}: {error}; {hint}", self.addr))
        })
    }

    /// For `synthd validate`: whether the address can be listened on. One
    /// held by a running synthd (it answers /healthz as synthd) is fine:
    /// that is the daemon this config is checked for.
    pub fn check_available(&self) -> Result<(), Diagnostic> {
        match self.bind() {
            Ok(_listener) => Ok(()),
            Err(_) if held_by_synthd(self.addr) => Ok(()),
            Err(problem) => Err(problem),
        }
    }
}

fn with_message(at: &Diagnostic, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        message: message.into(),
        ..at.clone()
    }
}

/// The `[metrics]` header's location, for a default address.
fn metrics_table_at(file: &Path, source: &str) -> Diagnostic {
    // The table's own header, not a commented-out one.
    let mut offset = 0;
    for line in source.split_inclusive('\n') {
        if line.trim_start().starts_with("[metrics]") {
            offset += line.len() - line.trim_start().len();
            break;
        }
        offset += line.len();
    }
    let offset = offset.min(source.len());
    Diagnostic::at_span(file, source, offset..offset, "")
}

/// Whether whatever listens on `addr` answers /healthz as synthd does.
fn held_by_synthd(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let timeout = Duration::from_millis(500);
    let Ok(mut stream) = TcpStream::connect_timeout(&loopback_for(addr), timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    if stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: synthd\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 1024];
    let n = stream.read(&mut head).unwrap_or(0);
    String::from_utf8_lossy(&head[..n])
        .to_ascii_lowercase()
        .contains("\r\nserver: synthd/")
}

/// A wildcard address is reached through loopback.
fn loopback_for(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(source: &str) -> Result<MetricsListen, Diagnostic> {
        // Spans come from parsing the whole source.
        #[derive(Deserialize)]
        struct Whole {
            metrics: MetricsSettings,
        }
        let whole: Whole = toml::from_str(source).unwrap();
        MetricsListen::parse(Path::new("s.toml"), source, &whole.metrics)
    }

    #[test]
    fn a_malformed_address_names_its_line_column_and_key() {
        let problem = parse("[metrics]\nlisten = \"localhost:9464\"\n").unwrap_err();
        assert_eq!((problem.line, problem.column), (2, 10));
        assert_eq!(problem.key.as_deref(), Some("metrics.listen"));
        assert!(problem.message.contains("not an IP:PORT"), "{problem}");
    }

    #[test]
    fn the_default_is_loopback_and_located_at_the_table() {
        let listen = parse("# [metrics]\n\n[metrics]\n").unwrap();
        assert!(listen.addr.ip().is_loopback());
        assert_eq!(listen.addr.port(), 9464);
        assert_eq!(listen.problem("x").line, 3);
    }

    #[test]
    fn a_taken_port_is_reported_at_the_key() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let listen = parse(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n")).unwrap();
        let problem = listen.check_available().unwrap_err();
        assert_eq!((problem.line, problem.key.as_deref()), (2, Some("metrics.listen")));
        assert!(problem.message.contains("another program listens there"), "{problem}");
    }
}
