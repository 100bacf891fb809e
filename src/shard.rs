//! Shards of a `synthd process` run: which part of the input this process
//! takes, from `--shard I/N`, Slurm's job array or a Kubernetes Indexed Job,
//! and which shard owns each study.
//!
//! A study belongs to shard `k mod N`, where `k` is the 64-bit keyed study id
//! (`phi::StudyKey`): the split depends only on the Study Instance UID and
//! the site key, never on file order, listing order or which file of a study
//! a process read first. An input that cannot be read has no study; it goes
//! to the shard chosen the same way from a keyed hash of its path, so exactly
//! one shard quarantines it.

use crate::keyfile::SiteKey;
use crate::phi::{keyed_digest, StudyKey};
use std::fmt;
use std::path::Path;

/// Shard `index` of `count` (0 ≤ index < count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Why the shard could not be worked out; the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("--shard {0:?} is not INDEX/COUNT (e.g. --shard 3/8, indexes counting from 0)")]
    Syntax(String),
    #[error("{source_name} gives shard count 0; the count must be at least 1")]
    ZeroCount { source_name: String },
    #[error("shard index {index} from {source_name} is out of range for {count} shard(s): indexes run from 0 to {last}", last = count - 1)]
    OutOfRange {
        index: u32,
        count: u32,
        source_name: String,
    },
    #[error("{variable}={value:?} is not a shard index (a whole number from 0)")]
    BadIndex { variable: String, value: String },
    #[error("{variable}={value:?} is not a shard count (a whole number from 1)")]
    BadCount { variable: String, value: String },
    #[error("shard index {index} comes from {variable}, but no shard count is given: pass --shard-count N or set SYNTHD_SHARD_COUNT=N (a Kubernetes Indexed Job's completions)")]
    NoCount { index: u32, variable: String },
    #[error("--shard-count is given, but no shard index: pass --shard I/N, or run inside a Slurm array (SLURM_ARRAY_TASK_ID) or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX)")]
    NoIndex,
    #[error("--shard and --shard-count both given; --shard I/N already names the count")]
    Both,
}

