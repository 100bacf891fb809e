//! The DIMSE layer dicom-ul lacks (PS3.7): command sets for C-ECHO and
//! C-STORE, their status codes, and the assembly of a message from P-DATA
//! values. Command sets are always Implicit VR Little Endian (PS3.7 6.3.1);
//! the fields are named as PS3.7 Annex E names them.

use dicom_ul::pdu::{PDataValue, PDataValueType};

pub const VERIFICATION_SOP_CLASS: &str = "1.2.840.10008.1.1";
pub const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

/// Command Field (0000,0100) values (PS3.7 E.1).
pub mod command_field {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_STORE_RSP: u16 = 0x8001;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_ECHO_RSP: u16 = 0x8030;
}

/// Command Data Set Type (0000,0800): this value says no data set follows;
/// any other value says one does.
pub const NO_DATA_SET: u16 = 0x0101;
/// The value synthd writes when a data set follows (PS3.7 E.1).
pub const DATA_SET_PRESENT: u16 = 0x0000;

/// Priority (0000,0700).
pub const PRIORITY_MEDIUM: u16 = 0x0000;

/// A DIMSE status (0000,0900), named as PS3.4 B.2.3 and PS3.7 C name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u16);

impl Status {
    pub const SUCCESS: Status = Status(0x0000);
    /// PS3.4 B.2.3: Refused: Out of Resources (A700-A7FF).
    pub const REFUSED_OUT_OF_RESOURCES: Status = Status(0xA700);
    /// PS3.4 B.2.3: Refused: SOP Class not supported.
    pub const REFUSED_SOP_CLASS_NOT_SUPPORTED: Status = Status(0x0122);
    /// PS3.4 B.2.3: Error: Data Set does not match SOP Class (A900-A9FF).
    pub const ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS: Status = Status(0xA900);
    /// PS3.4 B.2.3: Error: Cannot understand (C000-CFFF).
    pub const ERROR_CANNOT_UNDERSTAND: Status = Status(0xC000);
    /// PS3.7 C.4.3: Processing failure.
    pub const PROCESSING_FAILURE: Status = Status(0x0110);
    /// PS3.7 C.5.12: Resource limitation.
    pub const RESOURCE_LIMITATION: Status = Status(0x0213);

    pub fn is_success(self) -> bool {
        self.0 == 0x0000
    }

    /// Warnings (0001, Bxxx) mean the instance was stored.
    pub fn is_warning(self) -> bool {
        self.0 == 0x0001 || self.0 & 0xF000 == 0xB000
    }

    pub fn is_pending(self) -> bool {
        self.0 == 0xFF00 || self.0 == 0xFF01
    }

