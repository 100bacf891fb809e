//! `SIGHUP` applies `[dicom.listen]` and `[[destinations]]` to the running
//! daemon: a new port is listened on and the old one closed while an
//! association accepted on it goes on; a broken config is refused with its
//! file:line:column and the old listener keeps serving; a removed
//! destination's queued sends are kept and listed, and delivered once it is
//! configured again; new outputs go where the new routes say. Peers are
//! dcmtk's echoscu, storescu and storescp, and synthd's own SCU for the
//! association held across the reload.

mod daemon_support;
mod net_support;

use daemon_support::*;
use net_support::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use synthd::net::dimse::Status;

/// dcmtk's storescp writing what it receives into a folder.
struct StoreScp {
    child: Child,
    folder: PathBuf,
    port: u16,
}

impl StoreScp {
    fn start(folder: &Path) -> StoreScp {
        fs::create_dir_all(folder).unwrap();
        let port = free_port();
        let child = Command::new("storescp")
            .args(["-aet", "ARCHIVE", "-od", folder.to_str().unwrap(), &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("storescp runs (scripts/setup.sh installs dcmtk)");
        wait_for_port(port, Duration::from_secs(10));
        StoreScp {
            child,
            folder: folder.to_path_buf(),
            port,
        }
    }

    fn received(&self) -> usize {
        files_under(&self.folder).len()
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The layout's config and pipelines as `synthd init` wrote them, to
/// write each variant from.
struct Base {
    config: String,
    pipelines: Vec<(PathBuf, String)>,
}

impl Base {
    fn read(layout: &Layout) -> Base {
        let folder = layout.path("pipelines");
        let pipelines = fs::read_dir(folder)
            .unwrap()
            .flatten()
            .map(|entry| (entry.path(), fs::read_to_string(entry.path()).unwrap()))
            .collect();
        Base {
            config: fs::read_to_string(&layout.config).unwrap(),
            pipelines,
        }
    }

    /// Listen on `port` allowing `allowed`; destinations `(name, port)`,
    /// every pipeline routed to all of them.
    fn write(&self, layout: &Layout, port: u16, allowed: &[&str], destinations: &[(&str, u16)]) {
        fs::write(&layout.config, &self.config).unwrap();
        for (path, text) in &self.pipelines {
            fs::write(path, text).unwrap();
        }
        add_listen(&layout.config, port, allowed, "");
        for (name, port) in destinations {
            add_destination(&layout.config, name, "SYNTHD", *port);
        }
    }
}

fn reload(layout: &Layout, daemon: &Daemon, what: &str) {
    let before = layout.log().matches(what).count();
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), what, || {
        layout.log().matches(what).count() > before
    });
}

fn echo(port: u16, calling: &str) -> bool {
    let port = port.to_string();
    run("echoscu", &["-aet", calling, "-aec", "SYNTHD", "127.0.0.1", &port])
        .status
        .success()
}

fn store(layout: &Layout, port: u16, study: u32, count: u32) {
    let folder = layout.dir.path().join(format!("send-{study}"));
    fs::create_dir_all(&folder).unwrap();
    let files: Vec<String> = (1..=count)
        .map(|instance| {
            let path = folder.join(format!("{instance}.dcm"));
            fs::write(&path, mr_bytes(study, 1, instance)).unwrap();
            path.display().to_string()
        })
        .collect();
    let port = port.to_string();
    let mut args = vec!["-aet", "STORESCU", "-aec", "SYNTHD", "127.0.0.1", &port];
    args.extend(files.iter().map(String::as_str));
    let stored = run("storescu", &args);
    assert!(
        stored.status.success(),
        "storescu: {}",
        String::from_utf8_lossy(&stored.stderr)
    );
}

fn outputs(layout: &Layout) -> usize {
    files_under(&layout.path("outbox"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .count()
}

#[test]
fn sighup_rebinds_the_listener_and_applies_destinations_keeping_removed_ones_queue() {
    let layout = Layout::new();
    let base = Base::read(&layout);
    let (old_port, new_port, nowhere) = (free_port(), free_port(), free_port());
    let everyone = ["STORESCU", "ECHOSCU", "TESTSCU"];
    // "pacs" is down for good: its sends wait in the queue.
    base.write(&layout, old_port, &everyone, &[("pacs", nowhere)]);
    let daemon = layout.start(&[]);
    wait_for_port(old_port, Duration::from_secs(20));
    assert!(echo(old_port, "ECHOSCU"));
    store(&layout, old_port, 61, 3);
    wait_until(Duration::from_secs(30), "3 outputs queued for pacs", || {
        let pacs = destination(&layout.status(), "pacs");
        pacs["queued"] == 3 && pacs["last_error"].is_string()
    });

    // An association accepted before the reload.
    let (mut held, id) = associate_as_testscu(old_port);
    let archive = StoreScp::start(&layout.dir.path().join("archive"));
    base.write(&layout, new_port, &everyone, &[("archive", archive.port)]);
    reload(&layout, &daemon, "reloaded config and pipelines");
    assert!(echo(new_port, "ECHOSCU"), "the new port does not answer");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", old_port)).is_err(),
        "the old port still accepts connections"
    );
    // The held association still works, under the settings it began with.
    let file = mr_bytes(62, 1, 1);
    let group_length = u32::from_le_bytes(file[140..144].try_into().unwrap()) as usize;
    let uid = format!("{STUDY_ROOT}.62.1.1");
    assert_eq!(
        held.store(id, MR, &uid, &file[144 + group_length..]).unwrap(),
        Status::SUCCESS
    );
    held.release();
    store(&layout, new_port, 63, 2);
    wait_until(Duration::from_secs(30), "6 outputs", || outputs(&layout) == 6);
    wait_until(Duration::from_secs(30), "the new outputs sent to archive", || {
        let d = destination(&layout.status(), "archive");
        d["sent"] == 3 && d["queued"] == 0
    });
    assert_eq!(archive.received(), 3);
    // pacs is gone from the config; its queue is kept, listed, not tried.
    let pacs = destination(&layout.status(), "pacs");
    assert_eq!(
        (pacs["queued"].clone(), pacs["configured"].clone()),
        (3.into(), false.into()),
        "{pacs}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        destination(&layout.status(), "pacs")["last_error_at"],
        pacs["last_error_at"],
        "a removed destination is still being tried"
    );
    let text = run(
        env!("CARGO_BIN_EXE_synthd"),
        &["status", "--config", layout.config.to_str().unwrap()],
    );
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("not in [[destinations]]"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );

    // A broken listen section is refused where it is; the old listener stays.
    base.write(&layout, new_port, &everyone, &[("archive", archive.port)]);
    let good = fs::read_to_string(&layout.config).unwrap();
    let broken = good.replace("read_timeout = \"5s\"", "read_timeout = \"5s\"\nmax_pdu = \"1KiB\"");
    fs::write(&layout.config, &broken).unwrap();
    let line = broken.lines().position(|l| l.starts_with("max_pdu")).unwrap() + 1;
    reload(&layout, &daemon, "reload refused");
    let log = layout.log();
    let at = format!("{}:{line}:11", layout.config.display());
    assert!(log.contains(&at), "the refusal names {at}: {log}");
    assert!(log.contains("4KiB and 16MiB"), "{log}");
    assert!(
        echo(new_port, "ECHOSCU"),
        "the running listener stopped after a refused reload"
    );

    // pacs back (now reachable), and ECHOSCU off the allow-list on the same port.
    base.write(
        &layout,
        new_port,
        &["STORESCU", "TESTSCU"],
        &[("archive", archive.port), ("pacs", archive.port)],
    );
    reload(&layout, &daemon, "reloaded config and pipelines");
    wait_until(Duration::from_secs(30), "pacs' kept queue delivered", || {
        let d = destination(&layout.status(), "pacs");
        d["sent"] == 3 && d["queued"] == 0 && d["configured"] == true
    });
    assert_eq!(archive.received(), 6);
    assert!(!echo(new_port, "ECHOSCU"), "the new allow-list is not applied");
    assert!(echo(new_port, "STORESCU"));
    assert_no_phi(&layout.log());
    assert!(daemon.stop().success());
}
