//! Hub errors through the CLI: a repository that does not exist exits 3, one that
//! needs a token exits 4; `info` on a Hub id reads config and safetensors headers but
//! no tensor data. A local server stands in for the Hub (HF_ENDPOINT).

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

/// Answers every request with `status` until the test ends.
fn serve_status(status: &'static str, error_code: &'static str, body: &'static str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if line == "\r\n" {
                    break;
                }
                line.clear();
            }
            let mut s = s;
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Error-Code: {error_code}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn missing_repo_is_exit_3_and_gated_repo_is_exit_4() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    let nf = serve_status(
        "404 Not Found",
        "RepoNotFound",
        r#"{"error":"Repository not found"}"#,
    );
    let r = lq_env(
        dir.path(),
        &[
            "--format",
            "json",
            "quantize",
            "no-org/no-model",
            "gguf",
            "-q",
            "Q4_K_M",
        ],
        &[("HF_ENDPOINT", &nf), ("LLM_QUANTIZE_CACHE", cache)],
    );
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.json()["error_type"], "ModelNotFoundError");

    let auth = serve_status(
        "401 Unauthorized",
        "GatedRepo",
        r#"{"error":"Access to model gated-org/model is restricted. You must have access to it and be authenticated to access it. Please log in."}"#,
    );
    let r = lq_env(
        dir.path(),
        &[
            "--format",
            "json",
            "quantize",
            "gated-org/model",
            "gguf",
            "-q",
            "Q4_K_M",
        ],
        &[("HF_ENDPOINT", &auth), ("LLM_QUANTIZE_CACHE", cache)],
    );
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    assert!(r.json()["suggestion"]
        .as_str()
        .unwrap()
        .contains("HF_TOKEN"));
}

#[path = "../../llmq-pipeline/tests/support/mock_hub.rs"]
mod mock_hub;

#[test]
fn quantize_from_a_hub_id_with_token() {
    let mut repo = mock_hub::MockRepo::from_dir(&shared_model("qwen3"));
    repo.token = Some("tok-123".into());
    let hub = mock_hub::start(
        [("test-org/tiny-qwen3".to_string(), repo)]
            .into_iter()
            .collect(),
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let env = [
        ("HF_ENDPOINT", hub.url.as_str()),
        ("LLM_QUANTIZE_CACHE", cache.to_str().unwrap()),
    ];
    let args = [
        "--format",
        "json",
        "quantize",
        "test-org/tiny-qwen3",
        "gguf",
        "-q",
        "Q4_K_M",
        "-o",
        "out",
    ];
    let r = lq_env(dir.path(), &args, &env);
    assert_eq!(r.code, 4, "without a token: {}\n{}", r.stdout, r.stderr);
    let with_token: Vec<&str> = args.iter().copied().chain(["--token", "tok-123"]).collect();
    let r = lq_env(dir.path(), &with_token, &env);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(dir.path().join("out/tiny-qwen3-Q4_K_M.gguf").is_file());
    assert_eq!(r.json()["metadata"]["architecture"], "Qwen3ForCausalLM");
}

/// `info` on a Hub id, single-file and sharded (an index naming one shard): the same
/// report as on the local folder, while the server sends of each safetensors file
/// exactly its 8-byte length and JSON header, and nothing lands in the cache; offline,
/// a model downloaded earlier is described from the cache.
#[test]
fn info_on_a_hub_id_reads_no_tensor_data() {
    let src = shared_model("llama");
    let weights = std::fs::read(src.join("model.safetensors")).unwrap();
    let header = 8 + u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    assert!(
        weights.len() > 100 * header,
        "the test needs real tensor data"
    );
    let single = mock_hub::MockRepo::from_dir(&src);
    let mut sharded = single.clone();
    sharded.files.retain(|(n, _)| n != "model.safetensors");
    let shard = "model-00001-of-00001.safetensors".to_string();
    let names: Vec<String> = {
        let n = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
        let h: serde_json::Value = serde_json::from_slice(&weights[8..8 + n]).unwrap();
        h.as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "__metadata__")
            .cloned()
            .collect()
    };
    let index = serde_json::json!({
        "metadata": {"total_size": weights.len() - header},
        "weight_map": names.iter().map(|k| (k.clone(), serde_json::json!(shard))).collect::<serde_json::Map<_, _>>(),
    });
    sharded.files.push((
        "model.safetensors.index.json".into(),
        index.to_string().into_bytes(),
    ));
    sharded.files.push((shard.clone(), weights.clone()));
    let hub = mock_hub::start(
        [
            ("test-org/single".to_string(), single),
            ("test-org/sharded".to_string(), sharded),
        ]
        .into_iter()
        .collect(),
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let env = [
        ("HF_ENDPOINT", hub.url.as_str()),
        ("LLM_QUANTIZE_CACHE", cache.to_str().unwrap()),
    ];
    let local = lq_env(
        dir.path(),
        &["--format", "json", "info", src.to_str().unwrap()],
        &[],
    );
    assert_eq!(local.code, 0, "{}\n{}", local.stdout, local.stderr);
    let mut want = local.json();
    for (id, file) in [
        ("test-org/single", "model.safetensors"),
        ("test-org/sharded", shard.as_str()),
    ] {
        let r = lq_env(dir.path(), &["--format", "json", "info", id], &env);
        assert_eq!(r.code, 0, "{id}: {}\n{}", r.stdout, r.stderr);
        let got = r.json();
        want["model_name"] = serde_json::json!(id);
        assert_eq!(got, want, "{id}");
        assert!(got["parameter_count"].as_u64().unwrap() > 0);
        let served = hub.served.lock().unwrap().get(file).copied();
        assert_eq!(served, Some(header), "{id}: bytes of {file} served");
    }
    // the cache holds no weights and no scratch folder
    for e in walk(&cache) {
        let name = e.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.ends_with(".safetensors"), "{}", e.display());
        assert!(!name.starts_with(".info-headers-"), "{}", e.display());
    }
    // offline, a model `quantize` downloaded is described from the cache
    let r = lq_env(
        dir.path(),
        &[
            "quantize",
            "test-org/single",
            "gguf",
            "-q",
            "Q8_0",
            "-o",
            "q",
        ],
        &env,
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let offline = [
        ("HF_ENDPOINT", "http://127.0.0.1:9"),
        ("LLM_QUANTIZE_CACHE", cache.to_str().unwrap()),
    ];
    let r = lq_env(
        dir.path(),
        &["--format", "json", "info", "test-org/single"],
        &offline,
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    want["model_name"] = serde_json::json!("test-org/single");
    assert_eq!(r.json(), want);
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}
