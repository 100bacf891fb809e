//! A C-STORE's data set into the inbox, as the drop folder would get it:
//! a Part 10 file written under a temporary name, fsynced, renamed into
//! `inbox/network/<calling AE>/<SOP Instance UID>.dcm`, the folder fsynced.
//! Intake then treats it like any dropped file (study assembly,
//! `stable_age`, the ledger, duplicates, quarantine, crash recovery).
//! Only a durable file is answered with Success.

use super::dimse::Status;
use crate::fsutil;
use crate::ingest::read_header;
use crate::uid_syntax::is_valid as is_valid_uid;
use dicom_object::FileMetaTableBuilder;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The inbox sub-folder the SCP writes into.
pub const NETWORK_FOLDER: &str = "network";

/// One C-STORE request's payload and what its command said about it.
pub struct Received<'a> {
    pub calling_ae_title: &'a str,
    pub sop_class_uid: &'a str,
    pub sop_instance_uid: &'a str,
    pub transfer_syntax: &'a str,
    pub data_set: &'a [u8],
}

/// Why an instance was not stored: the status for the C-STORE-RSP and an
/// Error Comment without PHI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: Status,
    pub comment: String,
}

impl Refusal {
    fn new(status: Status, comment: impl Into<String>) -> Self {
        Refusal {
            status,
            comment: comment.into(),
        }
    }
}

pub struct InboxWriter {
    root: PathBuf,
}

impl InboxWriter {
    pub fn new(inbox: &Path) -> Self {
        InboxWriter {
            root: inbox.join(NETWORK_FOLDER),
        }
    }

    /// Deletes temporary files a crash left behind: they were never
    /// acknowledged, so the peer still holds (and resends) them.
    pub fn sweep_partials(&self) {
        let Ok(folders) = fs::read_dir(&self.root) else { return };
        for folder in folders.flatten() {
            let Ok(files) = fs::read_dir(folder.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.ends_with(".partial") {
                    let _ = fs::remove_file(file.path());
                }
            }
        }
    }

    /// Checks and writes one instance; Ok is the final path once durable.
    pub fn store(&self, received: &Received) -> Result<PathBuf, Refusal> {
        let file = part10(received)?;
        check(received, &file)?;
        let folder = self.root.join(folder_name(received.calling_ae_title));
        self.write_durable(&folder, received.sop_instance_uid, &file).map_err(|error| {
            tracing::error!(target: "net", folder = %folder.display(), %error, "cannot write a received instance; answering Out of Resources");
            Refusal::new(
                Status::REFUSED_OUT_OF_RESOURCES,
                "synthd cannot write to its inbox; try again later",
            )
        })
    }

    fn write_durable(&self, folder: &Path, sop_instance_uid: &str, bytes: &[u8]) -> io::Result<PathBuf> {
        if fsutil::make_private_dir(folder)? {
            // A new folder's entry in its parent must be durable too (and
            // the network folder's in the inbox, when it was new as well).
            fsutil::fsync_dir(&self.root)?;
            if let Some(inbox) = self.root.parent() {
                fsutil::fsync_dir(inbox)?;
            }
        }
        let temp = folder.join(format!(".{sop_instance_uid}.{}.partial", unique_suffix()));
        let written = (|| {
            let mut file: File = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o640)
                .open(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()
        })();
        if let Err(error) = written {
            let _ = fs::remove_file(&temp);
            return Err(error);
        }
        let target = rename_unique(&temp, folder, sop_instance_uid).inspect_err(|_| {
            let _ = fs::remove_file(&temp);
        })?;
        fsutil::fsync_dir(folder)?;
        Ok(target)
    }
}

