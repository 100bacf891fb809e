//! What the daemon asks of the operating system: signals, systemd's notify
//! socket, free space, and telling environment faults from bad data.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

static TERMINATE: AtomicBool = AtomicBool::new(false);
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(signal: libc::c_int) {
    // Only async-signal-safe work here: set a flag the main loop polls.
    if signal == libc::SIGHUP {
        RELOAD.store(true, Ordering::SeqCst);
    } else {
        TERMINATE.store(true, Ordering::SeqCst);
    }
}

/// Routes SIGTERM, SIGINT and SIGHUP to flags read by [`take_terminate`] and [`take_reload`].
pub fn install_signal_handlers() -> io::Result<()> {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only stores to atomics; sigaction is given a zeroed, valid struct.
        let result = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

pub fn terminate_requested() -> bool {
    TERMINATE.load(Ordering::SeqCst)
}

pub fn take_reload() -> bool {
    RELOAD.swap(false, Ordering::SeqCst)
}

/// Sends a message to systemd's `$NOTIFY_SOCKET` (sd_notify protocol); a no-op outside systemd.
pub fn sd_notify(message: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(datagram) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = socket.as_encoded_bytes();
    let _ = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|address| datagram.send_to_addr(message.as_bytes(), &address))
    } else {
        datagram.send_to(message.as_bytes(), Path::new(&socket))
    };
}

/// Half of systemd's watchdog interval, when the unit sets `WatchdogSec=`.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    Some(std::time::Duration::from_micros(usec / 2))
}

/// Bytes available to an unprivileged writer on the file system holding `path`.
pub fn free_space(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stats.f_bavail as u64 * stats.f_frsize as u64)
}

/// Whether this process may write into the folder at `path` (access(2), W_OK).
pub fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: the path is NUL-terminated and outlives the call.
    unsafe { libc::access(c_path.as_ptr(), libc::W_OK) == 0 }
}

/// Whether an I/O error is the environment's fault (full disk, read-only or
/// missing mount, permissions): such errors pause intake and are retried;
/// they never quarantine data.
pub fn is_environment_fault(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(
            libc::ENOSPC
                | libc::EDQUOT
                | libc::EROFS
                | libc::EACCES
                | libc::EPERM
                | libc::ENOENT
                | libc::EIO
                | libc::ENOTCONN
                | libc::ESTALE
        )
    ) || matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied)
}

/// Test seam, compiled into debug builds only: while the file named by
/// `SYNTHD_FAULT_ENOSPC_FILE` exists, output writes fail with ENOSPC.
pub fn injected_write_fault() -> Option<io::Error> {
    injected_fault("SYNTHD_FAULT_ENOSPC_FILE", libc::ENOSPC)
}

/// Test seam, compiled into debug builds only: while the file named by
/// `SYNTHD_FAULT_FLUSH_FILE` exists, flushing the outbox fails with EIO.
pub fn injected_flush_fault() -> Option<io::Error> {
    injected_fault("SYNTHD_FAULT_FLUSH_FILE", libc::EIO)
}

#[cfg(debug_assertions)]
fn injected_fault(flag_variable: &str, errno: i32) -> Option<io::Error> {
    let flag = std::env::var_os(flag_variable)?;
    Path::new(&flag).exists().then(|| io::Error::from_raw_os_error(errno))
}

#[cfg(not(debug_assertions))]
fn injected_fault(_flag_variable: &str, _errno: i32) -> Option<io::Error> {
    None
}

/// Whether the process runs as root.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_is_an_environment_fault_and_bad_data_is_not() {
        assert!(is_environment_fault(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_environment_fault(&io::Error::from_raw_os_error(libc::EROFS)));
        assert!(!is_environment_fault(&io::Error::new(
            io::ErrorKind::InvalidData,
            "bad"
        )));
        assert!(free_space(Path::new("/")).unwrap() > 0);
    }

    #[test]
    fn notify_socket_receives_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("notify.sock");
        let server = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
        // SAFETY (test): set_var in a single test; no other test reads NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &socket) };
        sd_notify("READY=1");
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buffer = [0u8; 64];
        let n = server.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"READY=1");
    }
}
