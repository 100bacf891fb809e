//! `[dicom.listen]` (the C-STORE SCP) and `[[destinations]]` (where
//! pipelines send their outputs). Types here; checks that need more than
//! one value (AE title syntax, addresses, names) in [`check`] and
//! [`check_destinations`].

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

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

/// A peer synthd sends outputs to (C-STORE SCU), named by pipelines'
/// `[output] destinations`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Lower-case letters, digits and dashes; what pipelines and `synthd status` call it.
    pub name: Spanned<String>,
    /// The AE title synthd calls.
    pub ae_title: Spanned<String>,
    /// IP address or host name.
    pub host: Spanned<String>,
    #[serde(deserialize_with = "ranges::u32_in::<1, 65535, _>")]
    pub port: u32,
    /// The AE title synthd calls from.
    #[serde(default = "default_calling_ae_title")]
    pub calling_ae_title: Spanned<String>,
    /// The largest PDU synthd accepts from the peer.
    #[serde(default = "default_max_pdu")]
    pub max_pdu: Spanned<ByteSize>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// For each response from the peer.
    #[serde(default = "default_send_read_timeout")]
    pub read_timeout: HumanDuration,
    /// The first retry after a transient failure; each next one waits twice
    /// as long (with jitter), up to `retry_max`.
    #[serde(default = "default_retry_initial")]
    pub retry_initial: HumanDuration,
    #[serde(default = "default_retry_max")]
    pub retry_max: HumanDuration,
}

fn default_calling_ae_title() -> Spanned<String> {
    Spanned::new(0..0, "SYNTHD".to_string())
}
fn default_send_read_timeout() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn default_retry_initial() -> HumanDuration {
    HumanDuration::from_secs(5)
}
fn default_retry_max() -> HumanDuration {
    HumanDuration::from_secs(600)
}

impl Destination {
    pub fn peer(&self) -> crate::net::scu::Peer {
        crate::net::scu::Peer {
            calling_ae_title: self.calling_ae_title.get_ref().trim().to_string(),
            called_ae_title: self.ae_title.get_ref().trim().to_string(),
            address: format!("{}:{}", self.host.get_ref(), self.port),
            max_pdu: self.max_pdu.get_ref().0.min(u32::MAX as u64) as u32,
            connect_timeout: self.connect_timeout.as_duration(),
            read_timeout: self.read_timeout.as_duration(),
        }
    }
}

/// `[[destinations]]` checks, and every pipeline's `[output] destinations`
/// naming one of them (reported in the pipeline's file).
pub fn check_destinations(
    file: &Path,
    source: &str,
    destinations: &[Destination],
    pipelines: &[super::LoadedPipeline],
) -> Diagnostics {
    let mut problems = Diagnostics::default();
    let mut names = std::collections::HashSet::new();
    for destination in destinations {
        let mut at = |span: std::ops::Range<usize>, message: String| {
            problems.push(Diagnostic::at_span(file, source, span, message));
        };
        let name = destination.name.get_ref();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            at(
                destination.name.span(),
                format!("{name:?} is not a destination name; expected lower-case letters, digits and dashes"),
            );
        } else if !names.insert(name.clone()) {
            at(
                destination.name.span(),
                format!("two destinations are named {name:?}; expected unique names"),
            );
        }
        for title in [&destination.ae_title, &destination.calling_ae_title] {
            if let Some(message) = ae_title_problem(title.get_ref()) {
                at(title.span(), message);
            }
        }
        if destination.host.get_ref().trim().is_empty() {
            at(
                destination.host.span(),
                "the host is empty; expected an IP address or host name".into(),
            );
        }
        if !MAX_PDU_RANGE.contains(&destination.max_pdu.get_ref().0) {
            at(
                destination.max_pdu.span(),
                "out of range; expected between 4KiB and 16MiB".into(),
            );
        }
        if destination.retry_initial.as_duration().is_zero() || destination.retry_max < destination.retry_initial {
            at(
                destination.name.span(),
                "retry_initial must be above zero and at most retry_max".into(),
            );
        }
    }
    for pipeline in pipelines {
        for wanted in &pipeline.pipeline.output.destinations {
            if !names.contains(wanted.get_ref()) {
                problems.push(Diagnostic::at_span(
                    &pipeline.file,
                    &pipeline.source,
                    wanted.span(),
                    format!(
                        "no [[destinations]] entry in {} is named {:?}; add one or remove it here",
                        file.display(),
                        wanted.get_ref()
                    ),
                ));
            }
        }
    }
    problems
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
