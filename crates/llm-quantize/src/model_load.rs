//! Loading a model and its tokenizer for `eval`, `generate` and `serve`: the MODEL
//! argument is resolved like `quantize`'s (folder, GGUF file or Hub id), the weights go
//! to the engine on the device `--device` chose ([`choose_device`]), the tokenizer comes
//! from `tokenizer.json` or the GGUF vocabulary.

use crate::progress::log;
use llmq_engine::{Backend, Cpu, EngineError, MemoryPlan, Model, WeightSource};
use llmq_pipeline::source::{resolve, ResolvedModel};
use llmq_pipeline::{NoProgress, PipelineError};
use llmq_tokenizer::Tokenizer;
use std::time::Instant;

pub use llmq_runtime::LoadedModel;

/// Map an engine error to the CLI contract's exit codes.
pub fn engine_error(e: EngineError) -> PipelineError {
    match &e {
        EngineError::UnsupportedArch(_) => PipelineError::unsupported(
            e.to_string(),
            "Run a model of a supported architecture, or check `llm-quantize info MODEL`",
        ),
        EngineError::UnsupportedValue { .. } => PipelineError::unsupported(
            e.to_string(),
            "This model uses a setting llm-quantize does not compute yet; run it with transformers or llama.cpp",
        ),
        EngineError::UnsupportedOnDevice { .. } => PipelineError::unsupported(
            e.to_string(),
            "Run the model with --device cpu, or quantize it to a type the GPU runs (e.g. Q4_K_M, Q8_0)",
        ),
        EngineError::Device(_) => PipelineError::unsupported(
            e.to_string(),
            "Check the NVIDIA driver and CUDA installation, or run on the CPU with --device cpu",
        ),
        EngineError::UnsupportedType { .. } => PipelineError::unsupported(
            e.to_string(),
            "Re-quantize the model to a type llm-quantize runs (e.g. `quantize MODEL gguf -q Q4_K_M`), or run it with llama.cpp",
        ),
        EngineError::ContextOverflow { .. } => PipelineError::invalid(
            e.to_string(),
            "Shorten the input or lower --max-tokens / --max-length",
        ),
        EngineError::Source(_) => PipelineError::validation(
            e.to_string(),
            "Check that the model files are complete and readable",
        ),
        _ => PipelineError::validation(
            e.to_string(),
            "The model files are inconsistent; re-download or re-convert the model",
        ),
    }
}

/// Where a command runs its model.
pub enum Device {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(llmq_engine::backend::Cuda),
}

/// The device for `--device` (`cpu`, `cuda`, `cuda:N` or `auto`). `auto` takes the
/// first CUDA device when a driver and a device are there (a device that fails to open
/// falls back to the CPU with a note); a GPU choice is named on stderr.
pub fn choose_device(arg: &str, quiet: bool) -> Result<Device, PipelineError> {
    choose(arg, quiet, false)
}

/// [`choose_device`] for quality measurements: on a GPU every product runs on the
/// kernels that compute what the CPU engine computes (the tensor-core prompt path
/// rounds activations and weights to f16, an error of the size of an 8-bit format's).
pub fn choose_device_exact(arg: &str, quiet: bool) -> Result<Device, PipelineError> {
    choose(arg, quiet, true)
}

fn choose(arg: &str, quiet: bool, exact: bool) -> Result<Device, PipelineError> {
    let bad = || {
        PipelineError::invalid(
            format!("--device {arg}: expected cpu, cuda, cuda:N or auto"),
            "e.g. --device cuda:0",
        )
    };
    let ordinal = match arg {
        "cpu" => return Ok(Device::Cpu),
        "auto" => None,
        "cuda" => Some(0),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Some(n),
            _ => return Err(bad()),
        },
    };
    open_cuda(ordinal, quiet, exact)
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: Option<usize>, quiet: bool, exact: bool) -> Result<Device, PipelineError> {
    use llmq_engine::backend::{cuda, Cuda};
    let c = match ordinal {
        Some(n) => Cuda::open(n).map_err(engine_error)?,
        None if cuda::device_count() == 0 => return Ok(Device::Cpu),
        None => match Cuda::open(0) {
            Ok(c) => c,
            Err(e) => {
                if !quiet {
                    log(&format!("note: {e}; running on the CPU"));
                }
                return Ok(Device::Cpu);
            }
        },
    };
    if exact {
        c.set_tensor_core_prompts(false);
    }
    if !quiet {
        let prompts = if c.tensor_core_prompts() {
            "prompt products on tensor cores (cuBLAS, f16)"
        } else if exact {
            "exact products (tensor-core prompt path off for quality measurement)"
        } else {
            "prompt products on the GEMV kernels (cuBLAS not found)"
        };
        log(&format!("device: {}; {prompts}", c.describe()));
    }
    Ok(Device::Cuda(c))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: Option<usize>, _quiet: bool, _exact: bool) -> Result<Device, PipelineError> {
    match ordinal {
        None => Ok(Device::Cpu),
        Some(_) => Err(PipelineError::unsupported(
            "this build of llm-quantize has no CUDA backend",
            "Rebuild with the `cuda` feature, or run with --device cpu",
        )),
    }
}

