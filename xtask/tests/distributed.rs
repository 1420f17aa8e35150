//! `cargo xtask train` across the ranks of an Open MPI job (`mpirun`), on the
//! offline quickstart (tiny model, synthetic NLI): a run on N ranks is the
//! one-process run with the same `--grad-groups`, bit for bit (weights,
//! optimizer state, losses, evaluation); a run saved on N ranks resumes on
//! M; a rank's error ends the job with its rank and message; SIGTERM saves a
//! consistent checkpoint; two "hosts" (network namespaces) train over TCP.
//! Built only with `--features mpi`; `.ci/run` runs it
//! (`cargo test -p xtask --features mpi --test distributed`, and as root
//! `-- --ignored` for the two hosts).
#![cfg(feature = "mpi")]
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `mpirun` as a root container needs it, with rayon's threads unpinned
/// and more ranks than cores allowed.
fn mpirun(ranks: usize) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "--allow-run-as-root",
        "--bind-to",
        "none",
        "--oversubscribe",
    ])
    .args(["-n", &ranks.to_string(), "-x", "TESSERA_THREADS=1"])
    .env("TESSERA_THREADS", "1")
    .stdin(Stdio::null());
    cmd
}

/// `cargo xtask train` with `args` on `ranks` ranks (1: no mpirun at all).
fn train(ranks: usize, args: &[&str]) -> Output {
    let mut cmd = if ranks == 1 {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.env("TESSERA_THREADS", "1");
        cmd
    } else {
        let mut cmd = mpirun(ranks);
        cmd.arg(env!("CARGO_BIN_EXE_xtask"));
        cmd
    };
    cmd.arg("train").args(args).output().unwrap()
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A short quickstart run into `out` of `steps` steps (evaluated on 40
/// rows at the end).
fn args<'a>(out: &'a Path, steps: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let base = ["--steps", steps, "--warmup-steps", "0", "--batch-size", "4"];
    let tail = ["--eval-every", "0", "--eval-examples", "40"];
    [&base[..], &tail[..], more, &["--output", s(out)]].concat()
}

fn checkpoint(out: &Path, step: u64) -> PathBuf {
    out.join("checkpoints").join(format!("step-{step}"))
}

/// The step and evaluation lines of `metrics.jsonl` without their timings
/// (none before the file exists).
fn results(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("step").is_some())
        .map(|mut v| {
            let line = v.as_object_mut().unwrap();
            for timing in ["seconds", "examples_per_s", "world_size", "comm_seconds"] {
                line.remove(timing);
            }
            v
        })
        .collect()
}

/// Asserts that two runs' checkpoints of `step` hold the same weights and
/// optimizer state, bit for bit.
fn same_state(a: &Path, b: &Path, step: u64) {
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let (x, y) = (
            checkpoint(a, step).join(file),
            checkpoint(b, step).join(file),
        );
        assert!(
            std::fs::read(&x).unwrap() == std::fs::read(&y).unwrap(),
            "{} and {} differ",
            x.display(),
            y.display()
        );
    }
}

/// A running `mpirun`, killed if the test fails before waiting for it.
struct Job(Option<std::process::Child>);