/// Where the shard comes from, in order: `--shard I/N`; else the index from
/// `SLURM_ARRAY_TASK_ID` or `JOB_COMPLETION_INDEX`, with the count from
/// `--shard-count`, `SYNTHD_SHARD_COUNT` or (Slurm only) `SLURM_ARRAY_TASK_COUNT`;
/// else one shard of one. `env` looks a variable up (the process environment
/// in production, a map in tests).
pub fn resolve(
    flag: Option<&str>,
    count_flag: Option<u32>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Shard, ShardError> {
    if let Some(text) = flag {
        if count_flag.is_some() {
            return Err(ShardError::Both);
        }
        return parse(text);
    }
    let index = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"]
        .into_iter()
        .find_map(|name| env(name).filter(|v| !v.trim().is_empty()).map(|v| (name, v)));
    let Some((variable, value)) = index else {
        return match count_flag {
            Some(_) => Err(ShardError::NoIndex),
            None => Ok(Shard { index: 0, count: 1 }),
        };
    };
    let index: u32 = value.trim().parse().map_err(|_| ShardError::BadIndex {
        variable: variable.to_string(),
        value: value.clone(),
    })?;
    // An explicit count wins over Slurm's: re-running one failed task with
    // `sbatch --array=3` gives SLURM_ARRAY_TASK_COUNT=1, not the run's count.
    let (count, source_name) = if let Some(count) = count_flag {
        (count, "--shard-count".to_string())
    } else if let Some(value) = env("SYNTHD_SHARD_COUNT") {
        (
            parse_count("SYNTHD_SHARD_COUNT", &value)?,
            "SYNTHD_SHARD_COUNT".to_string(),
        )
    } else if let (Some(value), "SLURM_ARRAY_TASK_ID") = (env("SLURM_ARRAY_TASK_COUNT"), variable) {
        (
            parse_count("SLURM_ARRAY_TASK_COUNT", &value)?,
            "SLURM_ARRAY_TASK_COUNT".to_string(),
        )
    } else {
        return Err(ShardError::NoCount {
            index,
            variable: variable.to_string(),
        });
    };
    checked(index, count, format!("{variable} with {source_name}"))
}

/// Parses `I/N`.
pub fn parse(text: &str) -> Result<Shard, ShardError> {
    let syntax = || ShardError::Syntax(text.to_string());
    let (index, count) = text.split_once('/').ok_or_else(syntax)?;
    let index: u32 = index.trim().parse().map_err(|_| syntax())?;
    let count: u32 = count.trim().parse().map_err(|_| syntax())?;
    checked(index, count, format!("--shard {text}"))
}

fn parse_count(variable: &str, value: &str) -> Result<u32, ShardError> {
    value.trim().parse().map_err(|_| ShardError::BadCount {
        variable: variable.to_string(),
        value: value.to_string(),
    })
}

fn checked(index: u32, count: u32, source_name: String) -> Result<Shard, ShardError> {
    if count == 0 {
        return Err(ShardError::ZeroCount { source_name });
    }
    if index >= count {
        return Err(ShardError::OutOfRange {
            index,
            count,
            source_name,
        });
    }
    Ok(Shard { index, count })
}

impl Shard {
    pub const ONE: Shard = Shard { index: 0, count: 1 };

    /// Whether this shard takes the study.
    pub fn owns_study(&self, study: &StudyKey) -> bool {
        study_shard(study, self.count) == self.index
    }

    /// Whether this shard quarantines an input that has no readable study.
    pub fn owns_unreadable(&self, key: &SiteKey, path: &Path) -> bool {
        let digest = keyed_digest(key, "synthd/shard-input", &[path.as_os_str().as_encoded_bytes()]);
        (u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % u64::from(self.count)) as u32 == self.index
    }

    /// The shard's ledger file name: `shard-0003-of-0008.sqlite`.
    pub fn ledger_name(&self) -> String {
        format!("shard-{:04}-of-{:04}.sqlite", self.index, self.count)
    }
}

/// The shard of `count` that owns a study: its keyed id's 64 bits mod count.
pub fn study_shard(study: &StudyKey, count: u32) -> u32 {
    let hex = study.as_str().trim_start_matches("st-");
    let id = u64::from_str_radix(hex, 16).expect("a StudyKey is st- and 16 hex digits");
    (id % u64::from(count)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn flag_wins_and_is_checked() {
        let slurm = env(&[("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_COUNT", "2")]);
        assert_eq!(
            resolve(Some("3/8"), None, &slurm).unwrap(),
            Shard { index: 3, count: 8 }
        );
        assert!(matches!(
            resolve(Some("5/4"), None, &slurm),
            Err(ShardError::OutOfRange { index: 5, count: 4, .. })
        ));
        assert!(matches!(
            resolve(Some("0/0"), None, &slurm),
            Err(ShardError::ZeroCount { .. })
        ));
        assert!(matches!(resolve(Some("3"), None, &slurm), Err(ShardError::Syntax(_))));
        assert!(matches!(
            resolve(Some("-1/4"), None, &slurm),
            Err(ShardError::Syntax(_))
        ));
        assert_eq!(resolve(Some("1/2"), Some(2), &slurm), Err(ShardError::Both));
        let message = resolve(Some("5/4"), None, &slurm).unwrap_err().to_string();
        assert!(message.contains("from 0 to 3"), "{message}");
    }

    #[test]
    fn slurm_and_kubernetes_environments() {
        let slurm = env(&[("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_COUNT", "3")]);
        assert_eq!(resolve(None, None, &slurm).unwrap(), Shard { index: 2, count: 3 });
        // Re-running task 5 of 8 alone: Slurm says count 1, the pinned count wins.
        let rerun = env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "1"),
            ("SYNTHD_SHARD_COUNT", "8"),
        ]);
        assert_eq!(resolve(None, None, &rerun).unwrap(), Shard { index: 5, count: 8 });
        let kubernetes = env(&[("JOB_COMPLETION_INDEX", "4")]);
        assert!(matches!(
            resolve(None, None, &kubernetes),
            Err(ShardError::NoCount { index: 4, .. })
        ));
        assert_eq!(
            resolve(None, Some(8), &kubernetes).unwrap(),
            Shard { index: 4, count: 8 }
        );
        assert!(matches!(
            resolve(None, Some(4), &kubernetes),
            Err(ShardError::OutOfRange { .. })
        ));
        assert!(matches!(
            resolve(
                None,
                None,
                env(&[("JOB_COMPLETION_INDEX", "x"), ("SYNTHD_SHARD_COUNT", "2")])
            ),
            Err(ShardError::BadIndex { .. })
        ));
        assert_eq!(resolve(None, None, env(&[])).unwrap(), Shard::ONE);
        assert_eq!(resolve(None, Some(3), env(&[])), Err(ShardError::NoIndex));
    }

    #[test]
    fn every_study_has_exactly_one_shard_and_the_split_is_even() {
        let key = SiteKey::from_bytes([7; 32]);
        let count = 4;
        let mut sizes = [0usize; 4];
        for n in 0..4000 {
            let study = StudyKey::new(&key, &format!("1.2.3.{n}"));
            let owners: Vec<u32> = (0..count)
                .filter(|&index| Shard { index, count }.owns_study(&study))
                .collect();
            assert_eq!(owners.len(), 1);
            sizes[owners[0] as usize] += 1;
        }
        assert!(sizes.iter().all(|&s| (900..1100).contains(&s)), "{sizes:?}");
        let path = Path::new("/in/a.dcm");
        let owners = (0..count)
            .filter(|&index| Shard { index, count }.owns_unreadable(&key, path))
            .count();
        assert_eq!(owners, 1);
    }
}
