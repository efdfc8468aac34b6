//! Cross-check of every type in `llmq_quant::QUANTIZABLE` against gguf-py (the Python
//! GGUF library shipped with llama.cpp): rows are quantized here (Gaussian rows with and
//! without an importance matrix, and real bf16 tensors of the shared test models), the
//! raw blocks are dequantized both here and by `gguf.quants.dequantize` (through
//! `tests/py/dequant.py`), and the values must agree bit for bit. This pins our block
//! layouts and dequantization arithmetic to an independent implementation.
//!
//! Needs `python3` with `gguf` and `numpy`, and the shared models at
//! `<repo>/../shared/models/*/model.safetensors`; it fails (never skips) without them.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;

use llmq_formats::safetensors::SafetensorsModel;
use llmq_formats::GgmlType;
use llmq_quant::{dequantize, dequantize_with, quantize, QUANTIZABLE};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One input to quantize: `values` in rows of `n_per_row`, optional importance weights.
struct Case {
    label: String,
    n_per_row: usize,
    values: Vec<f32>,
    imatrix: Option<Vec<f32>>,
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `<repo>/../shared/models`, or a panic saying where it was expected.
fn shared_models_dir() -> PathBuf {
    let dir = crate_dir().join("../../../shared/models");
    assert!(
        dir.is_dir(),
        "shared test models not found at {} (expected <repo>/../shared/models/*/model.safetensors); \
         this test needs them and does not skip",
        dir.display()
    );
    dir
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

/// Positive importance weights, log-uniform over three decades.
fn importance(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    (0..n)
        .map(|_| 10f32.powf(rng.gen_range(-1.5..1.5)))
        .collect()
}

fn synthetic_cases() -> Vec<Case> {
    let n_per_row = 512;
    let rows = 16;
    let mut cases = Vec::new();
    for (seed, scale) in [(1u64, 1.0f32), (2, 0.02), (3, 40.0)] {
        let values: Vec<f32> = gaussian(n_per_row * rows, seed)
            .iter()
            .map(|v| v * scale)
            .collect();
        cases.push(Case {
            label: format!("gaussian×{scale}"),
            n_per_row,
            values: values.clone(),
            imatrix: None,
        });
        cases.push(Case {
            label: format!("gaussian×{scale} + imatrix"),
            n_per_row,
            values,
            imatrix: Some(importance(n_per_row, seed)),
        });
    }
    // Heavy tails and some all-zero blocks.
    let values: Vec<f32> = gaussian(n_per_row * rows, 4)
        .iter()
        .enumerate()
        .map(|(i, v)| if (i / 256) % 5 == 2 { 0.0 } else { v.powi(3) })
        .collect();
    cases.push(Case {
        label: "heavy tails + zero blocks".into(),
        n_per_row,
        values,
        imatrix: None,
    });
    cases
}

/// Up to three 2-D tensors of distinct shapes per shared model (rows a multiple of 256
/// values, first 32 rows each), every other one with a synthetic importance matrix.
fn real_tensor_cases() -> Vec<Case> {
    let dir = shared_models_dir();
    let mut model_files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path().join("model.safetensors")))
        .filter(|p| p.is_file())
        .collect();
    model_files.sort();
    assert!(
        !model_files.is_empty(),
        "no */model.safetensors under {}",
        dir.display()
    );
    let mut cases = Vec::new();
    for file in &model_files {
        let model =
            SafetensorsModel::open(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut shapes_seen = Vec::new();
        for info in model.tensors() {
            if shapes_seen.len() == 3 {
                break;
            }
            if info.shape.len() != 2
                || info.shape[1] % 256 != 0
                || shapes_seen.contains(&info.shape)
            {
                continue;
            }
            shapes_seen.push(info.shape.clone());
            let n_per_row = info.shape[1];
            let rows = info.shape[0].min(32);
            let mut values = model
                .f32(&info.name)
                .unwrap_or_else(|e| panic!("{}: {e}", info.name));
            values.truncate(rows * n_per_row);
            let imatrix = (cases.len() % 2 == 1).then(|| importance(n_per_row, cases.len() as u64));
            let model_name = file
                .parent()
                .and_then(Path::file_name)
                .unwrap()
                .to_string_lossy();
            cases.push(Case {
                label: format!("{model_name}:{}", info.name),
                n_per_row,
                values,
                imatrix,
            });
        }
    }
    assert!(
        cases.len() >= model_files.len(),
        "too few usable tensors in the shared models"
    );
    cases
}

/// Our dequantized values for one type, over all cases, plus where each case starts.
struct TypeRun {
    ty: GgmlType,
    blocks: Vec<u8>,
    fast: Vec<f32>,
    reference: Vec<f32>,
    starts: Vec<(usize, String)>,
}

fn run_type(ty: GgmlType, cases: &[Case]) -> TypeRun {
    let mut run = TypeRun {
        ty,
        blocks: Vec::new(),
        fast: Vec::new(),
        reference: Vec::new(),
        starts: Vec::new(),
    };
    for case in cases {
        let row_bytes = ty.row_bytes(case.n_per_row).expect("rows are whole blocks");
        let mut q = vec![0u8; case.values.len() / case.n_per_row * row_bytes];
        quantize(
            ty,
            &case.values,
            case.n_per_row,
            case.imatrix.as_deref(),
            &mut q,
        )
        .unwrap_or_else(|e| panic!("{ty} {}: {e}", case.label));
        let mut y = vec![0.0f32; case.values.len()];
        dequantize(ty, &q, &mut y).unwrap();
        let mut y_ref = vec![0.0f32; case.values.len()];
        dequantize_with(ty, &q, &mut y_ref, true).unwrap();
        run.starts.push((run.fast.len(), case.label.clone()));
        run.blocks.extend_from_slice(&q);
        run.fast.extend_from_slice(&y);
        run.reference.extend_from_slice(&y_ref);
    }
    run
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn case_of(run: &TypeRun, index: usize) -> &str {
    let k = run.starts.partition_point(|(start, _)| *start <= index) - 1;
    &run.starts[k].1
}

/// Compare our values with gguf-py's bit for bit; a description of the first mismatch.
fn compare(run: &TypeRun, theirs: &[f32], ours: &[f32], path: &str) -> Option<String> {
    if theirs.len() != ours.len() {
        return Some(format!(
            "{} ({path}): gguf-py gave {} values, we {}",
            run.ty,
            theirs.len(),
            ours.len()
        ));
    }
    let bad = ours
        .iter()
        .zip(theirs)
        .position(|(a, b)| a.to_bits() != b.to_bits())?;
    let count = ours
        .iter()
        .zip(theirs)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    Some(format!(
        "{} ({path}): {count} values differ; first at {bad} in {}: ours {:e} vs gguf-py {:e}",
        run.ty,
        case_of(run, bad),
        ours[bad],
        theirs[bad]
    ))
}

#[test]
fn dequantized_values_match_gguf_py_bit_for_bit() {
    require_gguf_py();
    let mut cases = synthetic_cases();
    cases.extend(real_tensor_cases());

    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("gguf_py_dequant_{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();

    let mut failures = Vec::new();
    let mut runs = Vec::new();
    for &ty in QUANTIZABLE {
        match catch_unwind(AssertUnwindSafe(|| run_type(ty, &cases))) {
            Ok(run) => runs.push(run),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{ty}: quantizing panicked: {why}"));
            }
        }
    }

    let mut args = vec![crate_dir()
        .join("tests/py/dequant.py")
        .display()
        .to_string()];
    for run in &runs {
        let src = work.join(format!("{}.bin", run.ty.name()));
        std::fs::write(&src, &run.blocks).unwrap();
        args.push(run.ty.name().to_string());
        args.push(src.display().to_string());
        args.push(
            work.join(format!("{}.f32", run.ty.name()))
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
        "tests/py/dequant.py failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Guard against a vacuous match (e.g. a quantizer writing all-zero blocks): the
    // round trip must stay near the input. 0.5 is far above Q2_K's error on these data.
    let originals: Vec<f32> = cases
        .iter()
        .flat_map(|c| c.values.iter().copied())
        .collect();
    for run in &runs {
        let (mut err, mut norm) = (0.0f64, 0.0f64);
        for (a, b) in originals.iter().zip(&run.fast) {
            err += ((a - b) as f64).powi(2);
            norm += (*a as f64).powi(2);
        }
        let rel = (err / norm).sqrt();
        if rel.is_nan() || rel >= 0.5 {
            failures.push(format!(
                "{}: round-trip relative rms {rel:.3} is implausible",
                run.ty
            ));
        }
    }

    for run in &runs {
        let theirs = read_f32(&work.join(format!("{}.f32", run.ty.name())));
        failures.extend(compare(run, &theirs, &run.fast, "fast dequantizer"));
        failures.extend(compare(
            run,
            &theirs,
            &run.reference,
            "reference dequantizer",
        ));
        eprintln!(
            "{:7} {} values over {} cases checked",
            run.ty.name(),
            run.fast.len(),
            run.starts.len()
        );
    }
    std::fs::remove_dir_all(&work).ok();
    assert!(
        failures.is_empty(),
        "mismatches against gguf-py:\n{}",
        failures.join("\n")
    );
}
