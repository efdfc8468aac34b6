//! Where a model comes from: a local Hugging Face folder, a GGUF file, or a Hub id
//! (downloaded into the cache by [`crate::hub`]). Also the short description of a
//! model (layers, hidden size, experts, vocabulary, size) that `info` and the
//! quantize summary print.

use crate::error::{PipelineError, Result};
use llmq_arch::{ArchConfig, ConfigError};
use llmq_formats::safetensors::{SafetensorsError, SafetensorsModel};
use std::path::{Path, PathBuf};

/// A model ready to be read.
#[derive(Debug, Clone)]
pub enum ResolvedModel {
    /// a folder with config.json and safetensors
    HfDir(PathBuf),
    /// a single GGUF file
    GgufFile(PathBuf),
}

/// What the summary block and `info` print about a model.
#[derive(Debug, Clone)]
pub struct ModelSummary {
    pub name: String,
    pub architecture: String,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub experts: Option<usize>,
    pub vocab: usize,
    pub original_dtype: String,
    /// bytes of tensor data in the source
    pub original_size: u64,
    pub parameter_count: u64,
}

fn has_magic(p: &Path, want: &[u8; 4]) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(p)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .map(|_| &magic == want)
        .unwrap_or(false)
}

fn is_gguf_file(p: &Path) -> bool {
    has_magic(p, b"GGUF")
}

/// Resolve the MODEL argument: an existing path wins; otherwise a Hub id.
pub fn resolve(
    model: &str,
    token: Option<String>,
    progress: &dyn crate::Progress,
) -> Result<ResolvedModel> {
    let p = Path::new(model);
    if p.exists() {
        if p.is_file() {
            if has_magic(p, &llmq_formats::gguf::GGUF_PARTIAL_MAGIC) {
                return Err(PipelineError::validation(
                    format!("{model} is an unfinished GGUF output (an interrupted or failed run left it), not a model"),
                    "Finish it with `quantize … --resume`, or delete it",
                ));
            }
            if is_gguf_file(p) {
                return Ok(ResolvedModel::GgufFile(p.to_path_buf()));
            }
            return Err(PipelineError::invalid(
                format!("{model} is a file but not a GGUF file"),
                "Pass a model folder (config.json + *.safetensors), a .gguf file or a Hub id",
            ));
        }
        if !p.is_dir() {
            return Err(PipelineError::invalid(
                format!(
                    "{model} is neither a regular file nor a folder (a FIFO, device or socket)"
                ),
                "Pass a model folder (config.json + *.safetensors), a .gguf file or a Hub id",
            ));
        }
        if !p.join("config.json").is_file() {
            return Err(PipelineError::not_found(
                format!("{model} has no config.json"),
                "Pass a Hugging Face model folder (config.json + *.safetensors)",
            ));
        }
        return Ok(ResolvedModel::HfDir(p.to_path_buf()));
    }
    if !crate::hub::looks_like_hub_id(model) {
        return Err(PipelineError::not_found(
            format!("model path {model} does not exist"),
            "Check the path, or give a Hugging Face Hub id like org/name",
        ));
    }
    progress.message(&format!("Downloading {model} from the Hugging Face Hub"));
    let opts = crate::hub::HubOptions::from_env(token);
    let mut last = String::new();
    let dir = crate::hub::download_model(model, &opts, &mut |file, _done, _total| {
        if file != last {
            progress.message(&format!("  fetching {file}"));
            last = file.to_string();
        }
    })
    .map_err(hub_error)?;
    Ok(ResolvedModel::HfDir(dir))
}

pub(crate) fn hub_error(e: crate::hub::HubError) -> PipelineError {
    use crate::hub::HubError as H;
    let msg = e.to_string();
    match e {
        H::NotFound { .. } => {
            PipelineError::not_found(msg, "Check the model name or provide a local path")
        }
        H::AuthRequired { .. } => PipelineError::auth(
            msg,
            "Accept the model's license on the Hub, then set HF_TOKEN or pass --token",
        ),
        H::NoWeights { .. } => {
            PipelineError::not_found(msg, "The repository has no safetensors weights")
        }
        _ => PipelineError::general(msg, "Check your network or HF_ENDPOINT, then retry"),
    }
}

