//! Durable file operations. Every output is written unnamed (O_TMPFILE) or
//! under a temporary name, fsynced, given its name, and its folder fsynced,
//! so that a crash leaves either the old state or the new, never a torn file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` and its missing parents with mode 0750 (they may hold PHI).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new().recursive(true).mode(0o750).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o750))
}

/// fsyncs a folder so that renames and creations inside it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` durably with `mode`: temp name in the same
/// folder, fsync, rename, fsync of the folder. Replaces an existing file.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_via_temp(path, bytes, mode, true)
}

/// Like [`write_atomic`] without the fsyncs, for batch tools that make a
/// whole run durable at once with [`sync_filesystem`] before they report.
pub fn write_replace(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_via_temp(path, bytes, mode, false)
}

fn write_via_temp(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let temp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    if let Some(file) = open_unnamed(dir, mode)? {
        if write_unnamed(file, dir, path, &temp, bytes, mode, durable)? {
            return Ok(());
        }
    }
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
    }
    fs::set_permissions(&temp, fs::Permissions::from_mode(mode))?;
    fs::rename(&temp, path)?;
    if durable {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Opens an unnamed file in `dir` (O_TMPFILE) when the kernel, the file
/// system and /proc allow giving it a name later; `None` means "use a temp
/// name". An unnamed file needs one folder operation instead of two (create
/// and rename), which matters when workers write into the same folder, and a
/// killed writer leaves nothing behind to clean up.
fn open_unnamed(dir: &Path, mode: u32) -> io::Result<Option<File>> {
    static PROC_FD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*PROC_FD.get_or_init(|| Path::new("/proc/self/fd").is_dir())
        || UNNAMED_UNLINKABLE.load(std::sync::atomic::Ordering::Relaxed)
    {
        return Ok(None);
    }
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(mode)
        .open(dir)
    {
        Ok(file) => Ok(Some(file)),
        // Not supported by this kernel or file system.
        Err(error)
            if matches!(
                error.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// Set once giving an unnamed file a name was refused (a security module,
/// a file system without linkat support): from then on, temp names only.
static UNNAMED_UNLINKABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes `bytes` into the unnamed `file` and names it `path`. `Ok(false)`:
/// the name could not be given for a reason that is not the data's or the
/// disk's (the caller writes again under a temp name, which reports any real
/// fault, such as a missing folder, in the usual way).
fn write_unnamed(
    mut file: File,
    dir: &Path,
    path: &Path,
    temp: &Path,
    bytes: &[u8],
    mode: u32,
    durable: bool,
) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    file.write_all(bytes)?;
    // The umask may have narrowed the mode given to open.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    if durable {
        file.sync_all()?;
    }
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    match link_fd(&proc_path, path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            // Replacing: name the file under a temp name, then rename over.
            match fs::remove_file(temp) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
            link_fd(&proc_path, temp)?;
            fs::rename(temp, path)?;
        }
        Err(error) => {
            if matches!(
                error.raw_os_error(),
                Some(libc::EPERM | libc::EACCES | libc::EXDEV | libc::EOPNOTSUPP | libc::EINVAL)
            ) {
                UNNAMED_UNLINKABLE.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            return Ok(false);
        }
    }
    if durable {
        fsync_dir(dir)?;
    }
    Ok(true)
}

fn link_fd(proc_path: &str, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(proc_path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let to = CString::new(to.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: both are valid NUL-terminated strings for the duration of the call.
    let status = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Flushes the whole file system holding `path` (syncfs(2)): one call makes
/// every file a batch wrote durable.
pub fn sync_filesystem(path: &Path) -> io::Result<()> {
    sync_filesystem_of(&File::open(path)?)
}

/// `syncfs` through a descriptor held open: the kernel reports a writeback
/// error to each descriptor once, and only errors after its open, so a run
/// that syncs more than once keeps one descriptor from before its first
/// write and reports what any of its syncs returns.
pub fn sync_filesystem_of(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is valid for the duration of the call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Above this many folders on one file system, [`sync_dirs`] flushes the
/// file system once instead: each folder fsync is a device cache flush of
/// its own, and claiming a burst of small studies touched a hundred folders.
const SYNCFS_ABOVE: usize = 8;

/// Makes the entries of every folder in `dirs` durable: fsyncs each, or one
/// `syncfs` for a file system that holds more than [`SYNCFS_ABOVE`] of them.
pub fn sync_dirs<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut by_device: std::collections::HashMap<u64, Vec<&Path>> = std::collections::HashMap::new();
    for dir in dirs {
        by_device.entry(fs::metadata(dir)?.dev()).or_default().push(dir);
    }
    for dirs in by_device.values() {
        if dirs.len() > SYNCFS_ABOVE {
            sync_filesystem(dirs[0])?;
        } else {
            dirs.iter().try_for_each(|dir| fsync_dir(dir))?;
        }
    }
    Ok(())
}

/// Renames `from` to `to` and fsyncs both folders.
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    if let Some(parent) = to.parent() {
        fsync_dir(parent)?;
    }
    if let Some(parent) = from.parent() {
        if Some(parent) != to.parent() {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_synced_alone_or_by_file_system_and_a_missing_one_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let dirs: Vec<std::path::PathBuf> = (0..=SYNCFS_ABOVE + 1)
            .map(|i| {
                let dir = root.path().join(format!("d{i}"));
                fs::create_dir(&dir).unwrap();
                dir
            })
            .collect();
        sync_dirs(dirs.iter().take(2).map(|d| d.as_path())).unwrap();
        sync_dirs(dirs.iter().map(|d| d.as_path())).unwrap();
        let missing = root.path().join("missing");
        let error = sync_dirs([dirs[0].as_path(), missing.as_path()]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.dcm");
        write_atomic(&path, b"first", 0o640).unwrap();
        write_atomic(&path, b"second", 0o640).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files remain");
    }

    #[test]
    fn batch_write_creates_then_replaces_with_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.dcm");
        write_replace(&path, b"first", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        write_replace(&path, b"second, longer", 0o640).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["out.dcm"], "no temp files remain");
    }

    #[test]
    fn where_unnamed_files_cannot_be_linked_temp_names_serve() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.dcm");
        UNNAMED_UNLINKABLE.store(true, Ordering::Relaxed);
        let result = write_replace(&path, b"via a temp name", 0o640);
        UNNAMED_UNLINKABLE.store(false, Ordering::Relaxed);
        result.unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"via a temp name");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temp files remain");
    }

    #[test]
    fn a_write_into_a_missing_folder_fails_without_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let error = write_replace(&dir.path().join("absent/out.dcm"), b"x", 0o640).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
