//! `synthd init --system`: the layout the systemd units expect. Config and
//! pipelines in `/etc/synthd` (0750 root:synthd), the site key readable only
//! by the `synthd` user, data under `/var/lib/synthd` (the nightly job's
//! `datasets/source` included), owned by `synthd`.
//!
//! Idempotent, and never overwrites: what exists is kept (a key, a config an
//! admin edited), only missing pieces are made and the folders' owners and
//! modes are set as `systemd/synthd.tmpfiles.conf` sets them. The package's
//! postinst runs it to make the key. `--root` (hidden) prefixes every path,
//! as `systemd-sysusers --root` does: the tests use a scratch root, and the
//! `synthd` user is looked up in that root's `/etc/passwd`.

use super::init::{config_text, model_line, SystemPaths};
use super::EXAMPLE_PIPELINES;
use anyhow::{Context, Result};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// The user and group the units run as (`systemd/synthd.sysusers.conf`).
pub const USER: &str = "synthd";
/// Where the package installs the example pipelines' models.
pub const PACKAGED_MODELS: &str = "/usr/share/synthd/models";

/// Who owns what: root for config, synthd for data.
#[derive(Clone, Copy)]
enum Owner {
    RootGroupSynthd,
    Synthd,
}

/// The folders, as the tmpfiles file lists them (mode, owner).
const FOLDERS: &[(&str, u32, Owner)] = &[
    ("/etc/synthd", 0o750, Owner::RootGroupSynthd),
    ("/etc/synthd/pipelines", 0o750, Owner::RootGroupSynthd),
    ("/var/lib/synthd", 0o750, Owner::Synthd),
    ("/var/lib/synthd/inbox", 0o2770, Owner::Synthd),
    ("/var/lib/synthd/work", 0o750, Owner::Synthd),
    ("/var/lib/synthd/outbox", 0o750, Owner::Synthd),
    ("/var/lib/synthd/quarantine", 0o750, Owner::Synthd),
    ("/var/lib/synthd/archive", 0o750, Owner::Synthd),
    ("/var/lib/synthd/state", 0o750, Owner::Synthd),
    ("/var/lib/synthd/datasets", 0o750, Owner::Synthd),
    ("/var/lib/synthd/datasets/source", 0o750, Owner::Synthd),
    ("/var/lib/synthd/datasets/nightly", 0o750, Owner::Synthd),
];

/// The system layout's paths, as the config names them (without `--root`).
pub fn system_paths() -> SystemPaths {
    SystemPaths {
        pipelines: "/etc/synthd/pipelines".into(),
        inbox: "/var/lib/synthd/inbox".into(),
        work: "/var/lib/synthd/work".into(),
        outbox: "/var/lib/synthd/outbox".into(),
        quarantine: "/var/lib/synthd/quarantine".into(),
        archive: "/var/lib/synthd/archive".into(),
        state: "/var/lib/synthd/state".into(),
        key: "/etc/synthd/synthd.key".into(),
    }
}

