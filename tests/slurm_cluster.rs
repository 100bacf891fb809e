//! deploy/slurm/ on a real one-node Slurm cluster: Debian's munged,
//! slurmctld and slurmd, every file in a temp dir, no systemd, up in about a
//! second. submit.sh runs a 3-task array of `synthd process` over copies of
//! the demo study and the merge job chained with --dependency=afterok; the
//! merged dataset must list every study and hold the same files as one
//! process's run.

mod common;

use common::{assert_same_files, fixed_key, make_studies, repo, stderr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STUDIES: usize = 5;
const SLICES: usize = 3;
const NODE: &str = "synthd-node";

/// munged, slurmctld and slurmd, stopped when dropped.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    daemons: Vec<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.daemons.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn hostname() -> String {
    let output = Command::new("hostname").output().expect("hostname runs");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn spawn(program: &str, args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(program)
        .args(args)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/setup.sh installs slurmctld, slurmd and munge)"))
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let dir = dir.to_path_buf();
        for sub in ["munge", "state", "spool", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("munge"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let key = dir.join("munge/munge.key");
        let made = Command::new("mungekey")
            .args(["--create", "--bits", "1024", "--keyfile"])
            .arg(&key)
            .output()
            .expect("mungekey (scripts/setup.sh installs munge)");
        assert!(made.status.success(), "{}", stderr(&made));
        let mut cluster = Cluster {
            conf: dir.join("slurm.conf"),
            dir: dir.clone(),
            daemons: Vec::new(),
        };
        let socket = dir.join("munge/socket");
        let path = |p: &Path| p.to_str().unwrap().to_string();
        cluster.daemons.push(spawn(
            "munged",
            &[
                "--foreground",
                "--force",
                &format!("--socket={}", path(&socket)),
                &format!("--key-file={}", path(&key)),
                &format!("--log-file={}", path(&dir.join("log/munged.log"))),
                &format!("--pid-file={}", path(&dir.join("munge/munged.pid"))),
                &format!("--seed-file={}", path(&dir.join("munge/munged.seed"))),
            ],
            &dir.join("log/munged.out"),
        ));
        wait_for("munged's socket", Duration::from_secs(10), || socket.exists());
        std::fs::write(&cluster.conf, slurm_conf(&dir, &socket)).unwrap();
        let conf = path(&cluster.conf);
        cluster.daemons.push(spawn(
            "slurmctld",
            &["-D", "-i", "-f", &conf],
            &dir.join("log/slurmctld.out"),
        ));
        cluster.daemons.push(spawn(
            "slurmd",
            &["-D", "-N", NODE, "-f", &conf],
            &dir.join("log/slurmd.out"),
        ));
        let started = Instant::now();
        wait_for("the node to be idle", Duration::from_secs(30), || {
            cluster
                .client("sinfo", &["-h", "-o", "%T"])
                .is_some_and(|s| s.trim() == "idle")
        });
        eprintln!("slurm: cluster up in {:.1} s", started.elapsed().as_secs_f64());
        cluster
    }

    /// A Slurm client command's stdout, or None when it failed.
    fn client(&self, program: &str, args: &[&str]) -> Option<String> {
        let output = Command::new(program)
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn job_state(&self, job: &str) -> String {
        let text = self.client("scontrol", &["-o", "show", "job", job]).unwrap_or_default();
        text.split_whitespace()
            .find_map(|field| field.strip_prefix("JobState="))
            .unwrap_or("UNKNOWN")
            .to_string()
    }

    fn logs(&self) -> String {
        common::files_under(&self.dir.join("log"))
            .iter()
            .map(|p| format!("== {}\n{}", p.display(), std::fs::read_to_string(p).unwrap_or_default()))
            .collect()
    }
}

fn slurm_conf(dir: &Path, socket: &Path) -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let d = dir.display();
    format!(
        "ClusterName=synthdtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={slurmd}
AuthType=auth/munge
AuthInfo=socket={socket}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
InactiveLimit=0
MinJobAge=600
KillWait=5
Waittime=0
NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
",
        host = hostname(),
        ctld = free_port(),
        slurmd = free_port(),
        socket = socket.display(),
    )
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn slurm_array_and_merge_job_build_the_same_dataset_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&dir.path().join("slurm"));
    let input = make_studies(&dir.path().join("in"), STUDIES, SLICES);
    let key = fixed_key(dir.path(), 7);
    let pipeline = repo("pipelines/deid-only.toml");
    let output = dir.path().join("dataset");

    let submitted = Command::new("bash")
        .arg(repo("deploy/slurm/submit.sh"))
        .env("SLURM_CONF", &cluster.conf)
        .env("SYNTHD", env!("CARGO_BIN_EXE_synthd"))
        .env("SYNTHD_PIPELINE", &pipeline)
        .env("SYNTHD_INPUT", &input)
        .env("SYNTHD_OUTPUT", &output)
        .env("SYNTHD_KEY_FILE", &key)
        .env("SYNTHD_SHARDS", "3")
        .env("SYNTHD_GPUS_PER_TASK", "0")
        // The scripts ask for a GPU node's CPUs and memory; this node is small.
        .env("SBATCH_EXTRA", "--cpus-per-task=1 --mem=100M --time=10:00")
        .env_remove("SYNTHD_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&submitted.stdout).into_owned();
    assert!(
        submitted.status.success(),
        "{stdout}{}{}",
        stderr(&submitted),
        cluster.logs()
    );
    let ids: Vec<String> = stdout
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect();
    let (array_job, merge_job) = (&ids[0], &ids[1]);

    let started = Instant::now();
    loop {
        let state = cluster.job_state(merge_job);
        if state == "COMPLETED" {
            break;
        }
        let logs = || {
            let task_logs: String = common::files_under(&dir.path().join("dataset-logs"))
                .iter()
                .map(|p| format!("== {}\n{}", p.display(), std::fs::read_to_string(p).unwrap_or_default()))
                .collect();
            format!("{task_logs}{}", cluster.logs())
        };
        assert!(
            !["FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"].contains(&state.as_str()),
            "merge job {merge_job} {state}\n{}",
            logs()
        );
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "merge job {merge_job} still {state}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "slurm: array job {array_job} and merge job {merge_job} done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for index in 0..3 {
        let state = cluster.job_state(&format!("{array_job}_{index}"));
        assert_eq!(state, "COMPLETED", "array task {index}");
        let log = std::fs::read_to_string(dir.path().join(format!("dataset-logs/shard-{index}.log"))).unwrap();
        assert!(log.contains(&format!("shard {index}/3")), "{log}");
        assert!(
            log.contains("progress: shard"),
            "plain progress lines in Slurm's log: {log}"
        );
    }

    let card: serde_json::Value = serde_json::from_slice(&std::fs::read(output.join("dataset.json")).unwrap()).unwrap();
    let indexes: Vec<u64> = card["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [0, 1, 2]);
    assert_eq!(card["studies"], STUDIES);
    assert_eq!(card["instances_by_kind"]["source"], STUDIES * SLICES);
    let manifest = std::fs::read_to_string(output.join("manifest.jsonl")).unwrap();
    assert_eq!(manifest.lines().count(), STUDIES * SLICES);
    for line in manifest.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(output.join(row["path"].as_str().unwrap()).is_file(), "{row}");
    }

    // One process over the same input, merged the same way: the same files.
    let single = dir.path().join("single");
    let run = Command::new(env!("CARGO_BIN_EXE_synthd"))
        .args(["process", "--pipeline"])
        .arg(&pipeline)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&single)
        .arg("--key-file")
        .arg(&key)
        .env_remove("SYNTHD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let merged = Command::new(env!("CARGO_BIN_EXE_synthd"))
        .arg("merge")
        .arg(&single)
        .output()
        .unwrap();
    assert_eq!(merged.status.code(), Some(0), "{}", stderr(&merged));
    assert_same_files(&single, &output);
}
