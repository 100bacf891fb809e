//! When a file is safe to take: its size and mtime stayed unchanged for the
//! settle time, or it arrived by an atomic rename (the sender finished it
//! under another name first).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Observation {
    size: u64,
    mtime: SystemTime,
}

#[derive(Debug, Default)]
pub struct Settler {
    seen: HashMap<PathBuf, (Observation, Instant)>,
    renamed: HashMap<PathBuf, Instant>,
}

impl Settler {
    /// Notes that `path` appeared by a rename, so it is complete already.
    pub fn renamed_in(&mut self, path: &Path) {
        self.renamed.insert(path.to_path_buf(), Instant::now());
    }

    /// Records an observation; true when the file has settled.
    pub fn observe(&mut self, path: &Path, size: u64, mtime: SystemTime, settle: Duration, now: Instant) -> bool {
        let observation = Observation { size, mtime };
        if self.renamed.remove(path).is_some() {
            self.seen.remove(path);
            return true;
        }
        match self.seen.get(path) {
            Some((previous, since)) if *previous == observation => now.duration_since(*since) >= settle,
            _ => {
                self.seen.insert(path.to_path_buf(), (observation, now));
                settle.is_zero()
            }
        }
    }

    /// Forgets a path (taken, or gone).
    pub fn forget(&mut self, path: &Path) {
        self.seen.remove(path);
        self.renamed.remove(path);
    }

    /// The oldest modification time among files seen but not yet taken
    /// (still settling): an upper bound on when the oldest of them arrived
    /// that the claim of a study must not run ahead of (their ctime is
    /// read only when they are taken).
    pub fn oldest_unsettled(&self) -> Option<SystemTime> {
        self.seen.values().map(|(observation, _)| observation.mtime).min()
    }

    /// Whether a file under `folder` is still being watched for settling.
    pub fn unsettled_under(&self, folder: &Path) -> bool {
        self.seen.keys().any(|path| path.parent() == Some(folder))
    }

    /// Drops paths not seen in the last full scan.
    pub fn retain(&mut self, present: &std::collections::HashSet<PathBuf>) {
        self.seen.retain(|path, _| present.contains(path));
        self.renamed.retain(|path, _| present.contains(path));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_growing_file_settles_only_after_it_stops_changing() {
        let mut settler = Settler::default();
        let path = Path::new("/inbox/a.dcm");
        let settle = Duration::from_millis(200);
        let t0 = Instant::now();
        let m = SystemTime::UNIX_EPOCH;
        assert!(!settler.observe(path, 10, m, settle, t0));
        assert!(!settler.observe(path, 20, m, settle, t0 + Duration::from_millis(300)));
        assert!(!settler.observe(path, 20, m, settle, t0 + Duration::from_millis(400)));
        assert!(settler.observe(path, 20, m, settle, t0 + Duration::from_millis(500)));
        assert!(settler.unsettled_under(Path::new("/inbox")));
        settler.forget(path);
        assert!(!settler.unsettled_under(Path::new("/inbox")));
    }

    #[test]
    fn a_renamed_in_file_is_taken_at_once() {
        let mut settler = Settler::default();
        let path = Path::new("/inbox/b.dcm");
        settler.renamed_in(path);
        assert!(settler.observe(path, 5, SystemTime::UNIX_EPOCH, Duration::from_secs(60), Instant::now()));
    }
}
