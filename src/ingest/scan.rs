//! Walking the inbox. Symlinks are never followed (a link in the inbox is
//! refused, whatever it points at), so nothing outside the inbox is read.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

/// What one inbox entry is to intake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A regular file that may become an instance once settled.
    File(Candidate),
    /// `<anything>.ready`: the study in this folder is complete.
    ReadyMarker(PathBuf),
    /// Hidden, `*.partial`, `*.tmp`: still being written under a temporary name.
    Skipped,
    /// A symlink, FIFO, socket or device: refused, never followed.
    NotRegular(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathBuf,
    pub size: u64,
    pub mtime: SystemTime,
}

/// Whether a name is a temporary one that senders rename when done.
fn is_temporary(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".partial") || name.ends_with(".tmp")
}

/// Whether a folder between `inbox` and `path` has a temporary name.
fn in_temporary_folder(inbox: &Path, path: &Path) -> bool {
    let Ok(relative) = path.strip_prefix(inbox) else {
        return false;
    };
    let mut folders = relative.parent().into_iter().flat_map(|p| p.components());
    folders.any(|c| is_temporary(&c.as_os_str().to_string_lossy()))
}

/// Whether `path` is lexically inside `inbox` (no `..` escapes).
fn inside(inbox: &Path, path: &Path) -> bool {
    match path.strip_prefix(inbox) {
        Ok(rest) => rest.components().all(|c| matches!(c, Component::Normal(_))),
        Err(_) => false,
    }
}

/// Classifies one path without following links. None when it vanished, is a
/// folder, or lies outside the inbox (events can name paths we must not touch).
pub fn classify(inbox: &Path, path: &Path) -> Option<Entry> {
    if !inside(inbox, path) || path == inbox {
        return None;
    }
    let metadata = fs::symlink_metadata(path).ok()?;
    let name = path.file_name()?.to_string_lossy();
    let kind = metadata.file_type();
    if kind.is_dir() {
        return None;
    }
    // A file inside a hidden or temporary folder is still being delivered too:
    // senders fill `.incoming/` and rename it into place when it is complete.
    if in_temporary_folder(inbox, path) || is_temporary(&name) {
        return Some(Entry::Skipped);
    }
    if !kind.is_file() {
        return Some(Entry::NotRegular(path.to_path_buf()));
    }
    if name.ends_with(".ready") {
        return Some(Entry::ReadyMarker(path.to_path_buf()));
    }
    let mtime = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    Some(Entry::File(Candidate {
        path: path.to_path_buf(),
        size: metadata.size(),
        mtime,
    }))
}

/// Every entry under `inbox`, recursively, folders not followed through links.
pub fn scan_inbox(inbox: &Path) -> std::io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut folders = vec![inbox.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let listing = match fs::read_dir(&folder) {
            Ok(listing) => listing,
            // A subfolder removed while we walk is not an error.
            Err(error) if folder != inbox && error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        for item in listing.flatten() {
            let path = item.path();
            match item.file_type() {
                Ok(kind) if kind.is_dir() => folders.push(path),
                Ok(_) => entries.extend(classify(inbox, &path)),
                Err(_) => {}
            }
        }
    }
    entries.sort_by(|a, b| entry_path(a).cmp(&entry_path(b)));
    Ok(entries)
}

/// Removes the inbox's empty drop folders that have not changed for
/// `quiet_for` (senders make a folder per study; once synthd has taken the
/// files it would stay for ever). Hidden folders (a sender's staging area)
/// and the inbox itself stay. A folder emptied by this pass goes too when it
/// had been quiet that long before. `rmdir` fails on a folder that gained
/// an entry meanwhile, so nothing a sender just wrote is touched. Returns
/// the folders removed. Folders in `keep` stay (the daemon still has to
/// sync them).
pub fn remove_empty_folders(inbox: &Path, quiet_for: Duration, keep: &HashSet<PathBuf>) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    if let Ok(listing) = fs::read_dir(inbox) {
        for item in listing.flatten() {
            if item.file_type().is_ok_and(|kind| kind.is_dir()) {
                remove_if_empty(&item.path(), quiet_for, keep, &mut removed);
            }
        }
    }
    removed
}

