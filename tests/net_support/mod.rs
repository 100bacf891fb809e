//! Helpers for the network tests: `[dicom.listen]` added to a daemon
//! layout, dcmtk's tools, and a throw-away Orthanc (Debian's `orthanc`) on
//! loopback with a temp config and storage, driven through its REST API
//! with curl.
//!
//! Orthanc 1.10 cannot bind its DICOM port to one address; the config
//! lets it accept associations only from synthd's AE title at 127.0.0.1
//! (`DicomCheckModalityHost`), and its HTTP server refuses remote clients.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// MR Image Storage.
pub const MR: &str = "1.2.840.10008.5.1.4.1.1.4";

/// An association of synthd's own SCU to synthd's SCP on `port`, opened as
/// TESTSCU with one MR context in explicit VR little endian; returns it
/// with that context's id.
pub fn associate_as_testscu(port: u16) -> (synthd::net::scu::Association, u8) {
    use synthd::net::dimse::EXPLICIT_VR_LITTLE_ENDIAN;
    use synthd::net::scu::{Association, Peer, Proposal};
    let peer = Peer {
        calling_ae_title: "TESTSCU".into(),
        called_ae_title: "SYNTHD".into(),
        address: format!("127.0.0.1:{port}"),
        max_pdu: 16384,
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
    };
    let proposal = Proposal {
        abstract_syntax: MR.into(),
        transfer_syntaxes: vec![EXPLICIT_VR_LITTLE_ENDIAN.into()],
    };
    let association = Association::open(&peer, &[proposal]).unwrap();
    let (id, _) = association.context_for(MR, &[EXPLICIT_VR_LITTLE_ENDIAN]).unwrap();
    (association, id)
}

/// Writes `count` MR instances of `study` as Part 10 files; returns their paths.
pub fn write_study(dir: &Path, study: u32, count: u32) -> Vec<PathBuf> {
    fs::create_dir_all(dir).unwrap();
    (1..=count)
        .map(|instance| {
            let path = dir.join(format!("{study}-{instance}.dcm"));
            fs::write(&path, crate::daemon_support::mr_bytes(study, 1, instance)).unwrap();
            path
        })
        .collect()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Appends `[dicom.listen]` on `port` to a daemon config, allowing these
/// calling AE titles from 127.0.0.1.
pub fn add_listen(config: &Path, port: u16, allowed: &[&str], extra: &str) {
    let mut text = fs::read_to_string(config).unwrap();
    text.push_str(&format!(
        "\n[dicom.listen]\nae_title = \"SYNTHD\"\nport = {port}\nread_timeout = \"5s\"\n{extra}\n"
    ));
    for title in allowed {
        text.push_str(&format!(
            "[[dicom.listen.allow]]\nae_title = \"{title}\"\nhosts = [\"127.0.0.1\"]\n"
        ));
    }
    fs::write(config, text).unwrap();
}

/// Appends a `[[destinations]]` entry and routes every pipeline of the
/// layout there too (`[output] destinations`).
pub fn add_destination(config: &Path, name: &str, calling: &str, port: u16) {
    let mut text = fs::read_to_string(config).unwrap();
    text.push_str(&format!(
        "\n[[destinations]]\nname = \"{name}\"\nae_title = \"ORTHANC\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         calling_ae_title = \"{calling}\"\nretry_initial = \"200ms\"\nretry_max = \"1s\"\nconnect_timeout = \"2s\"\n"
    ));
    fs::write(config, text).unwrap();
    let pipelines = config.parent().unwrap().join("pipelines");
    for entry in fs::read_dir(pipelines).unwrap().flatten() {
        let text = fs::read_to_string(entry.path()).unwrap();
        let routed = match text.find("destinations = [") {
            Some(_) => text.replacen("destinations = [", &format!("destinations = [\"{name}\", "), 1),
            None => text.replacen("[output]\n", &format!("[output]\ndestinations = [\"{name}\"]\n"), 1),
        };
        fs::write(entry.path(), routed).unwrap();
    }
}

/// The destination's entry in `synthd status --json`.
pub fn destination(status: &serde_json::Value, name: &str) -> serde_json::Value {
    status["destinations"]
        .as_array()
        .and_then(|all| all.iter().find(|d| d["name"] == name).cloned())
        .unwrap_or(serde_json::Value::Null)
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on port {port} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("{program} does not run ({error}); scripts/setup.sh installs it"))
}

