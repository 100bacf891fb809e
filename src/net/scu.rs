//! The C-STORE SCU side of an association, on dicom-ul's requestor: open
//! with the presentation contexts wanted, C-ECHO, C-STORE one data set,
//! release. Failures say whether a later attempt may succeed
//! ([`ScuError::is_transient`]), which is what the send queue retries on.

use super::dimse::{command_field, Assembler, CommandSet, Status};
use dicom_ul::association::client::ClientAssociation;
use dicom_ul::pdu::{AssociationRJResult, PresentationContextResultReason};
use dicom_ul::{ClientAssociationOptions, Pdu};
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

/// Who to call and how.
#[derive(Debug, Clone)]
pub struct Peer {
    pub calling_ae_title: String,
    pub called_ae_title: String,
    /// `host:port`.
    pub address: String,
    pub max_pdu: u32,
    pub connect_timeout: Duration,
    /// For each response, and each write.
    pub read_timeout: Duration,
}

/// One abstract syntax and the transfer syntaxes proposed for it, in order of preference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Proposal {
    pub abstract_syntax: String,
    pub transfer_syntaxes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScuError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("association rejected ({}): {reason}", if *.transient { "transient" } else { "permanent" })]
    Rejected { transient: bool, reason: String },
    #[error("the peer accepted no presentation context for {0}")]
    NoPresentationContext(String),
    #[error("no response within the read timeout")]
    Timeout,
    #[error("the association was aborted or closed: {0}")]
    Lost(String),
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ScuError {
    /// Transient: the peer is down, busy, slow, or dropped the connection.
    /// Permanent: it refuses who we are or what we send.
    pub fn is_transient(&self) -> bool {
        match self {
            ScuError::Connect(_) | ScuError::Timeout | ScuError::Lost(_) => true,
            ScuError::Rejected { transient, .. } => *transient,
            ScuError::NoPresentationContext(_) | ScuError::Protocol(_) => false,
        }
    }
}

pub struct Association {
    inner: ClientAssociation<TcpStream>,
    next_message_id: u16,
}

impl Association {
    pub fn open(peer: &Peer, proposals: &[Proposal]) -> Result<Self, ScuError> {
        let mut options = ClientAssociationOptions::new()
            .calling_ae_title(peer.calling_ae_title.clone())
            .called_ae_title(peer.called_ae_title.clone())
            .max_pdu_length(peer.max_pdu)
            .connection_timeout(peer.connect_timeout)
            .read_timeout(peer.read_timeout)
            .write_timeout(peer.read_timeout);
        for proposal in proposals {
            options =
                options.with_presentation_context(proposal.abstract_syntax.clone(), proposal.transfer_syntaxes.clone());
        }
        let mut inner = options.establish_with(&peer.address).map_err(establish_error)?;
        // A command PDU and its data set's PDUs go out back to back; Nagle's
        // algorithm would hold them for the peer's delayed ACK.
        let _ = inner.inner_stream().set_nodelay(true);
        Ok(Association {
            inner,
            next_message_id: 1,
        })
    }

    /// The presentation context accepted for `abstract_syntax` with one of
    /// `transfer_syntaxes` (the first accepted in that order).
    pub fn context_for(&self, abstract_syntax: &str, transfer_syntaxes: &[&str]) -> Option<(u8, String)> {
        let accepted: Vec<_> = self
            .inner
            .presentation_contexts()
            .iter()
            .filter(|pc| {
                pc.reason == PresentationContextResultReason::Acceptance && pc.abstract_syntax == abstract_syntax
            })
            .collect();
        transfer_syntaxes.iter().find_map(|ts| {
            accepted
                .iter()
                .find(|pc| super::accept::trim_uid(&pc.transfer_syntax) == *ts)
                .map(|pc| (pc.id, ts.to_string()))
        })
    }

    pub fn echo(&mut self) -> Result<Status, ScuError> {
        let (id, _) = self
            .context_for(
                super::dimse::VERIFICATION_SOP_CLASS,
                &[
                    super::dimse::IMPLICIT_VR_LITTLE_ENDIAN,
                    super::dimse::EXPLICIT_VR_LITTLE_ENDIAN,
                ],
            )
            .ok_or_else(|| ScuError::NoPresentationContext("Verification".into()))?;
        let command = CommandSet::c_echo_rq(self.message_id());
        self.send_command(id, &command)?;
        let response = self.response(command_field::C_ECHO_RSP)?;
        Ok(response.status.unwrap_or(Status::PROCESSING_FAILURE))
    }

