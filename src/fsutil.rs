//! Durable file operations. Every output is written unnamed (O_TMPFILE) or
//! under a temporary name, fsynced, given its name, and its folder fsynced,
//! so that a crash leaves either the old state or the new, never a torn file.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` and its missing parents with mode 0750 (they may hold PHI).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    make_private_dir(dir).map(drop)
}

/// [`create_private_dir`], saying whether it made `dir` (false: a folder
/// was there already, left as it is).
pub fn make_private_dir(dir: &Path) -> io::Result<bool> {
    // Most calls make one new folder in an existing one: a single mkdir,
    // and a chmod only when the umask took bits 0750 needs.
    match fs::DirBuilder::new().mode(0o750).create(dir) {
        Ok(()) if !umask_narrows(0o750) => return Ok(true),
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(false),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new().recursive(true).mode(0o750).create(dir)?;
        }
        Err(error) => return Err(error),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o750))?;
    Ok(true)
}

/// fsyncs a folder so that renames and creations inside it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` durably with `mode`: temp name in the same
/// folder, fsync, rename, fsync of the folder. Replaces an existing file.
/// Returns how many of the bytes went through the page cache (see
/// [`write_replace`]).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<u64> {
    write_via_temp(path, bytes, mode, true)
}

/// Like [`write_atomic`] without the fsyncs, for batch tools that make a
/// whole run durable at once with [`sync_filesystem`] before they report.
/// Returns how many of the bytes wait in the page cache for that sync: a
/// large file's whole blocks go straight to the device (see
/// [`write_contents`]), only its tail is buffered.
pub fn write_replace(path: &Path, bytes: &[u8], mode: u32) -> io::Result<u64> {
    write_via_temp(path, bytes, mode, false)
}

fn write_via_temp(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> io::Result<u64> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let temp = || dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    if let Some(file) = open_unnamed(dir, mode)? {
        if let Some(buffered) = write_unnamed(file, dir, path, temp, bytes, mode, durable)? {
            return Ok(buffered);
        }
    }
    let temp = temp();
    let buffered = {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        let buffered = write_contents(&file, bytes)?;
        if durable {
            file.sync_all()?;
        }
        buffered
    };
    fs::set_permissions(&temp, fs::Permissions::from_mode(mode))?;
    fs::rename(&temp, path)?;
    if durable {
        fsync_dir(dir)?;
    }
    Ok(buffered)
}

/// Files at least this large have their whole blocks written with
/// `O_DIRECT`. Copying a file into freshly allocated page-cache pages
/// cost half of `synthd deid`'s CPU time on a 126 MB MR series (on a VM,
/// where every new page is a host fault too), and written-once outputs
/// would only push the PACS's own files out of the cache. Small files
/// stay buffered: a direct write waits for the device, and their bytes
/// are few.
pub const DIRECT_WRITE_MIN: usize = 64 << 10;

/// Buffer address, file offset and length alignment for direct writes:
/// the largest logical block size in use, so valid on every device.
const DIRECT_ALIGN: usize = 4096;

/// Direct writes go through a staging buffer of at most this size per
/// thread, so a huge multi-frame file costs no second copy of itself.
const DIRECT_CHUNK: usize = 1 << 20;

/// Set once a file system refused `O_DIRECT` or a direct write: from then on, buffered only.
static DIRECT_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes `bytes` at the start of the empty `file`: whole 4 KiB blocks of
/// a large file on a local block file system (ext2/3/4, XFS, Btrfs) with
/// `O_DIRECT`, the rest through the page cache. Network and FUSE file
/// systems, tmpfs and overlays always get buffered writes: direct I/O
/// there is a round trip per write, or not supported. Durability is
/// unchanged: the caller's fsync or syncfs also flushes the device's cache.
/// Returns how many bytes went through the page cache.
pub fn write_contents(file: &File, bytes: &[u8]) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let direct = write_direct_prefix(file, bytes)?;
    file.write_all_at(&bytes[direct..], direct as u64)?;
    Ok((bytes.len() - direct) as u64)
}

/// The direct part of [`write_contents`]: how many leading bytes were
/// written to the device (a multiple of [`DIRECT_ALIGN`]; 0 when the file
/// is small or the file system is not one for direct I/O).
fn write_direct_prefix(file: &File, bytes: &[u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::Ordering::Relaxed;
    let whole_blocks = bytes.len() / DIRECT_ALIGN * DIRECT_ALIGN;
    if bytes.len() < DIRECT_WRITE_MIN || DIRECT_REFUSED.load(Relaxed) || !direct_io_suits(file) {
        return Ok(0);
    }
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function borrows; no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_DIRECT) } != 0 {
        DIRECT_REFUSED.store(true, Relaxed);
        return Ok(0);
    }
    let written = DIRECT_BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        let staging = aligned(&mut buffer, DIRECT_CHUNK.min(whole_blocks));
        let mut offset = 0;
        for chunk in bytes[..whole_blocks].chunks(staging.len()) {
            let blocks = &mut staging[..chunk.len()];
            blocks.copy_from_slice(chunk);
            file.write_all_at(blocks, offset)?;
            offset += chunk.len() as u64;
        }
        Ok::<(), io::Error>(())
    });
    // SAFETY: as above; the tail is written buffered.
    let restored = unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } == 0;
    match written {
        Ok(()) if restored => Ok(whole_blocks),
        Ok(()) => Err(io::Error::last_os_error()),
        // The file system took O_DIRECT but not this write; nothing of it
        // counts, the caller writes everything buffered from offset 0.
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) && restored => {
            DIRECT_REFUSED.store(true, Relaxed);
            Ok(0)
        }
        Err(error) => Err(error),
    }
}

