//! The diffusion engine: the model contract (manifest + graph), execution
//! providers, samplers and inpainting. It works on tensors only and knows no
//! DICOM; the output stage converts pixels to and from these types.

pub mod error;
pub mod manifest;
pub mod scheduler;

pub use error::SynthError;
pub use manifest::Manifest;
