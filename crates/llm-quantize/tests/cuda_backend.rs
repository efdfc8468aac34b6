//! The CUDA backend on a machine without a GPU (CI): every kernel source compiles with
//! NVRTC (the library of the `nvidia-cuda-nvrtc` wheel that
//! `scripts/install-py-test-deps.sh` installs), and `--device cuda` without a driver is
//! a clear error with exit code 8.

mod common;
mod cuda_host;
use common::*;
use cuda_host::*;
use llmq_engine::backend::cuda;
use std::path::PathBuf;

/// `libnvrtc.so.*` from `LLMQ_NVRTC_LIB` or the Python test venv's NVIDIA wheels.
fn find_nvrtc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LLMQ_NVRTC_LIB") {
        return Some(PathBuf::from(p));
    }
    let root = std::env::var_os("LLM_QUANTIZE_PY_TEST_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/llm-quantize/py-test-deps"))
        })?;
    let lib = std::fs::read_dir(root.join("venv/lib")).ok()?;
    for py in lib.filter_map(|e| e.ok()) {
        let nv = py.path().join("site-packages/nvidia");
        for sub in ["cu13/lib", "cuda_nvrtc/lib"] {
            let Ok(rd) = std::fs::read_dir(nv.join(sub)) else {
                continue;
            };
            for f in rd.filter_map(|e| e.ok()) {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.starts_with("libnvrtc.so") {
                    return Some(f.path());
                }
            }
        }
    }
    None
}

