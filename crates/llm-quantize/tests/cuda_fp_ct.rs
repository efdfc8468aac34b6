//! The CUDA kernels of compressed-tensors FP weights (`kernels/fp_ct.cu`: NVFP4 with a
//! per-row global scale, FP8 E4M3 in blocks of 8–128 columns; MXFP4 rows on `fp4.cu`'s
//! decoder) and of MR-GPTQ's online rotation (`kernels/rotation.cu`), compiled for the
//! host with a C++ compiler (no GPU): their decoded values equal the CPU engine's
//! `fp_blocks::dequantize_fp_row` bit for bit, the rotation equals
//! `llmq_kernels::rotation` bit for bit, and products summed in `gemv.cu`'s order (32
//! lanes over 8-value chunks, then the warp's shuffle tree) — and by the float units the
//! `gemv_*` / `gemv1_*` kernels run (`gemvu_impl`: batch and one-row) — equal the CPU
//! engine's within 1e-6 relative, on random data and on edge cases (every E4M3 code and scale byte,
//! subnormal and huge scales, zeros, outliers). NVRTC compiling these sources is
//! `cuda_backend.rs`'s `nvrtc_compiles_every_kernel`.

mod cuda_host;
use cuda_host::*;
use llmq_engine::Backend;
use llmq_formats::minifloat::e4m3_to_f32;
use llmq_kernels::{FpGrid, FpGroups, IntAct, WeightMatrix, WeightType};
use std::path::Path;

/// Host shims for the pieces of `fp_ct.cu` / `rotation.cu` that are not in
/// [`HOST_PRELUDE`].
const FP_PRELUDE: &str = r#"
#include <string>
static u32 __float_as_uint(float f) { u32 x; memcpy(&x, &f, 4); return x; }
#define DEQ1_FROM_DEQ8 static inline float deq1(const u8* r, int i) { float o[8]; deq8(r, i >> 3, o); return o[i & 7]; }
"#;