/// Post-order: children first; true when `folder` was removed.
fn remove_if_empty(folder: &Path, quiet_for: Duration, keep: &HashSet<PathBuf>, removed: &mut Vec<PathBuf>) -> bool {
    let hidden = folder
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with('.'))
        || keep.contains(folder);
    let quiet = fs::symlink_metadata(folder)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age >= quiet_for);
    let Ok(listing) = fs::read_dir(folder) else {
        return false;
    };
    let mut left = 0;
    for item in listing.flatten() {
        let is_dir = item.file_type().is_ok_and(|kind| kind.is_dir());
        if !(is_dir && remove_if_empty(&item.path(), quiet_for, keep, removed)) {
            left += 1;
        }
    }
    if hidden || !quiet || left > 0 || fs::remove_dir(folder).is_err() {
        return false;
    }
    removed.push(folder.to_path_buf());
    true
}

fn entry_path(entry: &Entry) -> Option<&Path> {
    match entry {
        Entry::File(candidate) => Some(&candidate.path),
        Entry::ReadyMarker(path) | Entry::NotRegular(path) => Some(path),
        Entry::Skipped => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_refuses_links_and_skips_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox");
        fs::create_dir_all(inbox.join("study")).unwrap();
        fs::write(inbox.join("study/a.dcm"), b"x").unwrap();
        fs::write(inbox.join("study/b.dcm.partial"), b"x").unwrap();
        fs::write(inbox.join("study/.c.dcm"), b"x").unwrap();
        fs::write(inbox.join("study/done.ready"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", inbox.join("link.dcm")).unwrap();
        std::os::unix::fs::symlink(dir.path(), inbox.join("linked-folder")).unwrap();
        let entries = scan_inbox(&inbox).unwrap();
        let files: Vec<_> = entries.iter().filter(|e| matches!(e, Entry::File(_))).collect();
        assert_eq!(files.len(), 1);
        assert!(entries.contains(&Entry::ReadyMarker(inbox.join("study/done.ready"))));
        assert!(entries.contains(&Entry::NotRegular(inbox.join("link.dcm"))));
        assert!(entries.contains(&Entry::NotRegular(inbox.join("linked-folder"))));
        assert_eq!(entries.iter().filter(|e| **e == Entry::Skipped).count(), 2);
        assert_eq!(classify(&inbox, &inbox.join("../escape.dcm")), None);
    }

    #[test]
    fn files_in_hidden_or_temporary_folders_wait_for_the_rename() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox");
        for folder in [".incoming/study", "upload.partial", "batch.tmp/x"] {
            fs::create_dir_all(inbox.join(folder)).unwrap();
            fs::write(inbox.join(folder).join("a.dcm"), b"x").unwrap();
        }
        let entries = scan_inbox(&inbox).unwrap();
        assert!(entries.iter().all(|e| *e == Entry::Skipped), "{entries:?}");
        fs::rename(inbox.join(".incoming/study"), inbox.join("study")).unwrap();
        let taken = classify(&inbox, &inbox.join("study/a.dcm"));
        assert!(matches!(taken, Some(Entry::File(_))), "{taken:?}");
    }

    #[test]
    fn empty_drop_folders_go_once_quiet_and_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox");
        for folder in ["empty/nested", "full", ".staging", "kept"] {
            fs::create_dir_all(inbox.join(folder)).unwrap();
        }
        fs::write(inbox.join("full/a.dcm"), b"x").unwrap();
        // Not quiet long enough: nothing goes.
        let keep = HashSet::from([inbox.join("kept")]);
        assert!(remove_empty_folders(&inbox, Duration::from_secs(3600), &keep).is_empty());
        let removed = remove_empty_folders(&inbox, Duration::ZERO, &keep);
        assert_eq!(removed, [inbox.join("empty/nested"), inbox.join("empty")]);
        assert!(inbox.join("full/a.dcm").is_file() && inbox.join(".staging").is_dir() && inbox.is_dir());
        // A folder the daemon still has to sync stays.
        assert!(inbox.join("kept").is_dir());
    }
}
