//! EXL3 trellis-coded Linears on the GPU (`kernels/exl3.cu`; exllamav3 1.x, QTIP arXiv
//! 2406.11235): the band-ordered trellis words are uploaded as the CPU keeps them
//! (`llmq_kernels::trellis`), with `suh`, `svh` and the output order. A product is three
//! launches — `exl3_in` (x ← had128(suh ⊙ x), the CPU's butterflies), the decode-in-
//! registers GEMV `gemv_exl3_*_k<K>` (up to 8 rows per block row; prompts run it in
//! 8-row passes), `exl3_out` (had128, ⊙ svh) — and a column gather for llama's q/k row
//! order. The codebook value of a state is computed (`alu`: exllamav3's arithmetic) or
//! read from a 65536-entry fp16 table (`lut`, the default; 128 KiB per codebook, uploaded
//! once per device), chosen by `LLMQ_EXL3_DECODE=alu|lut` or [`Cuda::set_exl3_decode`].

use super::buffers::{ok, CudaBuf};
use super::ops::launch;
use super::Cuda;
use cudarc::driver::{CudaSlice, LaunchConfig};
use llmq_kernels::{Codebook, WeightMatrix, WeightType};
use std::sync::Arc;

/// Matches `EXL3_SPLIT` / `EXL3_ROWS` in `kernels/exl3.cu`.
const SPLIT: u32 = 8;
const ROWS: usize = 8;

/// How the GEMV turns a trellis state into its codebook value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exl3Decode {
    /// the codebook's arithmetic (exllamav3's `codebook.cuh`)
    Alu,
    /// one load from the codebook's fp16 table
    Lut,
}

impl Exl3Decode {
    /// `LLMQ_EXL3_DECODE` (`alu` or `lut`), `lut` when unset.
    pub fn from_env() -> Exl3Decode {
        match std::env::var("LLMQ_EXL3_DECODE").as_deref() {
            Ok("alu") => Exl3Decode::Alu,
            _ => Exl3Decode::Lut,
        }
    }
}

/// A trellis weight's device-side companions.
#[derive(Clone)]
pub struct Exl3Dev {
    pub(super) k: u8,
    pub(super) codebook: Codebook,
    pub(super) suh: Arc<CudaSlice<f32>>,
    pub(super) svh: Arc<CudaSlice<f32>>,
    /// row r of the product is coded row order[r]
    pub(super) order: Option<Arc<CudaSlice<i32>>>,
    pub(super) lut: Arc<CudaSlice<u16>>,
}

/// The GEMV kernel of a codebook, K and decoder.
pub fn gemv_kernel(k: u8, codebook: Codebook, decode: Exl3Decode) -> String {
    match decode {
        Exl3Decode::Lut => format!("gemv_exl3_lut_k{k}"),
        Exl3Decode::Alu => format!("gemv_exl3_alu_{}_k{k}", codebook.name()),
    }
}

/// Every kernel of `kernels/exl3.cu` (the module loads them).
pub fn kernel_names() -> impl Iterator<Item = String> {
    let gemv = (1..=8u8).flat_map(|k| {
        [Codebook::Inst3, Codebook::Mcg, Codebook::Mul1]
            .into_iter()
            .map(move |cb| gemv_kernel(k, cb, Exl3Decode::Alu))
            .chain(std::iter::once(gemv_kernel(
                k,
                Codebook::Mul1,
                Exl3Decode::Lut,
            )))
    });
    ["exl3_in".to_string(), "exl3_out".to_string()]
        .into_iter()
        .chain(gemv)
}

/// The codebook's 65536 values as fp16 bits (exact: every value is an fp16).
pub fn lut_bits(codebook: Codebook) -> Vec<u16> {
    (0..=u16::MAX)
        .map(|s| codebook.decode(s).to_bits())
        .collect()
}

