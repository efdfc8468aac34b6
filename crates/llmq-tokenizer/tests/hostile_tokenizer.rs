//! Malformed tokenizer files are errors, never crashes: a `continuing_subword_prefix`
//! that the merges do not carry makes the `tokenizers` crate slice inside a character
//! (found by the `fuzz_inputs` harness); the load fails with a message instead.

use std::path::PathBuf;

#[test]
fn a_prefix_the_merges_lack_is_an_error_not_a_panic() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/llama");
    let mut t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer.json")).unwrap())
            .unwrap();
    t["model"]["continuing_subword_prefix"] = serde_json::json!("x");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), t.to_string()).unwrap();
    for f in ["tokenizer_config.json", "config.json"] {
        let _ = std::fs::copy(src.join(f), dir.path().join(f));
    }
    let e = match llmq_tokenizer::Tokenizer::from_hf_dir(dir.path()) {
        Ok(_) => panic!("a malformed tokenizer.json was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("tokenizer.json"), "{e}");
}
