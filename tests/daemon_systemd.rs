//! The systemd units pass `systemd-analyze verify` (Debian's systemd, from
//! scripts/setup.sh), and sysusers/tmpfiles build the layout in a temp root.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const UNITS: [&str; 3] = ["synthd.service", "synthd-nightly.service", "synthd-nightly.timer"];

fn unit_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd"))
}

#[test]
fn units_pass_systemd_analyze_verify() {
    // verify needs ExecStart's binary to exist: point the units at the one cargo built.
    let dir = tempfile::tempdir().unwrap();
    for unit in UNITS {
        let text = fs::read_to_string(unit_dir().join(unit)).unwrap();
        assert!(
            unit.ends_with(".timer") || text.contains("ExecStart=/usr/bin/synthd "),
            "{unit} must start /usr/bin/synthd"
        );
        fs::write(
            dir.path().join(unit),
            text.replace("/usr/bin/synthd", env!("CARGO_BIN_EXE_synthd")),
        )
        .unwrap();
    }
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(UNITS)
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze runs (scripts/setup.sh installs Debian's systemd)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // Unknown keys are only warnings to verify; here they are errors.
    assert!(stderr.trim().is_empty(), "systemd-analyze verify warns:\n{stderr}");
    let service = fs::read_to_string(unit_dir().join("synthd.service")).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/synthd",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "RestrictAddressFamilies=AF_UNIX",
        "CapabilityBoundingSet=\n",
        "DeviceAllow=char-nvidia-frontend rw",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(service.contains(line), "synthd.service lacks {line:?}");
    }
}

#[test]
fn sysusers_and_tmpfiles_build_the_layout_in_a_temp_root() {
    let root = tempfile::tempdir().unwrap();
    let sysusers = root.path().join("usr/lib/sysusers.d");
    let tmpfiles = root.path().join("usr/lib/tmpfiles.d");
    fs::create_dir_all(&sysusers).unwrap();
    fs::create_dir_all(&tmpfiles).unwrap();
    fs::create_dir_all(root.path().join("etc")).unwrap();
    fs::copy(unit_dir().join("synthd.sysusers.conf"), sysusers.join("synthd.conf")).unwrap();
    fs::copy(unit_dir().join("synthd.tmpfiles.conf"), tmpfiles.join("synthd.conf")).unwrap();
    let root_arg = format!("--root={}", root.path().display());
    let output = Command::new("systemd-sysusers").arg(&root_arg).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let passwd = fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("synthd:")), "{passwd}");
    let output = Command::new("systemd-tmpfiles")
        .args([&root_arg, "--create"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mode = |name: &str| {
        fs::metadata(root.path().join("var/lib/synthd").join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("work"), 0o750);
    assert_eq!(mode("archive"), 0o750);
    assert_eq!(mode("inbox"), 0o2770);
}
