//! A-ASSOCIATE negotiation for the SCP (PS3.8 7.1, 9.3.2-9.3.4): who may
//! associate, which presentation contexts synthd accepts, and the
//! A-ASSOCIATE-RJ for everything else. dicom-ul's own acceptor cannot
//! reject on presentation contexts or with a transient reason, so synthd
//! negotiates itself on dicom-ul's PDU types.

use super::dimse::VERIFICATION_SOP_CLASS;
use crate::config::dicom::AllowedPeer;
use dicom_core::dictionary::{UidDictionary, UidType};
use dicom_dictionary_std::StandardSopClassDictionary;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use dicom_ul::pdu::{
    AssociationAC, AssociationRJ, AssociationRJResult, AssociationRJServiceProviderASCEReason,
    AssociationRJServiceProviderPresentationReason, AssociationRJServiceUserReason, AssociationRJSource, AssociationRQ,
    PresentationContextResult, PresentationContextResultReason, UserVariableItem, DEFAULT_MAX_PDU, MAXIMUM_PDU_SIZE,
};
use std::net::IpAddr;

/// PS3.7 A.2.1: the DICOM Application Context Name.
pub const APPLICATION_CONTEXT_NAME: &str = "1.2.840.10008.3.1.1.1";
/// synthd's Implementation Class UID (a 2.25 UUID-derived UID, fixed).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.302883287271146451466296431930911428911";
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("SYNTHD_", env!("CARGO_PKG_VERSION"));

/// A presentation context synthd accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedContext {
    pub id: u8,
    pub abstract_syntax: String,
    pub transfer_syntax: String,
}

/// The outcome of an A-ASSOCIATE-RQ.
#[derive(Debug)]
pub enum Decision {
    Accept {
        response: AssociationAC,
        contexts: Vec<AcceptedContext>,
        /// The largest PDU the requestor takes (0 means unlimited, PS3.8 D.1).
        peer_max_pdu: u32,
    },
    Reject {
        response: AssociationRJ,
        /// For the log: why, in words.
        reason: &'static str,
    },
}

/// What the SCP is: its AE title, who may call it, its largest PDU.
pub struct Acceptor<'a> {
    pub ae_title: &'a str,
    pub allow: &'a [AllowedPeer],
    pub max_pdu: u32,
}

impl Acceptor<'_> {
    pub fn negotiate(&self, request: AssociationRQ, peer: IpAddr) -> Decision {
        if let Some((source, reason)) = self.refusal(&request, peer) {
            return reject(AssociationRJResult::Permanent, source, reason);
        }
        let mut results = Vec::new();
        let mut contexts = Vec::new();
        for proposed in &request.presentation_contexts {
            let abstract_syntax = trim_uid(&proposed.abstract_syntax);
            let (reason, transfer_syntax) = if !is_acceptable_abstract_syntax(abstract_syntax) {
                (PresentationContextResultReason::AbstractSyntaxNotSupported, None)
            } else {
                match proposed
                    .transfer_syntaxes
                    .iter()
                    .map(|ts| trim_uid(ts))
                    .find(|ts| can_decode(ts))
                {
                    Some(ts) => (PresentationContextResultReason::Acceptance, Some(ts)),
                    None => (PresentationContextResultReason::TransferSyntaxesNotSupported, None),
                }
            };
            if let Some(ts) = transfer_syntax {
                contexts.push(AcceptedContext {
                    id: proposed.id,
                    abstract_syntax: abstract_syntax.to_string(),
                    transfer_syntax: ts.to_string(),
                });
            }
            results.push(PresentationContextResult {
                id: proposed.id,
                reason,
                transfer_syntax: transfer_syntax
                    .unwrap_or(super::dimse::IMPLICIT_VR_LITTLE_ENDIAN)
                    .to_string(),
            });
        }
        if contexts.is_empty() {
            return reject(
                AssociationRJResult::Permanent,
                AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::NoReasonGiven),
                "no proposed presentation context names a storage SOP class or Verification with a transfer syntax synthd can decode",
            );
        }
        let peer_max_pdu = request
            .user_variables
            .iter()
            .find_map(|item| match item {
                UserVariableItem::MaxLength(length) => Some(*length),
                _ => None,
            })
            .unwrap_or(DEFAULT_MAX_PDU);
        let response = AssociationAC {
            protocol_version: 1,
            calling_ae_title: request.calling_ae_title,
            called_ae_title: request.called_ae_title,
            application_context_name: APPLICATION_CONTEXT_NAME.to_string(),
            presentation_contexts: results,
            user_variables: vec![
                UserVariableItem::MaxLength(self.max_pdu),
                UserVariableItem::ImplementationClassUID(IMPLEMENTATION_CLASS_UID.to_string()),
                UserVariableItem::ImplementationVersionName(IMPLEMENTATION_VERSION_NAME.to_string()),
            ],
        };
        Decision::Accept {
            response,
            contexts,
            peer_max_pdu: if peer_max_pdu == 0 {
                MAXIMUM_PDU_SIZE
            } else {
                peer_max_pdu
            },
        }
    }

    /// Why the request is refused before its presentation contexts are looked at.
    fn refusal(&self, request: &AssociationRQ, peer: IpAddr) -> Option<(AssociationRJSource, &'static str)> {
        use AssociationRJServiceUserReason as User;
        if request.protocol_version & 1 == 0 {
            return Some((
                AssociationRJSource::ServiceProviderASCE(
                    AssociationRJServiceProviderASCEReason::ProtocolVersionNotSupported,
                ),
                "the requestor does not speak protocol version 1",
            ));
        }
        if trim_uid(&request.application_context_name) != APPLICATION_CONTEXT_NAME {
            return Some((
                AssociationRJSource::ServiceUser(User::ApplicationContextNameNotSupported),
                "the application context is not the DICOM one",
            ));
        }
        if request.called_ae_title.trim() != self.ae_title.trim() {
            return Some((
                AssociationRJSource::ServiceUser(User::CalledAETitleNotRecognized),
                "the called AE title is not dicom.listen.ae_title",
            ));
        }
        let calling = request.calling_ae_title.trim();
        let allowed = self
            .allow
            .iter()
            .filter(|entry| entry.ae_title.get_ref().trim() == calling)
            .any(|entry| entry.host_addresses().any(|host| same_host(host, peer)));
        if !allowed {
            return Some((
                AssociationRJSource::ServiceUser(User::CallingAETitleNotRecognized),
                "the calling AE title is not in dicom.listen.allow for this host",
            ));
        }
        None
    }
}

