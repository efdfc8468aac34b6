//! Models from the Hugging Face Hub, through Hugging Face's `hf-hub` crate: the repo's
//! file list (`/api/models/{id}/revision/{rev}`), then config, tokenizer and
//! safetensors files (`/{id}/resolve/{rev}/{file}`) into the hub cache layout under
//! `LLM_QUANTIZE_CACHE` (default `~/.cache/llm-quantize`). `HF_TOKEN` or `--token`
//! authenticates, `HF_ENDPOINT` points elsewhere (a mirror, or a test server).
//! Every fresh download is checked against the size the server announces, since a
//! connection cut mid-body would otherwise leave a short file that looks complete.

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

/// Where and how to reach the Hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub token: Option<String>,
    pub cache_dir: PathBuf,
    pub endpoint: Option<String>,
    pub revision: Option<String>,
}

impl HubOptions {
    /// Token from the flag, else `HF_TOKEN`; cache from `LLM_QUANTIZE_CACHE`; endpoint
    /// from `HF_ENDPOINT`.
    pub fn from_env(token_flag: Option<String>) -> HubOptions {
        let token = token_flag
            .or_else(|| std::env::var("HF_TOKEN").ok())
            .filter(|t| !t.is_empty());
        let cache_dir = std::env::var_os("LLM_QUANTIZE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("."))
                    .join(".cache/llm-quantize")
            });
        HubOptions {
            token,
            cache_dir,
            endpoint: std::env::var("HF_ENDPOINT").ok(),
            revision: None,
        }
    }
}

/// Why a Hub download failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("model '{repo}' not found on the Hugging Face Hub")]
    NotFound { repo: String },
    #[error("model '{repo}' requires authentication (gated or private)")]
    AuthRequired { repo: String },
    #[error("model '{repo}' has no safetensors weights")]
    NoWeights { repo: String },
    #[error("downloading '{repo}' failed: {why}")]
    Network { repo: String, why: String },
    #[error("cannot write the download cache {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Whether `s` has the shape of a Hub id (`name` or `org/name`) rather than a path.
pub fn looks_like_hub_id(s: &str) -> bool {
    if s.is_empty()
        || s.starts_with('/')
        || s.starts_with('.')
        || s.starts_with('~')
        || s.contains("..")
        || s.contains('\\')
    {
        return false;
    }
    // a file name, not a repository: `models/llama.gguf` is a missing path
    let lower = s.to_ascii_lowercase();
    if [".gguf", ".safetensors", ".json", ".bin", ".pt", ".pth"]
        .iter()
        .any(|ext| lower.ends_with(ext))
    {
        return false;
    }
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// Files of a model repo that quantization needs besides the weights.
const SIDE_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
];

pub(crate) fn classify(repo: &str, e: ApiError) -> HubError {
    if let ApiError::RequestError(boxed) = &e {
        if let ureq::Error::Status(code, resp) = boxed.as_ref() {
            let error_code = resp.header("x-error-code").unwrap_or("").to_string();
            return match (*code, error_code.as_str()) {
                (404, _) | (401, "RepoNotFound") => HubError::NotFound { repo: repo.into() },
                (401, _) | (403, _) => HubError::AuthRequired { repo: repo.into() },
                (c, _) => HubError::Network {
                    repo: repo.into(),
                    why: format!("HTTP {c}"),
                },
            };
        }
    }
    match e {
        ApiError::IoError(source) => HubError::Io {
            path: "cache".into(),
            source,
        },
        other => HubError::Network {
            repo: repo.into(),
            why: other.to_string(),
        },
    }
}

/// The size the server announces for `url` (`Content-Range` of a one-byte range).
fn remote_size(url: &str, token: Option<&str>) -> Option<u64> {
    let mut req = ureq::get(url).set("Range", "bytes=0-0");
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let resp = req.call().ok()?;
    resp.header("content-range")?
        .rsplit('/')
        .next()?
        .parse()
        .ok()
}

fn fetch(
    repo_id: &str,
    repo: &ApiRepo,
    cached: &hf_hub::CacheRepo,
    file: &str,
    opts: &HubOptions,
) -> Result<PathBuf, HubError> {
    if let Some(p) = cached.get(file) {
        return Ok(p);
    }
    let path = repo.get(file).map_err(|e| classify(repo_id, e))?;
    let have = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if let Some(want) = remote_size(&repo.url(file), opts.token.as_deref()) {
        if have != want {
            // Drop the short blob and its pointer so no later run trusts it.
            if let Ok(blob) = std::fs::canonicalize(&path) {
                let _ = std::fs::remove_file(blob);
            }
            let _ = std::fs::remove_file(&path);
            return Err(HubError::Network {
                repo: repo_id.into(),
                why: format!("{file}: received {have} of {want} bytes"),
            });
        }
    }
    Ok(path)
}

/// A repository on the Hub, reached through `hf-hub`, with its local cache.
pub(crate) struct Remote {
    pub repo: ApiRepo,
    pub cached: hf_hub::CacheRepo,
}

