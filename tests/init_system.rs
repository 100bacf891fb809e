//! `synthd init --system` against a scratch root (hidden `--root`): the
//! layout the units expect, the key readable only by the synthd user, and
//! what to do without that user; `synthd doctor` names every [paths] folder
//! the unit's ReadWritePaths= does not cover.

mod common;

use common::{repo, synthd};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

fn init_system(root: &Path) -> std::process::Output {
    synthd(&["init", "--system", "--root", root.to_str().unwrap()])
}

fn id_of(root: &Path, file: &str, name: &str) -> u32 {
    let text = fs::read_to_string(root.join(file)).unwrap();
    text.lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields[0] == name).then(|| fields[2].parse().unwrap())
        })
        .unwrap()
}

#[test]
fn without_the_synthd_user_init_system_says_how_to_create_it() {
    let root = tempfile::tempdir().unwrap();
    let output = init_system(root.path());
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("there is no synthd user"), "{stderr}");
    assert!(
        stderr.contains("systemd-sysusers /usr/lib/sysusers.d/synthd.conf"),
        "{stderr}"
    );
    assert!(stderr.contains("systemd/synthd.sysusers.conf"), "{stderr}");
    assert!(
        !root.path().join("etc/synthd").exists(),
        "nothing is written without the user"
    );
}

#[test]
fn init_system_writes_the_layout_the_units_expect_and_keeps_what_exists() {
    let root = tempfile::tempdir().unwrap();
    let sysusers = root.path().join("usr/lib/sysusers.d");
    fs::create_dir_all(&sysusers).unwrap();
    fs::create_dir_all(root.path().join("etc")).unwrap();
    fs::copy(repo("systemd/synthd.sysusers.conf"), sysusers.join("synthd.conf")).unwrap();
    let created = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));

    let output = init_system(root.path());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let (uid, gid) = (
        id_of(root.path(), "etc/passwd", "synthd"),
        id_of(root.path(), "etc/group", "synthd"),
    );
    let meta = |path: &str| fs::metadata(root.path().join(path)).unwrap();
    let key = meta("etc/synthd/synthd.key");
    assert_eq!(
        (key.uid(), key.mode() & 0o777),
        (uid, 0o600),
        "the key is the synthd user's alone"
    );
    let etc = meta("etc/synthd");
    assert_eq!((etc.uid(), etc.gid(), etc.mode() & 0o7777), (0, gid, 0o750));
    assert_eq!(meta("var/lib/synthd/inbox").mode() & 0o7777, 0o2770);
    for folder in [
        "work",
        "outbox",
        "quarantine",
        "archive",
        "state",
        "datasets/source",
        "datasets/nightly",
    ] {
        let folder_meta = meta(&format!("var/lib/synthd/{folder}"));
        assert_eq!(
            (folder_meta.uid(), folder_meta.mode() & 0o777),
            (uid, 0o750),
            "{folder}"
        );
    }
    let config = fs::read_to_string(root.path().join("etc/synthd/synthd.toml")).unwrap();
    for line in [
        "inbox = \"/var/lib/synthd/inbox\"",
        "state = \"/var/lib/synthd/state\"",
        "key_file = \"/etc/synthd/synthd.key\"",
        "pipelines = [\"/etc/synthd/pipelines/deid-only.toml\"]",
    ] {
        assert!(config.contains(line), "{line} missing:\n{config}");
    }
    // The nightly unit's pipeline, its model copied from the source tree
    // (no package installed /usr/share/synthd/models in this root).
    let nightly = fs::read_to_string(root.path().join("etc/synthd/pipelines/overnight-dataset.toml")).unwrap();
    assert!(
        nightly.contains("model = \"/var/lib/synthd/models/brain-inpaint-96.onnx\""),
        "{nightly}"
    );
    assert!(root
        .path()
        .join("var/lib/synthd/models/brain-inpaint-96.onnx")
        .is_file());
    let unit = fs::read_to_string(repo("systemd/synthd-nightly.service")).unwrap();
    assert!(unit
        .contains("--pipeline /etc/synthd/pipelines/overnight-dataset.toml --input /var/lib/synthd/datasets/source"));

    // Again (an upgrade, a second admin): nothing is overwritten.
    let key_before = fs::read(root.path().join("etc/synthd/synthd.key")).unwrap();
    fs::write(root.path().join("etc/synthd/synthd.toml"), "# edited\n").unwrap();
    let again = init_system(root.path());
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("kept       /etc/synthd/synthd.key"));
    assert_eq!(fs::read(root.path().join("etc/synthd/synthd.key")).unwrap(), key_before);
    assert_eq!(
        fs::read_to_string(root.path().join("etc/synthd/synthd.toml")).unwrap(),
        "# edited\n"
    );
}

#[test]
fn doctor_names_every_folder_the_units_read_write_paths_do_not_cover() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    assert!(synthd(&["init", site.to_str().unwrap()]).status.success());
    let config = site.join("synthd.toml");
    let output = synthd(&[
        "doctor",
        "--config",
        config.to_str().unwrap(),
        "--unit",
        repo("systemd/synthd.service").to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    for key in [
        "paths.inbox",
        "paths.work",
        "paths.outbox",
        "paths.quarantine",
        "paths.archive",
        "paths.state",
    ] {
        assert!(
            stdout.contains(&format!("{key} = {}", site.join(&key[6..]).display())),
            "{key} not flagged:\n{stdout}"
        );
    }
    // A drop-in that adds the site's folder settles it.
    let unit_dir = dir.path().join("units");
    fs::create_dir_all(unit_dir.join("synthd.service.d")).unwrap();
    fs::copy(repo("systemd/synthd.service"), unit_dir.join("synthd.service")).unwrap();
    fs::write(
        unit_dir.join("synthd.service.d/site.conf"),
        format!("[Service]\nReadWritePaths=\nReadWritePaths={}\n", site.display()),
    )
    .unwrap();
    let output = synthd(&[
        "doctor",
        "--config",
        config.to_str().unwrap(),
        "--unit",
        unit_dir.join("synthd.service").to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("ReadWritePaths= covers every [paths] folder"),
        "{stdout}"
    );
}
