//! EXL3's GPU decoder and GEMV (`kernels/exl3.cu`) without a GPU: the decoding section
//! compiled for the host (a C++ compiler; the fp16 add / fma and `dp4a` / funnel-shift
//! shims round as the hardware does), driven lane by lane and warp by warp in the kernel's
//! order. At every K (1…8) and codebook (3INST, MCG, MUL1), for both decoders (`alu`: the
//! codebook's arithmetic; `lut`: the uploaded fp16 table, `cuda::exl3_lut_bits`): each
//! lane's 8 values equal the CPU's tile decode (`llmq_trellis::bands::decode_tile_words`)
//! bit for bit at their tile positions, and the whole product — `exl3_in`'s rotation, the
//! split-K GEMV, `exl3_out`'s rotation and scales — equals the CPU engine's fused trellis
//! product (`llmq_kernels::matmul` on a `WeightType::Trellis` matrix) within 1e-6
//! relative. NVRTC compiling the file is `cuda_backend.rs`'s `nvrtc_compiles_every_kernel`.

mod cuda_host;
use cuda_host::*;
use half::f16;
use llmq_engine::backend::cuda;
use llmq_kernels::{Codebook, WeightMatrix};
use llmq_trellis::bands::decode_tile_words;
use std::path::Path;

const PRELUDE: &str = r#"
#include <string>
static u32 __funnelshift_l(u32 lo, u32 hi, u32 sh) { sh &= 31; return sh ? (hi << sh) | (lo >> (32 - sh)) : hi; }
static u32 __dp4a(u32 a, u32 b, u32 c) {
    for (int i = 0; i < 4; i++) c += ((a >> (8 * i)) & 255) * ((b >> (8 * i)) & 255);
    return c;
}
static double f16d(u16 b) { _Float16 h; memcpy(&h, &b, 2); return (double)h; }
static u16 d2f16(double d) { _Float16 h = (_Float16)d; u16 b; memcpy(&b, &h, 2); return b; }
// one rounding of the exact result, as add.rn.f16 / fma.rn.f16
static u16 exl3_hadd(u32 a, u32 b) { return d2f16(f16d((u16)a) + f16d((u16)b)); }
static u16 exl3_hfma(u16 a, u16 b, u16 c) { return d2f16(f16d(a) * f16d(b) + f16d(c)); }
static u16 exl3_ld_lut(const u16* p) { return *p; }
"#;