impl Cuda {
    /// The device's fp16 table of `codebook`, uploaded on first use.
    fn exl3_lut(&self, codebook: Codebook) -> Arc<CudaSlice<u16>> {
        let mut luts = self.inner.exl3_luts.lock().expect("exl3 tables");
        if let Some((_, l)) = luts.iter().find(|(c, _)| *c == codebook) {
            return l.clone();
        }
        let l = Arc::new(ok(
            "upload",
            self.stream().clone_htod(&lut_bits(codebook)[..]),
        ));
        luts.push((codebook, l.clone()));
        l
    }

    /// The companions of trellis weight `w` on the device.
    pub(super) fn exl3_upload(&self, w: &WeightMatrix) -> Option<Exl3Dev> {
        let (WeightType::Trellis(t), Some(s)) = (w.ty, w.trellis.as_ref()) else {
            return None;
        };
        let st = self.stream();
        Some(Exl3Dev {
            k: t.k,
            codebook: t.codebook,
            suh: Arc::new(ok("upload", st.clone_htod(&s.suh[..]))),
            svh: Arc::new(ok("upload", st.clone_htod(&s.svh[..]))),
            order: s.out_order.as_ref().map(|o| {
                let v: Vec<i32> = o.iter().map(|&r| r as i32).collect();
                Arc::new(ok("upload", st.clone_htod(&v[..])))
            }),
            lut: self.exl3_lut(t.codebook),
        })
    }

    /// Which decoder the trellis products use from now on.
    pub fn set_exl3_decode(&self, d: Exl3Decode) {
        let v = d == Exl3Decode::Lut;
        self.inner
            .exl3_lut_on
            .store(v, std::sync::atomic::Ordering::Relaxed);
    }

    /// The decoder of the trellis products.
    pub fn exl3_decode(&self) -> Exl3Decode {
        if self
            .inner
            .exl3_lut_on
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            Exl3Decode::Lut
        } else {
            Exl3Decode::Alu
        }
    }

    /// `x ← had128(suh ⊙ x)` for `n` rows of `cols`.
    pub(super) fn exl3_rotate_in(
        &self,
        e: &Exl3Dev,
        x: &CudaBuf,
        n: usize,
        cols: usize,
    ) -> CudaBuf {
        let xh = self.buf(n * cols);
        let cfg = LaunchConfig {
            grid_dim: ((n * cols / 128) as u32, 1, 1),
            block_dim: (64, 1, 1),
            shared_mem_bytes: 0,
        };
        let (c, norm) = (cols as i32, 1.0f32 / 128f32.sqrt());
        launch!(self, "exl3_in", cfg, &x.data, &*e.suh, &xh.data, &c, &norm);
        xh
    }

    /// The coded product `xh·Ŵ` (`n` rows of `rows`) into `y`.
    pub(super) fn exl3_gemv(
        &self,
        words: &CudaSlice<u8>,
        e: &Exl3Dev,
        xh: &CudaBuf,
        n: usize,
        (rows, cols): (usize, usize),
        y: &CudaBuf,
    ) {
        let cfg = LaunchConfig {
            grid_dim: ((rows / 16) as u32, n.div_ceil(ROWS) as u32, 1),
            block_dim: (32 * SPLIT, 1, 1),
            shared_mem_bytes: 0,
        };
        let name = gemv_kernel(e.k, e.codebook, self.exl3_decode());
        let (c, r, nn) = (cols as i32, rows as i32, n as i32);
        launch!(self, &name, cfg, words, &*e.lut, &xh.data, &y.data, &c, &r, &nn);
    }

    /// `y ← svh ⊙ had128(y)` in place, then the output order.
    pub(super) fn exl3_rotate_out(
        &self,
        e: &Exl3Dev,
        y: CudaBuf,
        n: usize,
        rows: usize,
    ) -> CudaBuf {
        let cfg = LaunchConfig {
            grid_dim: ((n * rows / 128) as u32, 1, 1),
            block_dim: (64, 1, 1),
            shared_mem_bytes: 0,
        };
        let (r, norm) = (rows as i32, 1.0f32 / 128f32.sqrt());
        launch!(self, "exl3_out", cfg, &y.data, &*e.svh, &r, &norm);
        match &e.order {
            Some(o) => self.permute_cols(&y, o, n, rows),
            None => y,
        }
    }
}