/// `deq <type> in out cols rows rb`: every value by `deq8` (and `deq1` checked against
/// it); `gemv <type> dir cols rows rb n`: y = x · Wᵀ summed in `gemv_impl`'s order;
/// `rot in out len b normbits`: the Hadamard blocks by `rotation.cu`'s butterflies,
/// stage by stage.
const FP_MAIN: &str = r#"
static std::vector<u8> rd(const std::string& p, size_t bytes) {
    std::vector<u8> v(bytes);
    FILE* f = fopen(p.c_str(), "rb");
    if (!f || fread(v.data(), 1, bytes, f) != bytes) exit(3);
    fclose(f);
    return v;
}
static void wr(const std::string& p, const float* v, size_t n) {
    FILE* f = fopen(p.c_str(), "wb");
    fwrite(v, 4, n, f);
    fclose(f);
}
template <class T> int deq(const char* in, const char* out, int cols, int rows, int rb) {
    std::vector<u8> b = rd(in, (size_t)rows * rb);
    std::vector<float> o((size_t)rows * cols);
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < cols / 8; c++) T::deq8(b.data() + (size_t)r * rb, c, &o[(size_t)r * cols + 8 * c]);
        for (int i = 0; i < cols; i += 5) {
            float a = T::deq1(b.data() + (size_t)r * rb, i), e = o[(size_t)r * cols + i];
            if (memcmp(&a, &e, 4)) return 4;
        }
    }
    wr(out, o.data(), o.size());
    return 0;
}
template <class T> int gemv(const std::string& dir, int cols, int rows, int rb, int n) {
    std::vector<u8> w = rd(dir + "/w.bin", (size_t)rows * rb), xb = rd(dir + "/x.bin", (size_t)n * cols * 4);
    const float* x = (const float*)xb.data();
    std::vector<float> y((size_t)n * rows);
    for (int r = 0; r < n; r++)
        for (int row = 0; row < rows; row++) {
            float acc[32];
            for (int lane = 0; lane < 32; lane++) {
                acc[lane] = 0.0f;
                for (int c = lane; c < cols / 8; c += 32) {
                    float v[8];
                    T::deq8(w.data() + (size_t)row * rb, c, v);
                    const float* a = x + (size_t)r * cols + 8 * c;
                    acc[lane] += v[0] * a[0] + v[1] * a[1] + v[2] * a[2] + v[3] * a[3] + v[4] * a[4] + v[5] * a[5] +
                                 v[6] * a[6] + v[7] * a[7];
                }
            }
            for (int o = 16; o > 0; o >>= 1) {
                float t[32];
                for (int l = 0; l < 32; l++) t[l] = acc[l] + acc[l ^ o];
                memcpy(acc, t, sizeof t);
            }
            y[(size_t)r * rows + row] = acc[0];
        }
    wr(dir + "/y.bin", y.data(), y.size());
    return 0;
}
// `gemvu_impl`'s order: lane l takes units l, l + 32, ...; dot<8> over the n rows at once
// (y.bin) and dot<1> row by row (y1.bin); then the warp's shuffle tree.
template <class U> int gemvu(const std::string& dir, int cols, int rows, int rb, int n) {
    std::vector<u8> w = rd(dir + "/w.bin", (size_t)rows * rb), xb = rd(dir + "/x.bin", (size_t)n * cols * 4);
    const float* x = (const float*)xb.data();
    std::vector<float> y((size_t)n * rows), y1((size_t)n * rows);
    int units = cols / U::UNIT;
    for (int row = 0; row < rows; row++) {
        const u8* wr = w.data() + (size_t)row * rb;
        float acc[8][32], acc1[8][32];
        for (int lane = 0; lane < 32; lane++) {
            float a[8] = {0}, a1[8] = {0};
            for (int u = lane; u < units; u += 32) U::template dot<8>(wr, u, x, cols, n, a);
            for (int r = 0; r < n; r++)
                for (int u = lane; u < units; u += 32) U::template dot<1>(wr, u, x + (size_t)r * cols, cols, 1, &a1[r]);
            for (int r = 0; r < 8; r++) acc[r][lane] = a[r], acc1[r][lane] = a1[r];
        }
        for (int r = 0; r < n; r++) {
            for (float* v : {acc[r], acc1[r]})
                for (int o = 16; o > 0; o >>= 1) {
                    float t[32];
                    for (int l = 0; l < 32; l++) t[l] = v[l] + v[l ^ o];
                    memcpy(v, t, sizeof t);
                }
            y[(size_t)r * rows + row] = acc[r][0];
            y1[(size_t)r * rows + row] = acc1[r][0];
        }
    }
    wr(dir + "/y.bin", y.data(), y.size());
    wr(dir + "/y1.bin", y1.data(), y1.size());
    return 0;
}
int main(int argc, char** argv) {
    std::string mode = argv[1];
    if (mode == "gemvu") {
        const char* t = argv[2];
        std::string dir = argv[3];
        int cols = atoi(argv[4]), rows = atoi(argv[5]), rb = atoi(argv[6]), n = atoi(argv[7]);
#define U(nm, S) if (!strcmp(t, nm)) return gemvu<S>(dir, cols, rows, rb, n);
        U("nvfp4_ct", UNVFP4CT) U("fp8_b8", UFP8<8>) U("fp8_b16", UFP8<16>) U("fp8_b32", UFP8<32>)
        U("fp8_b64", UFP8<64>) U("fp8_b128", UFP8<128>) U("mxfp4", UMXFP4)
        return 2;
    }
    if (mode == "rot") {
        size_t len = atol(argv[4]);
        int b = atoi(argv[5]);
        u32 nb = (u32)strtoul(argv[6], 0, 10);
        float norm = __uint_as_float(nb);
        std::vector<u8> xb = rd(argv[2], len * 4);
        float* v = (float*)xb.data();
        for (size_t base = 0; base < len; base += b) {
            for (int l = 1; l < b; l *= 2)
                for (int t = 0; t < b / 2; t++) hadamard_butterfly(v + base, l, t);
            for (int i = 0; i < b; i++) v[base + i] = v[base + i] * norm;
        }
        wr(argv[3], v, len);
        return 0;
    }
    const char* t = argv[2];
    int cols = atoi(argv[4]), rows = atoi(argv[5]), rb = atoi(argv[6]);
    // argv[7]: the output file (deq) or the number of activation rows (gemv)
#define T(nm, S) if (!strcmp(t, nm)) return mode == "deq" ? deq<S>(argv[3], argv[7], cols, rows, rb) : gemv<S>(argv[3], cols, rows, rb, atoi(argv[7]));
    T("nvfp4_ct", TNVFP4CT) T("fp8_b8", TFP8<8>) T("fp8_b16", TFP8<16>) T("fp8_b32", TFP8<32>)
    T("fp8_b64", TFP8<64>) T("fp8_b128", TFP8<128>) T("mxfp4", TMXFP4)
    return 2;
}
"#;