#[test]
fn nvrtc_compiles_every_kernel() {
    if let Some(p) = find_nvrtc() {
        std::env::set_var("LLMQ_NVRTC_LIB", p);
    }
    if !cuda::nvrtc_present() {
        assert!(
            std::env::var("CI").is_err(),
            "CI must have NVRTC: run scripts/install-py-test-deps.sh (nvidia-cuda-nvrtc)"
        );
        eprintln!("skipped: no libnvrtc.so (install the nvidia-cuda-nvrtc wheel)");
        return;
    }
    for arch in ["compute_80", "compute_90"] {
        let ptx = cuda::compile_uncached(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let kernels = ptx.matches(".entry ").count();
        // the shared kernels + gemv and embed per GPU type + two integer GEMVs per
        // integer-dot type + the tensor-core inputs (f32_to_f16 and one f16
        // dequantization per quantized type) + gemv and embed per compressed-tensors FP
        // kernel (`fp_ct.cu`) + the one-row float GEMVs + the calibration kernels + EXL3's
        // (`exl3.cu`)
        for k in cuda::KERNELS {
            assert!(ptx.contains(&format!(".entry {k}(")), "{arch}: {k}");
        }
        assert_eq!(
            kernels,
            cuda::KERNELS.len()
                + 2 * cuda::GPU_TYPES.len()
                + 2 * cuda::INT_DOT_TYPES.len()
                + cuda::fp_kernel_names().count()
                + cuda::GEMV1_KERNELS.len()
                + 1
                + cuda::DEQUANT_F16_TYPES.len()
                + cuda::CALIB_KERNELS.len()
                + cuda::exl3_kernel_names().count(),
            "{arch}"
        );
        for k in cuda::exl3_kernel_names() {
            assert!(ptx.contains(&format!(".entry {k}(")), "{arch}: {k}");
        }
        for k in cuda::CALIB_KERNELS {
            assert!(ptx.contains(&format!(".entry {k}(")), "{arch}: {k}");
        }
        for k in cuda::DEQUANT_F16_TYPES {
            assert!(
                ptx.contains(&format!(".entry dequant_f16_{k}(")),
                "{arch}: dequant_f16_{k}"
            );
        }
        for (_, k) in cuda::GPU_TYPES {
            assert!(
                ptx.contains(&format!(".entry gemv_{k}(")),
                "{arch}: gemv_{k}"
            );
        }
        for k in cuda::fp_kernel_names() {
            assert!(ptx.contains(&format!(".entry {k}(")), "{arch}: {k}");
        }
        for k in cuda::GEMV1_KERNELS {
            assert!(
                ptx.contains(&format!(".entry gemv1_{k}(")),
                "{arch}: gemv1_{k}"
            );
        }
        for k in cuda::INT_DOT_TYPES {
            for nb in [1, 8] {
                assert!(
                    ptx.contains(&format!(".entry gemvq{nb}_{k}(")),
                    "{arch}: gemvq{nb}_{k}"
                );
            }
        }
    }
}

#[test]
fn device_cuda_without_a_driver_is_a_clear_error() {
    if cuda::driver_present() {
        eprintln!("skipped: this machine has a CUDA driver");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = shared_model("llama");
    for cmd in ["eval", "generate", "serve"] {
        let mut args = vec![
            "--format",
            "json",
            cmd,
            model.to_str().unwrap(),
            "--device",
            "cuda",
        ];
        if cmd == "generate" {
            args.extend(["-p", "hi", "--max-tokens", "1"]);
        }
        if cmd == "serve" {
            args.extend(["--port", "0"]);
        }
        let r = lq(tmp.path(), &args);
        assert_eq!(r.code, 8, "{cmd}: {}\n{}", r.stdout, r.stderr);
        let v = r.json();
        assert_eq!(v["status"], "error");
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains("no CUDA driver"), "{cmd}: {msg}");
    }
    // a malformed device is a usage error
    let r = lq(
        tmp.path(),
        &["eval", model.to_str().unwrap(), "--device", "gpu0"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("cuda:N"), "{}", r.stderr);
}

const HOST_MAIN: &str = r#"
template <class T> int run(const char* in, const char* out, int cols, int rows, int rb) {
    std::vector<u8> b((size_t)rows * rb);
    std::vector<float> o((size_t)rows * cols);
    FILE* f = fopen(in, "rb");
    if (!f || fread(b.data(), 1, b.size(), f) != b.size()) return 3;
    fclose(f);
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < cols / 8; c++) T::deq8(b.data() + (size_t)r * rb, c, &o[(size_t)r * cols + 8 * c]);
        for (int i = 0; i < cols; i += 7)
            if (T::deq1(b.data() + (size_t)r * rb, i) != o[(size_t)r * cols + i]) return 4;
    }
    f = fopen(out, "wb");
    fwrite(o.data(), 4, o.size(), f);
    fclose(f);
    return 0;
}
int main(int argc, char** argv) {
    const char* t = argv[1];
    int cols = atoi(argv[4]), rows = atoi(argv[5]), rb = atoi(argv[6]);
#define T(n, S) if (!strcmp(t, n)) return run<S>(argv[2], argv[3], cols, rows, rb);
    T("f32", TF32) T("f16", TF16) T("bf16", TBF16) T("q4_0", TQ4_0) T("q4_1", TQ4_1) T("q5_0", TQ5_0)
    T("q5_1", TQ5_1) T("q8_0", TQ8_0) T("iq4_nl", TIQ4_NL) T("q2_k", TQ2_K) T("q4_k", TQ4_K)
    T("q3_k", TQ3_K) T("q5_k", TQ5_K) T("q6_k", TQ6_K) T("iq4_xs", TIQ4_XS) T("mxfp4", TMXFP4)
    T("nvfp4", TNVFP4)
    return 2;
}
"#;

/// The part of `kernels/fp4.cu` from its section comment `from` to `to`.
fn fp4_section(from: &str, to: &str) -> &'static str {
    let src = kernel_source("fp4.cu");
    let at = |s: &str| {
        src.find(&format!("// ---- fp4: {s}"))
            .unwrap_or_else(|| panic!("fp4.cu has no section {s}"))
    };
    &src[at(from)..at(to)]
}

