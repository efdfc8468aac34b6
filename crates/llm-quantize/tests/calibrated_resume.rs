//! Crash safety of the calibrated formats: SIGKILL partway through
//! `quantize MODEL gptq|awq …`, then `--resume` gives an output folder byte-identical
//! to an uninterrupted run (every shard, config and index); a resume against other
//! options or calibration data is refused (exit 7).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A small calibration text: the start of the shared train split.
fn calib_file(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(shared().join("data/corpus/train.txt")).unwrap();
    let cut: String = text.chars().take(100_000).collect();
    let p = dir.join("calib.txt");
    std::fs::write(&p, cut).unwrap();
    p
}

/// Blocks recorded in the calibrated checkpoint under `cp_dir` (0 when none yet).
fn layers_done(cp_dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(cp_dir) else {
        return 0;
    };
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with("calibrated-") {
            continue;
        }
        if let Ok(t) = std::fs::read_to_string(e.path().join("state.json")) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) {
                return v["layers_done"].as_u64().unwrap_or(0) as usize;
            }
        }
    }
    0
}

/// Every file of a folder (sorted by name) with its bytes.
fn folder_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn assert_same_folder(reference: &Path, resumed: &Path) {
    let a = folder_files(reference);
    let b = folder_files(resumed);
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "different files");
    assert!(
        a.iter().any(|f| f.0.ends_with(".safetensors")),
        "{:?}",
        names(&a)
    );
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{n} differs from an uninterrupted run");
    }
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

/// A variant of the command: format, level and options, and calibration samples.
type Variant<'a> = (&'a [&'a str], &'a str);

/// Runs `args` uninterrupted, then again with a checkpoint, SIGKILLed once at least
/// two blocks are checkpointed, checks that the `refused` variants of the command
/// are refused with exit 7 and that `--resume` finishes it byte-identically.
/// `spill`: the activations are spilled to disk (test hook).
fn kill_and_resume(model: &str, args: &[&str], refused: &[Variant<'_>], spill: bool) {
    let env: &[(&str, &str)] = if spill {
        &[("LLM_QUANTIZE_TEST_SPILL_ACTIVATIONS", "1")]
    } else {
        &[]
    };
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    let calib = calib_file(t);
    let model = shared_model(model);
    let cmd = |(args, samples): Variant<'_>, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<&str> = vec!["quantize", model.to_str().unwrap()];
        v.extend_from_slice(args);
        v.extend([
            "--calibration-data",
            calib.to_str().unwrap(),
            "--calibration-samples",
            samples,
            "--calibration-seq-len",
            "64",
            "-n",
            "q",
        ]);
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect()
    };
    let with = |extra: &[&str]| cmd((args, "8"), extra);

    let r = lq_env(t, &refs(&with(&["-o", "ref", "--no-checkpoints"])), env);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // Slow each block down so the kill lands in the middle.
    let mut child = std::process::Command::new(bin())
        .current_dir(t)
        .args(with(&["-o", "out"]))
        .env_remove("LLM_QUANTIZE_CHECKPOINT_DIR")
        .env("LLM_QUANTIZE_TEST_UNIT_DELAY_MS", "400")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cp = t.join(".checkpoint");
    let t0 = Instant::now();
    while layers_done(&cp) < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no progress in the checkpoint"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done = layers_done(&cp);
    assert!((2..4).contains(&done), "{done} blocks checkpointed");
    assert!(
        !t.join("out/q").exists(),
        "a killed run must not leave the final name"
    );
    // only the latest activation snapshot is kept (the previous one is deleted
    // right after the state names the new one: a kill can land in between)
    let folder = std::fs::read_dir(&cp)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("calibrated-"))
        .unwrap()
        .path();
    let snaps = files_ending(&folder, ".bf16");
    assert!(snaps.len() <= 2, "{snaps:?}");

    // Other options or calibration data: refused, and the checkpoint is kept.
    for variant in refused {
        let c = cmd(*variant, &["-o", "out", "--resume"]);
        let mut a = vec!["--format", "json"];
        a.extend(refs(&c));
        let r = lq_env(t, &a, env);
        assert_eq!(r.code, 7, "{variant:?}: {}\n{}", r.stdout, r.stderr);
        assert_eq!(r.json()["error_type"], "CheckpointError");
    }
    assert_eq!(layers_done(&cp), done);

    let c = with(&["-o", "out", "--resume"]);
    let mut a = vec!["--format", "json"];
    a.extend(refs(&c));
    let r = lq_env(t, &a, env);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    assert_eq!(v["metadata"]["layers_resumed"].as_u64(), Some(done as u64));
    assert_eq!(
        v["metadata"]["calibration"]["activations_spilled_to_disk"],
        spill
    );
    assert_same_folder(&t.join("ref/q"), &t.join("out/q"));
    // the checkpoint and the partial folder are gone
    assert!(!folder.exists(), "checkpoint left after success");
    assert!(!t.join("out/.q.partial").exists());
}

#[test]
fn gptq_sigkill_then_resume_is_byte_identical() {
    kill_and_resume(
        "llama",
        &["gptq", "-q", "4bit"],
        &[
            (&["gptq", "-q", "3bit"], "8"),
            (&["gptq", "-q", "4bit", "--group-size", "64"], "8"),
            (&["gptq", "-q", "4bit"], "7"),
        ],
        false,
    );
}

/// AWQ folds its scales into the norms (state carried between blocks), and the
/// activations spill to a file here (test hook).
#[test]
fn awq_with_spilled_activations_sigkill_then_resume_is_byte_identical() {
    kill_and_resume(
        "qwen3",
        &["awq", "-q", "4bit"],
        &[(&["awq", "-q", "4bit", "--group-size", "64"], "8")],
        true,
    );
}

#[test]
fn calibrated_resume_without_checkpoint_is_a_checkpoint_error() {
    let dir = tempfile::tempdir().unwrap();
    let calib = calib_file(dir.path());
    let model = shared_model("llama");
    let base = [
        "--format",
        "json",
        "quantize",
        model.to_str().unwrap(),
        "compressed-tensors",
        "-q",
        "W4A16",
        "--calibration-data",
        calib.to_str().unwrap(),
        "--calibration-samples",
        "4",
        "--calibration-seq-len",
        "32",
    ];
    let mut a = base.to_vec();
    a.push("--resume");
    let r = lq(dir.path(), &a);
    assert_eq!(r.code, 7, "{}", r.stdout);
    assert_eq!(r.json()["error_type"], "CheckpointError");
    a.push("--no-checkpoints");
    let r = lq(dir.path(), &a);
    assert_eq!(r.code, 2, "{}", r.stdout);
}