    /// Sends one data set on context `id` and returns the peer's status.
    pub fn store(
        &mut self,
        id: u8,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        data_set: &[u8],
    ) -> Result<Status, ScuError> {
        self.store_with_comment(id, sop_class_uid, sop_instance_uid, data_set)
            .map(|(status, _)| status)
    }

    /// [`Association::store`], with the response's Error Comment.
    pub fn store_with_comment(
        &mut self,
        id: u8,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        data_set: &[u8],
    ) -> Result<(Status, Option<String>), ScuError> {
        let command = CommandSet::c_store_rq(self.message_id(), sop_class_uid, sop_instance_uid);
        self.send_command(id, &command)?;
        let mut writer = self.inner.send_pdata(id);
        writer.write_all(data_set).map_err(|e| lost_or_timeout(&e))?;
        writer.finish().map_err(|e| lost_or_timeout(&e))?;
        let response = self.response(command_field::C_STORE_RSP)?;
        Ok((
            response.status.unwrap_or(Status::PROCESSING_FAILURE),
            response.error_comment,
        ))
    }

    pub fn release(self) {
        let _ = self.inner.release();
    }

    pub fn abort(self) {
        let _ = self.inner.abort();
    }

    /// The underlying dicom-ul association, for sending PDUs by hand
    /// (tests of the SCP's handling of broken peers).
    pub fn raw(&mut self) -> &mut ClientAssociation<TcpStream> {
        &mut self.inner
    }

    fn message_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1).max(1);
        id
    }

    fn send_command(&mut self, id: u8, command: &CommandSet) -> Result<(), ScuError> {
        self.inner
            .send(&super::dimse::command_pdu(id, command))
            .map_err(|e| ScuError::Lost(e.to_string()))
    }

    /// Reads PDUs until the response to the request just sent is whole.
    fn response(&mut self, expected: u16) -> Result<CommandSet, ScuError> {
        let mut assembler = Assembler::new(1 << 20);
        loop {
            let pdu = self.inner.receive().map_err(|error| {
                if super::scp::is_timeout(&error) {
                    ScuError::Timeout
                } else {
                    ScuError::Lost(error.to_string())
                }
            })?;
            match pdu {
                Pdu::PData { data } => {
                    for value in data {
                        let message = assembler.push(value).map_err(|e| ScuError::Protocol(e.to_string()))?;
                        let Some(message) = message else { continue };
                        let command = message.command;
                        if command.command_field != expected {
                            return Err(ScuError::Protocol(format!(
                                "expected command field 0x{expected:04X}, got 0x{:04X}",
                                command.command_field
                            )));
                        }
                        let status = command
                            .status
                            .ok_or_else(|| ScuError::Protocol("a response without Status".into()))?;
                        if !status.is_pending() {
                            return Ok(command);
                        }
                    }
                }
                Pdu::AbortRQ { .. } => return Err(ScuError::Lost("the peer sent A-ABORT".into())),
                other => return Err(ScuError::Protocol(format!("unexpected PDU {}", pdu_name(&other)))),
            }
        }
    }
}

fn pdu_name(pdu: &Pdu) -> &'static str {
    match pdu {
        Pdu::AssociationRQ(_) => "A-ASSOCIATE-RQ",
        Pdu::AssociationAC(_) => "A-ASSOCIATE-AC",
        Pdu::AssociationRJ(_) => "A-ASSOCIATE-RJ",
        Pdu::PData { .. } => "P-DATA-TF",
        Pdu::ReleaseRQ => "A-RELEASE-RQ",
        Pdu::ReleaseRP => "A-RELEASE-RP",
        Pdu::AbortRQ { .. } => "A-ABORT",
        _ => "unknown",
    }
}

fn lost_or_timeout(error: &std::io::Error) -> ScuError {
    match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ScuError::Timeout,
        _ => ScuError::Lost(error.to_string()),
    }
}

fn establish_error(error: dicom_ul::association::Error) -> ScuError {
    use dicom_ul::association::Error as E;
    match &error {
        E::Rejected { association_rj, .. } => ScuError::Rejected {
            transient: association_rj.result == AssociationRJResult::Transient,
            reason: association_rj.source.to_string(),
        },
        E::NoAcceptedPresentationContexts { .. } => ScuError::NoPresentationContext("any proposed SOP class".into()),
        E::Connect { .. } | E::ToAddress { .. } => ScuError::Connect(error.to_string()),
        _ if super::scp::is_timeout(&error) => ScuError::Timeout,
        _ => ScuError::Lost(error.to_string()),
    }
}