pub struct Orthanc {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub http: u16,
    pub dicom: u16,
}

impl Orthanc {
    /// An Orthanc whose modality `synthd` is SYNTHD at 127.0.0.1:`synthd_port`.
    pub fn start(synthd_port: u16) -> Orthanc {
        let dir = tempfile::tempdir().unwrap();
        let (http, dicom) = (free_port(), free_port());
        let storage = dir.path().join("storage");
        let config = serde_json::json!({
            "Name": "synthd-test",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpPort": http,
            "DicomPort": dicom,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "Plugins": [],
            "DicomAlwaysAllowEcho": false,
            "DicomAlwaysAllowStore": false,
            "DicomCheckModalityHost": true,
            "DicomAssociationCloseDelay": 0,
            "DicomScuTimeout": 10,
            "DicomModalities": { "synthd": ["SYNTHD", "127.0.0.1", synthd_port] },
        });
        fs::write(
            dir.path().join("orthanc.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        let mut orthanc = Orthanc {
            dir,
            child: None,
            http,
            dicom,
        };
        orthanc.resume();
        orthanc
    }

    /// Starts (again) on the same config and storage.
    pub fn resume(&mut self) {
        let log = fs::File::create(self.dir.path().join("orthanc.log")).unwrap();
        let child = Command::new("Orthanc")
            .arg(self.dir.path().join("orthanc.json"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("Orthanc runs (scripts/setup.sh installs Debian's orthanc)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.try_get("/system").is_none() {
            assert!(
                Instant::now() < deadline,
                "Orthanc did not answer within 20s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("orthanc.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    fn try_get(&self, path: &str) -> Option<serde_json::Value> {
        let output = run("curl", &["-sf", "--max-time", "5", &self.url(path)]);
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).ok())
            .flatten()
    }

    pub fn get(&self, path: &str) -> serde_json::Value {
        self.try_get(path)
            .unwrap_or_else(|| panic!("GET {path} failed:\n{}", self.log()))
    }

    /// POSTs `body` (a file when it starts with `@`) and returns the JSON answer.
    pub fn post(&self, path: &str, body: &str) -> serde_json::Value {
        let output = run(
            "curl",
            &[
                "-sf",
                "--max-time",
                "120",
                "-X",
                "POST",
                "--data-binary",
                body,
                &self.url(path),
            ],
        );
        assert!(
            output.status.success(),
            "POST {path} failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
    }

    pub fn delete(&self, path: &str) {
        let output = run("curl", &["-sf", "--max-time", "20", "-X", "DELETE", &self.url(path)]);
        assert!(output.status.success(), "DELETE {path} failed\n{}", self.log());
    }

    /// Every instance's tags as text, for searching.
    pub fn all_tags(&self) -> String {
        let mut text = String::new();
        for id in self.get("/instances").as_array().cloned().unwrap_or_default() {
            let id = id.as_str().unwrap();
            text.push_str(&self.get(&format!("/instances/{id}/tags?simplify")).to_string());
        }
        text
    }

    /// Uploads Part 10 files; returns the Orthanc study ID they belong to.
    pub fn upload(&self, files: &[PathBuf]) -> String {
        let mut study = String::new();
        for file in files {
            let answer = self.post("/instances", &format!("@{}", file.display()));
            study = answer["ParentStudy"].as_str().unwrap().to_string();
        }
        study
    }

    pub fn instance_count(&self) -> usize {
        self.get("/instances").as_array().map_or(0, Vec::len)
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        self.stop();
    }
}
