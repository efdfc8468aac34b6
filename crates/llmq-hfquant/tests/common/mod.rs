//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use half::f16;
use llmq_hfquant::writer::write_safetensors;
use llmq_hfquant::{HfTensor, IntQuantized};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Random quantized tensor. `act_order`: g_idx from a random column permutation,
/// the way GPTQ's desc_act assigns groups (permuted column `k` gets group
/// `k / group_size`). `min_zero`: smallest asymmetric zero point (1 keeps GPTQ v1
/// free of the `zero - 1 = -1` wrap).
#[allow(clippy::too_many_arguments)]
pub fn random_iq(
    rng: &mut ChaCha8Rng,
    bits: u8,
    out: usize,
    inp: usize,
    group_size: Option<usize>,
    symmetric: bool,
    act_order: bool,
    min_zero: u8,
) -> IntQuantized {
    let maxq = ((1u16 << bits) - 1) as u8;
    let ng = group_size.map_or(1, |g| inp.div_ceil(g));
    let q = (0..out * inp).map(|_| rng.gen_range(0..=maxq)).collect();
    let scales = (0..out * ng)
        .map(|_| f16::from_f32(rng.gen_range(1e-3f32..0.2)))
        .collect();
    let zeros = (0..out * ng)
        .map(|_| {
            if symmetric {
                1u8 << (bits - 1)
            } else {
                rng.gen_range(min_zero..=maxq)
            }
        })
        .collect();
    let g_idx = (act_order && group_size.is_some()).then(|| {
        let gs = group_size.unwrap();
        let mut perm: Vec<usize> = (0..inp).collect();
        perm.shuffle(rng);
        let mut g = vec![0u32; inp];
        for (k, &col) in perm.iter().enumerate() {
            g[col] = (k / gs) as u32;
        }
        g
    });
    let mut r = IntQuantized {
        bits,
        group_size,
        symmetric,
        out_features: out,
        in_features: inp,
        q,
        scales,
        zeros,
        g_idx,
    };
    // a single group has nothing to permute: keep the canonical form unpack returns
    if r.has_default_g_idx() {
        r.g_idx = None;
    }
    r
}

/// Writes `expected.safetensors`: our dequantized f32 weight per module prefix.
pub fn write_expected(dir: &Path, layers: &[(String, IntQuantized)]) {
    let tensors: Vec<(String, HfTensor)> = layers
        .iter()
        .map(|(p, q)| {
            (
                p.clone(),
                HfTensor::from_f32(&[q.out_features, q.in_features], &q.dequantize()),
            )
        })
        .collect();
    write_safetensors(&dir.join("expected.safetensors"), &tensors).unwrap();
}

pub fn base_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 256,
        "torch_dtype": "float16",
    })
}

/// The Python interpreter of scripts/install-py-test-deps.sh and its source folder:
/// `$LLMQ_HFQUANT_PYTHON`, else the script's default location when present.
/// A missing interpreter fails the test (the cross-checks never pass by skipping).
pub fn python() -> (PathBuf, PathBuf) {
    let py = std::env::var_os("LLMQ_HFQUANT_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            let root = std::env::var_os("LLM_QUANTIZE_PY_TEST_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(home).join(".cache/llm-quantize/py-test-deps"));
            let p = root.join("venv/bin/python");
            p.exists().then_some(p)
        });
    match py {
        Some(p) => {
            // <root>/venv/bin/python -> <root>/src
            let src = p
                .parent()
                .and_then(Path::parent)
                .and_then(Path::parent)
                .map(|r| r.join("src"))
                .unwrap();
            (p, src)
        }
        None => panic!(
            "no Python with torch/compressed-tensors: run scripts/install-py-test-deps.sh \
             (and set LLMQ_HFQUANT_PYTHON to what it prints)"
        ),
    }
}

/// Runs `tests/py/<script> <arg>` and fails the test on a non-zero exit.
pub fn run_py(py: &Path, src: &Path, script: &str, arg: &Path) -> String {
    let script_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = Command::new(py)
        .arg(&script_path)
        .arg(arg)
        .env("LLMQ_HFQUANT_PYSRC", src)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    eprintln!("{script}: {stdout}");
    stdout
}