/// `kernels/dequant.cuh` compiled for the host (any C++ compiler) decodes every GPU
/// weight type exactly as the CPU engine's dequantizers do: the block layouts the GPU
/// kernels read are checked without a GPU.
#[test]
fn dequant_kernels_match_the_cpu_dequantizers() {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        "{}{}",
        kernel_source("dequant.cuh"),
        fp4_section("dequantization", "integer units")
    );
    let Some(exe) = compile_for_host(tmp.path(), &text, HOST_PRELUDE, HOST_MAIN) else {
        return;
    };
    let (rows, cols) = (6usize, 768usize);
    let mut s = 12345u64;
    let vals: Vec<f32> = (0..rows * cols)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect();
    for (ty, name) in cuda::GPU_TYPES {
        let rb = ty.row_bytes(cols).unwrap();
        let mut q = vec![0u8; rows * rb];
        llmq_quant::quantize(*ty, &vals, cols, None, &mut q).unwrap();
        let mut want = vec![0f32; rows * cols];
        llmq_quant::dequantize(*ty, &q, &mut want).unwrap();
        // the bytes as the backend uploads them (Q6_K's padded blocks)
        let (q, rb) = cuda::device_layout(name, &q, rb);
        let (inp, out) = (tmp.path().join("in.bin"), tmp.path().join("out.bin"));
        std::fs::write(&inp, &q).unwrap();
        let st = std::process::Command::new(&exe)
            .arg(name)
            .arg(&inp)
            .arg(&out)
            .args([cols.to_string(), rows.to_string(), rb.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "{name}: harness exit {st}");
        let got: Vec<f32> = std::fs::read(&out)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits(),
                "{name}: value {i} is {g}, the CPU says {w}"
            );
        }
    }
}

/// Host shims that let the weight units of `kernels/gemvq.cu` compile as plain C++.
const GEMVQ_PRELUDE: &str = r#"
struct int2 { int x, y; }; struct int4 { int x, y, z, w; }; struct uint2 { u32 x, y; };
static int prmt(u32 lo, u32 hi, u32 s) {
    u8 b[8]; memcpy(b, &lo, 4); memcpy(b + 4, &hi, 4);
    u32 d = 0;
    for (int k = 0; k < 4; k++) d |= (u32)b[(s >> (4 * k)) & 7] << (8 * k);
    return (int)d;
}
static int dp4a(int a, int b, int c) {
    for (int k = 0; k < 4; k++) c += (int)(signed char)(a >> (8 * k)) * (int)(signed char)(b >> (8 * k));
    return c;
}
static int ld32_a2(const u8* p) { return (int)ld32(p); }
static int spread4(u32 x) { return (int)(((x & 15u) * 0x00204081u) & 0x01010101u); }
"#;

const GEMVQ_MAIN: &str = r#"
template <class T> int run(const char* dir, int cols, int rows, int rb, int n) {
    auto rd = [&](const char* name, size_t bytes) {
        // 16 zero bytes after the data, as the device copies of weights have
        std::vector<u8> v(bytes + 16);
        std::string p = std::string(dir) + "/" + name;
        FILE* f = fopen(p.c_str(), "rb");
        if (!f || fread(v.data(), 1, bytes, f) != bytes) exit(3);
        fclose(f);
        return v;
    };
    std::vector<u8> w = rd("w.bin", (size_t)rows * rb), qx = rd("qx.bin", (size_t)n * cols),
                    dx = rd("dx.bin", (size_t)n * cols / 32 * 4), sx = rd("sx.bin", (size_t)n * cols / 16 * 4),
                    s1 = rd("s1.bin", (size_t)n * cols / 32 * 4);
    std::vector<float> y((size_t)n * rows);
    for (int r0 = 0; r0 < n; r0 += 8) {
        QAct a;
        a.qx = (const i8*)qx.data() + (size_t)r0 * cols;
        a.dx = (const float*)dx.data() + (size_t)r0 * (cols / 32);
        a.sx = (const int*)sx.data() + (size_t)r0 * (cols / 16);
        a.s1 = (const float*)s1.data() + (size_t)r0 * (cols / 32);
        a.cols = cols;
        a.nb = n - r0 < 8 ? n - r0 : 8;
        for (int row = 0; row < rows; row++) {
            float acc[8] = {0};
            for (int u = 0; u < cols / T::UNIT; u++) T::template dot<8>(w.data() + (size_t)row * rb, u, a, acc);
            for (int r = 0; r < a.nb; r++) y[(size_t)(r0 + r) * rows + row] = acc[r];
        }
    }
    std::string p = std::string(dir) + "/y.bin";
    FILE* f = fopen(p.c_str(), "wb");
    fwrite(y.data(), 4, y.size(), f);
    fclose(f);
    return 0;
}
int main(int argc, char** argv) {
    const char* t = argv[1];
    int cols = atoi(argv[3]), rows = atoi(argv[4]), rb = atoi(argv[5]), n = atoi(argv[6]);
#define T(nm, S) if (!strcmp(t, nm)) return run<S>(argv[2], cols, rows, rb, n);
    T("q8_0", GQ8_0) T("q4_0", GQ4<false>) T("q5_0", GQ5<false>) T("q4_k", GQK45<false>) T("q5_k", GQK45<true>)
    T("q6_k", GQ6_K) T("iq4_nl", GIQ4_NL) T("iq4_xs", GIQ4_XS) T("q2_k", GQ2_K) T("q3_k", GQ3_K)
    T("q4_1", GQ4<true>) T("q5_1", GQ5<true>) T("int4", GQINT<4>) T("int8", GQINT<8>)
    T("mxfp4", GMXFP4) T("nvfp4", GNVFP4)
    return 2;
}
"#;

