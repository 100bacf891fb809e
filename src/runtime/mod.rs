//! ONNX Runtime bootstrap: find the shared library, load it once, and probe
//! which execution providers really initialise here.

pub mod locate;

use crate::config::pipeline::ProviderKind;
use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use locate::{Located, NotFound, Origin};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    NotFound(#[from] NotFound),
    #[error("cannot load ONNX Runtime from {path}: {reason}; check that it is onnxruntime {pinned} for this platform, or run `{fix}`",
        pinned = locate::PINNED_VERSION, fix = locate::FIX_COMMAND)]
    Load { path: PathBuf, reason: String },
    #[error("ONNX Runtime was already loaded from {loaded}; cannot switch to {requested} in the same process")]
    AlreadyLoaded { loaded: PathBuf, requested: PathBuf },
}

/// The loaded ONNX Runtime: where it came from, and the environment every
/// session is built in.
#[derive(Clone)]
pub struct RuntimeInfo {
    pub path: PathBuf,
    pub origin: Origin,
    /// e.g. "1.32.0", read from the library's build info.
    pub version: String,
    pub environment: ort::environment::Environment,
}

impl std::fmt::Debug for RuntimeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeInfo")
            .field("path", &self.path)
            .field("origin", &self.origin)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

static LOADED: OnceLock<RuntimeInfo> = OnceLock::new();

/// Finds and loads ONNX Runtime (once per process); later calls return the
/// first result.
pub fn init(configured: Option<&Path>) -> Result<&'static RuntimeInfo, RuntimeError> {
    if let Some(info) = LOADED.get() {
        if let Some(requested) = configured {
            if requested != info.path {
                return Err(RuntimeError::AlreadyLoaded {
                    loaded: info.path.clone(),
                    requested: requested.to_path_buf(),
                });
            }
        }
        return Ok(info);
    }
    let located = locate::locate(configured)?;
    let builder = ort::init_from(&located.path).map_err(|error| RuntimeError::Load {
        path: located.path.clone(),
        reason: error.to_string(),
    })?;
    let environment = builder
        .with_name("synthd")
        .build()
        .map_err(|error| RuntimeError::Load {
            path: located.path.clone(),
            reason: error.to_string(),
        })?;
    let version = library_version(&located.path)
        .or_else(|| parse_version(ort::info()))
        .unwrap_or_else(|| "unknown".to_string());
    Ok(LOADED.get_or_init(|| RuntimeInfo {
        path: located.path,
        origin: located.origin,
        version,
        environment,
    }))
}

/// `OrtGetApiBase()->GetVersionString()`: the version the library reports.
fn library_version(path: &Path) -> Option<String> {
    #[repr(C)]
    struct OrtApiBase {
        get_api: unsafe extern "C" fn(u32) -> *const std::ffi::c_void,
        get_version_string: unsafe extern "C" fn() -> *const std::ffi::c_char,
    }
    // SAFETY: the library was already loaded by ort from this path; dlopen
    // returns the same handle, and OrtGetApiBase has this C signature in every
    // ONNX Runtime 1.x release.
    unsafe {
        let library = libloading::Library::new(path).ok()?;
        let get_api_base: libloading::Symbol<unsafe extern "C" fn() -> *const OrtApiBase> =
            library.get(b"OrtGetApiBase").ok()?;
        let base = get_api_base();
        if base.is_null() {
            return None;
        }
        let version = ((*base).get_version_string)();
        if version.is_null() {
            return None;
        }
        Some(std::ffi::CStr::from_ptr(version).to_string_lossy().into_owned())
    }
}

