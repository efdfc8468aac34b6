//! Hub errors through the CLI: a repository that does not exist exits 3, one that
//! needs a token exits 4. A local server stands in for the Hub (HF_ENDPOINT).

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
