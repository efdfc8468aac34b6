//! Downloads from a Hub id against a local server that behaves like the Hub: files
//! arrive byte-identical, the cache serves a second call with the server gone,
//! missing repos and missing tokens are told apart, and a short body is rejected
//! without leaving a complete-looking file.

#[path = "support/mock_hub.rs"]
mod mock_hub;

use llmq_pipeline::hub::{download_model, HubError, HubOptions};
use mock_hub::MockRepo;
use std::collections::HashMap;
use std::path::PathBuf;

fn shared_llama() -> PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/llama");
    assert!(
        p.is_dir(),
        "shared/ not found at {}: the tests need ../shared/models",
        p.display()
    );
    p
}

fn opts(cache: &std::path::Path, endpoint: &str, token: Option<&str>) -> HubOptions {
    HubOptions {
        token: token.map(String::from),
        cache_dir: cache.to_path_buf(),
        endpoint: Some(endpoint.to_string()),
        revision: None,
    }
}

#[test]
fn download_cache_and_errors() {
    let src = shared_llama();
    let mut repos = HashMap::new();
    repos.insert("test-org/tiny-llama".to_string(), MockRepo::from_dir(&src));
    let mut gated = MockRepo::from_dir(&src);
    gated.token = Some("s3cret".into());
    repos.insert("test-org/gated".to_string(), gated);
    let mut short = MockRepo::from_dir(&src);
    short.short = vec!["model.safetensors".into()];
    repos.insert("test-org/short".to_string(), short);
    let hub = mock_hub::start(repos);
    let cache = tempfile::tempdir().unwrap();

    let dir = download_model(
        "test-org/tiny-llama",
        &opts(cache.path(), &hub.url, None),
        &mut |_, _, _| {},
    )
    .unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap(),
            "{f} differs"
        );
    }
    // The folder opens like a local model.
    llmq_pipeline::source::open_hf(&dir).unwrap();

    // Cached: works with the server unreachable.
    let n = hub.requests.lock().unwrap().len();
    let again = download_model(
        "test-org/tiny-llama",
        &opts(cache.path(), "http://127.0.0.1:9", None),
        &mut |_, _, _| {},
    )
    .unwrap();
    assert_eq!(again, dir);
    assert_eq!(
        hub.requests.lock().unwrap().len(),
        n,
        "a cached model must not be fetched again"
    );

    let e = download_model(
        "nobody/nothing",
        &opts(cache.path(), &hub.url, None),
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(matches!(e, HubError::NotFound { .. }), "{e}");
    let e = download_model(
        "test-org/gated",
        &opts(cache.path(), &hub.url, None),
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(matches!(e, HubError::AuthRequired { .. }), "{e}");
    let e = download_model(
        "test-org/gated",
        &opts(cache.path(), &hub.url, Some("wrong")),
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(matches!(e, HubError::AuthRequired { .. }), "{e}");
    let g = download_model(
        "test-org/gated",
        &opts(cache.path(), &hub.url, Some("s3cret")),
        &mut |_, _, _| {},
    )
    .unwrap();
    assert_eq!(
        std::fs::read(g.join("model.safetensors")).unwrap(),
        std::fs::read(src.join("model.safetensors")).unwrap()
    );

    let e = download_model(
        "test-org/short",
        &opts(cache.path(), &hub.url, None),
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(matches!(e, HubError::Network { .. }), "{e}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    let cached = hf_hub::Cache::new(cache.path().to_path_buf())
        .repo(hf_hub::Repo::model("test-org/short".into()));
    assert!(
        cached.get("model.safetensors").is_none(),
        "a short download was left as a complete file"
    );
}