/// Run `$body` with `$be` bound to the backend of device `$dev` (each arm its own
/// monomorphized copy).
macro_rules! with_backend {
    ($dev:expr, $be:ident => $body:expr) => {
        match $dev {
            $crate::model_load::Device::Cpu => {
                let $be = llmq_engine::Cpu;
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::model_load::Device::Cuda(c) => {
                let $be = c;
                $body
            }
        }
    };
}

pub(crate) use with_backend;

/// What a command will ask of a loaded model: the positions its KV caches hold at
/// most, and the tokens of its largest forward pass (device memory is planned for them).
#[derive(Clone, Copy, Debug)]
pub struct Need {
    pub ctx_tokens: usize,
    pub batch_tokens: usize,
}

/// Resolve and load `model` (tokenizer included) onto the CPU.
pub fn load(model: &str, token: Option<String>, quiet: bool) -> Result<LoadedModel, PipelineError> {
    let need = Need {
        ctx_tokens: 0,
        batch_tokens: 0,
    };
    load_on(Cpu, model, token, quiet, need)
}

/// Exit 5 before any upload when the model does not fit the device memory `be` has
/// left (backends with host memory are not planned).
fn check_fits<B: Backend>(
    be: &B,
    src: &WeightSource,
    name: &str,
    need: Need,
) -> Result<(), PipelineError> {
    let Some(free) = be.free_memory() else {
        return Ok(());
    };
    let plan = MemoryPlan::of(src, need.ctx_tokens, need.batch_tokens).map_err(engine_error)?;
    if plan.total() <= free {
        return Ok(());
    }
    Err(PipelineError::oom(
        format!(
            "{name} needs about {:.2} GB of GPU memory ({}), but {:.2} GB are free",
            plan.total() as f64 / 1e9,
            plan.describe(),
            free as f64 / 1e9
        ),
        "Use a smaller quantization (e.g. Q4_K_M), lower --max-length / --max-tokens / --batch-size, or run with --device cpu",
    ))
}

/// Resolve and load `model` (tokenizer included) onto backend `be`, after checking
/// that it fits the device with what `need` asks.
pub fn load_on<B: Backend>(
    be: B,
    model: &str,
    token: Option<String>,
    quiet: bool,
    need: Need,
) -> Result<LoadedModel<B>, PipelineError> {
    let t0 = Instant::now();
    let resolved = resolve(model, token, &NoProgress)?;
    let src = match &resolved {
        ResolvedModel::HfDir(d) => WeightSource::open_hf(d),
        ResolvedModel::GgufFile(f) => WeightSource::open_gguf(f),
    };
    let src = src.map_err(engine_error)?;
    let tokenizer = match (&resolved, &src) {
        (ResolvedModel::HfDir(d), _) => Tokenizer::from_hf_dir(d),
        (_, WeightSource::Gguf(f)) => Tokenizer::from_gguf(f),
        _ => unreachable!("a GGUF path gives a GGUF source"),
    }
    .map_err(|e| tokenizer_error(model, e))?;
    let name = llmq_pipeline::source::display_name(model);
    check_fits(&be, &src, &name, need)?;
    let m = Model::load_on(be, &src).map_err(engine_error)?;
    if !quiet {
        log(&format!(
            "loaded {name}: {:?}, {} layers, hidden {}, vocab {} in {:.1} s",
            m.hp.arch,
            m.hp.n_layer,
            m.hp.n_embd,
            m.n_vocab(),
            t0.elapsed().as_secs_f64()
        ));
    }
    Ok(LoadedModel {
        name,
        model: m,
        tokenizer,
    })
}

fn tokenizer_error(model: &str, e: llmq_tokenizer::TokenizerError) -> PipelineError {
    PipelineError::validation(
        format!("cannot load the tokenizer of {model}: {e}"),
        "A model folder needs tokenizer.json; a GGUF file needs its tokenizer.ggml.* metadata",
    )
}

/// Resolve `model` and load only its tokenizer (no weights).
pub fn load_tokenizer(model: &str, token: Option<String>) -> Result<Tokenizer, PipelineError> {
    match resolve(model, token, &NoProgress)? {
        ResolvedModel::HfDir(d) => Tokenizer::from_hf_dir(&d),
        ResolvedModel::GgufFile(f) => {
            let file = llmq_formats::gguf::GgufFile::open(&f).map_err(|e| {
                PipelineError::validation(
                    format!("cannot read {}: {e}", f.display()),
                    "Check that the GGUF file is complete",
                )
            })?;
            Tokenizer::from_gguf(&file)
        }
    }
    .map_err(|e| tokenizer_error(model, e))
}
