//! DICOM networking: the C-STORE SCP that feeds the inbox (`scp`, `accept`,
//! `store`) and the DIMSE messages it speaks (`dimse`), on dicom-ul's
//! association and PDU layer. Network code knows files and UIDs only:
//! de-identification happens after intake, as for dropped files.

pub mod accept;
pub mod dimse;
pub mod export;
pub mod network;
pub mod scp;
pub mod scu;
pub mod store;

pub use export::Exporter;
pub use network::Network;
pub use scp::Scp;
