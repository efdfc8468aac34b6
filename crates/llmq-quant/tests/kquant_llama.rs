//! Byte-for-byte comparison of the k-quant quantizers (and dequantizers) with llama.cpp.
//!
//! The fixture directory (env `KQUANT_LLAMA_FIXTURES`) holds `x.bin` and `w.bin` (rows of
//! 512 little-endian f32 values and their importance weights) and, per type,
//! `<type>.bin` (llama.cpp's bytes without weights), `<type>_w.bin` (with the weights)
//! and `<type>[_w]_deq.bin` (llama.cpp's `dequantize_row_*` of those bytes). Fixtures
//! come from outside this repository: either a small C program linked against
//! llama.cpp's `ggml-quants.c` calling `quantize_q{2..6}_K` on random rows, or the
//! tensors of a GGUF quantized by `llama-quantize --pure [--imatrix]` cut into rows of
//! 512 (k-quant super-blocks are independent, so that is exact). Run with
//! `KQUANT_LLAMA_FIXTURES=dir cargo test -p llmq-quant --test kquant_llama -- --ignored`.

use std::path::PathBuf;

type RowQuant = fn(&[f32], Option<&[f32]>, &mut [u8]);
type RowDequant = fn(&[u8], &mut [f32]);

const ROW: usize = 512;

fn fixtures() -> PathBuf {
    PathBuf::from(
        std::env::var("KQUANT_LLAMA_FIXTURES")
            .expect("set KQUANT_LLAMA_FIXTURES to the fixture directory"),
    )
}

fn read_f32(path: PathBuf) -> Vec<f32> {
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn compare(name: &str, block_bytes: usize, quant: [RowQuant; 2], dequant: [RowDequant; 2]) {
    let [quant_ref, quant_fast] = quant;
    let dir = fixtures();
    let x = read_f32(dir.join("x.bin"));
    let w = read_f32(dir.join("w.bin"));
    let row_bytes = ROW / 256 * block_bytes;
    for weighted in [false, true] {
        let file = dir.join(format!("{name}{}.bin", if weighted { "_w" } else { "" }));
        let expected = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let rows = x.len() / ROW;
        assert_eq!(expected.len(), rows * row_bytes);
        let deq_file = dir.join(format!(
            "{name}{}_deq.bin",
            if weighted { "_w" } else { "" }
        ));
        let expected_deq: Vec<u32> = read_f32(deq_file).iter().map(|v| v.to_bits()).collect();
        for (i, dq) in dequant.iter().enumerate() {
            let mut got = vec![0f32; rows * ROW];
            dq(&expected, &mut got);
            let same = got
                .iter()
                .zip(&expected_deq)
                .filter(|(a, b)| a.to_bits() == **b)
                .count();
            eprintln!(
                "{name} weights={weighted}: dequantize {} {same}/{} values bit-identical",
                ["ref", "fast"][i],
                got.len()
            );
            assert_eq!(same, got.len(), "{name}: dequantize differs from llama.cpp");
        }
        let (mut same_ref, mut same_fast) = (0, 0);
        let mut first_bad = None;
        let mut out = vec![0u8; row_bytes];
        for r in 0..rows {
            let xr = &x[r * ROW..(r + 1) * ROW];
            let wr = weighted.then(|| &w[r * ROW..(r + 1) * ROW]);
            let want = &expected[r * row_bytes..(r + 1) * row_bytes];
            quant_ref(xr, wr, &mut out);
            if out == want {
                same_ref += 1;
            } else if first_bad.is_none() {
                first_bad = Some(r);
            }
            quant_fast(xr, wr, &mut out);
            if out == want {
                same_fast += 1;
            }
        }
        eprintln!(
            "{name} weights={weighted}: ref {same_ref}/{rows}, fast {same_fast}/{rows} rows byte-identical to llama.cpp"
        );
        assert_eq!(
            (same_ref, same_fast),
            (rows, rows),
            "{name} weights={weighted}: first differing row {first_bad:?}"
        );
    }
}

macro_rules! matches_llama_cpp {
    ($test:ident, $module:ident, $block_bytes:expr) => {
        #[test]
        #[ignore = "needs llama.cpp-made fixtures (KQUANT_LLAMA_FIXTURES)"]
        fn $test() {
            use llmq_quant::$module::*;
            compare(
                stringify!($module),
                $block_bytes,
                [quantize_row_ref as RowQuant, quantize_row],
                [dequantize_row_ref as RowDequant, dequantize_row],
            );
        }
    };
}

matches_llama_cpp!(q2_k_matches_llama_cpp, q2_k, 84);
matches_llama_cpp!(q3_k_matches_llama_cpp, q3_k, 110);
matches_llama_cpp!(q4_k_matches_llama_cpp, q4_k, 144);
matches_llama_cpp!(q5_k_matches_llama_cpp, q5_k, 176);
matches_llama_cpp!(q6_k_matches_llama_cpp, q6_k, 210);