/// Connect to `repo_id` as `opts` says (nothing is requested yet).
pub(crate) fn connect(repo_id: &str, opts: &HubOptions) -> Result<Remote, HubError> {
    let revision = opts.revision.clone().unwrap_or_else(|| "main".into());
    let repo_spec = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision);
    std::fs::create_dir_all(&opts.cache_dir).map_err(|source| HubError::Io {
        path: opts.cache_dir.display().to_string(),
        source,
    })?;
    let cache = Cache::new(opts.cache_dir.clone());
    let cached = cache.repo(repo_spec.clone());
    let mut builder = ApiBuilder::new()
        .with_cache_dir(opts.cache_dir.clone())
        .with_token(opts.token.clone())
        .with_progress(false)
        .with_retries(0);
    if let Some(ep) = &opts.endpoint {
        builder = builder.with_endpoint(ep.trim_end_matches('/').to_string());
    }
    let api = builder.build().map_err(|e| classify(repo_id, e))?;
    Ok(Remote {
        repo: api.repo(repo_spec),
        cached,
    })
}

/// `fetch` for a [`Remote`]: one whole file, through the cache.
pub(crate) fn fetch_file(
    repo_id: &str,
    remote: &Remote,
    file: &str,
    opts: &HubOptions,
) -> Result<PathBuf, HubError> {
    fetch(repo_id, &remote.repo, &remote.cached, file, opts)
}

/// The Hub error for a failed plain HTTP request (as [`classify`] for `hf-hub`'s).
pub(crate) fn classify_http(repo_id: &str, e: ureq::Error) -> HubError {
    classify(repo_id, ApiError::RequestError(Box::new(e)))
}

/// Download (or find in the cache) everything needed to quantize `repo_id`; returns the
/// local snapshot folder, laid out like a model folder.
pub fn download_model(
    repo_id: &str,
    opts: &HubOptions,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<PathBuf, HubError> {
    let Remote { repo, cached } = connect(repo_id, opts)?;

    let files: Vec<String> = match repo.info() {
        Ok(info) => info.siblings.into_iter().map(|s| s.rfilename).collect(),
        Err(e) => {
            let err = classify(repo_id, e);
            // Offline with a complete cached snapshot: use it.
            if matches!(err, HubError::Network { .. }) {
                if let Some(dir) = cached_snapshot(&cached) {
                    return Ok(dir);
                }
            }
            return Err(err);
        }
    };
    let mut wanted: Vec<String> = SIDE_FILES
        .iter()
        .filter(|f| files.iter().any(|x| x == *f))
        .map(|f| f.to_string())
        .collect();
    if files.iter().any(|f| f == "model.safetensors.index.json") {
        let index = fetch(
            repo_id,
            &repo,
            &cached,
            "model.safetensors.index.json",
            opts,
        )?;
        wanted.extend(shards_of_index(repo_id, &index)?);
    } else if files.iter().any(|f| f == "model.safetensors") {
        wanted.push("model.safetensors".into());
    } else {
        return Err(HubError::NoWeights {
            repo: repo_id.into(),
        });
    }
    let total = wanted.len() as u64;
    let mut dir = None;
    for (i, f) in wanted.iter().enumerate() {
        progress(f, i as u64, total);
        let p = fetch(repo_id, &repo, &cached, f, opts)?;
        dir = p.parent().map(Path::to_path_buf);
    }
    progress("", total, total);
    dir.ok_or_else(|| HubError::NoWeights {
        repo: repo_id.into(),
    })
}

/// The complete snapshot of `repo_id` in the cache, if an earlier download left one.
pub(crate) fn cached_model(repo_id: &str, opts: &HubOptions) -> Option<PathBuf> {
    let revision = opts.revision.clone().unwrap_or_else(|| "main".into());
    let spec = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision);
    cached_snapshot(&Cache::new(opts.cache_dir.clone()).repo(spec))
}

fn cached_snapshot(cached: &hf_hub::CacheRepo) -> Option<PathBuf> {
    let cfg = cached.get("config.json")?;
    let dir = cfg.parent()?.to_path_buf();
    (dir.join("model.safetensors").exists() || dir.join("model.safetensors.index.json").exists())
        .then_some(dir)
}

/// The shard files a downloaded `model.safetensors.index.json` names, sorted, once each.
pub(crate) fn shards_of_index(
    repo_id: &str,
    index: &std::path::Path,
) -> Result<Vec<String>, HubError> {
    let text = std::fs::read_to_string(index).map_err(|source| HubError::Io {
        path: index.display().to_string(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| HubError::Network {
        repo: repo_id.into(),
        why: format!("bad index: {e}"),
    })?;
    let mut shards: Vec<String> = v["weight_map"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_versus_paths() {
        assert!(looks_like_hub_id("meta-llama/Llama-2-7b-hf"));
        assert!(looks_like_hub_id("gpt2"));
        assert!(!looks_like_hub_id("./model"));
        assert!(!looks_like_hub_id("/abs/model"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("a/../b"));
        assert!(!looks_like_hub_id(""));
        assert!(!looks_like_hub_id("models/llama.gguf"));
        assert!(!looks_like_hub_id("llama-Q4_K_M.GGUF"));
        assert!(looks_like_hub_id("Qwen/Qwen2.5-7B-Instruct-GGUF"));
    }
}
