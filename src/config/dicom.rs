//! `[dicom.listen]`: the C-STORE SCP. Types here, checks that need more than
//! one value (AE title syntax, addresses, an empty allow-list) in [`check`].

use super::units::{ByteSize, HumanDuration};
use super::{ranges, Diagnostic, Diagnostics};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::Path;
use toml::Spanned;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomSettings {
    /// Absent: synthd does not listen; the drop folder is the only intake.
    pub listen: Option<Listen>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// The AE title peers call (PS3.5: 1 to 16 characters, no backslash).
    pub ae_title: Spanned<String>,
    /// The address to listen on; loopback unless the admin opens it.
    #[serde(default = "default_bind")]
    pub bind: Spanned<String>,
    #[serde(default = "default_port", deserialize_with = "ranges::u32_in::<1, 65535, _>")]
    pub port: u32,
    /// Associations served at once; more are refused (transient,
    /// local-limit-exceeded) while those in progress continue.
    #[serde(
        default = "default_max_associations",
        deserialize_with = "ranges::u32_in::<1, 1024, _>"
    )]
    pub max_associations: u32,
    /// From TCP accept to a complete A-ASSOCIATE-RQ.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Between two PDUs of one message (an instance half sent).
    #[serde(default = "default_read_timeout")]
    pub read_timeout: HumanDuration,
    /// Between messages of an open association.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// The largest P-DATA PDU synthd accepts (PS3.8 maximum length).
    #[serde(default = "default_max_pdu")]
    pub max_pdu: Spanned<ByteSize>,
    /// The peers allowed to associate: calling AE title and the hosts it may call from.
    #[serde(default)]
    pub allow: Vec<AllowedPeer>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedPeer {
    pub ae_title: Spanned<String>,
    /// IP addresses the AE title may call from.
    pub hosts: Vec<Spanned<String>>,
}

fn default_bind() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1".to_string())
}
fn default_port() -> u32 {
    11112
}
fn default_max_associations() -> u32 {
    16
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_read_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration::from_secs(120)
}
fn default_max_pdu() -> Spanned<ByteSize> {
    Spanned::new(0..0, ByteSize(256 * 1024))
}

/// PS3.8 lets a PDU be up to 4 GiB; 4 KiB is the least useful, and above
/// 16 MiB a PDU buffer per association only costs memory.
const MAX_PDU_RANGE: std::ops::RangeInclusive<u64> = 4096..=(16 << 20);

impl Listen {
    pub fn bind_address(&self) -> IpAddr {
        self.bind.get_ref().parse().unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }

    pub fn max_pdu_bytes(&self) -> u32 {
        self.max_pdu.get_ref().0 as u32
    }
}

impl AllowedPeer {
    pub fn host_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.hosts.iter().filter_map(|host| host.get_ref().parse().ok())
    }
}

/// Why `title` is not an AE title (PS3.5 6.2: at most 16 characters of the
/// default repertoire, no backslash or control characters, not only spaces).
pub fn ae_title_problem(title: &str) -> Option<String> {
    if title.trim().is_empty() {
        return Some("an AE title cannot be empty or only spaces".into());
    }
    if title.len() > 16 {
        return Some(format!(
            "AE title {title:?} is {} characters long; at most 16 are allowed",
            title.len()
        ));
    }
    if title.chars().any(|c| c == '\\' || !(' '..='~').contains(&c)) {
        return Some(format!(
            "AE title {title:?} has a backslash or a character outside printable ASCII"
        ));
    }
    None
}

/// The checks serde cannot make; every problem points at its value.
pub fn check(file: &Path, source: &str, dicom: &DicomSettings) -> Diagnostics {
    let mut problems = Diagnostics::default();
    let Some(listen) = &dicom.listen else {
        return problems;
    };
    let mut at = |span: std::ops::Range<usize>, message: String| {
        problems.push(Diagnostic::at_span(file, source, span, message));
    };
    if let Some(message) = ae_title_problem(listen.ae_title.get_ref()) {
        at(listen.ae_title.span(), message);
    }
    if listen.bind.get_ref().parse::<IpAddr>().is_err() {
        at(
            listen.bind.span(),
            format!(
                "{:?} is not an IP address; expected e.g. \"127.0.0.1\" or \"0.0.0.0\"",
                listen.bind.get_ref()
            ),
        );
    }
    if !MAX_PDU_RANGE.contains(&listen.max_pdu.get_ref().0) {
        at(
            listen.max_pdu.span(),
            "out of range; expected between 4KiB and 16MiB".to_string(),
        );
    }
    if listen.allow.is_empty() {
        at(
            listen.ae_title.span(),
            "there is no [[dicom.listen.allow]] entry: every association would be refused; \
             add one per peer with its ae_title and hosts"
                .to_string(),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for peer in &listen.allow {
        let title = peer.ae_title.get_ref();
        if let Some(message) = ae_title_problem(title) {
            at(peer.ae_title.span(), message);
        } else if !seen.insert(title.trim().to_string()) {
            at(
                peer.ae_title.span(),
                format!("{title:?} is listed twice; list its hosts in one entry"),
            );
        }
        if peer.hosts.is_empty() {
            at(
                peer.ae_title.span(),
                format!("{title:?} has no hosts; expected the IP addresses it calls from"),
            );
        }
        for host in &peer.hosts {
            if host.get_ref().parse::<IpAddr>().is_err() {
                at(
                    host.span(),
                    format!(
                        "{:?} is not an IP address; expected e.g. \"10.0.0.5\" (host names are not resolved)",
                        host.get_ref()
                    ),
                );
            }
        }
    }
    problems
}
