//! A C-STORE's data set into the inbox, as the drop folder would get it:
//! a Part 10 file written under a temporary name as the data set's
//! fragments arrive (so memory does not grow with the instance), checked,
//! fsynced, renamed into `inbox/network/<calling AE>/<SOP Instance
//! UID>.dcm`, the folder fsynced. Intake then treats it like any dropped
//! file (study assembly, `stable_age`, the ledger, duplicates, quarantine,
//! crash recovery). Only a durable file is answered with Success; an
//! instance that never completes has its temporary file removed (or swept
//! at the next start, after a crash).

use super::dimse::Status;
use crate::fsutil;
use crate::ingest::read_header_from;
use crate::uid_syntax::is_valid as is_valid_uid;
use dicom_object::FileMetaTableBuilder;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The inbox sub-folder the SCP writes into.
pub const NETWORK_FOLDER: &str = "network";

/// What a C-STORE request's command and presentation context say about
/// the instance whose data set follows.
pub struct Announced<'a> {
    pub calling_ae_title: &'a str,
    pub sop_class_uid: &'a str,
    pub sop_instance_uid: &'a str,
    pub transfer_syntax: &'a str,
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
    /// acknowledged, so the peer still holds (and resends) them. This
    /// process's own (an SCP started again by a reload while an instance
    /// is still arriving) are left alone.
    pub fn sweep_partials(&self) {
        let ours = format!(".{}-", process_token());
        let Ok(folders) = fs::read_dir(&self.root) else { return };
        for folder in folders.flatten() {
            let Ok(files) = fs::read_dir(folder.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.ends_with(".partial") && !name.contains(&ours) {
                    let _ = fs::remove_file(file.path());
                }
            }
        }
    }

    /// Starts receiving one instance: its UIDs checked, a temporary file
    /// holding the preamble and File Meta. Refused when the UIDs are not
    /// valid (nothing is created) or the inbox cannot be written.
    pub fn begin(&self, announced: &Announced) -> Result<Incoming, Refusal> {
        let head = part10_head(announced)?;
        let folder = self.root.join(folder_name(announced.calling_ae_title));
        let temp = folder.join(format!(".{}.{}.partial", announced.sop_instance_uid, unique_suffix()));
        let file = self
            .create(&folder, &temp)
            .map_err(|error| out_of_resources(&folder, &error))?;
        let mut incoming = Incoming {
            folder,
            temp: Some(temp),
            file: io::BufWriter::with_capacity(WRITE_BUFFER, file),
            sop_class_uid: announced.sop_class_uid.to_string(),
            sop_instance_uid: announced.sop_instance_uid.to_string(),
            failed: None,
        };
        incoming.append(&head);
        Ok(incoming)
    }

    /// Creates the calling AE's folder when needed (its entry made durable)
    /// and a new temporary file in it.
    fn create(&self, folder: &Path, temp: &Path) -> io::Result<File> {
        let mut tries = 0;
        loop {
            if fsutil::make_private_dir(folder)? {
                // A new folder's entry in its parent must be durable too (and
                // the network folder's in the inbox, when it was new as well).
                fsutil::fsync_dir(&self.root)?;
                if let Some(inbox) = self.root.parent() {
                    fsutil::fsync_dir(inbox)?;
                }
            }
            let opened = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o640)
                .open(temp);
            match opened {
                // Intake removes inbox folders left empty for `stable_age`;
                // it may have taken this one in between.
                Err(error) if error.kind() == io::ErrorKind::NotFound && tries == 0 => tries += 1,
                other => return other,
            }
        }
    }
}

/// Small data set fragments are gathered this much before a write; a
/// fragment this large or larger (a PDU at the default `max_pdu`) goes
/// straight to the file.
const WRITE_BUFFER: usize = 256 << 10;

/// One instance being received into its temporary file. Dropped without
/// [`Incoming::finish`] (A-ABORT, timeout, lost connection), the file is removed.
pub struct Incoming {
    folder: PathBuf,
    temp: Option<PathBuf>,
    file: io::BufWriter<File>,
    sop_class_uid: String,
    sop_instance_uid: String,
    /// The first write error; the rest of the data set is read and dropped.
    failed: Option<io::Error>,
}

impl Incoming {
    /// Appends a fragment of the data set.
    pub fn append(&mut self, fragment: &[u8]) {
        if self.failed.is_none() {
            if let Err(error) = self.file.write_all(fragment) {
                self.failed = Some(error);
            }
        }
    }