/// The host build of the FP decoders and the rotation butterflies.
fn harness(dir: &Path) -> Option<std::path::PathBuf> {
    let fp4 = kernel_source("fp4.cu");
    // the decoders and the float units
    let fp4_deq = &fp4[fp4.find("// ---- fp4: dequantization").unwrap()
        ..fp4.find("// ---- fp4: integer units").unwrap()];
    let ct = kernel_source("fp_ct.cu");
    let ct_deq = &ct[..ct.find("// ---- fp_ct: kernels").unwrap()];
    let rot = kernel_source("rotation.cu");
    let rot_bf = &rot[..rot.find("// ---- rotation: kernels").unwrap()];
    let text = format!("{fp4_deq}{ct_deq}{rot_bf}");
    compile_for_host(dir, &text, &format!("{HOST_PRELUDE}{FP_PRELUDE}"), FP_MAIN)
}

fn run(exe: &Path, args: &[String]) {
    let st = std::process::Command::new(exe).args(args).status().unwrap();
    assert!(st.success(), "{args:?}: harness exit {st}");
}

fn floats(p: &Path) -> Vec<f32> {
    std::fs::read(p)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A deterministic stream of u64s.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    /// uniform in [-a, a)
    fn sym(&mut self, a: f32) -> f32 {
        ((self.next() >> 29) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }
}

/// A test weight: its grid, shape, codes, scales and the scale groups.
struct Case {
    name: &'static str,
    grid: FpGrid,
    rows: usize,
    cols: usize,
    codes: Vec<u8>,
    scales: Vec<f32>,
    rps: usize,
    cps: usize,
    global: f32,
    /// products are compared (finite, non-degenerate values)
    gemv: bool,
}

impl Case {
    fn matrix(&self) -> WeightMatrix {
        let g = FpGroups {
            grid: self.grid,
            rows: self.rows,
            cols: self.cols,
            codes: &self.codes,
            scales: &self.scales,
            rows_per_scale: self.rps,
            cols_per_scale: self.cps,
            scale_cols: self.cols.div_ceil(self.cps),
            global_scale: self.global,
        };
        WeightMatrix::from_fp_groups(&g, IntAct::F32)
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }
}

/// E4M3 bytes that are not NaN, cycling through all 254 of them.
fn e4m3_byte(k: usize) -> u8 {
    let b = (k % 254) as u8;
    if b >= 0x7F {
        b + 1
    } else {
        b
    }
}

fn cases() -> Vec<Case> {
    let mut r = Lcg(19);
    let mut out = Vec::new();
    // NVFP4: every E4M3 scale byte (negative, zero, subnormal ones too), every code
    // (-0 included), several global scales
    for (i, global) in [2688.0 / 0.37f32, 1.0, 0.1, 3.0e4, 7.3e-3]
        .into_iter()
        .enumerate()
    {
        let (rows, cols) = (16, 256);
        let scales: Vec<f32> = (0..rows * cols / 16)
            .map(|k| e4m3_to_f32(e4m3_byte(k + 37 * i)))
            .collect();
        out.push(Case {
            name: "nvfp4",
            grid: FpGrid::Nvfp4,
            rows,
            cols,
            codes: (0..rows * cols).map(|_| (r.next() % 16) as u8).collect(),
            scales,
            rps: 1,
            cps: 16,
            global,
            gemv: true,
        });
    }
    // FP8: every code byte; per channel, per tensor, 128x128 blocks and narrower groups
    // (blocks of 128, 64, 32, 16, 8 columns)
    for (name, rows, cols, rps, cps) in [
        ("fp8 per channel", 6usize, 512usize, 1usize, 512usize),
        ("fp8 per tensor", 5, 384, 5, 384),
        ("fp8 block 128", 130, 256, 128, 128),
        ("fp8 block 64", 4, 320, 1, 128),
        ("fp8 group 32", 3, 256, 1, 32),
        ("fp8 group 16", 3, 128, 1, 16),
        ("fp8 group 8", 3, 64, 1, 8),
    ] {
        let n_scales = rows.div_ceil(rps) * cols.div_ceil(cps);
        out.push(Case {
            name,
            grid: FpGrid::Fp8,
            rows,
            cols,
            codes: (0..rows * cols)
                .map(|k| e4m3_byte(k + (r.next() % 3) as usize))
                .collect(),
            scales: (0..n_scales)
                .map(|_| 1e-5 + (r.next() % 1000) as f32 * 1e-5)
                .collect(),
            rps,
            cps,
            global: 1.0,
            gemv: true,
        });
    }
    // FP8 scales whose products are f32 subnormals, or near the f32 maximum
    for (name, scale) in [("fp8 tiny scales", 1.3e-38f32), ("fp8 huge scales", 7.0e35)] {
        out.push(Case {
            name,
            grid: FpGrid::Fp8,
            rows: 2,
            cols: 256,
            codes: (0..512).map(e4m3_byte).collect(),
            scales: vec![scale, -scale * 0.75],
            rps: 1,
            cps: 256,
            global: 1.0,
            gemv: false,
        });
    }
    // MXFP4 with f32 activations (exact mode): powers of two from 2^-127 up
    out.push(Case {
        name: "mxfp4",
        grid: FpGrid::Mxfp4,
        rows: 8,
        cols: 256,
        codes: (0..8 * 256).map(|_| (r.next() % 16) as u8).collect(),
        scales: (0..8 * 8)
            .map(|k| {
                if k == 3 {
                    f32::from_bits(0x0040_0000)
                } else {
                    2f32.powi(k % 30 - 20)
                }
            })
            .collect(),
        rps: 1,
        cps: 32,
        global: 1.0,
        gemv: true,
    });
    out
}

/// Activations with a zero block and an outlier, as real ones have.
fn activations(n: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut r = Lcg(seed);
    let mut x: Vec<f32> = (0..n * cols).map(|_| r.sym(2.0)).collect();
    x[8..40].iter_mut().for_each(|v| *v = 0.0);
    x[cols.min(n * cols - 1)] = 300.0;
    x
}

/// The kernel suffix the CUDA backend gives `w` (as `backend/cuda/weights.rs` does).
fn kernel_of(w: &WeightMatrix) -> String {
    match w.ty {
        WeightType::Fp(llmq_kernels::FpType::Nvfp4) => "nvfp4_ct".into(),
        WeightType::Fp(llmq_kernels::FpType::Mxfp4) => "mxfp4".into(),
        WeightType::Fp(llmq_kernels::FpType::Fp8 { block }) => format!("fp8_b{block}"),
        t => panic!("{} is not an Fp type", t.name()),
    }
}

/// Relative L2 distance of `got` from `want`.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - *w as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| (*w as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// `y = x · Wᵀ` by the host build of `w`'s float unit (`gemvu_impl`'s order): the batch
/// kernel's sums over all `n` rows at once and the one-row kernel's row by row.
fn host_gemvu(exe: &Path, dir: &Path, w: &WeightMatrix, x: &[f32], n: usize) -> [Vec<f32>; 2] {
    std::fs::write(dir.join("w.bin"), w.data.as_slice()).unwrap();
    std::fs::write(dir.join("x.bin"), f32_bytes(x)).unwrap();
    let args = ["gemvu".to_string(), kernel_of(w), dir.display().to_string()]
        .into_iter()
        .chain([w.cols, w.rows, w.row_bytes(), n].map(|v| v.to_string()))
        .collect::<Vec<_>>();
    run(exe, &args);
    [floats(&dir.join("y.bin")), floats(&dir.join("y1.bin"))]
}

/// `y = x · Wᵀ` by the host build of `w`'s GPU decoder, in `gemv.cu`'s summation order.
fn host_gemv(exe: &Path, dir: &Path, w: &WeightMatrix, x: &[f32], n: usize) -> Vec<f32> {
    std::fs::write(dir.join("w.bin"), w.data.as_slice()).unwrap();
    std::fs::write(dir.join("x.bin"), f32_bytes(x)).unwrap();
    let args = ["gemv".to_string(), kernel_of(w), dir.display().to_string()]
        .into_iter()
        .chain([w.cols, w.rows, w.row_bytes(), n].map(|v| v.to_string()))
        .collect::<Vec<_>>();
    run(exe, &args);
    floats(&dir.join("y.bin"))
}

#[test]
fn fp_kernels_decode_and_multiply_as_the_cpu_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(exe) = harness(tmp.path()) else {
        return;
    };
    let mut seen = std::collections::BTreeSet::new();
    for (i, case) in cases().iter().enumerate() {
        let w = case.matrix();
        let k = kernel_of(&w);
        seen.insert(k.clone());
        let want = w.to_f32();
        let (inp, out) = (tmp.path().join("in.bin"), tmp.path().join("out.bin"));
        std::fs::write(&inp, w.data.as_slice()).unwrap();
        let args = ["deq".to_string(), k.clone(), inp.display().to_string()]
            .into_iter()
            .chain([w.cols, w.rows, w.row_bytes()].map(|v| v.to_string()))
            .chain([out.display().to_string()])
            .collect::<Vec<_>>();
        run(&exe, &args);
        let got = floats(&out);
        assert_eq!(got.len(), want.len(), "{}", case.name);
        // `fp4.cu`'s MXFP4 table decodes code 8 (-0) as +0: equal values, other bits
        let signed_zero = k == "mxfp4";
        for (j, (g, e)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == e.to_bits() || (signed_zero && *g == 0.0 && *e == 0.0),
                "{} ({k}): value {j} is {g:e}, the CPU says {e:e}",
                case.name
            );
        }
        if case.gemv {
            let n = 3;
            let x = activations(n, w.cols, 100 + i as u64);
            let got = host_gemv(&exe, tmp.path(), &w, &x, n);
            let cpu = llmq_engine::Cpu;
            let want = cpu.matmul(&cpu.upload_weight(w.clone()), &x, n);
            let rel = rel_err(&got, &want);
            assert!(
                rel < 1e-6,
                "{} ({k}): product differs by {rel:.2e}",
                case.name
            );
            // the unit kernels (`gemv_*` for batches, `gemv1_*` for one row)
            for (which, got) in
                ["batch", "one-row"]
                    .iter()
                    .zip(host_gemvu(&exe, tmp.path(), &w, &x, n))
            {
                let rel = rel_err(&got, &want);
                assert!(
                    rel < 1e-6,
                    "{} ({k}), {which} unit kernel: product differs by {rel:.2e}",
                    case.name
                );
            }
        }
    }
    let all: Vec<String> = cuda_kernels();
    for k in &all {
        assert!(seen.contains(k), "no case runs {k}");
    }
}

