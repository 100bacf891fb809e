//! Which process holds the ledger: `synthd run` takes an exclusive lock on
//! `paths.state/daemon.lock` for its lifetime, so a second daemon on the same
//! ledger refuses to start, and `synthd status` (or a metrics endpoint) can
//! say whether a daemon is running.
//!
//! Open file description locks (`F_OFD_SETLK`) rather than classic POSIX
//! record locks: a POSIX lock is dropped when the process closes *any*
//! descriptor of the file, which a status check made inside the daemon
//! itself would do. The kernel drops the lock when the holder exits, however
//! it exits, so a crash never leaves a stale lock behind.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside `paths.state`.
pub const LOCK_FILE: &str = "daemon.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another synthd daemon (pid {pid}) holds the ledger in {state}; stop it first (`systemctl stop synthd`)")]
    Held { pid: String, state: PathBuf },
    #[error("cannot lock {path}: {source}; check that paths.state is writable")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Held by the running daemon; dropping it releases the lock.
#[derive(Debug)]
pub struct DaemonLock {
    _file: File,
}

/// A running daemon, as seen from another process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The pid the daemon wrote when it took the lock (it may live in
    /// another pid namespace, so it is informational).
    pub pid: Option<u32>,
}

fn whole_file(kind: libc::c_short) -> libc::flock {
    // SAFETY: flock is a plain C struct; all-zero is a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock
}

impl DaemonLock {
    /// Takes the lock, or says which daemon holds it.
    pub fn acquire(state_dir: &Path) -> Result<DaemonLock, LockError> {
        let path = state_dir.join(LOCK_FILE);
        let io_error = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .open(&path)
            .map_err(io_error)?;
        let lock = whole_file(libc::F_WRLCK as libc::c_short);
        // SAFETY: a valid descriptor and a valid flock struct.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) } != 0 {
            let error = io::Error::last_os_error();
            if matches!(error.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) {
                return Err(LockError::Held {
                    pid: read_pid(&mut file).map_or("unknown".into(), |pid| pid.to_string()),
                    state: state_dir.to_path_buf(),
                });
            }
            return Err(io_error(error));
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        written.map_err(io_error)?;
        Ok(DaemonLock { _file: file })
    }
}

/// The daemon holding the ledger in `state_dir`, if one does. A missing
/// state folder or lock file means none.
pub fn holder(state_dir: &Path) -> io::Result<Option<Holder>> {
    let mut file = match File::open(state_dir.join(LOCK_FILE)) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let mut probe = whole_file(libc::F_WRLCK as libc::c_short);
    // SAFETY: a valid descriptor and a valid flock struct the kernel fills in.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut probe) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if probe.l_type == libc::F_UNLCK as libc::c_short {
        return Ok(None);
    }
    Ok(Some(Holder {
        pid: read_pid(&mut file),
    }))
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_daemon_at_a_time_and_status_sees_it_until_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(holder(dir.path()).unwrap(), None);
        let lock = DaemonLock::acquire(dir.path()).unwrap();
        assert_eq!(
            holder(dir.path()).unwrap(),
            Some(Holder {
                pid: Some(std::process::id())
            })
        );
        // Checking again from this process keeps the lock (POSIX record locks would not).
        assert!(holder(dir.path()).unwrap().is_some());
        let refused = DaemonLock::acquire(dir.path()).unwrap_err();
        assert!(
            refused.to_string().contains(&format!("pid {}", std::process::id())),
            "{refused}"
        );
        drop(lock);
        assert_eq!(holder(dir.path()).unwrap(), None);
        DaemonLock::acquire(dir.path()).unwrap();
    }
}
