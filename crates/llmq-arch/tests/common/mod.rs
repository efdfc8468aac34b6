//! What the integration tests of this crate share: the ten shared reference models.

use std::path::PathBuf;

/// The shared models' folder names.
pub const MODELS: [&str; 10] = [
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma3",
    "phi3",
    "mixtral",
    "qwen3-moe",
    "deepseek-v3",
    "glm4-moe-lite",
];

/// The workspace's sibling `shared/models` folder.
pub fn shared_models() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models");
    assert!(
        p.join("llama/config.json").is_file(),
        "shared models not found at {} (expected the workspace's sibling `shared/models`)",
        p.display()
    );
    p
}
