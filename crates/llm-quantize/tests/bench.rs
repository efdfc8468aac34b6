//! `bench`: one invocation measures a safetensors folder and a GGUF file of the same
//! model side by side (prompt and decode tokens/s, peak RSS, size, perplexity and KL
//! against the folder), and runs llama.cpp's `llama-bench` on the GGUF file for ratios.

mod common;
use common::*;

#[test]
fn bench_folder_and_gguf_side_by_side_with_llama_bench() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = shared_model("llama");
    let q = lq(
        t,
        &[
            "quantize",
            model.to_str().unwrap(),
            "gguf",
            "-q",
            "Q8_0",
            "-o",
            t.to_str().unwrap(),
            "-n",
            "q8.gguf",
            "--no-checkpoints",
        ],
    );
    assert_eq!(q.code, 0, "{}", q.stderr);
    let gguf = t.join("q8.gguf");
    let models = format!("{},{}", model.display(), gguf.display());
    let dataset = shared().join("data/corpus/test.txt");
    let bench = llama_cpp_bin("llama-bench");
    let r = lq(
        t,
        &[
            "--format",
            "json",
            "bench",
            "--models",
            &models,
            "-p",
            "32",
            "-n",
            "8",
            "-r",
            "2",
            "-t",
            "1",
            "--dataset",
            dataset.to_str().unwrap(),
            "--samples",
            "2",
            "--max-length",
            "64",
            "--base",
            model.to_str().unwrap(),
            "--llama-bench",
            bench.to_str().unwrap(),
            "-o",
            t.join("bench.json").to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "bench failed:\n{}", r.stderr);
    let v = r.json();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.join("bench.json")).unwrap()).unwrap();
    assert_eq!(v, file, "-o writes the same JSON as stdout");
    assert_eq!(v["status"], "success");
    assert_eq!(v["threads"], 1);
    let rows = v["models"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        for (k, n) in [("prompt", 32), ("decode", 8)] {
            assert_eq!(row[k]["tokens"], n, "{row}");
            assert_eq!(row[k]["runs"], 2, "{row}");
            let tps = row[k]["tokens_per_second"].as_f64().unwrap();
            assert!(tps.is_finite() && tps > 0.0, "{row}");
        }
        let rss = row["peak_rss_bytes"].as_u64().unwrap();
        let size = row["size_bytes"].as_u64().unwrap();
        // the process holds at least the weights it computes from, and not absurdly more
        assert!(rss > size / 2 && rss < 2_000_000_000, "{row}");
        let ppl = row["quality"]["perplexity"].as_f64().unwrap();
        assert!(ppl.is_finite() && ppl > 1.0, "{row}");
    }
    // the folder against itself: KL 0, same top token everywhere
    let own = &rows[0]["quality"];
    assert!(
        own["mean_kl_divergence"].as_f64().unwrap().abs() < 1e-9,
        "{own}"
    );
    assert_eq!(own["same_top_token_rate"].as_f64().unwrap(), 1.0);
    let q8 = &rows[1]["quality"];
    let kl = q8["mean_kl_divergence"].as_f64().unwrap();
    assert!(kl > 0.0 && kl < 0.01, "Q8_0 KL {kl}");
    // Q8_0 is about half the size of the bf16 folder
    let (s0, s1) = (
        rows[0]["size_bytes"].as_f64().unwrap(),
        rows[1]["size_bytes"].as_f64().unwrap(),
    );
    assert!(s1 < 0.6 * s0, "{s0} vs {s1}");
    // llama-bench ran on the GGUF only, same tests, and ratios are its rates over ours
    assert!(rows[0].get("llama_bench").is_none());
    let peer = &rows[1]["llama_bench"];
    for k in ["prompt", "decode"] {
        let theirs = peer[k]["tokens_per_second"].as_f64().unwrap();
        let ours = rows[1][k]["tokens_per_second"].as_f64().unwrap();
        let ratio = rows[1][format!("{k}_ratio_vs_llama_cpp")].as_f64().unwrap();
        assert!(
            (ratio - ours / theirs).abs() < 0.01 * ratio + 1e-3,
            "{k}: {ratio} vs {ours}/{theirs}"
        );
    }
    // human table on stdout names both models
    let h = lq(
        t,
        &[
            "bench", "--models", &models, "-p", "8", "-n", "4", "-r", "1", "-t", "1",
        ],
    );
    assert_eq!(h.code, 0, "{}", h.stderr);
    assert!(
        h.stdout.contains("llama") && h.stdout.contains("q8"),
        "{}",
        h.stdout
    );
}

#[test]
fn bench_bad_arguments_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let model = shared_model("llama");
    let m = model.to_str().unwrap();
    for args in [
        vec!["bench", "--models", m, "-p", "0", "-n", "0"],
        vec!["bench", "--models", m, "-r", "0"],
        vec!["bench", "--models", m, "--base", m],
    ] {
        let r = lq(tmp.path(), &args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(!r.stderr.trim().is_empty());
    }
    let r = lq(tmp.path(), &["bench", "--models", "/nonexistent/model"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
}
