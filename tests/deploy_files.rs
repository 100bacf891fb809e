//! deploy/kubernetes/: both Jobs validate against the Kubernetes API schema
//! (kubernetes-validate --strict, from the project venv) and agree with each
//! other and with synthd: an Indexed Job whose completions equal
//! SYNTHD_SHARD_COUNT, one GPU per pod, the key from a private Secret, and
//! the merge Job on the same output volume. deploy/slurm/ scripts parse.

mod common;

use common::{python, repo, stderr};
use std::process::Command;

fn kubernetes_files() -> Vec<std::path::PathBuf> {
    ["synthd-shards-job.yaml", "synthd-merge-job.yaml"]
        .iter()
        .map(|name| repo(&format!("deploy/kubernetes/{name}")))
        .collect()
}

#[test]
fn kubernetes_jobs_validate_against_the_api_schema() {
    let validator = std::path::Path::new(&python()).with_file_name("kubernetes-validate");
    let output = Command::new(&validator)
        .arg("--strict")
        .args(kubernetes_files())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/setup.sh installs it)", validator.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), stderr(&output));
    assert!(output.status.success(), "{text}");
    assert_eq!(text.matches("passed for resource").count(), 2, "{text}");
}

#[test]
fn kubernetes_jobs_agree_with_each_other_and_with_synthd() {
    let script = r#"
import sys, yaml
shards, merge = (yaml.safe_load(open(p)) for p in sys.argv[1:3])
spec = shards["spec"]
assert spec["completionMode"] == "Indexed", spec
pod = spec["template"]["spec"]
assert pod["restartPolicy"] == "Never"
(container,) = pod["containers"]
env = {e["name"]: e["value"] for e in container["env"]}
assert int(env["SYNTHD_SHARD_COUNT"]) == spec["completions"], "the shard count must equal completions"
assert "JOB_COMPLETION_INDEX" not in env, "Kubernetes sets the index"
assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
command = " ".join(container["command"] + container["args"])
assert "synthd process" in command and "--shard " not in command, command
assert "-eq 3" in command, "exit 3 (finished with quarantines) counts as success"
rules = spec["podFailurePolicy"]["rules"]
assert any(r["action"] == "FailJob" and r["onExitCodes"]["values"] == [2] for r in rules), rules
mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
volumes = {v["name"]: v for v in pod["volumes"]}
def flag(name):
    words = command.split()
    return words[words.index(name) + 1]
assert flag("--output") == mounts["output"]
assert flag("--input") == mounts["input"]
assert flag("--key-file").startswith(mounts["key"] + "/")
assert flag("--pipeline").startswith(mounts["pipelines"] + "/")
key = volumes["key"]["secret"]
assert key["defaultMode"] == 0o400, "the key is readable by its owner only"
assert "fsGroup" not in pod.get("securityContext", {}), "fsGroup would add group read to the key"
assert pod["securityContext"]["runAsNonRoot"] is True

mpod = merge["spec"]["template"]["spec"]
(mcontainer,) = mpod["containers"]
mmounts = {m["name"]: m["mountPath"] for m in mcontainer["volumeMounts"]}
assert mcontainer["command"] == ["synthd", "merge", mmounts["output"]], mcontainer["command"]
mvolumes = {v["name"]: v for v in mpod["volumes"]}
claim = lambda vs: vs["output"]["persistentVolumeClaim"]["claimName"]
assert claim(mvolumes) == claim(volumes), "merge reads the volume the shards wrote"
assert "key" not in mvolumes, "merge needs no key"
assert mcontainer["image"] == container["image"]
print("ok")
"#;
    let files = kubernetes_files();
    let output = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(&files)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
}

#[test]
fn slurm_scripts_parse_and_chain_the_merge_after_the_array() {
    for name in ["submit.sh", "synthd-array.sbatch", "synthd-merge.sbatch"] {
        let path = repo(&format!("deploy/slurm/{name}"));
        let output = Command::new("bash").arg("-n").arg(&path).output().unwrap();
        assert!(output.status.success(), "{name}: {}", stderr(&output));
    }
    let submit = std::fs::read_to_string(repo("deploy/slurm/submit.sh")).unwrap();
    assert!(submit.contains("--dependency=\"afterok:$array_job\""), "{submit}");
    assert!(submit.contains("--gres=\"gpu:$gpus\""), "{submit}");
    assert!(
        submit.contains("export SYNTHD_SHARD_COUNT"),
        "the count is pinned for re-runs"
    );
}
