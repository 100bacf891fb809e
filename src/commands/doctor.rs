//! `synthd doctor`: what an admin needs to know before starting the daemon.

use crate::config::pipeline::ProviderKind;
use crate::config::{ByteSize, Config};
use crate::runtime;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Prints the report; returns 1 when something required is broken.
pub fn run(config_file: &Path, unit: Option<&Path>) -> i32 {
    let mut broken = 0;
    println!("synthd {}", env!("CARGO_PKG_VERSION"));

    let config = match Config::load(config_file) {
        Ok(config) => {
            println!("config: {} (valid)", config_file.display());
            Some(config)
        }
        Err(problems) => {
            broken += 1;
            println!("config: {} INVALID", config_file.display());
            for line in problems.to_string().lines() {
                println!("  {line}");
            }
            None
        }
    };

    let configured_library = config.as_ref().and_then(|c| c.onnxruntime_library.as_deref());
    match runtime::init(configured_library) {
        Ok(info) => {
            println!(
                "onnxruntime: {} (version {}, found via {})",
                info.path.display(),
                info.version,
                info.origin
            );
            println!("execution providers:");
            let gpu_required = config.as_ref().is_some_and(|c| {
                c.pipelines
                    .iter()
                    .any(|p| p.pipeline.synth.as_ref().is_some_and(|s| s.require_gpu))
            });
            let mut gpu_ok = false;
            for kind in [ProviderKind::Tensorrt, ProviderKind::Cuda, ProviderKind::Cpu] {
                let probe = runtime::probe(info, kind);
                match &probe.initialises {
                    Ok(()) => {
                        println!("  {:<9} ok ({})", kind.name(), runtime::ort_name(kind));
                        gpu_ok |= kind != ProviderKind::Cpu;
                    }
                    Err(reason) => {
                        println!("  {:<9} unavailable: {reason}", kind.name());
                        if kind == ProviderKind::Cpu {
                            broken += 1;
                        }
                    }
                }
            }
            if gpu_required && !gpu_ok {
                broken += 1;
                println!("  a pipeline sets require_gpu = true, but no GPU provider initialises");
            }
        }
        Err(error) => {
            broken += 1;
            println!("onnxruntime: NOT LOADED");
            for line in error.to_string().lines() {
                println!("  {line}");
            }
        }
    }

    if let Some(config) = &config {
        println!("paths:");
        for (key, path) in config.paths.named() {
            let status = path_status(path);
            if status.starts_with("ok") {
                println!("  {key:<17} {} {status}", path.display());
            } else {
                broken += 1;
                println!("  {key:<17} {} PROBLEM: {status}", path.display());
            }
        }
        match std::fs::metadata(&config.key_file) {
            Ok(metadata) => println!(
                "key file: {} ok (mode {:04o})",
                config.key_file.display(),
                metadata.permissions().mode() & 0o777
            ),
            Err(error) => {
                broken += 1;
                println!("key file: {} PROBLEM: {error}", config.key_file.display());
            }
        }
        println!("pipelines:");
        for pipeline in &config.pipelines {
            let kind = if pipeline.pipeline.synth.is_some() {
                "synthesis"
            } else {
                "de-identify and forward"
            };
            println!("  {:<24} ok ({kind}; {})", pipeline.name(), pipeline.file.display());
        }
        if config.pipelines.is_empty() {
            println!("  none configured: the daemon would quarantine every study as no-matching-pipeline");
        }
        broken += check_unit(config, unit);
    }

    if broken == 0 {
        println!("result: ok");
        0
    } else {
        println!("result: {broken} problem(s) above need attention");
        1
    }
}

/// Every `[paths]` folder must be under the unit's `ReadWritePaths=`
/// (`ProtectSystem=strict` makes the rest read-only). Returns the problems.
fn check_unit(config: &Config, unit: Option<&Path>) -> i32 {
    let Some(unit) = unit.map(Path::to_path_buf).or_else(super::unit_paths::find_unit) else {
        println!("unit: synthd.service not installed; ReadWritePaths= not checked (docs/install.md)");
        return 0;
    };
    let allowed = match super::unit_paths::read_write_paths(&unit) {
        Ok(allowed) => allowed,
        Err(error) => {
            println!("unit: {} PROBLEM: cannot read it: {error}", unit.display());
            return 1;
        }
    };
    let problems = super::unit_paths::mismatches(&config.paths.named(), &allowed);
    if problems.is_empty() {
        println!(
            "unit: {} ok (ReadWritePaths= covers every [paths] folder)",
            unit.display()
        );
        return 0;
    }
    println!(
        "unit: {} PROBLEM: its ReadWritePaths= and the config disagree:",
        unit.display()
    );
    for problem in &problems {
        println!("  {problem}");
    }
    problems.len() as i32
}

/// "ok (writable, 12.3GiB free)" or what is wrong.
fn path_status(path: &Path) -> String {
    if !path.is_dir() {
        return "missing; create it (synthd init makes the whole layout) or fix [paths]".to_string();
    }
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return "path contains a NUL byte".to_string();
    };
    // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } != 0 {
        return format!("not writable by this user: {}", std::io::Error::last_os_error());
    }
    match free_space(&c_path) {
        Some(bytes) => format!("ok (writable, {} free)", ByteSize(bytes)),
        None => "ok (writable)".to_string(),
    }
}

pub fn free_space_of(path: &Path) -> Option<u64> {
    free_space(&CString::new(path.as_os_str().as_bytes()).ok()?)
}

fn free_space(c_path: &CString) -> Option<u64> {
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: stat is a properly sized out-parameter and c_path is NUL-terminated.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}