/// The weight units of `kernels/gemvq.cu` (integer dot products over int8 activations),
/// compiled for the host, give the CPU engine's products: the block decoding, the
/// scales, minimums and offsets of every integer-dot type, checked without a GPU. The
/// activations are packed here from the CPU engine's own Q8_0 / Q8_K rounding.
#[test]
fn integer_dot_units_match_the_cpu_engine() {
    use llmq_engine::Backend;
    use llmq_kernels::kernels::act_quant::Act;
    let src = kernel_source("gemvq.cu");
    // the weight units only: from the activation view to the kernel template
    let units = format!(
        "{}{}",
        &src[src.find("struct QAct").unwrap()..src.find("template <class T, int NB>").unwrap()],
        fp4_section("dequantization", "kernels")
    );
    let tmp = tempfile::tempdir().unwrap();
    let prelude = format!("{HOST_PRELUDE}#include <string>\n{GEMVQ_PRELUDE}");
    let prelude = format!(
        "{prelude}#define DEQ1_FROM_DEQ8 static inline float deq1(const u8* r, int i) {{ float o[8]; deq8(r, i >> 3, o); return o[i & 7]; }}\n"
    );
    // Q6_K's device block (dequant.cuh, not part of this build) is the uploader's
    let stride = format!("#define Q6K_STRIDE {}\n", cuda::Q6K_DEVICE_BLOCK);
    assert!(kernel_source("dequant.cuh").contains(&stride));
    let prelude = format!("{prelude}{stride}");
    let Some(exe) = compile_for_host(tmp.path(), &units, &prelude, GEMVQ_MAIN) else {
        return;
    };
    let (rows, cols, n) = (5usize, 768usize, 11usize);
    let mut s = 777u64;
    let mut rnd = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
    };
    let vals: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
    // activations with a zero block and outliers, as real ones have
    let mut x: Vec<f32> = (0..n * cols).map(|_| rnd()).collect();
    x[32..64].iter_mut().for_each(|v| *v = 0.0);
    x[cols + 5] = 300.0;
    for k in cuda::INT_DOT_TYPES {
        let w = match k.strip_prefix("int") {
            // GPTQ-style group-wise weights: random codes, scales and zero points, groups of 128
            Some(bits) => {
                let bits: u8 = bits.parse().unwrap();
                let groups = cols / 128;
                let mut h = 99u64;
                let mut next = move |m: u64| {
                    h = h
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((h >> 33) % m) as u8
                };
                let q: Vec<u8> = (0..rows * cols).map(|_| next(1 << bits)).collect();
                let zeros: Vec<u8> = (0..rows * groups).map(|_| next(1 << bits)).collect();
                let scales: Vec<half::f16> = (0..rows * groups)
                    .map(|i| half::f16::from_f32(0.01 + 0.003 * (i % 7) as f32))
                    .collect();
                let group_of_col: Vec<u32> = (0..cols).map(|c| (c / 128) as u32).collect();
                let g = llmq_kernels::int_blocks::IntGroups {
                    bits,
                    rows,
                    cols,
                    q: &q,
                    scales: &scales,
                    zeros: &zeros,
                    n_groups: groups,
                    group_of_col: &group_of_col,
                };
                llmq_kernels::WeightMatrix::from_int_groups(&g, llmq_kernels::IntAct::Q8_0).unwrap()
            }
            None => {
                let (ty, _) = *cuda::GPU_TYPES.iter().find(|(_, n)| n == k).unwrap();
                let mut q = vec![0u8; rows * ty.row_bytes(cols).unwrap()];
                llmq_quant::quantize(ty, &vals, cols, None, &mut q).unwrap();
                llmq_kernels::WeightMatrix::new(
                    ty,
                    rows,
                    cols,
                    llmq_kernels::Bytes::whole(std::sync::Arc::new(q)),
                )
                .unwrap()
            }
        };
        let (q, rb) = cuda::device_layout(k, w.data.as_slice(), w.row_bytes());
        let q = q.into_owned();
        let act = match w.ty.name().as_str() {
            "Q8_0" | "Q4_0" | "Q5_0" | "IQ4_NL" | "MXFP4" | "NVFP4" | "INT4_B32" | "INT8_B32" => {
                Act::Q8_0
            }
            "Q4_1" | "Q5_1" => Act::Q8_1,
            _ => Act::Q8K,
        };
        // the CPU's quantized activations as qx / dx / sx (and Q8_1's block sums as s1)
        let (mut qx, mut dx, mut sx, mut s1) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for row in x.chunks_exact(cols) {
            let mut b = vec![0u8; act.row_bytes(cols)];
            act.quantize(llmq_kernels::kernels::Isa::Scalar, row, &mut b);
            // block bytes, where the values start, values per block
            let (block, scale_bytes, len) = match act {
                Act::Q8_0 => (34, 2, 32),
                Act::Q8_1 => (36, 4, 32),
                _ => (292, 4, 256),
            };
            for blk in b.chunks_exact(block) {
                let d = if act == Act::Q8K {
                    f32::from_le_bytes(blk[..4].try_into().unwrap())
                } else {
                    half::f16::from_le_bytes([blk[0], blk[1]]).to_f32()
                };
                if act == Act::Q8_1 {
                    let s = half::f16::from_le_bytes([blk[2], blk[3]]).to_f32();
                    s1.extend_from_slice(&s.to_le_bytes());
                } else {
                    s1.extend_from_slice(&[0u8; 4].repeat(len / 32));
                }
                let vals = &blk[scale_bytes..scale_bytes + len];
                qx.extend_from_slice(vals);
                for _ in 0..vals.len() / 32 {
                    dx.extend_from_slice(&d.to_le_bytes());
                }
                for g in vals.chunks_exact(16) {
                    let sum: i32 = g.iter().map(|&v| v as i8 as i32).sum();
                    sx.extend_from_slice(&sum.to_le_bytes());
                }
            }
        }
        for (name, data) in [
            ("w.bin", &q),
            ("qx.bin", &qx),
            ("dx.bin", &dx),
            ("sx.bin", &sx),
            ("s1.bin", &s1),
        ] {
            std::fs::write(tmp.path().join(name), data).unwrap();
        }
        let st = std::process::Command::new(&exe)
            .arg(k)
            .arg(tmp.path())
            .args([cols, rows, rb, n].map(|v| v.to_string()))
            .status()
            .unwrap();
        assert!(st.success(), "{k}: harness exit {st}");
        let got: Vec<f32> = std::fs::read(tmp.path().join("y.bin"))
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let cpu = llmq_engine::Cpu;
        let want = cpu.matmul(&cpu.upload_weight(w), &x, n);
        let num: f64 = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (*g as f64 - *w as f64).powi(2))
            .sum();
        let den: f64 = want.iter().map(|w| (*w as f64).powi(2)).sum();
        let rel = (num / den).sqrt();
        assert!(
            rel < 1e-6,
            "{k}: relative difference {rel:.2e} from the CPU engine"
        );
    }
}