/// The instance as a Part 10 file: preamble, `DICM`, File Meta built from
/// the command and the presentation context, then the data set as received.
fn part10(received: &Received) -> Result<Vec<u8>, Refusal> {
    for uid in [received.sop_class_uid, received.sop_instance_uid] {
        if !is_valid_uid(uid) {
            return Err(Refusal::new(
                Status::ERROR_CANNOT_UNDERSTAND,
                "the command's Affected SOP Class or Instance UID is not a valid UID",
            ));
        }
    }
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(received.sop_class_uid)
        .media_storage_sop_instance_uid(received.sop_instance_uid)
        .transfer_syntax(received.transfer_syntax)
        .implementation_class_uid(super::accept::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(super::accept::IMPLEMENTATION_VERSION_NAME)
        .source_application_entity_title(received.calling_ae_title)
        .build()
        .map_err(|_| {
            Refusal::new(
                Status::ERROR_CANNOT_UNDERSTAND,
                "cannot build File Meta for the instance",
            )
        })?;
    let mut file = Vec::with_capacity(received.data_set.len() + 512);
    file.extend_from_slice(&[0u8; 128]);
    file.extend_from_slice(b"DICM");
    meta.write(&mut file).map_err(|_| {
        Refusal::new(
            Status::ERROR_CANNOT_UNDERSTAND,
            "cannot encode File Meta for the instance",
        )
    })?;
    file.extend_from_slice(received.data_set);
    Ok(file)
}

/// The header intake will read must parse, and must be the instance the command names.
fn check(received: &Received, file: &[u8]) -> Result<(), Refusal> {
    let header = read_header(file).map_err(|rejection| {
        Refusal::new(
            Status::ERROR_CANNOT_UNDERSTAND,
            format!("the data set cannot be parsed ({})", rejection.code),
        )
    })?;
    if header.sop_class_uid != received.sop_class_uid {
        return Err(Refusal::new(
            Status::ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "SOP Class UID differs from the command's",
        ));
    }
    if header.sop_instance_uid.expose() != received.sop_instance_uid {
        return Err(Refusal::new(
            Status::ERROR_CANNOT_UNDERSTAND,
            "SOP Instance UID differs from the command's",
        ));
    }
    if !is_valid_uid(header.study_instance_uid.expose()) {
        return Err(Refusal::new(
            Status::ERROR_CANNOT_UNDERSTAND,
            "Study Instance UID is not a valid UID",
        ));
    }
    Ok(())
}

/// The calling AE title as a folder name: letters, digits, `-` and `_`
/// kept, anything else (spaces, `/`, `.`) becomes `_`.
pub fn folder_name(ae_title: &str) -> String {
    ae_title
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Renames `temp` to `<uid>.dcm`, or `<uid>~N.dcm` when that name is taken
/// (a second copy of an instance still in the inbox: intake tells an
/// identical duplicate from a conflicting one, so neither is overwritten).
fn rename_unique(temp: &Path, folder: &Path, sop_instance_uid: &str) -> io::Result<PathBuf> {
    for n in 0..1000u32 {
        let name = match n {
            0 => format!("{sop_instance_uid}.dcm"),
            n => format!("{sop_instance_uid}~{n}.dcm"),
        };
        let target = folder.join(name);
        match rename_noreplace(temp, &target) {
            Ok(()) => return Ok(target),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "1000 copies of one instance wait in the inbox",
    ))
}

/// rename(2) that fails with EEXIST instead of replacing; link and unlink
/// where the file system has no RENAME_NOREPLACE.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths for the duration of the call.
    let result = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if result == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EINVAL) {
        fs::hard_link(from, to)?;
        return fs::remove_file(from);
    }
    Err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_keep_only_safe_characters() {
        assert_eq!(folder_name("ORTHANC"), "ORTHANC");
        assert_eq!(folder_name(" A/B .C "), "A_B__C");
        assert_eq!(folder_name(".."), "__");
    }

    #[test]
    fn a_taken_name_gets_a_suffix_and_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join(".a.partial");
        fs::write(&first, b"one").unwrap();
        let second = dir.path().join(".b.partial");
        fs::write(&second, b"two").unwrap();
        assert_eq!(
            rename_unique(&first, dir.path(), "1.2").unwrap(),
            dir.path().join("1.2.dcm")
        );
        assert_eq!(
            rename_unique(&second, dir.path(), "1.2").unwrap(),
            dir.path().join("1.2~1.dcm")
        );
        assert_eq!(fs::read(dir.path().join("1.2.dcm")).unwrap(), b"one");
    }
}