    /// Failures a later attempt may get past: the peer was out of resources.
    /// Every other failure says the instance itself is refused.
    pub fn is_transient_failure(self) -> bool {
        self.0 & 0xFF00 == 0xA700 || self == Status::RESOURCE_LIMITATION
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            0x0000 => "Success",
            0x0001 | 0xB000..=0xBFFF => "Warning",
            0xA700..=0xA7FF => "Refused: Out of Resources",
            0x0122 => "Refused: SOP Class not supported",
            0x0124 => "Refused: Not authorized",
            0xA900..=0xA9FF => "Error: Data Set does not match SOP Class",
            0xC000..=0xCFFF => "Error: Cannot understand",
            0x0110 => "Processing failure",
            0x0111 => "Duplicate SOP Instance",
            0x0117 => "Invalid SOP Instance",
            0x0211 => "Unrecognized operation",
            0x0213 => "Resource limitation",
            _ => "Failure",
        };
        write!(f, "{name} (0x{:04X})", self.0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DimseError {
    #[error("malformed command set: {0}")]
    MalformedCommand(&'static str),
    #[error("a P-DATA value used presentation context {got} in a message on context {expected}")]
    ContextChanged { expected: u8, got: u8 },
    #[error("a data set fragment arrived before its command")]
    DataBeforeCommand,
    #[error("the data set is larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// One command set with the fields C-ECHO and C-STORE use (PS3.7 9.3.1, 9.3.5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandSet {
    pub affected_sop_class_uid: Option<String>,
    pub command_field: u16,
    pub message_id: Option<u16>,
    pub message_id_being_responded_to: Option<u16>,
    pub priority: Option<u16>,
    pub command_data_set_type: u16,
    pub status: Option<Status>,
    pub error_comment: Option<String>,
    pub affected_sop_instance_uid: Option<String>,
    pub move_originator_application_entity_title: Option<String>,
    pub move_originator_message_id: Option<u16>,
}

/// Value representations of the command fields, for padding and parsing.
#[derive(Clone, Copy)]
enum Vr {
    /// UI: padded with NUL.
    Ui,
    /// AE, LO: padded with a space.
    Text,
    Us,
}

const AFFECTED_SOP_CLASS_UID: u16 = 0x0002;
const COMMAND_FIELD: u16 = 0x0100;
const MESSAGE_ID: u16 = 0x0110;
const MESSAGE_ID_BEING_RESPONDED_TO: u16 = 0x0120;
const PRIORITY: u16 = 0x0700;
const COMMAND_DATA_SET_TYPE: u16 = 0x0800;
const STATUS: u16 = 0x0900;
const ERROR_COMMENT: u16 = 0x0902;
const AFFECTED_SOP_INSTANCE_UID: u16 = 0x1000;
const MOVE_ORIGINATOR_AE_TITLE: u16 = 0x1030;
const MOVE_ORIGINATOR_MESSAGE_ID: u16 = 0x1031;

impl CommandSet {
    pub fn has_data_set(&self) -> bool {
        self.command_data_set_type != NO_DATA_SET
    }

    pub fn c_echo_rq(message_id: u16) -> Self {
        CommandSet {
            affected_sop_class_uid: Some(VERIFICATION_SOP_CLASS.into()),
            command_field: command_field::C_ECHO_RQ,
            message_id: Some(message_id),
            command_data_set_type: NO_DATA_SET,
            ..Default::default()
        }
    }

    pub fn c_store_rq(message_id: u16, sop_class_uid: &str, sop_instance_uid: &str) -> Self {
        CommandSet {
            affected_sop_class_uid: Some(sop_class_uid.into()),
            command_field: command_field::C_STORE_RQ,
            message_id: Some(message_id),
            priority: Some(PRIORITY_MEDIUM),
            command_data_set_type: DATA_SET_PRESENT,
            affected_sop_instance_uid: Some(sop_instance_uid.into()),
            ..Default::default()
        }
    }

    /// The response to this request (C-ECHO-RSP or C-STORE-RSP).
    pub fn response(&self, status: Status, error_comment: Option<&str>) -> Self {
        CommandSet {
            affected_sop_class_uid: self.affected_sop_class_uid.clone(),
            command_field: self.command_field | 0x8000,
            message_id_being_responded_to: self.message_id,
            command_data_set_type: NO_DATA_SET,
            status: Some(status),
            // LO: at most 64 characters.
            error_comment: error_comment.map(|c| c.chars().take(64).collect()),
            affected_sop_instance_uid: self.affected_sop_instance_uid.clone(),
            ..Default::default()
        }
    }

    /// Encodes the command set, Command Group Length first.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(256);
        let text = |value: &Option<String>, vr| value.as_deref().map(|v| (v.as_bytes().to_vec(), vr));
        let us = |value: Option<u16>| value.map(|v| (v.to_le_bytes().to_vec(), Vr::Us));
        let fields = [
            (AFFECTED_SOP_CLASS_UID, text(&self.affected_sop_class_uid, Vr::Ui)),
            (COMMAND_FIELD, us(Some(self.command_field))),
            (MESSAGE_ID, us(self.message_id)),
            (MESSAGE_ID_BEING_RESPONDED_TO, us(self.message_id_being_responded_to)),
            (PRIORITY, us(self.priority)),
            (COMMAND_DATA_SET_TYPE, us(Some(self.command_data_set_type))),
            (STATUS, us(self.status.map(|s| s.0))),
            (ERROR_COMMENT, text(&self.error_comment, Vr::Text)),
            (AFFECTED_SOP_INSTANCE_UID, text(&self.affected_sop_instance_uid, Vr::Ui)),
            (
                MOVE_ORIGINATOR_AE_TITLE,
                text(&self.move_originator_application_entity_title, Vr::Text),
            ),
            (MOVE_ORIGINATOR_MESSAGE_ID, us(self.move_originator_message_id)),
        ];
        for (element, value) in fields {
            if let Some((mut bytes, vr)) = value {
                if bytes.len() % 2 == 1 {
                    bytes.push(if matches!(vr, Vr::Ui) { 0 } else { b' ' });
                }
                put_element(&mut body, element, &bytes);
            }
        }
        let mut out = Vec::with_capacity(body.len() + 12);
        put_element(&mut out, 0x0000, &(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes a command set; unknown group 0000 elements are skipped.
    pub fn decode(mut bytes: &[u8]) -> Result<Self, DimseError> {
        let mut command = CommandSet::default();
        let mut has_field = false;
        let mut has_type = false;
        while !bytes.is_empty() {
            if bytes.len() < 8 {
                return Err(DimseError::MalformedCommand("an element header is cut short"));
            }
            let group = u16::from_le_bytes([bytes[0], bytes[1]]);
            let element = u16::from_le_bytes([bytes[2], bytes[3]]);
            let length = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
            if group != 0x0000 {
                return Err(DimseError::MalformedCommand("an element outside group 0000"));
            }
            let value = bytes
                .get(8..8 + length)
                .ok_or(DimseError::MalformedCommand("an element value runs past the end"))?;
            bytes = &bytes[8 + length..];
            match element {
                COMMAND_FIELD => {
                    command.command_field = us(value)?;
                    has_field = true;
                }
                COMMAND_DATA_SET_TYPE => {
                    command.command_data_set_type = us(value)?;
                    has_type = true;
                }
                AFFECTED_SOP_CLASS_UID => command.affected_sop_class_uid = Some(text(value)),
                MESSAGE_ID => command.message_id = Some(us(value)?),
                MESSAGE_ID_BEING_RESPONDED_TO => command.message_id_being_responded_to = Some(us(value)?),
                PRIORITY => command.priority = Some(us(value)?),
                STATUS => command.status = Some(Status(us(value)?)),
                ERROR_COMMENT => command.error_comment = Some(text(value)),
                AFFECTED_SOP_INSTANCE_UID => command.affected_sop_instance_uid = Some(text(value)),
                MOVE_ORIGINATOR_AE_TITLE => command.move_originator_application_entity_title = Some(text(value)),
                MOVE_ORIGINATOR_MESSAGE_ID => command.move_originator_message_id = Some(us(value)?),
                _ => {}
            }
        }
        if !has_field || !has_type {
            return Err(DimseError::MalformedCommand(
                "Command Field or Command Data Set Type is missing",
            ));
        }
        Ok(command)
    }
}

fn put_element(out: &mut Vec<u8>, element: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

fn us(value: &[u8]) -> Result<u16, DimseError> {
    match value {
        [a, b] => Ok(u16::from_le_bytes([*a, *b])),
        _ => Err(DimseError::MalformedCommand("a US value is not 2 bytes long")),
    }
}

fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .trim_end_matches(['\0', ' '])
        .trim_start()
        .to_string()
}

/// One whole message: its command and, when one followed, its data set.
#[derive(Debug)]
pub struct Message {
    pub presentation_context_id: u8,
    pub command: CommandSet,
    pub data_set: Option<Vec<u8>>,
}

/// One piece of a message as it arrives (PS3.8 E.2: a command's fragments,
/// then its data set's, on one presentation context).
#[derive(Debug, PartialEq, Eq)]
pub enum Part {
    /// The whole command; when it has a data set, its fragments follow.
    Command {
        presentation_context_id: u8,
        command: CommandSet,
    },
    /// One fragment of the data set; `last` ends the message.
    Data {
        presentation_context_id: u8,
        data: Vec<u8>,
        last: bool,
    },
}

/// Splits P-DATA values into [`Part`]s, so a data set can go to disk as it
/// arrives instead of being held whole.
#[derive(Debug, Default)]
pub struct MessageStream {
    context: Option<u8>,
    command_bytes: Vec<u8>,
    /// A command with a data set was whole; its fragments are arriving.
    in_data_set: bool,
}

impl MessageStream {
    /// Whether part of a message has arrived and the rest is awaited.
    pub fn in_progress(&self) -> bool {
        self.context.is_some()
    }

    /// Takes one P-DATA value; returns the part it completes, if any.
    pub fn push(&mut self, value: PDataValue) -> Result<Option<Part>, DimseError> {
        let id = *self.context.get_or_insert(value.presentation_context_id);
        if value.presentation_context_id != id {
            return Err(DimseError::ContextChanged {
                expected: id,
                got: value.presentation_context_id,
            });
        }
        match value.value_type {
            PDataValueType::Command if self.in_data_set => Err(DimseError::MalformedCommand(
                "a command fragment arrived inside a data set",
            )),
            PDataValueType::Command => {
                self.command_bytes.extend_from_slice(&value.data);
                if !value.is_last {
                    return Ok(None);
                }
                let command = CommandSet::decode(&std::mem::take(&mut self.command_bytes))?;
                self.in_data_set = command.has_data_set();
                if !self.in_data_set {
                    self.context = None;
                }
                Ok(Some(Part::Command {
                    presentation_context_id: id,
                    command,
                }))
            }
            PDataValueType::Data if !self.in_data_set => Err(DimseError::DataBeforeCommand),
            PDataValueType::Data => {
                if value.is_last {
                    self.in_data_set = false;
                    self.context = None;
                }
                Ok(Some(Part::Data {
                    presentation_context_id: id,
                    data: value.data,
                    last: value.is_last,
                }))
            }
        }
    }
}

/// Gathers P-DATA values into whole messages, data sets in memory (for
/// responses, which carry none here).
#[derive(Debug)]
pub struct Assembler {
    stream: MessageStream,
    command: Option<CommandSet>,
    data: Vec<u8>,
    max_data_set: usize,
}

impl Assembler {
    pub fn new(max_data_set: usize) -> Self {
        Assembler {
            stream: MessageStream::default(),
            command: None,
            data: Vec::new(),
            max_data_set,
        }
    }

    /// Whether part of a message has arrived and the rest is awaited.
    pub fn in_progress(&self) -> bool {
        self.stream.in_progress()
    }

    /// Takes one P-DATA value; returns the message it completes, if any.
    pub fn push(&mut self, value: PDataValue) -> Result<Option<Message>, DimseError> {
        match self.stream.push(value)? {
            None => Ok(None),
            Some(Part::Command {
                presentation_context_id,
                command,
            }) => {
                if command.has_data_set() {
                    self.command = Some(command);
                    return Ok(None);
                }
                Ok(Some(Message {
                    presentation_context_id,
                    command,
                    data_set: None,
                }))
            }
            Some(Part::Data {
                presentation_context_id,
                data,
                last,
            }) => {
                if self.data.len() + data.len() > self.max_data_set {
                    return Err(DimseError::TooLarge {
                        limit: self.max_data_set,
                    });
                }
                if self.data.is_empty() {
                    self.data = data;
                } else {
                    self.data.extend_from_slice(&data);
                }
                if !last {
                    return Ok(None);
                }
                let command = self.command.take().ok_or(DimseError::DataBeforeCommand)?;
                Ok(Some(Message {
                    presentation_context_id,
                    command,
                    data_set: Some(std::mem::take(&mut self.data)),
                }))
            }
        }
    }
}

/// The P-DATA values carrying `command` on context `id` (one fragment:
/// command sets are far smaller than any PDU).
pub fn command_pdu(id: u8, command: &CommandSet) -> dicom_ul::Pdu {
    dicom_ul::Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: id,
            value_type: PDataValueType::Command,
            is_last: true,
            data: command.encode(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_c_store_request_survives_encoding_and_its_response_answers_it() {
        let request = CommandSet::c_store_rq(7, "1.2.840.10008.5.1.4.1.1.4", "1.2.3.4.5");
        let bytes = request.encode();
        assert_eq!(&bytes[..8], &[0, 0, 0, 0, 4, 0, 0, 0]);
        assert_eq!(
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            bytes.len() - 12
        );
        // Odd UIDs are padded with NUL, and the padding is gone once decoded.
        assert_eq!(CommandSet::decode(&bytes).unwrap(), request);
        let response = request.response(Status::ERROR_CANNOT_UNDERSTAND, Some("cannot parse"));
        let decoded = CommandSet::decode(&response.encode()).unwrap();
        assert_eq!(decoded.command_field, command_field::C_STORE_RSP);
        assert_eq!(decoded.message_id_being_responded_to, Some(7));
        assert_eq!(decoded.status, Some(Status(0xC000)));
        assert_eq!(decoded.error_comment.as_deref(), Some("cannot parse"));
        assert!(!decoded.has_data_set());
    }

    #[test]
    fn a_truncated_or_foreign_command_is_refused() {
        let bytes = CommandSet::c_echo_rq(1).encode();
        assert!(CommandSet::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut foreign = bytes.clone();
        foreign[0] = 8;
        assert!(CommandSet::decode(&foreign).is_err());
        assert!(CommandSet::decode(&bytes[..12]).is_err(), "no command field");
    }

    #[test]
    fn the_assembler_joins_fragments_and_keeps_one_context() {
        let command = CommandSet::c_store_rq(1, "1.2", "1.3").encode();
        let value = |kind, last, data: &[u8]| PDataValue {
            presentation_context_id: 3,
            value_type: kind,
            is_last: last,
            data: data.to_vec(),
        };
        let mut assembler = Assembler::new(1 << 20);
        assert!(assembler
            .push(value(PDataValueType::Command, false, &command[..10]))
            .unwrap()
            .is_none());
        assert!(assembler
            .push(value(PDataValueType::Command, true, &command[10..]))
            .unwrap()
            .is_none());
        assert!(assembler
            .push(value(PDataValueType::Data, false, b"ab"))
            .unwrap()
            .is_none());
        let message = assembler
            .push(value(PDataValueType::Data, true, b"cd"))
            .unwrap()
            .unwrap();
        assert_eq!(message.data_set.as_deref(), Some(&b"abcd"[..]));
        assert_eq!(message.presentation_context_id, 3);
        assert!(!assembler.in_progress());
        let mut other = value(PDataValueType::Command, false, &command[..4]);
        assembler.push(other.clone()).unwrap();
        other.presentation_context_id = 5;
        assert!(matches!(assembler.push(other), Err(DimseError::ContextChanged { .. })));
        let mut small = Assembler::new(3);
        small.push(value(PDataValueType::Command, true, &command)).unwrap();
        assert!(small.push(value(PDataValueType::Data, true, b"abcd")).is_err());
    }

    #[test]
    fn the_stream_hands_out_each_data_fragment_as_it_arrives() {
        let request = CommandSet::c_store_rq(1, "1.2", "1.3");
        let value = |kind, last, data: &[u8]| PDataValue {
            presentation_context_id: 1,
            value_type: kind,
            is_last: last,
            data: data.to_vec(),
        };
        let mut stream = MessageStream::default();
        assert_eq!(
            stream
                .push(value(PDataValueType::Command, true, &request.encode()))
                .unwrap(),
            Some(Part::Command {
                presentation_context_id: 1,
                command: request.clone()
            })
        );
        assert!(stream.in_progress(), "the data set is awaited");
        let first = stream.push(value(PDataValueType::Data, false, b"ab")).unwrap();
        assert_eq!(
            first,
            Some(Part::Data {
                presentation_context_id: 1,
                data: b"ab".to_vec(),
                last: false
            })
        );
        // A command may not start inside a data set.
        let mut inside = MessageStream::default();
        inside
            .push(value(PDataValueType::Command, true, &request.encode()))
            .unwrap();
        let echo = CommandSet::c_echo_rq(2).encode();
        assert!(inside.push(value(PDataValueType::Command, true, &echo)).is_err());
        let last = stream.push(value(PDataValueType::Data, true, b"cd")).unwrap();
        assert!(matches!(last, Some(Part::Data { last: true, .. })));
        assert!(!stream.in_progress());
        assert_eq!(
            stream.push(value(PDataValueType::Data, true, b"ef")),
            Err(DimseError::DataBeforeCommand)
        );
    }

    #[test]
    fn statuses_are_classified_as_ps3_4_groups_them() {
        assert!(Status(0xA701).is_transient_failure());
        assert!(!Status(0xA900).is_transient_failure());
        assert!(!Status(0xC001).is_transient_failure());
        assert!(Status(0xB007).is_warning());
        assert_eq!(Status(0xA702).to_string(), "Refused: Out of Resources (0xA702)");
    }
}
