//! Finding libonnxruntime.so without downloading anything.
//!
//! Order: config `runtime.onnxruntime_library`, `$ORT_DYLIB_PATH`, the
//! project's bootstrap folder, the system library path, then a Python
//! `onnxruntime` / `onnxruntime-gpu` install (`onnxruntime/capi/`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The ONNX Runtime version the bootstrap script pins.
pub const PINNED_VERSION: &str = "1.32.0";
/// The command that makes a missing library appear.
pub const FIX_COMMAND: &str = "scripts/bootstrap-onnxruntime.sh";

/// Where a library was found, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Config,
    Environment,
    Bootstrap,
    SystemPath,
    Python,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Config => "config runtime.onnxruntime_library",
            Origin::Environment => "$ORT_DYLIB_PATH",
            Origin::Bootstrap => "the project's bootstrap folder",
            Origin::SystemPath => "the system library path",
            Origin::Python => "a Python onnxruntime install",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Located {
    pub path: PathBuf,
    pub origin: Origin,
}

/// No library anywhere: says where synthd looked and how to fix it.
#[derive(Debug, Clone, thiserror::Error)]
pub struct NotFound {
    pub looked: Vec<String>,
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "ONNX Runtime library (libonnxruntime.so) not found. Looked in:")?;
        for place in &self.looked {
            writeln!(f, "  - {place}")?;
        }
        write!(
            f,
            "Fix: run `{FIX_COMMAND}` in the synthd source folder (fetches the pinned onnxruntime {PINNED_VERSION} wheel with pip), \
             or set runtime.onnxruntime_library in synthd.toml"
        )
    }
}

/// The folder `scripts/bootstrap-onnxruntime.sh` extracts the library into.
pub fn bootstrap_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".bootstrap/onnxruntime")
}

pub fn locate(configured: Option<&Path>) -> Result<Located, NotFound> {
    let mut looked = Vec::new();

    match configured {
        Some(path) if path.is_file() => {
            return Ok(Located {
                path: path.to_path_buf(),
                origin: Origin::Config,
            })
        }
        Some(path) => looked.push(format!(
            "{} (runtime.onnxruntime_library: no such file)",
            path.display()
        )),
        None => looked.push("runtime.onnxruntime_library (not set)".to_string()),
    }

    match std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        Some(value) => {
            let path = PathBuf::from(value);
            if path.is_file() {
                return Ok(Located {
                    path,
                    origin: Origin::Environment,
                });
            }
            looked.push(format!("{} ($ORT_DYLIB_PATH: no such file)", path.display()));
        }
        None => looked.push("$ORT_DYLIB_PATH (not set)".to_string()),
    }

    let bootstrap = bootstrap_dir();
    if let Some(path) = library_in(&bootstrap) {
        return Ok(Located {
            path,
            origin: Origin::Bootstrap,
        });
    }
    looked.push(format!("{} (bootstrap folder: empty or missing)", bootstrap.display()));

    let system_dirs = system_library_dirs();
    for dir in &system_dirs {
        if let Some(path) = library_in(dir) {
            return Ok(Located {
                path,
                origin: Origin::SystemPath,
            });
        }
    }
    let shown: Vec<String> = system_dirs.iter().map(|d| d.display().to_string()).collect();
    looked.push(format!("system library path ({})", shown.join(", ")));

    match python_capi_dir() {
        Some(dir) => {
            if let Some(path) = library_in(&dir) {
                return Ok(Located {
                    path,
                    origin: Origin::Python,
                });
            }
            looked.push(format!("{} (Python onnxruntime: no library inside)", dir.display()));
        }
        None => looked.push("Python onnxruntime / onnxruntime-gpu package (not importable by python3)".to_string()),
    }

    Err(NotFound { looked })
}

/// The newest-looking `libonnxruntime.so*` in `dir`.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let exact = dir.join("libonnxruntime.so");
    if exact.is_file() {
        return Some(exact);
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.is_file()
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .collect();
    candidates.sort();
    candidates.pop()
}

fn system_library_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|value| std::env::split_paths(&value).collect())
        .unwrap_or_default();
    for dir in [
        "/usr/local/lib",
        "/usr/local/lib64",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ] {
        dirs.push(PathBuf::from(dir));
    }
    dirs
}

/// `onnxruntime/capi` of whatever onnxruntime python3 imports, found without
/// importing it (importing loads the library and costs a second).
fn python_capi_dir() -> Option<PathBuf> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u; s = u.find_spec('onnxruntime'); print(s.submodule_search_locations[0] if s else '')",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let package = text.trim();
    if package.is_empty() {
        return None;
    }
    Some(Path::new(package).join("capi"))
}
