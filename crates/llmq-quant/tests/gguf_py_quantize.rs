//! Byte-for-byte comparison of our quantizers with independent implementations.
//!
//! * `quantized_bytes_match_gguf_py`: gguf-py implements the unweighted reference
//!   algorithms of Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and MXFP4 (and F16/BF16 rounding) in numpy;
//!   our fast and reference paths must produce its bytes exactly (through
//!   `tests/py/quantize.py`). Needs `python3` with `gguf` and `numpy`, and the shared
//!   models at `<repo>/../shared/models`; it fails (never skips) without them.
//! * `quantized_bytes_match_llama_cpp` (ignored by default): the same inputs, with and
//!   without importance weights, for every GGML block type here, against llama.cpp's
//!   own `quantize_*` functions compiled from `ggml/src/ggml-quants.c` into a small
//!   harness kept outside this repository (built like llama.cpp's release library:
//!   `-O2 -DNDEBUG`, no `-march`, as `ggml-base` is). Run it with
//!   `LLMQ_GGML_QUANTS_HARNESS=/path/to/harness cargo test -p llmq-quant --test
//!   gguf_py_quantize -- --ignored`; the harness takes
//!   `TYPE N_PER_ROW in.f32 imatrix.f32|- out.bin` and calls
//!   `quantize_<type>(src, dst, nrow, n_per_row, imatrix)`.

use std::path::{Path, PathBuf};
use std::process::Command;

use llmq_formats::safetensors::SafetensorsModel;
use llmq_formats::GgmlType;
use llmq_quant::quantize_with;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Row length of every input here: a multiple of all block sizes, and the row length
/// of the shared models' tensors we read.
const N_PER_ROW: usize = 256;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require_gguf_py() {
    let ok = Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "install gguf: pip install gguf numpy");
}

fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
            let u2: f64 = rng.gen();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

fn importance(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    (0..n)
        .map(|_| 10f32.powf(rng.gen_range(-1.5..1.5)))
        .collect()
}

/// Named inputs, each whole rows of `N_PER_ROW`: Gaussian rows at several scales, edge
/// cases (zeros, ±0, constants, one-hot, rounding ties, tiny, large) and, when
/// `with_models`, rows of real tensors from every shared model.
fn inputs(with_models: bool) -> Vec<(String, Vec<f32>)> {
    let n = N_PER_ROW;
    let g = gaussian(n * 8, 42);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut out: Vec<(String, Vec<f32>)> = vec![
        ("gaussian".into(), g.clone()),
        ("gaussian×0.01".into(), g.iter().map(|v| v * 0.01).collect()),
        ("gaussian×500".into(), g.iter().map(|v| v * 500.0).collect()),
        ("gaussian^3".into(), g.iter().map(|v| v.powi(3)).collect()),
        ("zeros".into(), vec![0.0; n]),
        (
            "signed zeros".into(),
            (0..n)
                .map(|i| if i % 3 == 0 { -0.0 } else { 0.0 })
                .collect(),
        ),
        ("constant".into(), vec![0.75; n]),
        ("negative constant".into(), vec![-3.0; n]),
        (
            "one-hot".into(),
            (0..n)
                .map(|i| if i % 32 == 9 { -2.5 } else { 0.0 })
                .collect(),
        ),
        (
            "integer ramp".into(),
            (0..n).map(|i| (i % 17) as f32 - 8.0).collect(),
        ),
        (
            "half-integer ramp".into(),
            (0..n).map(|i| ((i % 33) as f32 - 16.0) * 0.5).collect(),
        ),
        ("tiny".into(), g.iter().take(n).map(|v| v * 1e-20).collect()),
        (
            "subnormal scale".into(),
            g.iter().take(n).map(|v| v * 1e-37).collect(),
        ),
        (
            "subnormal values".into(),
            g.iter().take(n).map(|v| v * 1e-41).collect(),
        ),
        (
            "zero minimum, +0 first".into(),
            (0..n)
                .map(|i| match i % 32 {
                    1 => 0.0,
                    8 | 16 => -0.0,
                    k => (k % 5) as f32 + 1.0,
                })
                .collect(),
        ),
        (
            "zero maximum, −0 first".into(),
            (0..n)
                .map(|i| match i % 32 {
                    1 => -0.0,
                    8 | 16 => 0.0,
                    k => -((k % 5) as f32) - 1.0,
                })
                .collect(),
        ),
        (
            "tied magnitudes".into(),
            (0..n)
                .map(|i| match i % 32 {
                    9 => 3.0,
                    2 | 17 => -3.0,
                    k => k as f32 * 0.01,
                })
                .collect(),
        ),
        ("large".into(), g.iter().take(n).map(|v| v * 1e4).collect()),
        (
            "mixed magnitudes".into(),
            (0..n * 2)
                .map(|_| rng.gen_range(-1.0f32..1.0) * 10f32.powi(rng.gen_range(-30..4)))
                .collect(),
        ),
    ];
    if with_models {
        let dir = crate_dir().join("../../../shared/models");
        assert!(
            dir.is_dir(),
            "shared test models not found at {} (expected <repo>/../shared/models/*/model.safetensors)",
            dir.display()
        );
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path().join("model.safetensors")))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(
            !files.is_empty(),
            "no */model.safetensors under {}",
            dir.display()
        );
        for file in files {
            let model =
                SafetensorsModel::open(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let mut taken = 0;
            for info in model.tensors() {
                if taken == 2 || info.shape.len() != 2 || info.shape[1] != N_PER_ROW {
                    continue;
                }
                let mut values = model.f32(&info.name).unwrap();
                values.truncate(N_PER_ROW * 16);
                let name = file
                    .parent()
                    .and_then(Path::file_name)
                    .unwrap()
                    .to_string_lossy();
                out.push((format!("{name}:{}", info.name), values));
                taken += 1;
            }
        }
    }
    out
}

