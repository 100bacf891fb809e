//! Where received instances wait for their study to complete:
//! `paths.work/receiving/<study>/<instance>.dcm`.
//!
//! Intake moves each settled file there once its `received` record is
//! committed, so the claim of a complete study is one rename of that
//! folder to `paths.work/<job>/` instead of one rename per instance after
//! `stable_age` expires: the renames happen while the study is still
//! arriving, off the path from expiry to outbox.
//!
//! The folder rename is taken only when this process made the folder and
//! moved exactly the claim's instances into it. Anything else (a folder left
//! by an earlier run, a move an environment fault stopped, an instance still
//! in the inbox) is claimed file by file, each file looked for in its
//! work folder, its receiving folder, then the inbox.

use crate::ledger;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// An instance recorded `received` whose file is still in the inbox.
#[derive(Debug)]
pub(super) struct ToStage {
    pub id: i64,
    pub study: String,
    pub inbox_path: PathBuf,
}

#[derive(Debug, Default)]
pub(super) struct Receiving {
    /// Files to move once the intake round's records are committed.
    pub to_stage: Vec<ToStage>,
    /// Studies whose receiving folder this process created, with the
    /// instances it moved into it.
    made_here: HashMap<String, HashSet<i64>>,
    /// Studies whose folder predates this process or lost track of a file.
    file_by_file: HashSet<String>,
}

impl Receiving {
    /// `paths.work/receiving`, which holds every study's folder.
    pub fn root(work: &Path) -> PathBuf {
        work.join("receiving")
    }

    pub fn folder(work: &Path, study: &str) -> PathBuf {
        Self::root(work).join(study)
    }

    pub fn path(work: &Path, study: &str, id: i64) -> PathBuf {
        Self::folder(work, study).join(ledger::work_name(id))
    }

    /// Makes the study's folder if this process has not yet (0750).
    pub fn prepare(&mut self, work: &Path, study: &str) -> std::io::Result<()> {
        if self.made_here.contains_key(study) || self.file_by_file.contains(study) {
            return Ok(());
        }
        if crate::fsutil::make_private_dir(&Self::folder(work, study))? {
            self.made_here.insert(study.to_string(), HashSet::new());
        } else {
            self.file_by_file.insert(study.to_string());
        }
        Ok(())
    }

    pub fn moved(&mut self, study: &str, id: i64) {
        if let Some(ids) = self.made_here.get_mut(study) {
            ids.insert(id);
        }
    }

    /// An instance left the study's folder on its own (quarantined before
    /// the claim): the folder can still be claimed whole without it.
    pub fn taken_out(&mut self, study: &str, id: i64) {
        if let Some(ids) = self.made_here.get_mut(study) {
            ids.remove(&id);
        }
    }

    /// Whether the study's folder holds exactly `ids`, all moved by this
    /// process, so that renaming the folder claims them all and nothing else.
    pub fn holds_exactly(&self, study: &str, ids: &HashSet<i64>) -> bool {
        self.made_here.get(study).is_some_and(|moved| moved == ids)
    }

    /// A move into or out of the study's folder failed: claim it file by file.
    pub fn lost_track(&mut self, study: &str) {
        if self.made_here.remove(study).is_some() {
            self.file_by_file.insert(study.to_string());
        }
    }

    /// The folder was renamed into a job's work folder: the next arrival
    /// for the study makes a new one.
    pub fn claimed_whole(&mut self, study: &str) {
        self.made_here.remove(study);
    }

    /// The study was claimed file by file: drop what this process knew of
    /// its folder, and the folder itself once empty. True when the folder
    /// was removed (a change in `receiving/` to sync).
    pub fn claimed_file_by_file(&mut self, work: &Path, study: &str) -> bool {
        self.made_here.remove(study);
        let removed = std::fs::remove_dir(Self::folder(work, study)).is_ok();
        if removed {
            self.file_by_file.remove(study);
        } else {
            self.file_by_file.insert(study.to_string());
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_folder_made_here_with_exactly_the_claims_instances_is_claimed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        let mut receiving = Receiving::default();
        receiving.prepare(work, "st-a").unwrap();
        receiving.moved("st-a", 1);
        receiving.moved("st-a", 2);
        assert!(receiving.holds_exactly("st-a", &HashSet::from([1, 2])));
        assert!(!receiving.holds_exactly("st-a", &HashSet::from([1, 2, 3])));
        assert!(!receiving.holds_exactly("st-a", &HashSet::from([1])));

        // A folder an earlier run left behind is never renamed whole.
        std::fs::create_dir_all(Receiving::folder(work, "st-b")).unwrap();
        receiving.prepare(work, "st-b").unwrap();
        receiving.moved("st-b", 4);
        assert!(!receiving.holds_exactly("st-b", &HashSet::from([4])));

        // Emptied by a file-by-file claim, the folder goes and the next is fresh.
        assert!(receiving.claimed_file_by_file(work, "st-b"));
        assert!(!Receiving::folder(work, "st-b").exists());
        receiving.prepare(work, "st-b").unwrap();
        receiving.moved("st-b", 5);
        assert!(receiving.holds_exactly("st-b", &HashSet::from([5])));
    }
}