/// Map a config problem to the contract's exit codes.
pub fn config_error(e: ConfigError) -> PipelineError {
    match e {
        ConfigError::Unsupported(_) => PipelineError::unsupported(
            e.to_string(),
            "This architecture is not supported yet; see `llm-quantize --help` for the list",
        ),
        ConfigError::UnsupportedValue { .. } => PipelineError::unsupported(
            e.to_string(),
            "This model uses a setting llm-quantize does not implement yet",
        ),
        ConfigError::Io { .. } => PipelineError::not_found(e.to_string(), "Check the model folder"),
        _ => PipelineError::validation(e.to_string(), "Fix or re-download the model's config.json"),
    }
}

/// Map a safetensors problem to the contract's exit codes.
pub fn safetensors_error(e: SafetensorsError) -> PipelineError {
    match e {
        SafetensorsError::NotFound(_) => PipelineError::not_found(
            e.to_string(),
            "The folder needs model.safetensors or model.safetensors.index.json with its shards",
        ),
        SafetensorsError::UnsupportedDtype { .. } => PipelineError::unsupported(
            e.to_string(),
            "Convert the checkpoint to bf16/f16/f32 safetensors first",
        ),
        _ => PipelineError::validation(
            e.to_string(),
            "The checkpoint is damaged or incomplete: re-download it",
        ),
    }
}

/// The name shown for a model: its folder or file stem.
pub fn display_name(model_arg: &str) -> String {
    let trimmed = model_arg.trim_end_matches('/');
    let p = Path::new(trimmed);
    if p.exists() {
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        if stem.is_empty() || stem == "." {
            return std::env::current_dir()
                .ok()
                .and_then(|d| d.file_name().map(|s| s.to_string_lossy().to_string()))
                .unwrap_or_else(|| "model".into());
        }
        return stem;
    }
    trimmed.rsplit('/').next().unwrap_or(trimmed).to_string()
}

/// Summary of a Hugging Face folder.
pub fn summarize_hf(name: &str, cfg: &ArchConfig, st: &SafetensorsModel) -> ModelSummary {
    ModelSummary {
        name: name.to_string(),
        architecture: cfg.architecture.clone(),
        layers: cfg.num_layers,
        hidden: cfg.hidden_size,
        heads: cfg.num_heads,
        experts: cfg.moe.as_ref().map(|m| m.n_experts),
        vocab: cfg.vocab_size,
        original_dtype: dtype_name(&cfg.dtype),
        original_size: st.total_bytes(),
        parameter_count: st.tensors().map(parameters_in).sum(),
    }
}

fn dtype_name(d: &str) -> String {
    match d {
        "bf16" => "bfloat16".into(),
        "fp16" | "half" => "float16".into(),
        other => other.to_string(),
    }
}

/// Open a folder's config and weights with contract error mapping.
pub fn open_hf(dir: &Path) -> Result<(ArchConfig, SafetensorsModel)> {
    let cfg = ArchConfig::from_path(dir).map_err(config_error)?;
    let st = SafetensorsModel::open(dir).map_err(safetensors_error)?;
    // the tensors against what config.json implies (`llmq_arch::validate`, through the
    // plan); quantized checkpoints are checked by their readers' plan instead
    if cfg.raw.get("quantization_config").is_none() {
        let list: Vec<(String, Vec<usize>)> = st
            .tensors()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        llmq_arch::gguf_plan(&cfg, &list).map_err(config_error)?;
    }
    Ok((cfg, st))
}

/// Parameters a safetensors tensor holds: its elements, except MXFP4 packing (GPT-OSS's
/// U8 `*_blocks`, two values a byte, and `*_scales`, which are not parameters).
fn parameters_in(t: &llmq_formats::safetensors::TensorInfo) -> u64 {
    let packed = t.dtype == llmq_formats::safetensors::StDtype::Other("U8");
    match () {
        _ if packed && t.name.ends_with("_blocks") => 2 * t.numel() as u64,
        _ if packed && t.name.ends_with("_scales") => 0,
        _ => t.numel() as u64,
    }
}