/// Every `gemv_*` suffix of `fp_ct.cu`, and MXFP4's.
fn cuda_kernels() -> Vec<String> {
    llmq_engine::backend::cuda::fp_kernel_names()
        .filter_map(|n| n.strip_prefix("gemv_").map(str::to_string))
        .chain(["mxfp4".to_string()])
        .collect()
}

#[test]
fn rotation_kernel_rotates_as_the_cpu_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(exe) = harness(tmp.path()) else {
        return;
    };
    let cols = 512;
    let mut x = activations(4, cols, 7);
    // edge values: zeros, huge, subnormal, alternating signs
    x[100] = 3.0e37;
    x[101] = -2.5e37;
    x[200] = f32::from_bits(5);
    x[201] = -f32::from_bits(0x0070_0000);
    x[512..576].iter_mut().for_each(|v| *v = 0.0);
    x[700..764]
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = if i % 2 == 0 { 1.0 } else { -1.0 });
    for b in [1usize, 2, 4, 16, 32, 64, 128, 256, 512] {
        let mut want = x.clone();
        llmq_kernels::rotation::hadamard_blocks(&mut want, b);
        let (inp, out) = (tmp.path().join("x.bin"), tmp.path().join("y.bin"));
        std::fs::write(&inp, f32_bytes(&x)).unwrap();
        // the factor `backend/cuda/rotation.rs` passes
        let norm = 1.0f32 / (b as f32).sqrt();
        let args = [
            "rot".to_string(),
            inp.display().to_string(),
            out.display().to_string(),
            x.len().to_string(),
            b.to_string(),
            norm.to_bits().to_string(),
        ];
        run(&exe, &args);
        let got = floats(&out);
        for (j, (g, e)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == e.to_bits(),
                "block {b}: value {j} is {g:e}, the CPU says {e:e}"
            );
        }
    }
    // a rotated NVFP4 module (MR-GPTQ, H64): rotation then the GEMV, against the CPU
    // engine's product of the rotated matrix
    let case = &cases()[0];
    let w = case.matrix().with_input_rotation(64).unwrap();
    let mut xr = activations(2, w.cols, 11);
    let cpu = llmq_engine::Cpu;
    let want = cpu.matmul(&cpu.upload_weight(w.clone()), &xr, 2);
    llmq_kernels::rotation::hadamard_blocks(&mut xr, 64);
    let got = host_gemv(&exe, tmp.path(), &w, &xr, 2);
    let rel = rel_err(&got, &want);
    assert!(rel < 1e-6, "rotated NVFP4: product differs by {rel:.2e}");
}