/// The version in ONNX Runtime's build info ("git-branch=rel-1.32.0, ...").
fn parse_version(build_info: &str) -> Option<String> {
    let start = build_info.find("rel-")? + 4;
    let rest = &build_info[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    Some(rest[..end].to_string()).filter(|v| !v.is_empty())
}

/// A Relu over a [1, 4] tensor: the smallest model that makes a provider
/// allocate and run, so that probing says the truth about initialisation.
const PROBE_MODEL: &[u8] = &[
    8, 8, 18, 6, 115, 121, 110, 116, 104, 100, 58, 63, 10, 12, 10, 1, 120, 18, 1, 121, 34, 4, 82, 101, 108, 117, 18, 5,
    112, 114, 111, 98, 101, 90, 19, 10, 1, 120, 18, 14, 10, 12, 8, 1, 18, 8, 10, 2, 8, 1, 10, 2, 8, 4, 98, 19, 10, 1,
    121, 18, 14, 10, 12, 8, 1, 18, 8, 10, 2, 8, 1, 10, 2, 8, 4, 66, 4, 10, 0, 16, 17,
];

/// What one provider can do on this machine.
#[derive(Debug, Clone)]
pub struct ProviderProbe {
    pub kind: ProviderKind,
    /// Whether the loaded ONNX Runtime build includes the provider.
    pub compiled_in: bool,
    /// `Ok` when a session with the provider (and error-on-failure) runs;
    /// else the reason, in words an admin can act on.
    pub initialises: Result<(), String>,
}

/// The ONNX Runtime name of a provider ("CUDAExecutionProvider").
pub fn ort_name(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Tensorrt => ep::TensorRT::NAME,
        ProviderKind::Cuda => ep::CUDA::NAME,
        ProviderKind::Cpu => ep::CPU::NAME,
    }
}

pub fn compiled_in(kind: ProviderKind) -> bool {
    let available = match kind {
        ProviderKind::Tensorrt => ep::TensorRT::is_available(),
        ProviderKind::Cuda => ep::CUDA::is_available(),
        ProviderKind::Cpu => ep::CPU::is_available(),
    };
    available.unwrap_or(false)
}

/// The provider as an ort dispatch that errors instead of silently falling back.
pub fn dispatch(kind: ProviderKind) -> ep::ExecutionProviderDispatch {
    match kind {
        ProviderKind::Tensorrt => ep::TensorRT::default().build().error_on_failure(),
        ProviderKind::Cuda => ep::CUDA::default().build().error_on_failure(),
        ProviderKind::Cpu => ep::CPU::default().build().error_on_failure(),
    }
}

/// Tries a tiny session on `kind` and runs it once.
pub fn probe(runtime: &RuntimeInfo, kind: ProviderKind) -> ProviderProbe {
    let compiled = compiled_in(kind);
    let initialises = if !compiled {
        Err(explain(kind, "not included in this ONNX Runtime build"))
    } else {
        try_session(&runtime.environment, kind).map_err(|reason| explain(kind, &reason))
    };
    ProviderProbe {
        kind,
        compiled_in: compiled,
        initialises,
    }
}

fn try_session(environment: &ort::environment::Environment, kind: ProviderKind) -> Result<(), String> {
    let builder = Session::builder(environment).map_err(|e| e.to_string())?;
    let builder = builder
        .with_execution_providers([dispatch(kind)])
        .map_err(|e| e.to_string())?;
    let mut builder = builder;
    let mut session = builder.commit_from_memory(PROBE_MODEL).map_err(|e| e.to_string())?;
    let input =
        ort::value::Tensor::from_array(([1usize, 4], vec![-1.0f32, 0.0, 1.0, 2.0])).map_err(|e| e.to_string())?;
    let outputs = session.run(ort::inputs!["x" => input]).map_err(|e| e.to_string())?;
    let (_, values) = outputs["y"].try_extract_tensor::<f32>().map_err(|e| e.to_string())?;
    if values != [0.0, 0.0, 1.0, 2.0] {
        return Err(format!("probe model gave wrong values {values:?}"));
    }
    Ok(())
}

