//! The E2M1, E4M3 and E8M0 encoders of `llmq_formats::minifloat` against a table
//! computed independently: torch's `float8_e4m3fn` and `float8_e8m0fnu` casts and
//! compressed-tensors' `cast_to_fp4` (through `tests/py/fp_codes.py`), over every E4M3
//! value and midpoint, every E2M1 midpoint, powers of two with their mantissa
//! midpoints, values one ulp either side of each midpoint, and random values over 30
//! octaves. Needs the Python of `scripts/install-py-test-deps.sh`
//! (`LLMQ_HFQUANT_PYTHON`, else `~/.cache/llm-quantize/py-test-deps/venv/bin/python`);
//! it fails (never skips) without it.
//!
//! `nvfp4_scale_codes_match_gguf_py`: the GGUF NVFP4 block scale (llama.cpp's unsigned
//! E4M3, `llmq_quant::nvfp4`) against gguf-py's numpy implementation in the same venv:
//! llama.cpp's encoder rule over the same inputs, and the decoding of all 256 bytes.

use std::path::PathBuf;
use std::process::Command;

use llmq_formats::minifloat::{e2m1_to_f32, e4m3_to_f32, f32_to_e2m1, f32_to_e4m3, f32_to_e8m0};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn python() -> PathBuf {
    std::env::var_os("LLMQ_HFQUANT_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            let p = PathBuf::from(home).join(".cache/llm-quantize/py-test-deps/venv/bin/python");
            p.exists().then_some(p)
        })
        .expect("no Python with torch/compressed-tensors: run scripts/install-py-test-deps.sh")
}

fn next_up(x: f32) -> f32 {
    f32::from_bits(x.to_bits() + 1)
}
fn next_down(x: f32) -> f32 {
    f32::from_bits(x.to_bits() - 1)
}

/// The inputs, positive and negative.
fn inputs() -> Vec<f32> {
    let mut v = Vec::new();
    let push_near = |v: &mut Vec<f32>, x: f32| {
        v.push(x);
        if x > 0.0 {
            v.push(next_up(x));
            v.push(next_down(x));
        }
    };
    // every finite E4M3 value and the midpoints between neighbours
    let e4m3: Vec<f32> = (0u8..0x7F).map(e4m3_to_f32).collect();
    for w in e4m3.windows(2) {
        push_near(&mut v, w[0]);
        push_near(&mut v, (w[0] + w[1]) * 0.5);
    }
    for x in [448.0f32, 456.0, 464.0, 480.0, 1000.0, 1e30] {
        push_near(&mut v, x);
    }
    // the E2M1 range on a 1/64 grid (every midpoint is on it), and ulps around midpoints
    for k in 0..=512 {
        v.push(k as f32 / 64.0);
    }
    for m in [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 7.0] {
        push_near(&mut v, m);
    }
    // powers of two over the E8M0 range, with mantissas around one half
    for e in -126..=126 {
        let p = f32::powi(2.0, e);
        for m in [1.0f32, 1.25, 1.5, 1.75] {
            push_near(&mut v, p * m);
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(19);
    for _ in 0..20_000 {
        v.push(2f32.powf(rng.gen_range(-20.0..10.0)));
    }
    let neg: Vec<f32> = v.iter().map(|x| -x).collect();
    v.extend(neg);
    v
}

#[test]
fn minifloat_encoders_match_torch() {
    let x = inputs();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.f32");
    std::fs::write(
        &src,
        x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/fp_codes.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(&src)
        .arg(dir.path())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "fp_codes.py: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let e2m1: Vec<f32> = std::fs::read(dir.path().join("e2m1.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let e4m3 = std::fs::read(dir.path().join("e4m3.u8")).unwrap();
    let e8m0 = std::fs::read(dir.path().join("e8m0.u8")).unwrap();
    assert_eq!(
        (e2m1.len(), e4m3.len(), e8m0.len()),
        (x.len(), x.len(), x.len())
    );

    let mut bad = Vec::new();
    let (mut n4, mut n8) = (0, 0);
    for (i, &v) in x.iter().enumerate() {
        let ours = e2m1_to_f32(f32_to_e2m1(v));
        if ours != e2m1[i] {
            bad.push(format!(
                "E2M1({v:e}): ours {ours}, compressed-tensors {}",
                e2m1[i]
            ));
        }
        // torch saturates finite values to ±448 as we do
        if f32_to_e4m3(v) != e4m3[i] {
            bad.push(format!(
                "E4M3({v:e}): ours {:#04x}, torch {:#04x}",
                f32_to_e4m3(v),
                e4m3[i]
            ));
        }
        n4 += 1;
        // torch's E8M0 cast takes |x|; values that round past 2^127 are NaN there
        if e8m0[i] != 0xFF {
            if f32_to_e8m0(v.abs()) != e8m0[i] {
                bad.push(format!(
                    "E8M0({v:e}): ours {}, torch {}",
                    f32_to_e8m0(v.abs()),
                    e8m0[i]
                ));
            }
            n8 += 1;
        }
    }
    eprintln!("{} E2M1, {n4} E4M3, {n8} E8M0 encodings compared", x.len());
    assert!(
        n8 > x.len() * 9 / 10,
        "torch gave NaN for {} inputs",
        x.len() - n8
    );
    assert!(
        bad.is_empty(),
        "{} mismatches, first: {:?}",
        bad.len(),
        &bad[..bad.len().min(10)]
    );
}

#[test]
fn nvfp4_scale_codes_match_gguf_py() {
    use llmq_quant::nvfp4::{scale_code_llama, ue4m3_half};
    let x: Vec<f32> = inputs().into_iter().filter(|v| *v >= 0.0).collect();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.f32");
    std::fs::write(
        &src,
        x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
    let script = r#"
import sys, numpy as np
from gguf.quants import NVFP4
x = np.fromfile(sys.argv[1], dtype="<f4")
NVFP4.fp32_to_ue4m3(x).astype(np.uint8).tofile(sys.argv[2] + "/codes.u8")
NVFP4.ue4m3_to_fp32(np.arange(256, dtype=np.uint8)).astype("<f4").tofile(sys.argv[2] + "/values.f32")
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .arg(&src)
        .arg(dir.path())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "gguf-py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let codes = std::fs::read(dir.path().join("codes.u8")).unwrap();
    assert_eq!(codes.len(), x.len());
    let bad: Vec<String> = x
        .iter()
        .zip(&codes)
        .filter(|(v, c)| scale_code_llama(**v) != **c)
        .map(|(v, c)| {
            format!(
                "{v:e}: ours {:#04x}, gguf-py {c:#04x}",
                scale_code_llama(*v)
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} codes differ: {:?}",
        bad.len(),
        &bad[..bad.len().min(10)]
    );
    let values: Vec<f32> = std::fs::read(dir.path().join("values.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    for (b, v) in values.iter().enumerate() {
        assert_eq!(ue4m3_half(b as u8).to_bits(), v.to_bits(), "byte {b:#04x}");
    }
    eprintln!("{} NVFP4 scale codes and 256 scale bytes compared", x.len());
}