impl Job {
    fn id(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    fn wait(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn n_ranks_give_the_bits_of_one_process_with_the_same_groups() {
    let cases: [(&str, &[usize], &[&str]); 6] = [
        ("2", &[2], &[]),
        ("2", &[2], &["--precision", "fp16"]),
        ("4", &[2, 4], &[]),
        ("3", &[3], &[]),
        ("2", &[2], &["--optimizer", "adafactor", "--dropout", "0.1"]),
        ("3", &[3], &["--precision", "bf16", "--stochastic-rounding"]),
    ];
    for (groups, ranks, extra) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let one = tmp.path().join("one");
        let more = [&["--grad-accum", groups, "--grad-groups", groups], extra].concat();
        ok(train(1, &args(&one, "4", &more)));
        for &n in ranks {
            let split = tmp.path().join(format!("ranks-{n}"));
            // The ranks default --grad-groups to their number: give it only
            // where it differs.
            let flags = if n.to_string() == groups {
                [&["--grad-accum", groups], extra].concat()
            } else {
                more.clone()
            };
            let out = ok(train(n, &args(&split, "4", &flags)));
            let what = format!("G = {groups} on {n} ranks {extra:?}");
            same_state(&one, &split, 4);
            assert_eq!(results(&one), results(&split), "{what}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(&format!("{n} ranks (ZeRO-1)")), "{stderr}");
        }
    }
}

#[test]
fn a_split_run_stays_within_a_millionth_of_one_group() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, split) = (tmp.path().join("one"), tmp.path().join("split"));
    ok(train(
        1,
        &args(&one, "10", &["--grad-accum", "2", "--grad-groups", "1"]),
    ));
    ok(train(2, &args(&split, "10", &["--grad-accum", "2"])));
    let load = |dir: &Path| {
        let bytes = std::fs::read(checkpoint(dir, 10).join("model.safetensors")).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut all: Vec<(String, Vec<f32>)> = tensors
            .tensors()
            .into_iter()
            .map(|(name, t)| {
                let values = t.data().chunks_exact(4);
                (
                    name,
                    values
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect(),
                )
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    };
    let (a, b) = (load(&one), load(&split));
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let norm = |v: &[f32]| v.iter().map(|&e| f64::from(e).powi(2)).sum::<f64>().sqrt();
        let diff: Vec<f32> = x.iter().zip(y).map(|(p, q)| p - q).collect();
        let rel = norm(&diff) / norm(x).max(f64::MIN_POSITIVE);
        assert!(rel <= 1e-6, "{name}: relative difference {rel:e}");
    }
}

#[test]
fn a_run_saved_on_n_ranks_resumes_on_m() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    // A constant rate: `--steps` sets the end of a decaying schedule.
    let flags = ["--grad-accum", "2", "--schedule", "constant"];
    ok(train(
        1,
        &args(&whole, "6", &[&flags[..], &["--grad-groups", "2"]].concat()),
    ));
    // 2 ranks to step 2, then 1 process to step 4, then 2 ranks to step 6.
    let run = tmp.path().join("run");
    ok(train(2, &args(&run, "2", &flags)));
    for (ranks, steps) in [(1, "4"), (2, "6")] {
        let latest = ["--resume", "latest"];
        ok(train(
            ranks,
            &[&args(&run, steps, &[])[..], &latest].concat(),
        ));
    }
    same_state(&whole, &run, 6);
    // 3 ranks cannot share the 2 groups the run sums in: a clear error.
    let out = train(
        3,
        &[&args(&run, "8", &[])[..], &["--resume", "latest"]].concat(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Every rank finds the same fault; whichever aborts first is heard.
    let line = stderr.lines().find(|l| l.starts_with("error (rank "));
    assert!(
        line.is_some_and(|l| l.contains(" of 3): ") && l.contains("--grad-groups")),
        "{stderr}"
    );
}

#[test]
fn a_failing_rank_ends_the_job_with_its_rank_and_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let missing = tmp.path().join("no-such.jsonl");
    let good = args(&out, "1000", &["--grad-accum", "2"]);
    let bad = [&good[..], &["--train-file", s(&missing)]].concat();
    // MPMD: rank 0 is well, rank 1 is given a file its host does not have.
    let start = Instant::now();
    let mut cmd = mpirun(1);
    cmd.arg(env!("CARGO_BIN_EXE_xtask"))
        .arg("train")
        .args(&good);
    cmd.args([":", "-n", "1", "-x", "TESSERA_THREADS=1"]);
    cmd.arg(env!("CARGO_BIN_EXE_xtask")).arg("train").args(&bad);
    let output = cmd.output().unwrap();
    assert!(!output.status.success());
    assert!(start.elapsed() < Duration::from_secs(60), "no hang");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error (rank 1 of 2): "))
        .unwrap_or_else(|| panic!("no error line of rank 1: {stderr}"));
    assert!(line.contains("no-such.jsonl"), "{line}");
}

#[test]
fn sigterm_to_mpirun_saves_one_consistent_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut cmd = mpirun(2);
    // On SIGTERM mpirun waits this long, sends the ranks SIGTERM, waits as
    // long again and kills them: time for a step and a save.
    cmd.args(["--mca", "odls_base_sigkill_timeout", "5"]);
    cmd.arg(env!("CARGO_BIN_EXE_xtask")).arg("train");
    cmd.args(args(
        &out,
        "100000",
        &["--grad-accum", "2", "--checkpoint-every", "0"],
    ));
    let child = Job(Some(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let start = Instant::now();
    while results(&out).len() < 3 {
        assert!(start.elapsed() < Duration::from_secs(120), "no steps");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let output = child.wait();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("interrupted at step"), "{stderr}");
    let saved: Vec<PathBuf> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    // The checkpoint is whole and resumes (on one process) for a step.
    let step: u64 = saved[0]
        .to_str()
        .unwrap()
        .rsplit('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let next = (step + 1).to_string();
    let resume = [&args(&out, &next, &[])[..], &["--resume", "latest"]].concat();
    ok(train(1, &resume));
}

/// Two "hosts" on this machine: network namespaces joined by a veth pair
/// (10.77.0.1 and 10.77.0.2), each rank in its own namespace and UTS
/// hostname, removed again when dropped. Needs root (CAP_NET_ADMIN).
struct TwoHosts {
    names: [String; 2],
    agent: PathBuf,
}

impl TwoHosts {
    fn new(dir: &Path) -> TwoHosts {
        let id = std::process::id();
        let names = [format!("tessera-a-{id}"), format!("tessera-b-{id}")];
        let veth = [format!("tsa{id}"), format!("tsb{id}")];
        let ip = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().unwrap();
            assert!(status.success(), "ip {args:?}");
        };
        let hosts = TwoHosts {
            agent: dir.join("netns-agent"),
            names: names.clone(),
        };
        for n in &names {
            ip(&["netns", "add", n]);
        }
        ip(&[
            "link", "add", &veth[0], "type", "veth", "peer", "name", &veth[1],
        ]);
        for (i, (n, v)) in names.iter().zip(&veth).enumerate() {
            let addr = format!("10.77.0.{}/24", i + 1);
            ip(&["link", "set", v, "netns", n]);
            ip(&["-n", n, "addr", "add", &addr, "dev", v]);
            ip(&["-n", n, "link", "set", v, "up"]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        // Open MPI's rsh agent: `HOST COMMAND…` runs COMMAND on HOST, here
        // inside that host's namespace under its own hostname.
        let script = format!(
            "#!/bin/sh\nhost=$1; shift\ncase \"$host\" in\n  10.77.0.1) ns={};;\n  10.77.0.2) ns={};;\n  *) echo \"unknown host $host\" >&2; exit 1;;\nesac\nexec ip netns exec \"$ns\" unshare --uts sh -c \"hostname $ns; exec $*\"\n",
            names[0], names[1]
        );
        std::fs::write(&hosts.agent, script).unwrap();
        let chmod = Command::new("chmod").arg("+x").arg(&hosts.agent).status();
        assert!(chmod.unwrap().success());
        hosts
    }

    /// Bytes received by the first host's end of the veth pair.
    fn received(&self) -> u64 {
        let stats = format!(
            "/sys/class/net/tsa{}/statistics/rx_bytes",
            std::process::id()
        );
        let out = Command::new("ip")
            .args(["netns", "exec", &self.names[0], "cat", &stats])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Ignored by `cargo test`: it needs root to make network namespaces.
/// `.ci/run` runs it (as root) with `--ignored`.
#[test]
#[ignore]
fn two_hosts_train_over_tcp_across_a_veth_pair() {
    let tmp = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new(tmp.path());
    let (one, split) = (tmp.path().join("one"), tmp.path().join("split"));
    let flags = ["--grad-accum", "2"];
    ok(train(
        1,
        &args(&one, "3", &[&flags[..], &["--grad-groups", "2"]].concat()),
    ));
    let before = hosts.received();
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &hosts.names[0],
        "mpirun",
        "--allow-run-as-root",
    ]);
    cmd.args(["--bind-to", "none", "-n", "2", "-x", "TESSERA_THREADS=1"]);
    cmd.args(["--host", "10.77.0.1,10.77.0.2", "--mca", "plm_rsh_agent"]);
    cmd.arg(&hosts.agent);
    // TCP between the ranks, on the veth subnet only (no shared memory).
    for (key, value) in [
        ("btl", "tcp,self"),
        ("btl_tcp_if_include", "10.77.0.0/24"),
        ("oob_tcp_if_include", "10.77.0.0/24"),
    ] {
        cmd.args(["--mca", key, value]);
    }
    cmd.arg(env!("CARGO_BIN_EXE_xtask")).arg("train");
    cmd.args(args(&split, "3", &flags)).stdin(Stdio::null());
    ok(cmd.output().unwrap());
    same_state(&one, &split, 3);
    // Three steps of the 1.3 M-parameter model: each way, the gradient
    // parts and weights (5 MB in f32) several times over.
    let crossed = hosts.received() - before;
    assert!(
        crossed > 10_000_000,
        "only {crossed} bytes crossed the veth pair"
    );
}