/// Turns a loader or registration error into a sentence an admin can act on.
pub fn explain(kind: ProviderKind, raw: &str) -> String {
    let name = kind.name();
    let drop_hint = format!("or drop \"{name}\" from providers");
    if kind == ProviderKind::Cpu {
        return format!("CPU provider failed: {raw}");
    }
    let label = match kind {
        ProviderKind::Tensorrt => "TensorRT",
        ProviderKind::Cuda => "CUDA",
        ProviderKind::Cpu => unreachable!(),
    };
    if raw.contains("not included in this ONNX Runtime build") {
        return format!(
            "{label} provider unavailable: the loaded ONNX Runtime is a CPU-only build; install the onnxruntime-gpu wheel \
             (CUDA 13, cuDNN 9) and point runtime.onnxruntime_library at its libonnxruntime.so, {drop_hint}"
        );
    }
    if let Some(missing) = missing_library(raw) {
        let what = if kind == ProviderKind::Tensorrt {
            "the TensorRT 10 libraries (pip package tensorrt-cu13 or NVIDIA's packages)"
        } else {
            "onnxruntime-gpu's CUDA 13 dependencies (pip packages nvidia-cublas, nvidia-cudnn-cu13, nvidia-cuda-runtime)"
        };
        return format!("{label} provider unavailable: {missing} not found; install {what}, {drop_hint}");
    }
    if raw.contains("no CUDA-capable device") || raw.contains("CUDA failure 100") || raw.contains("cudaErrorNoDevice") {
        return format!("{label} provider unavailable: no NVIDIA GPU is visible to this process (check /dev/nvidia* and the driver), {drop_hint}");
    }
    format!("{label} provider unavailable: {}; {drop_hint}", raw.trim())
}

/// A provider's failure in a few words, for the log line that says it was
/// skipped; [`explain`] (shown by `synthd doctor` and in errors) says what to do.
pub fn brief(kind: ProviderKind, raw: &str) -> String {
    if kind != ProviderKind::Cpu && raw.contains("not included in this ONNX Runtime build") {
        return "the loaded ONNX Runtime is a CPU-only build".into();
    }
    if let Some(missing) = missing_library(raw) {
        return format!("{missing} not found");
    }
    if raw.contains("no CUDA-capable device") || raw.contains("CUDA failure 100") || raw.contains("cudaErrorNoDevice") {
        return "no NVIDIA GPU is visible".into();
    }
    let first = raw.trim().lines().next().unwrap_or_default();
    match first.char_indices().nth(100) {
        Some((end, _)) => format!("{}...", &first[..end]),
        None => first.to_string(),
    }
}

/// The name of a shared library the loader could not find, if the error says so.
fn missing_library(raw: &str) -> Option<String> {
    let marker = ": cannot open shared object file";
    let end = raw.find(marker)?;
    let start = raw[..end]
        .rfind(|c: char| c.is_whitespace() || c == '"' || c == '\'')
        .map_or(0, |i| i + 1);
    Some(raw[start..end].to_string()).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_from_build_info() {
        let info = "ORT Build Info: git-branch=rel-1.32.0, git-commit-id=abc, build type=Release";
        assert_eq!(parse_version(info).as_deref(), Some("1.32.0"));
    }

    #[test]
    fn a_brief_reason_is_a_few_words() {
        let raw = "Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot open shared object file: No such file or directory";
        assert_eq!(brief(ProviderKind::Cuda, raw), "libcublasLt.so.13 not found");
        assert_eq!(
            brief(ProviderKind::Tensorrt, "not included in this ONNX Runtime build"),
            "the loaded ONNX Runtime is a CPU-only build"
        );
        assert!(brief(ProviderKind::Cuda, &"x".repeat(500)).len() < 110);
    }

    #[test]
    fn missing_library_is_named_with_advice() {
        let raw = "Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot open shared object file: No such file or directory";
        let message = explain(ProviderKind::Cuda, raw);
        assert!(message.starts_with("CUDA provider unavailable: libcublasLt.so.13 not found; install onnxruntime-gpu's CUDA 13 dependencies"), "{message}");
        assert!(message.ends_with("or drop \"cuda\" from providers"), "{message}");
    }
}