/// `deq K CB dir ntiles`: every tile's 256 values by the lanes (row-major tile order);
/// `gemv K CB dir rows cols n`: y = svh ⊙ had(had(suh ⊙ x)·Ŵ) as the three kernels
/// compute it.
const MAIN: &str = r#"
static std::vector<u8> rd(const std::string& p) {
    FILE* f = fopen(p.c_str(), "rb");
    if (!f) exit(3);
    fseek(f, 0, SEEK_END); long n = ftell(f); fseek(f, 0, SEEK_SET);
    std::vector<u8> v(n);
    if (fread(v.data(), 1, n, f) != (size_t)n) exit(3);
    fclose(f);
    return v;
}
static void wr(const std::string& p, const float* v, size_t n) {
    FILE* f = fopen(p.c_str(), "wb");
    fwrite(v, 4, n, f);
    fclose(f);
}
static void had128(float* v, float norm) {
    for (int len = 1; len < 128; len *= 2)
        for (int t = 0; t < 64; t++) hadamard_butterfly(v, len, t);
    for (int i = 0; i < 128; i++) v[i] = v[i] * norm;
}
template <int K, int CB> int deq(const std::string& dir, int ntiles) {
    std::vector<u8> wb = rd(dir + "/w.bin"), lb = rd(dir + "/lut.bin");
    const u32* w = (const u32*)wb.data();
    const u16* lut = (const u16*)lb.data();
    std::vector<float> out((size_t)ntiles * 256);
    for (int t = 0; t < ntiles; t++)
        for (int lane = 0; lane < 32; lane++) {
            u32 st[8];
            exl3_lane_states<K>(w + (size_t)t * 8 * K, lane, st);
            int r0 = (lane % 4) * 2, rows[4] = {r0, r0 + 1, r0 + 8, r0 + 9};
            for (int q = 0; q < 8; q++) {
                int r = rows[q % 4], c = lane / 4 + (q < 4 ? 0 : 8);
                out[(size_t)t * 256 + r * 16 + c] = exl3_value<CB>(st[q], lut);
            }
        }
    wr(dir + "/y.bin", out.data(), out.size());
    return 0;
}
template <int K, int CB> int gemv(const std::string& dir, int rows, int cols, int n) {
    std::vector<u8> wb = rd(dir + "/w.bin"), lb = rd(dir + "/lut.bin"), xb = rd(dir + "/x.bin");
    std::vector<u8> sub = rd(dir + "/suh.bin"), svb = rd(dir + "/svh.bin");
    const u32* words = (const u32*)wb.data();
    const u16* lut = (const u16*)lb.data();
    const float *x = (const float*)xb.data(), *suh = (const float*)sub.data(), *svh = (const float*)svb.data();
    float norm = 1.0f / sqrtf(128.0f);
    // exl3_in
    std::vector<float> xh((size_t)n * cols);
    for (size_t b = 0; b < xh.size(); b += 128) {
        float v[128];
        for (int i = 0; i < 128; i++) v[i] = x[b + i] * suh[(b % cols) + i];
        had128(v, norm);
        memcpy(&xh[b], v, sizeof v);
    }
    // the GEMV: block (band, pass), EXL3_SPLIT warps of 32 lanes
    std::vector<float> y((size_t)n * rows);
    int tk = cols / 16;
    for (int first = 0; first < n; first += EXL3_ROWS) {
        int nr = n - first < EXL3_ROWS ? n - first : EXL3_ROWS;
        const float* xp = xh.data() + (size_t)first * cols;
        for (int band = 0; band < rows / 16; band++) {
            const u32* bw = words + (size_t)band * tk * 8 * K;
            float part[EXL3_SPLIT][EXL3_ROWS][16];
            for (int warp = 0; warp < EXL3_SPLIT; warp++) {
                float acc[32][EXL3_ROWS][2] = {};
                for (int lane = 0; lane < 32; lane++)
                    for (int i = warp; i < tk; i += EXL3_SPLIT)
                        exl3_lane_tile<K, CB>(bw + (size_t)i * 8 * K, lane, lut, xp + i * 16, cols, nr, acc[lane]);
                for (int o = 1; o <= 2; o *= 2) {
                    float t[32][EXL3_ROWS][2];
                    for (int l = 0; l < 32; l++)
                        for (int r = 0; r < EXL3_ROWS; r++)
                            for (int h = 0; h < 2; h++) t[l][r][h] = acc[l][r][h] + acc[l ^ o][r][h];
                    memcpy(acc, t, sizeof t);
                }
                for (int lane = 0; lane < 32; lane += 4)
                    for (int r = 0; r < nr; r++) {
                        part[warp][r][lane / 4] = acc[lane][r][0];
                        part[warp][r][lane / 4 + 8] = acc[lane][r][1];
                    }
            }
            for (int r = 0; r < nr; r++)
                for (int c = 0; c < 16; c++) {
                    float s = 0.0f;
                    for (int w = 0; w < EXL3_SPLIT; w++) s += part[w][r][c];
                    y[(size_t)(first + r) * rows + band * 16 + c] = s;
                }
        }
    }
    // exl3_out
    for (size_t b = 0; b < y.size(); b += 128) {
        float v[128];
        memcpy(v, &y[b], sizeof v);
        for (int len = 1; len < 128; len *= 2)
            for (int t = 0; t < 64; t++) hadamard_butterfly(v, len, t);
        for (int i = 0; i < 128; i++) y[b + i] = v[i] * norm * svh[(b % rows) + i];
    }
    wr(dir + "/y.bin", y.data(), y.size());
    return 0;
}
int main(int argc, char** argv) {
    std::string mode = argv[1], dir = argv[4];
    int k = atoi(argv[2]), cb = atoi(argv[3]);
#define CASE(K, CB) if (k == K && cb == CB) return mode == "deq" ? deq<K, CB>(dir, atoi(argv[5])) : gemv<K, CB>(dir, atoi(argv[5]), atoi(argv[6]), atoi(argv[7]));
#define KS(CB) CASE(1, CB) CASE(2, CB) CASE(3, CB) CASE(4, CB) CASE(5, CB) CASE(6, CB) CASE(7, CB) CASE(8, CB)
    KS(0) KS(1) KS(2) KS(3)
    return 2;
}
"#;