/// Whether `file` lives on a local block file system that does direct I/O well.
fn direct_io_suits(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    const EXT_SUPER_MAGIC: i64 = 0xEF53;
    const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
    const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs fills `stat` on success, which is checked before it is read.
    if unsafe { libc::fstatfs(file.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstatfs returned 0, so `stat` is initialised.
    #[allow(clippy::unnecessary_cast)] // `f_type` is i32 on some targets
    let kind = unsafe { stat.assume_init() }.f_type as i64;
    matches!(kind, EXT_SUPER_MAGIC | XFS_SUPER_MAGIC | BTRFS_SUPER_MAGIC)
}

thread_local! {
    /// Each writer thread's staging area for direct writes, reused file after file.
    static DIRECT_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `len` bytes of `buffer` starting at a [`DIRECT_ALIGN`]-aligned address.
fn aligned(buffer: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buffer.len() < len + DIRECT_ALIGN {
        buffer.resize(len + DIRECT_ALIGN, 0);
    }
    let start = buffer.as_ptr().align_offset(DIRECT_ALIGN);
    &mut buffer[start..start + len]
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

/// Writes `bytes` into the unnamed `file` and names it `path`; returns
/// the bytes buffered. `Ok(None)`: the name could not be given for a
/// reason that is not the data's or the disk's (the caller writes again
/// under a temp name, which reports any real fault, such as a missing
/// folder, in the usual way).
fn write_unnamed(
    file: File,
    dir: &Path,
    path: &Path,
    temp: impl Fn() -> std::path::PathBuf,
    bytes: &[u8],
    mode: u32,
    durable: bool,
) -> io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    let buffered = write_contents(&file, bytes)?;
    if umask_narrows(mode) {
        file.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    if durable {
        file.sync_all()?;
    }
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    match link_fd(&proc_path, path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            // Replacing: name the file under a temp name, then rename over.
            let temp = temp();
            match fs::remove_file(&temp) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
            link_fd(&proc_path, &temp)?;
            fs::rename(&temp, path)?;
        }
        Err(error) => {
            if matches!(
                error.raw_os_error(),
                Some(libc::EPERM | libc::EACCES | libc::EXDEV | libc::EOPNOTSUPP | libc::EINVAL)
            ) {
                UNNAMED_UNLINKABLE.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            return Ok(None);
        }
    }
    if durable {
        fsync_dir(dir)?;
    }
    Ok(Some(buffered))
}

/// Whether the process umask takes bits of `mode` away, so that a file
/// created with it needs a chmod. Read once from /proc (umask(2) can only
/// be read by changing it, which would race with other threads creating
/// files); unknown counts as narrowing.
fn umask_narrows(mode: u32) -> bool {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    let umask = UMASK.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|line| line.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    });
    umask.is_none_or(|umask| mode & umask != 0)
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
    fn large_files_go_to_the_device_in_whole_blocks_and_read_back_exactly() {
        // The build tree is on a disk; /tmp may be tmpfs, which keeps every write buffered.
        let root = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target"))
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let probe = File::create(root.path().join("probe")).unwrap();
        let direct = direct_io_suits(&probe);
        for len in [
            0,
            1,
            DIRECT_ALIGN - 1,
            DIRECT_ALIGN,
            DIRECT_WRITE_MIN - 1,
            DIRECT_WRITE_MIN,
            DIRECT_WRITE_MIN + 1,
            200_003,
            DIRECT_CHUNK + DIRECT_ALIGN,
            3 * DIRECT_CHUNK + 5,
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            let path = root.path().join(format!("out-{len}.dcm"));
            // A longer file first: the replacement must not keep its tail.
            write_replace(&path, &vec![0xAA; len + 5000], 0o640).unwrap();
            let buffered = write_replace(&path, &bytes, 0o640).unwrap();
            assert_eq!(fs::read(&path).unwrap(), bytes, "{len} bytes read back");
            let expected =
                if len >= DIRECT_WRITE_MIN && direct && !DIRECT_REFUSED.load(std::sync::atomic::Ordering::Relaxed) {
                    len % DIRECT_ALIGN
                } else {
                    len
                };
            assert_eq!(buffered, expected as u64, "{len} bytes: buffered part");
            let durable = root.path().join(format!("durable-{len}.dcm"));
            write_atomic(&durable, &bytes, 0o640).unwrap();
            assert_eq!(fs::read(&durable).unwrap(), bytes, "{len} bytes written durably");
        }
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