    /// The data set is whole: checks it is the instance the command named,
    /// makes it durable under its name; Ok is the final path.
    pub fn finish(mut self) -> Result<PathBuf, Refusal> {
        if let Some(error) = self.failed.take() {
            return Err(out_of_resources(&self.folder, &error));
        }
        let file = match self.file.flush() {
            Ok(()) => self.file.get_mut(),
            Err(error) => return Err(out_of_resources(&self.folder, &error)),
        };
        if let Err(error) = file.seek(io::SeekFrom::Start(0)) {
            return Err(out_of_resources(&self.folder, &error));
        }
        check(&self.sop_class_uid, &self.sop_instance_uid, file)?;
        let temp = self.temp.clone().expect("present until finished");
        let durable = file
            .sync_all()
            .and_then(|()| rename_unique(&temp, &self.folder, &self.sop_instance_uid))
            .and_then(|target| fsutil::fsync_dir(&self.folder).map(|()| target));
        match durable {
            Ok(target) => {
                self.temp = None;
                Ok(target)
            }
            Err(error) => Err(out_of_resources(&self.folder, &error)),
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = fs::remove_file(temp);
        }
    }
}

fn out_of_resources(folder: &Path, error: &io::Error) -> Refusal {
    tracing::error!(target: "net", folder = %folder.display(), %error, "cannot write a received instance; answering Out of Resources");
    Refusal::new(
        Status::REFUSED_OUT_OF_RESOURCES,
        "synthd cannot write to its inbox; try again later",
    )
}

/// The start of the instance as a Part 10 file: preamble, `DICM`, File
/// Meta built from the command and the presentation context; the data set
/// follows as received.
fn part10_head(announced: &Announced) -> Result<Vec<u8>, Refusal> {
    for uid in [announced.sop_class_uid, announced.sop_instance_uid] {
        if !is_valid_uid(uid) {
            return Err(Refusal::new(
                Status::ERROR_CANNOT_UNDERSTAND,
                "the command's Affected SOP Class or Instance UID is not a valid UID",
            ));
        }
    }
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(announced.sop_class_uid)
        .media_storage_sop_instance_uid(announced.sop_instance_uid)
        .transfer_syntax(announced.transfer_syntax)
        .implementation_class_uid(super::accept::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(super::accept::IMPLEMENTATION_VERSION_NAME)
        .source_application_entity_title(announced.calling_ae_title)
        .build()
        .map_err(|_| {
            Refusal::new(
                Status::ERROR_CANNOT_UNDERSTAND,
                "cannot build File Meta for the instance",
            )
        })?;
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(&[0u8; 128]);
    head.extend_from_slice(b"DICM");
    meta.write(&mut head).map_err(|_| {
        Refusal::new(
            Status::ERROR_CANNOT_UNDERSTAND,
            "cannot encode File Meta for the instance",
        )
    })?;
    Ok(head)
}

/// The header intake will read (read from the file up to Pixel Data) must
/// parse, and must be the instance the command names.
fn check(sop_class_uid: &str, sop_instance_uid: &str, file: &File) -> Result<(), Refusal> {
    let header = read_header_from(io::BufReader::new(file)).map_err(|rejection| {
        Refusal::new(
            Status::ERROR_CANNOT_UNDERSTAND,
            format!("the data set cannot be parsed ({})", rejection.code),
        )
    })?;
    if header.sop_class_uid != sop_class_uid {
        return Err(Refusal::new(
            Status::ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "SOP Class UID differs from the command's",
        ));
    }
    if header.sop_instance_uid.expose() != sop_instance_uid {
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
    format!("{}-{}", process_token(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// This process's part of temporary names: its pid and start time (a pid
/// alone repeats, e.g. in a container where synthd is always pid 1).
fn process_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!("{}x{:x}", std::process::id(), started.as_nanos())
    })
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
    fn an_unfinished_instance_leaves_nothing_and_a_sweep_spares_this_process() {
        let inbox = tempfile::tempdir().unwrap();
        let writer = InboxWriter::new(inbox.path());
        let announced = Announced {
            calling_ae_title: "PEER",
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.4",
            sop_instance_uid: "1.2.3.4",
            transfer_syntax: "1.2.840.10008.1.2.1",
        };
        let folder = inbox.path().join("network/PEER");
        let mut incoming = writer.begin(&announced).unwrap();
        incoming.append(&[0u8; 1000]);
        let crashed = folder.join(".1.2.3.5.1-0.partial");
        fs::write(&crashed, b"left by a crash").unwrap();
        writer.sweep_partials();
        assert_eq!(
            fs::read_dir(&folder).unwrap().count(),
            1,
            "only this process's own is kept"
        );
        drop(incoming);
        assert_eq!(fs::read_dir(&folder).unwrap().count(), 0);
        let invalid = Announced {
            sop_instance_uid: "1.2/../x",
            ..announced
        };
        assert_eq!(
            writer.begin(&invalid).err().map(|r| r.status),
            Some(Status::ERROR_CANNOT_UNDERSTAND)
        );
        assert_eq!(fs::read_dir(&folder).unwrap().count(), 0);
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