fn quantize_ours(ty: GgmlType, x: &[f32], imatrix: Option<&[f32]>, reference: bool) -> Vec<u8> {
    let mut q = vec![0u8; x.len() / N_PER_ROW * ty.row_bytes(N_PER_ROW).unwrap()];
    quantize_with(ty, x, N_PER_ROW, imatrix, &mut q, reference).unwrap();
    q
}

/// First differing block, as a message, or None when equal.
fn diff(ty: GgmlType, ours: &[u8], theirs: &[u8], what: &str) -> Option<String> {
    if ours.len() != theirs.len() {
        return Some(format!(
            "{ty} {what}: {} bytes vs {}",
            ours.len(),
            theirs.len()
        ));
    }
    let pos = ours.iter().zip(theirs).position(|(a, b)| a != b)?;
    let bb = ty.type_size();
    let block = pos / bb;
    let n_blocks = ours
        .chunks(bb)
        .zip(theirs.chunks(bb))
        .filter(|(a, b)| a != b)
        .count();
    Some(format!(
        "{ty} {what}: {n_blocks} blocks differ, first block {block}: ours {:02x?} vs {:02x?}",
        &ours[block * bb..(block + 1) * bb],
        &theirs[block * bb..(block + 1) * bb]
    ))
}

fn write_f32(path: &Path, x: &[f32]) {
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

fn work_dir(tag: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn quantized_bytes_match_gguf_py() {
    require_gguf_py();
    let types = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::MXFP4,
        GgmlType::F16,
        GgmlType::BF16,
    ];
    // gguf-py departs from llama.cpp on blocks where ±0 tie for the extreme: numpy's
    // argmax/min pick a different zero than C's first-strictly-larger scan, so the stored
    // scale or minimum is +0 instead of llama.cpp's −0 (0x8000). We follow llama.cpp
    // (checked by `quantized_bytes_match_llama_cpp`), so those inputs are left out here.
    let gguf_py_differs = ["signed zeros", "zero minimum, +0 first"];
    let inputs: Vec<_> = inputs(true)
        .into_iter()
        .filter(|(label, _)| !gguf_py_differs.contains(&label.as_str()))
        .collect();
    let work = work_dir("gguf_py_quantize");
    let all: Vec<f32> = inputs.iter().flat_map(|(_, x)| x.iter().copied()).collect();
    let src = work.join("in.f32");
    write_f32(&src, &all);
    let mut args = vec![
        crate_dir()
            .join("tests/py/quantize.py")
            .display()
            .to_string(),
        N_PER_ROW.to_string(),
    ];
    for ty in types {
        args.push(ty.name().into());
        args.push(src.display().to_string());
        args.push(
            work.join(format!("{}.bin", ty.name()))
                .display()
                .to_string(),
        );
    }
    let out = Command::new("python3")
        .args(&args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "tests/py/quantize.py failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut failures = Vec::new();
    for ty in types {
        let theirs = std::fs::read(work.join(format!("{}.bin", ty.name()))).unwrap();
        let row_bytes = ty.row_bytes(N_PER_ROW).unwrap();
        let mut offset = 0;
        for (label, x) in &inputs {
            let len = x.len() / N_PER_ROW * row_bytes;
            let theirs = &theirs[offset..offset + len];
            offset += len;
            for reference in [false, true] {
                let ours = quantize_ours(ty, x, None, reference);
                let path = if reference { "reference" } else { "fast" };
                failures.extend(diff(ty, &ours, theirs, &format!("{path} on {label}")));
            }
        }
        eprintln!("{:5} {} bytes compared", ty.name(), offset);
    }
    std::fs::remove_dir_all(&work).ok();
    assert!(
        failures.is_empty(),
        "mismatches against gguf-py quantize:\n{}",
        failures.join("\n")
    );
}

#[test]
#[ignore = "needs a llama.cpp ggml-quants.c harness: set LLMQ_GGML_QUANTS_HARNESS"]
fn quantized_bytes_match_llama_cpp() {
    let harness = std::env::var("LLMQ_GGML_QUANTS_HARNESS")
        .expect("set LLMQ_GGML_QUANTS_HARNESS to a binary calling llama.cpp's quantize_<type> (see module docs)");
    let types = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::IQ4NL,
        GgmlType::IQ4XS,
    ];
    let work = work_dir("llama_cpp_quantize");
    let imatrix = importance(N_PER_ROW, 3);
    let imatrix_path = work.join("imatrix.f32");
    write_f32(&imatrix_path, &imatrix);
    let mut failures = Vec::new();
    let mut compared = 0usize;
    for (label, x) in inputs(true) {
        let src = work.join("in.f32");
        write_f32(&src, &x);
        for ty in types {
            for weighted in [false, true] {
                let dst = work.join("out.bin");
                let w_arg = if weighted {
                    imatrix_path.display().to_string()
                } else {
                    "-".into()
                };
                let status = Command::new(&harness)
                    .args([
                        ty.name(),
                        &N_PER_ROW.to_string(),
                        &src.display().to_string(),
                        &w_arg,
                    ])
                    .arg(&dst)
                    .status()
                    .expect("run harness");
                assert!(status.success(), "harness failed for {ty} on {label}");
                let theirs = std::fs::read(&dst).unwrap();
                let w = weighted.then_some(&imatrix[..]);
                for reference in [false, true] {
                    let ours = quantize_ours(ty, &x, w, reference);
                    let what = format!(
                        "{} {} on {label}",
                        if reference { "reference" } else { "fast" },
                        if weighted { "with imatrix" } else { "plain" }
                    );
                    failures.extend(diff(ty, &ours, &theirs, &what));
                }
                compared += theirs.len();
            }
        }
    }
    eprintln!("{compared} llama.cpp bytes compared");
    std::fs::remove_dir_all(&work).ok();
    assert!(
        failures.is_empty(),
        "mismatches against llama.cpp:\n{}",
        failures.join("\n")
    );
}