pub fn run(root: &Path) -> Result<i32> {
    let Some((uid, gid)) = lookup_user(root, USER)? else {
        eprintln!(
            "error: init --system: there is no {USER} user{}. Create it from the sysusers file, then run this again:\n  \
             systemd-sysusers /usr/lib/sysusers.d/synthd.conf        (installed by the synthd package)\n  \
             systemd-sysusers systemd/synthd.sysusers.conf           (from the source tree)",
            if root == Path::new("/") { String::new() } else { format!(" in {}/etc/passwd", root.display()) }
        );
        return Ok(2);
    };
    let at = |path: &str| root.join(path.trim_start_matches('/'));
    for &(folder, mode, owner) in FOLDERS {
        let path = at(folder);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&path)
            .with_context(|| format!("init --system: cannot create {}", path.display()))?;
        let (user, group) = match owner {
            Owner::RootGroupSynthd => (0, gid),
            Owner::Synthd => (uid, gid),
        };
        set_owner_mode(&path, user, group, mode)?;
    }
    let mut report = Vec::new();
    let paths = system_paths();
    let key = at(&paths.key);
    if key.exists() {
        report.push(format!("kept       {}", paths.key));
    } else {
        crate::keyfile::generate(&key)
            .map_err(anyhow::Error::msg)
            .context("init --system: key file")?;
        report.push(format!("key file   {} (new; back it up)", paths.key));
    }
    // Readable by synthd only (root can always read it).
    set_owner_mode(&key, uid, gid, 0o600)?;
    for (file_name, text) in EXAMPLE_PIPELINES {
        let target = at(&paths.pipelines).join(file_name);
        let shown = format!("{}/{file_name}", paths.pipelines);
        if target.exists() {
            report.push(format!("kept       {shown}"));
            continue;
        }
        match system_pipeline_text(root, text)? {
            Some(text) => {
                write_new(&target, &text, 0o644)?;
                report.push(format!("pipeline   {shown}"));
            }
            None => report.push(format!(
                "skipped    {shown}: its model is neither installed nor in the source tree"
            )),
        }
    }
    let config = at("/etc/synthd/synthd.toml");
    if config.exists() {
        report.push("kept       /etc/synthd/synthd.toml".to_string());
    } else {
        write_new(&config, &config_text(&paths, "synthd init --system"), 0o644)?;
        report.push("config     /etc/synthd/synthd.toml".to_string());
    }
    println!("synthd system layout in {}:", root.display());
    for line in report {
        println!("  {line}");
    }
    println!("  data       /var/lib/synthd (owned by {USER}; the nightly job reads datasets/source)");
    println!("Next: synthd doctor, then systemctl enable --now synthd");
    Ok(0)
}

/// An example pipeline for the system layout: its model path made absolute,
/// to the packaged model when installed, else to a copy of the source
/// tree's under `/var/lib/synthd/models`. None when neither exists.
pub fn system_pipeline_text(root: &Path, text: &str) -> Result<Option<String>> {
    let Some(model) = model_line(text) else {
        return Ok(Some(text.to_string()));
    };
    let name = Path::new(&model)
        .file_name()
        .context("init --system: model path has no file name")?
        .to_string_lossy()
        .to_string();
    let packaged = format!("{PACKAGED_MODELS}/{name}");
    let target = if root.join(packaged.trim_start_matches('/')).is_file() {
        packaged
    } else {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines").join(&model);
        if !source.is_file() {
            return Ok(None);
        }
        let models = root.join("var/lib/synthd/models");
        fs::create_dir_all(&models).with_context(|| format!("init --system: cannot create {}", models.display()))?;
        for file in [source.clone(), source.with_extension("toml")] {
            if let (true, Some(file_name)) = (file.is_file(), file.file_name()) {
                fs::copy(&file, models.join(file_name))
                    .with_context(|| format!("init --system: cannot copy {}", file.display()))?;
            }
        }
        format!("/var/lib/synthd/models/{name}")
    };
    Ok(Some(text.replacen(
        &format!("\"{model}\""),
        &format!("\"{target}\""),
        1,
    )))
}

/// (uid, gid) of `name` in `root/etc/passwd`.
fn lookup_user(root: &Path, name: &str) -> Result<Option<(u32, u32)>> {
    let passwd = root.join("etc/passwd");
    let text = match fs::read_to_string(&passwd) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("init --system: cannot read {}", passwd.display())),
    };
    Ok(text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [user, _, uid, gid, ..] if *user == name => Some((uid.parse().ok()?, gid.parse().ok()?)),
            _ => None,
        }
    }))
}

fn set_owner_mode(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<()> {
    let metadata = fs::metadata(path).with_context(|| format!("init --system: {}", path.display()))?;
    if (metadata.uid(), metadata.gid()) != (uid, gid) {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| {
            format!(
                "init --system: cannot give {} to {USER} (run as root: sudo synthd init --system)",
                path.display()
            )
        })?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("init --system: cannot set the mode of {}", path.display()))
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    fs::write(path, text).with_context(|| format!("init --system: cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("init --system: cannot set the mode of {}", path.display()))
}