/// The refusal of an association beyond `dicom.listen.max_associations`:
/// transient, so the peer may try again later (PS3.8 9.3.4).
pub fn local_limit_exceeded() -> AssociationRJ {
    AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    }
}

fn reject(result: AssociationRJResult, source: AssociationRJSource, reason: &'static str) -> Decision {
    Decision::Reject {
        response: AssociationRJ { result, source },
        reason,
    }
}

/// An IPv4 peer may arrive as an IPv4-mapped IPv6 address on a dual-stack socket.
fn same_host(allowed: IpAddr, peer: IpAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    canonical(allowed) == canonical(peer)
}

/// UIDs in PDUs may carry a trailing NUL or space.
pub fn trim_uid(uid: &str) -> &str {
    uid.trim_end_matches(['\0', ' '])
}

/// Verification, or a storage SOP class of the standard (its name ends in
/// "Storage"; the DICOMDIR's Media Storage Directory is not an instance).
pub fn is_acceptable_abstract_syntax(uid: &str) -> bool {
    if uid == VERIFICATION_SOP_CLASS {
        return true;
    }
    StandardSopClassDictionary.by_uid(uid).is_some_and(|entry| {
        matches!(entry.r#type, UidType::SopClass)
            && !entry.retired
            && entry.name.ends_with(" Storage")
            && entry.alias != "MediaStorageDirectoryStorage"
    })
}

/// Whether synthd can read data sets and pixel data in this transfer syntax.
pub fn can_decode(uid: &str) -> bool {
    TransferSyntaxRegistry.get(uid).is_some_and(|ts| ts.can_decode_all())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_classes_and_verification_are_accepted_others_not() {
        assert!(
            is_acceptable_abstract_syntax("1.2.840.10008.5.1.4.1.1.4"),
            "MR Image Storage"
        );
        assert!(
            is_acceptable_abstract_syntax("1.2.840.10008.5.1.4.1.1.66.4"),
            "Segmentation Storage"
        );
        assert!(is_acceptable_abstract_syntax(VERIFICATION_SOP_CLASS));
        assert!(
            !is_acceptable_abstract_syntax("1.2.840.10008.1.20.1"),
            "Storage Commitment"
        );
        assert!(!is_acceptable_abstract_syntax("1.2.840.10008.1.3.10"), "DICOMDIR");
        assert!(
            !is_acceptable_abstract_syntax("1.2.840.10008.5.1.4.1.2.2.1"),
            "Study Root FIND"
        );
        assert!(can_decode("1.2.840.10008.1.2.1") && can_decode("1.2.840.10008.1.2"));
        assert!(!can_decode("1.2.3.4"));
    }

    #[test]
    fn an_ipv4_mapped_peer_matches_its_ipv4_entry() {
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(same_host(v4, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(!same_host(v4, "127.0.0.2".parse().unwrap()));
    }
}
