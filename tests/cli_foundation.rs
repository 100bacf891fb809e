//! The foundation as a user meets it: `synthd init`, `synthd validate` with
//! golden error messages, and `synthd doctor` against the real ONNX Runtime.

use std::path::Path;
use std::process::{Command, Output};

fn synthd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_synthd"))
        .args(args)
        .env_remove("SYNTHD_CONFIG")
        .output()
        .expect("synthd runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A fresh layout from `synthd init`, returning (tempdir, config path).
fn init_layout() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("site");
    let output = synthd(&["init", layout.to_str().unwrap()]);
    assert!(output.status.success(), "init failed: {}", stderr(&output));
    let config = layout.join("synthd.toml").to_str().unwrap().to_string();
    (dir, config)
}

/// Replaces one line of a config file's text.
fn edit(config: &str, from: &str, to: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains(from), "config has no {from:?}");
    std::fs::write(config, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn init_then_validate_succeeds() {
    let (_dir, config) = init_layout();
    let output = synthd(&["validate", &config]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        format!("ok: {config}: daemon config with 1 pipeline(s): deid-only\n")
    );
    let site = Path::new(&config).parent().unwrap();
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(site.join("synthd.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600);
    let work_mode = std::fs::metadata(site.join("work")).unwrap().permissions().mode() & 0o777;
    assert_eq!(work_mode, 0o750);
}

#[test]
fn init_refuses_an_existing_layout() {
    let (_dir, config) = init_layout();
    let site = Path::new(&config).parent().unwrap();
    let output = synthd(&["init", site.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("never overwrites a layout"),
        "{}",
        stderr(&output)
    );
}

/// Golden messages: each broken config names the file, line, column and key.
#[test]
fn validate_reports_unknown_key_with_file_line_and_key() {
    let (_dir, config) = init_layout();
    edit(&config, "settle = \"2s\"", "settle = \"2s\"\nsetle_time = \"5s\"");
    let output = synthd(&["validate", &config]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output),
        format!(
            "{config}:20:1: `ingest.setle_time`: unknown key `setle_time`, expected one of `stable_age`, `rescan_interval`, `settle`\n\
             error: 1 of 1 file(s) invalid; fix the lines above and run `synthd validate` again\n"
        )
    );
}

#[test]
fn validate_refuses_a_quarantine_inside_the_outbox() {
    let (_dir, config) = init_layout();
    let text = std::fs::read_to_string(&config).unwrap();
    let line = |key: &str| text.lines().find(|l| l.starts_with(key)).unwrap().to_string();
    let outbox = line("outbox = ");
    let inside = outbox
        .replacen("outbox = ", "quarantine = ", 1)
        .replace("outbox\"", "outbox/held\"");
    edit(&config, &line("quarantine = "), &inside);
    let output = synthd(&["validate", &config]);
    assert_eq!(output.status.code(), Some(2));
    let number = text.lines().position(|l| l.starts_with("quarantine = ")).unwrap() + 1;
    let first = stderr(&output).lines().next().unwrap().to_string();
    assert_eq!(
        first,
        format!(
            "{config}:{number}:14: `paths.quarantine`: lies inside paths.outbox, which gets shared, and quarantined originals keep their identifiers; choose a folder outside it"
        )
    );
}

#[test]
fn validate_reports_wrong_type() {
    let (_dir, config) = init_layout();
    edit(&config, "queue_depth = 64", "queue_depth = \"many\"");
    let output = synthd(&["validate", &config]);
    assert_eq!(output.status.code(), Some(2));
    let first = stderr(&output).lines().next().unwrap().to_string();
    assert_eq!(
        first,
        format!("{config}:39:15: `daemon.queue_depth`: invalid type: string \"many\", expected a whole number between 1 and 100000")
    );
}

#[test]
fn validate_reports_bad_duration() {
    let (_dir, config) = init_layout();
    edit(&config, "stable_age = \"60s\"", "stable_age = \"60\"");
    let output = synthd(&["validate", &config]);
    assert_eq!(output.status.code(), Some(2));
    let first = stderr(&output).lines().next().unwrap().to_string();
    assert_eq!(
        first,
        format!(
            "{config}:17:14: `ingest.stable_age`: duration \"60\" has no unit: expected a duration such as \"500ms\", \"2s\", \"5m\", \"1h\" or \"7d\""
        )
    );
}

#[test]
fn validate_reports_missing_model_in_pipeline() {
    let (_dir, config) = init_layout();
    let pipeline = Path::new(&config).parent().unwrap().join("pipelines/synth.toml");
    std::fs::write(
        &pipeline,
        "name = \"synth\"\n\n[synth]\nmodel = \"models/absent.onnx\"\nsteps = 25\n",
    )
    .unwrap();
    let output = synthd(&["validate", pipeline.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let expected_model = pipeline.parent().unwrap().join("models/absent.onnx");
    assert_eq!(
        stderr(&output).lines().next().unwrap(),
        format!(
            "{}:4:9: `synth.model`: model file {} not found; expected a path to an ONNX model, relative to this pipeline file",
            pipeline.display(),
            expected_model.display()
        )
    );
    // A daemon config that includes the pipeline folder fails the same way.
    let folder = pipeline.parent().unwrap().display().to_string();
    edit(
        &config,
        &format!("pipelines = [\"{folder}/deid-only.toml\"]"),
        &format!("pipelines = [\"{folder}\"]"),
    );
    let output = synthd(&["validate", &config]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("`synth.model`: model file"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn validate_reports_out_of_range_value() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("p.toml");
    std::fs::write(&pipeline, "name = \"p\"\n[synth]\nmodel = \"m.onnx\"\nbatch = 1000\n").unwrap();
    let output = synthd(&["validate", pipeline.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output).lines().next().unwrap(),
        format!(
            "{}:4:9: `synth.batch`: 1000 is out of range: expected a whole number between 1 and 256",
            pipeline.display()
        )
    );
}

#[test]
fn validate_refuses_zero_inference_lanes_and_accepts_two() {
    let (_dir, config) = init_layout();
    edit(&config, "inference_lanes = 1", "inference_lanes = 0");
    let output = synthd(&["validate", &config]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output)
            .contains("`runtime.inference_lanes`: 0 is out of range: expected a whole number between 1 and 64"),
        "{}",
        stderr(&output)
    );
    edit(&config, "inference_lanes = 0", "inference_lanes = 2");
    let output = synthd(&["validate", &config]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn validate_reports_unknown_timestep_spacing() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        "name = \"p\"\n[synth]\nmodel = \"m.onnx\"\ntimestep_spacing = \"even\"\n",
    )
    .unwrap();
    let output = synthd(&["validate", pipeline.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output).lines().next().unwrap(),
        format!(
            "{}:4:20: `synth.timestep_spacing`: unknown variant `even`, expected one of `linspace`, `leading`, `trailing`",
            pipeline.display()
        )
    );
}

#[test]
fn validate_refuses_a_group_readable_key() {
    let (_dir, config) = init_layout();
    let key = Path::new(&config).parent().unwrap().join("synthd.key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = synthd(&["validate", &config]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("`deid.key_file`: key file") && stderr(&output).contains("expected 0600"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn every_example_pipeline_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for entry in std::fs::read_dir(root.join("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        let output = synthd(&["validate", path.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(0), "{}: {}", path.display(), stderr(&output));
    }
}

#[test]
fn doctor_reports_the_real_onnxruntime_and_cpu_provider() {
    let (_dir, config) = init_layout();
    let output = synthd(&["doctor", "--config", &config]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}\n{}", stderr(&output));
    assert!(
        text.contains("onnxruntime: ") && text.contains("(version 1.32.0"),
        "{text}"
    );
    assert!(text.contains("cpu       ok (CPUExecutionProvider)"), "{text}");
    // The PyPI onnxruntime wheel is CPU-only: the GPU providers must say so, with a fix.
    assert!(
        text.contains("cuda      unavailable: CUDA provider unavailable:")
            && text.contains("drop \"cuda\" from providers"),
        "{text}"
    );
    assert!(text.contains("key file: ") && text.contains("ok (mode 0600)"), "{text}");
    assert!(text.ends_with("result: ok\n"), "{text}");
}

#[test]
fn doctor_fails_on_a_missing_config_and_says_how_to_make_one() {
    let output = synthd(&["doctor", "--config", "/nonexistent/synthd.toml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("synthd init DIR"), "{}", stdout(&output));
}

#[test]
fn doctor_says_where_it_looked_when_onnxruntime_is_missing() {
    let (_dir, config) = init_layout();
    edit(
        &config,
        "# onnxruntime_library = \"/opt/onnxruntime/libonnxruntime.so\"",
        "onnxruntime_library = \"/nonexistent/libonnxruntime.so\"",
    );
    let output = synthd(&["validate", &config]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("`runtime.onnxruntime_library`: /nonexistent/libonnxruntime.so not found"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn validate_reports_each_bad_dicom_listen_value_at_its_line() {
    let (_dir, config) = init_layout();
    let mut text = std::fs::read_to_string(&config).unwrap();
    let first = text.lines().count() + 1;
    text.push_str(
        "[dicom.listen]\nae_title = \"SYNTHD_IS_TOO_LONG\"\nbind = \"localhost\"\n\
         [[dicom.listen.allow]]\nae_title = \"PACS\"\nhosts = [\"pacs.example\"]\n",
    );
    std::fs::write(&config, text).unwrap();
    let output = synthd(&["validate", &config]);
    assert_eq!(output.status.code(), Some(2));
    let lines: Vec<String> = stderr(&output).lines().map(str::to_string).collect();
    assert_eq!(
        lines[..3],
        [
            format!(
                "{config}:{}:12: `dicom.listen.ae_title`: AE title \"SYNTHD_IS_TOO_LONG\" is 18 characters long; at most 16 are allowed",
                first + 1
            ),
            format!(
                "{config}:{}:8: `dicom.listen.bind`: \"localhost\" is not an IP address; expected e.g. \"127.0.0.1\" or \"0.0.0.0\"",
                first + 2
            ),
            format!(
                "{config}:{}:10: `dicom.listen.allow.hosts`: \"pacs.example\" is not an IP address; expected e.g. \"10.0.0.5\" (host names are not resolved)",
                first + 5
            ),
        ]
    );
}

/// `[metrics] listen`: a malformed address, and one another program holds,
/// are reported at the key by `validate` and by `run` before it starts.
#[test]
fn metrics_listen_malformed_or_taken_is_reported_at_the_key() {
    let (_dir, config) = init_layout();
    let line = std::fs::read_to_string(&config).unwrap().lines().count() + 3;
    let append = |listen: &str| {
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.split("\n[metrics]\n").next().unwrap().to_string();
        std::fs::write(&config, format!("{text}\n[metrics]\nlisten = \"{listen}\"\n")).unwrap();
    };
    append("localhost:9464");
    let output = synthd(&["validate", &config]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output).lines().next().unwrap(),
        format!(
            "{config}:{line}:10: `metrics.listen`: \"localhost:9464\" is not an IP:PORT address; expected e.g. \
             \"127.0.0.1:9464\" (loopback) or \"0.0.0.0:9464\" to expose metrics and the status page to the network \
             (no host names)"
        )
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    append(&address);
    let expected = format!(
        "{config}:{line}:10: `metrics.listen`: cannot listen on {address}: Address already in use (os error 98); \
         another program listens there; choose a free port"
    );
    let output = synthd(&["validate", &config]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(stderr(&output).lines().next().unwrap(), expected);
    let output = synthd(&["run", "--allow-root", "--config", &config]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output).trim_end(),
        format!("error: run: cannot start the metrics listener: {expected}")
    );
    drop(taken);
    let output = synthd(&["validate", &config]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn validate_reports_a_pipeline_destination_that_synthd_toml_does_not_define() {
    let (dir, config) = init_layout();
    let pipeline = dir.path().join("site/pipelines/deid-only.toml");
    let text = std::fs::read_to_string(&pipeline).unwrap();
    let routed = text.replacen("[output]\n", "[output]\ndestinations = [\"pacs\"]\n", 1);
    std::fs::write(&pipeline, &routed).unwrap();
    let line = routed.lines().position(|l| l.starts_with("destinations")).unwrap() + 1;
    let output = synthd(&["validate", &config]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output).lines().next().unwrap(),
        format!(
            "{}:{line}:17: `output.destinations`: no [[destinations]] entry in {config} is named \"pacs\"; add one or remove it here",
            pipeline.display()
        )
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 104\n");
    std::fs::write(&config, text).unwrap();
    let output = synthd(&["validate", &config]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}
