//! synthd: a DICOM-native pipeline daemon that de-identifies studies per
//! DICOM PS3.15 Annex E and synthesizes series with ONNX diffusion models.
//!
//! Start with ARCHITECTURE.md: it maps the stages to these modules.

pub mod attribute;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod deid;
pub mod fsutil;
pub mod ingest;
pub mod keyfile;
pub mod ledger;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod output;
pub mod phi;
pub mod pixel_decode;
pub mod quarantine;
pub mod runtime;
pub mod shard;
pub mod synth;
pub mod uid_syntax;