fn harness(dir: &Path) -> Option<std::path::PathBuf> {
    let rot = kernel_source("rotation.cu");
    let rot_bf = &rot[..rot.find("// ---- rotation: kernels").unwrap()];
    let src = kernel_source("exl3.cu");
    let dec = &src
        [src.find("// ---- exl3: decoding").unwrap()..src.find("// ---- exl3: kernels").unwrap()];
    compile_for_host(
        dir,
        &format!("{rot_bf}{dec}"),
        &format!("{HOST_PRELUDE}{PRELUDE}"),
        MAIN,
    )
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

fn drive(exe: &Path, args: &[String]) {
    let st = std::process::Command::new(exe).args(args).status().unwrap();
    assert!(st.success(), "{args:?}: harness exit {st}");
}

const CODEBOOKS: [Codebook; 3] = [Codebook::Inst3, Codebook::Mcg, Codebook::Mul1];

#[test]
fn exl3_kernels_decode_and_multiply_as_the_cpu_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(exe) = harness(tmp.path()) else {
        return;
    };
    let d = tmp.path();
    let dir = d.display().to_string();
    let (rows, cols, n) = (256usize, 384usize, 3usize);
    let mut seed = 0x5eed_u64;
    for k in 1..=8u32 {
        for (ci, cb) in CODEBOOKS.into_iter().enumerate() {
            let trellis: Vec<i16> = (0..rows / 16 * cols / 16 * 16 * k as usize)
                .map(|_| (lcg(&mut seed) * 65536.0) as i32 as i16)
                .collect();
            let suh: Vec<f16> = (0..cols)
                .map(|_| f16::from_f32(lcg(&mut seed) * 0.2))
                .collect();
            let svh: Vec<f16> = (0..rows)
                .map(|_| f16::from_f32(0.5 + lcg(&mut seed)))
                .collect();
            let w = WeightMatrix::from_trellis(&trellis, &suh, &svh, k, cb).unwrap();
            let sides = w.trellis.clone().unwrap();
            std::fs::write(d.join("w.bin"), w.data.as_slice()).unwrap();
            let lut: Vec<u8> = cuda::exl3_lut_bits(cb)
                .iter()
                .flat_map(|b| b.to_le_bytes())
                .collect();
            std::fs::write(d.join("lut.bin"), lut).unwrap();
            let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed) * 4.0).collect();
            std::fs::write(d.join("x.bin"), f32_bytes(&x)).unwrap();
            std::fs::write(d.join("suh.bin"), f32_bytes(&sides.suh)).unwrap();
            std::fs::write(d.join("svh.bin"), f32_bytes(&sides.svh)).unwrap();
            let words = w.trellis_words();
            let per = 16 * k as usize;
            let ntiles = words.len() / per;
            let table = cb.shared_table();
            let mut want = vec![0f32; ntiles * 256];
            for (t, out) in want.chunks_exact_mut(256).enumerate() {
                let mut tile = [0f32; 256];
                decode_tile_words(&words[t * per..(t + 1) * per], k as usize, table, &mut tile);
                out.copy_from_slice(&tile);
            }
            let mut cpu = vec![0f32; n * rows];
            llmq_kernels::matmul(&w, &x, n, &mut cpu);
            // the codebook's arithmetic (kernel `alu`, CB = ci) and the table (CB = 3)
            for (variant, c) in [("alu", ci), ("lut", 3)] {
                let a = |v: &[String]| {
                    [v[0].clone(), k.to_string(), c.to_string(), dir.clone()]
                        .into_iter()
                        .chain(v[1..].iter().cloned())
                        .collect::<Vec<_>>()
                };
                drive(&exe, &a(&["deq".into(), ntiles.to_string()]));
                let got = floats(&d.join("y.bin"));
                for (j, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        e.to_bits(),
                        "K={k} {} {variant}: tile value {j} is {g}, the CPU decodes {e}",
                        cb.name()
                    );
                }
                drive(
                    &exe,
                    &a(&[
                        "gemv".into(),
                        rows.to_string(),
                        cols.to_string(),
                        n.to_string(),
                    ]),
                );
                let y = floats(&d.join("y.bin"));
                let num: f64 = y
                    .iter()
                    .zip(&cpu)
                    .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                    .sum();
                let den: f64 = cpu.iter().map(|b| (*b as f64).powi(2)).sum();
                let rel = (num / den).sqrt();
                assert!(
                    rel < 1e-6,
                    "K={k} {} {variant}: product differs by {rel:.2e}",
                    cb.name()
                );
            }
            // the kernel names the backend launches for this weight
            assert!(cuda::exl3_kernel_names()
                .any(|n| n == cuda::exl3_gemv_kernel(k as u8, cb, cuda::Exl3Decode::Alu)));
        }
    }
}
