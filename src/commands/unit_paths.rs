//! What `synthd doctor` compares between the config and the systemd unit:
//! under `ProtectSystem=strict` the daemon can write only below the unit's
//! `ReadWritePaths=`, so every `[paths]` folder must lie under one of them,
//! and each of them should exist (systemd refuses to start a unit whose
//! `ReadWritePaths=` entry is missing, unless it is prefixed with `-`).

use std::path::{Path, PathBuf};

/// Where the installed unit and an admin's override may be, in systemd's order.
pub const UNIT_CANDIDATES: [&str; 3] = [
    "/etc/systemd/system/synthd.service",
    "/usr/lib/systemd/system/synthd.service",
    "/lib/systemd/system/synthd.service",
];

/// One `ReadWritePaths=` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RwPath {
    pub path: PathBuf,
    /// `-` prefix: a missing path is ignored by systemd.
    pub optional: bool,
}

/// The unit file in force (the first candidate that exists), if any.
pub fn find_unit() -> Option<PathBuf> {
    UNIT_CANDIDATES.iter().map(PathBuf::from).find(|path| path.is_file())
}

/// The unit's `ReadWritePaths=`, drop-ins (`<unit>.d/*.conf`) applied in
/// name order; an empty assignment resets the list, as systemd does.
pub fn read_write_paths(unit: &Path) -> std::io::Result<Vec<RwPath>> {
    let mut texts = vec![std::fs::read_to_string(unit)?];
    let dropins = PathBuf::from(format!("{}.d", unit.display()));
    if let Ok(listing) = std::fs::read_dir(&dropins) {
        let mut files: Vec<PathBuf> = listing
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "conf"))
            .collect();
        files.sort();
        for file in files {
            texts.push(std::fs::read_to_string(file)?);
        }
    }
    let mut paths = Vec::new();
    for text in texts {
        let mut section = String::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.to_string();
            } else if let (true, Some(value)) = (section == "[Service]", line.strip_prefix("ReadWritePaths=")) {
                if value.trim().is_empty() {
                    paths.clear();
                }
                paths.extend(value.split_whitespace().map(|word| {
                    let optional = word.starts_with('-');
                    let word = word.trim_start_matches(['-', '+']);
                    RwPath {
                        path: PathBuf::from(word),
                        optional,
                    }
                }));
            }
        }
    }
    Ok(paths)
}

/// Every mismatch between the config's folders (`key`, path) and the unit's
/// `ReadWritePaths=`, as lines for the report.
pub fn mismatches(folders: &[(&str, &Path)], allowed: &[RwPath]) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, folder) in folders {
        if !allowed.iter().any(|rw| folder.starts_with(&rw.path)) {
            problems.push(format!(
                "{key} = {} is not under the unit's ReadWritePaths= ({}): the daemon cannot write it; add it to ReadWritePaths= (systemctl edit synthd) or move it",
                folder.display(),
                list(allowed)
            ));
        }
    }
    for rw in allowed.iter().filter(|rw| !rw.optional && !rw.path.exists()) {
        problems.push(format!(
            "ReadWritePaths={} does not exist: systemd will refuse to start the unit; create it (synthd init --system) or prefix it with '-'",
            rw.path.display()
        ));
    }
    problems
}

fn list(allowed: &[RwPath]) -> String {
    if allowed.is_empty() {
        return "none".into();
    }
    allowed
        .iter()
        .map(|rw| rw.path.display().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_ins_extend_or_reset_the_list_and_each_uncovered_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let unit = dir.path().join("synthd.service");
        let text = format!(
            "[Unit]\nReadWritePaths=/nope\n[Service]\nReadWritePaths={}\n",
            data.display()
        );
        std::fs::write(&unit, text).unwrap();
        let paths = read_write_paths(&unit).unwrap();
        assert_eq!(
            paths.iter().map(|p| p.path.clone()).collect::<Vec<_>>(),
            std::slice::from_ref(&data)
        );

        std::fs::create_dir(dir.path().join("synthd.service.d")).unwrap();
        let outbox = dir.path().join("outbox");
        std::fs::write(
            dir.path().join("synthd.service.d/10-outbox.conf"),
            format!("[Service]\nReadWritePaths={} -/srv/maybe\n", outbox.display()),
        )
        .unwrap();
        let paths = read_write_paths(&unit).unwrap();
        assert_eq!(paths.len(), 3);
        assert!(paths[2].optional);

        let inbox = data.join("inbox");
        let elsewhere = PathBuf::from("/srv/pacs/outbox");
        let problems = mismatches(&[("paths.inbox", &inbox), ("paths.outbox", &elsewhere)], &paths);
        // /srv/pacs/outbox is not covered; the drop-in's outbox folder does not exist.
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(
            problems[0].starts_with("paths.outbox = /srv/pacs/outbox is not under"),
            "{}",
            problems[0]
        );
        assert!(problems[1].contains(&format!("ReadWritePaths={} does not exist", outbox.display())));

        std::fs::write(
            dir.path().join("synthd.service.d/20-reset.conf"),
            "[Service]\nReadWritePaths=\n",
        )
        .unwrap();
        assert!(read_write_paths(&unit).unwrap().is_empty());
        assert_eq!(mismatches(&[("paths.inbox", &inbox)], &[]).len(), 1);
    }
}
