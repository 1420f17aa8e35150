//! `cargo xtask train` stopped by the signals a cluster or a terminal sends:
//! SIGTERM (Slurm's pre-emption, `docker stop`) and SIGHUP (a dropped SSH
//! session) finish the step, save a checkpoint and exit with status 130,
//! as Ctrl-C does; a second signal stops at once, naming the last complete
//! checkpoint.

// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts a long quickstart run into `out`, waits until it has taken a
/// step, sends `signal` `times` times (5 ms apart, so they are not merged
/// into one pending signal), and returns the exit status and stderr.
fn train_then(signal: &str, times: usize, out: &Path) -> (Option<i32>, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["train", "--steps", "100000", "--eval-every", "0"])
        .args(["--checkpoint-every", "0", "--output", out.to_str().unwrap()])
        .env("TESSERA_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = out.join("metrics.jsonl");
    let start = Instant::now();
    while !std::fs::read_to_string(&metrics).is_ok_and(|m| m.lines().count() >= 2) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no step within two minutes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..times {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        std::thread::sleep(Duration::from_millis(5));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn sigterm_and_sighup_save_a_checkpoint_and_exit_like_ctrl_c() {
    for signal in ["TERM", "HUP"] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("run");
        let (code, stderr) = train_then(signal, 1, &out);
        assert!(stderr.contains("finishing step"), "SIG{signal}: {stderr}");
        assert_eq!(code, Some(130), "SIG{signal}: {stderr}");
        assert!(stderr.contains("--resume"), "SIG{signal}: {stderr}");
        let saved: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
            .collect();
        assert_eq!(saved.len(), 1, "SIG{signal}: {saved:?}");
        assert!(saved[0].path().join("trainer_state.json").is_file());
    }
}

#[test]
fn a_second_signal_stops_at_once_and_names_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (code, stderr) = train_then("TERM", 2, &out);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        stderr.contains("stopped at once") && stderr.contains("no checkpoint was saved"),
        "{stderr}"
    );
    // A save cut short leaves at most a hidden staging folder (removed when
    // the folder is next claimed), never a step-N that looks complete.
    let complete: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.to_string_lossy().starts_with("step-"))
        .collect();
    assert!(complete.is_empty(), "{complete:?}");
}
