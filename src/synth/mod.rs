//! The diffusion engine: the model contract (manifest + graph), execution
//! providers, samplers and inpainting. It works on tensors only and knows no
//! DICOM; the output stage converts pixels to and from these types.

pub mod error;
pub mod manifest;
pub mod scheduler;

pub use error::SynthError;
pub use manifest::Manifest;
pub mod condition;
pub mod contract;
pub mod engine;
pub mod inpaint;
pub mod lesion;
pub mod mask;
pub mod noise;
pub mod session;
pub mod tensor;

pub use engine::{Engine, SeriesRequest, SeriesResult, SliceInput, SliceOutput};
pub use mask::SliceGeometry;
pub use session::EngineOptions;
pub use tensor::{to_stored, Normalization, Placement, StoredFormat};
