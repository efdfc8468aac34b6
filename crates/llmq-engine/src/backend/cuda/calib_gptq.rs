//! The GPTQ solve of one weight on the device ([`CalibGpu::gptq`]): host-side
//! preparation from the Hessian's diagonal (dead inputs, grids, act-order, dampening,
//! as `llmq_calib::gptq` does them), the inverse Cholesky factor on the device with
//! the dampening retries, then the column loop block by block with lazy `Sgemm`
//! updates, and the codes back in the original column order.

use super::{
    blas_ok, dev, finish_factor, grid, CalibGpu, DeviceHessian, GptqFail, GptqOut, GptqParams,
    CHOL_BLOCK, GPTQ_BLOCK,
};
use crate::error::Result;
use cudarc::cublas::sys;
use cudarc::driver::{CudaSlice, LaunchConfig};
use half::f16;
use llmq_hfquant::{rtn, IntQuantized};

/// `rtn::group_params` as (f16 bits, zero).
fn params(v: &[f32], bits: u8, sym: bool) -> (u16, u8) {
    let (s, z) = rtn::group_params(v, bits, sym);
    (s.to_bits(), z)
}

impl CalibGpu {
    /// GPTQ of `w` (`[rows, n]` row-major, on the host) against `h`.
    pub fn gptq(
        &self,
        w: &[f32],
        rows: usize,
        n: usize,
        h: &DeviceHessian,
        p: &GptqParams,
    ) -> std::result::Result<GptqOut, GptqFail> {
        if !matches!(p.bits, 2 | 3 | 4 | 8) || p.group_size == Some(0) {
            return Err(GptqFail::Invalid(format!(
                "bits {} / group size {:?}",
                p.bits, p.group_size
            )));
        }
        if n == 0 || rows == 0 || w.len() != rows * n || h.cols != n {
            return Err(GptqFail::Invalid(format!(
                "weight of {} values as [{rows}, {n}] against a Hessian of {} inputs",
                w.len(),
                h.cols
            )));
        }
        if !w.iter().all(|v| v.is_finite()) {
            return Err(GptqFail::NonFinite("weight"));
        }
        let f = finish_factor(h.n_tokens);
        let mut diag: Vec<f64> = {
            let d = self.zeros::<f64>(n)?;
            self.launch(
                "calib_diag",
                grid(n),
                &[&self.ptr(&h.xtx), &self.ptr(&d), &(n as i32)],
            )?;
            self.download(&d, n)?.iter().map(|v| v * f).collect()
        };
        if !diag.iter().all(|v| v.is_finite()) {
            return Err(GptqFail::NonFinite("Hessian"));
        }
        let mut w = w.to_vec();
        let channel: Option<Vec<(u16, u8)>> = match p.group_size {
            None => Some(
                (0..rows)
                    .map(|o| params(&w[o * n..(o + 1) * n], p.bits, p.sym))
                    .collect(),
            ),
            Some(_) => None,
        };
        for (i, d) in diag.iter_mut().enumerate() {
            if *d == 0.0 {
                *d = 1.0;
                for o in 0..rows {
                    w[o * n + i] = 0.0;
                }
            }
        }
        let gs = p.group_size.unwrap_or(n);
        let n_groups = match p.group_size {
            Some(g) => n.div_ceil(g),
            None => 1,
        };
        let statics: Option<Vec<(u16, u8)>> = match p.group_size {
            Some(g) if p.static_groups => Some(
                (0..rows)
                    .flat_map(|o| (0..n_groups).map(move |k| (o, k)))
                    .map(|(o, k)| {
                        let cols = k * g..((k + 1) * g).min(n);
                        params(&w[o * n + cols.start..o * n + cols.end], p.bits, p.sym)
                    })
                    .collect(),
            ),
            _ => None,
        };
        let perm: Vec<usize> = if p.desc_act {
            let mut v: Vec<usize> = (0..n).collect();
            v.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]));
            v
        } else {
            (0..n).collect()
        };
        let wp: Vec<f32> = if p.desc_act {
            let mut wp = vec![0.0f32; rows * n];
            for o in 0..rows {
                for (i, &c) in perm.iter().enumerate() {
                    wp[o * n + i] = w[o * n + c];
                }
            }
            wp
        } else {
            w
        };
        let mean_diag = perm.iter().map(|&c| diag[c]).sum::<f64>() / n as f64;
        let perm32: Vec<u32> = perm.iter().map(|&c| c as u32).collect();
        let perm_d = self.upload(&perm32)?;

        // U with the dampening retries
        let mut damp_percent = p.damp_percent;
        let u = loop {
            match self.upper_inverse_factor(h, &perm_d, n, f, damp_percent * mean_diag)? {
                Ok(u) => break u,
                Err(column) => {
                    let next = damp_percent * 10.0;
                    if next > p.max_damp_percent * (1.0 + 1e-9) {
                        return Err(GptqFail::NotPositiveDefinite {
                            damp_percent,
                            column: perm[column],
                        });
                    }
                    damp_percent = next;
                }
            }
        };

        // the grids known up front, and the running grid of every row
        let mut scales = vec![f16::ZERO; rows * n_groups];
        let mut zeros = vec![0u8; rows * n_groups];
        let mut cur_scale = vec![f16::ONE.to_bits(); rows];
        let mut cur_zero = vec![0i32; rows];
        if let Some(cp) = &channel {
            for (o, &(s, z)) in cp.iter().enumerate() {
                scales[o] = f16::from_bits(s);
                zeros[o] = z;
                cur_scale[o] = s;
                cur_zero[o] = z as i32;
            }
        }
        let (st_scale, st_zero): (Vec<u16>, Vec<u8>) = match &statics {
            Some(sp) => {
                for (i, &(s, z)) in sp.iter().enumerate() {
                    scales[i] = f16::from_bits(s);
                    zeros[i] = z;
                }
                sp.iter().copied().unzip()
            }
            None => (Vec::new(), Vec::new()),
        };
        let mode: i32 = match (p.group_size, &statics) {
            (None, _) => 0,
            (Some(_), Some(_)) => 2,
            (Some(_), None) => 1,
        };
        let mut wp_d = self.upload(&wp)?;
        drop(wp);
        let st_scale_d = self.upload(&st_scale)?;
        let st_zero_d = self.upload(&st_zero)?;
        let cur_scale_d = self.upload(&cur_scale)?;
        let cur_zero_d = self.upload(&cur_zero)?;
        let qp_d = self.zeros::<u8>(rows * n)?;
        let err1_d = self.zeros::<f32>(rows * GPTQ_BLOCK)?;
        let scales_d = self.zeros::<u16>(rows * n_groups)?;
        let zeros_d = self.zeros::<u8>(rows * n_groups)?;
        let loss_d = self.zeros::<f64>(rows)?;
        let row_cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(128) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut i1 = 0;
        while i1 < n {
            let i2 = (i1 + GPTQ_BLOCK).min(n);
            let count = i2 - i1;
            self.launch(
                "calib_gptq_block",
                row_cfg,
                &[
                    &self.ptr(&wp_d),
                    &self.ptr(&u),
                    &(n as i32),
                    &(rows as i32),
                    &(i1 as i32),
                    &(count as i32),
                    &(p.bits as i32),
                    &mode,
                    &(gs as i32),
                    &(p.sym as i32),
                    &self.ptr(&perm_d),
                    &self.ptr(&st_scale_d),
                    &self.ptr(&st_zero_d),
                    &(n_groups as i32),
                    &self.ptr(&cur_scale_d),
                    &self.ptr(&cur_zero_d),
                    &self.ptr(&qp_d),
                    &self.ptr(&err1_d),
                    &self.ptr(&scales_d),
                    &self.ptr(&zeros_d),
                    &self.ptr(&loss_d),
                ],
            )?;
            if i2 < n {
                self.lazy_update(&mut wp_d, &u, &err1_d, rows, n, i1, i2)?;
            }
            i1 = i2;
        }
        drop(u);
        let qp = self.download(&qp_d, rows * n)?;
        let loss: f64 = self.download(&loss_d, rows)?.iter().sum();
        if mode == 1 {
            scales = self
                .download(&scales_d, rows * n_groups)?
                .into_iter()
                .map(f16::from_bits)
                .collect();
            zeros = self.download(&zeros_d, rows * n_groups)?;
        }

        // back to the original column order
        let (q, g_idx) = if !p.desc_act {
            (qp, None)
        } else {
            let mut q = vec![0u8; rows * n];
            for o in 0..rows {
                for (i, &c) in perm.iter().enumerate() {
                    q[o * n + c] = qp[o * n + i];
                }
            }
            let mut g = vec![0u32; n];
            if p.group_size.is_some() {
                for (i, &c) in perm.iter().enumerate() {
                    g[c] = if p.static_groups { c / gs } else { i / gs } as u32;
                }
            }
            (q, Some(g))
        };
        Ok(GptqOut {
            quantized: IntQuantized {
                bits: p.bits,
                group_size: p.group_size,
                symmetric: p.sym,
                out_features: rows,
                in_features: n,
                q,
                scales,
                zeros,
                g_idx,
            },
            loss,
            damp_percent,
        })
    }

    /// `U` (`[n, n]` row-major f32) with `(H' + damp·I)⁻¹ = UᵀU` for the permuted
    /// Hessian `H'`, or the failing column (processing order).
    fn upper_inverse_factor(
        &self,
        h: &DeviceHessian,
        perm: &CudaSlice<u32>,
        n: usize,
        f: f64,
        damp: f64,
    ) -> Result<std::result::Result<CudaSlice<f32>, usize>> {
        let nn = n * n;
        // SAFETY: every value is written by calib_build_r below.
        let r = dev("alloc", unsafe { self.be.stream().alloc::<f64>(nn) })?;
        self.launch(
            "calib_build_r",
            grid(nn),
            &[
                &self.ptr(&h.xtx),
                &self.ptr(perm),
                &(n as i32),
                &f,
                &damp,
                &self.ptr(&r),
            ],
        )?;
        let fail = self.upload(&[i32::MAX])?;
        let base = self.ptr(&r);
        let at = |i: usize, j: usize| base + 8 * (i + j * n) as u64;
        let blas = *self.blas.handle();
        let one_block = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut k0 = 0;
        while k0 < n {
            let kb = CHOL_BLOCK.min(n - k0);
            self.launch(
                "calib_potf2_block",
                one_block,
                &[
                    &at(k0, k0),
                    &(n as i32),
                    &(kb as i32),
                    &(k0 as i32),
                    &self.ptr(&fail),
                ],
            )?;
            let m = n - k0 - kb;
            if m > 0 {
                let (one, minus) = (1.0f64, -1.0f64);
                // A21 := A21 · L11⁻ᵀ
                // SAFETY: the views lie inside r ([n, n], leading dimension n).
                let s = unsafe {
                    sys::cublasDtrsm_v2(
                        blas,
                        sys::cublasSideMode_t::CUBLAS_SIDE_RIGHT,
                        sys::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER,
                        sys::cublasOperation_t::CUBLAS_OP_T,
                        sys::cublasDiagType_t::CUBLAS_DIAG_NON_UNIT,
                        m as i32,
                        kb as i32,
                        &one,
                        at(k0, k0) as *const f64,
                        n as i32,
                        at(k0 + kb, k0) as *mut f64,
                        n as i32,
                    )
                };
                blas_ok("Dtrsm", s)?;
                // A22 -= A21 · A21ᵀ (lower)
                // SAFETY: as above.
                let s = unsafe {
                    sys::cublasDsyrk_v2(
                        blas,
                        sys::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER,
                        sys::cublasOperation_t::CUBLAS_OP_N,
                        m as i32,
                        kb as i32,
                        &minus,
                        at(k0 + kb, k0) as *const f64,
                        n as i32,
                        &one,
                        at(k0 + kb, k0 + kb) as *mut f64,
                        n as i32,
                    )
                };
                blas_ok("Dsyrk", s)?;
            }
            k0 += kb;
        }
        let failed = self.download(&fail, 1)?[0];
        if failed != i32::MAX {
            return Ok(Err(n - 1 - failed as usize));
        }
        // L⁻¹ = L \ I
        // SAFETY: every value is written by calib_eye.
        let linv = dev("alloc", unsafe { self.be.stream().alloc::<f64>(nn) })?;
        self.launch("calib_eye", grid(nn), &[&self.ptr(&linv), &(n as i32)])?;
        let one = 1.0f64;
        // SAFETY: r and linv hold n·n values.
        let s = unsafe {
            sys::cublasDtrsm_v2(
                blas,
                sys::cublasSideMode_t::CUBLAS_SIDE_LEFT,
                sys::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER,
                sys::cublasOperation_t::CUBLAS_OP_N,
                sys::cublasDiagType_t::CUBLAS_DIAG_NON_UNIT,
                n as i32,
                n as i32,
                &one,
                base as *const f64,
                n as i32,
                self.ptr(&linv) as *mut f64,
                n as i32,
            )
        };
        blas_ok("Dtrsm", s)?;
        drop(r);
        // SAFETY: every value is written by calib_u.
        let u = dev("alloc", unsafe { self.be.stream().alloc::<f32>(nn) })?;
        let ufail = self.upload(&[i32::MAX])?;
        self.launch(
            "calib_u",
            grid(nn),
            &[
                &self.ptr(&linv),
                &(n as i32),
                &self.ptr(&u),
                &self.ptr(&ufail),
            ],
        )?;
        let failed = self.download(&ufail, 1)?[0];
        drop(linv);
        if failed != i32::MAX {
            return Ok(Err(failed as usize));
        }
        Ok(Ok(u))
    }

    /// `W[:, i2..] −= Err · U[i1..i2, i2..]` (row-major W and U, Err `[rows, i2 − i1]`).
    #[allow(clippy::too_many_arguments)]
    fn lazy_update(
        &self,
        wp: &mut CudaSlice<f32>,
        u: &CudaSlice<f32>,
        err1: &CudaSlice<f32>,
        rows: usize,
        n: usize,
        i1: usize,
        i2: usize,
    ) -> Result<()> {
        let (count, rest) = (i2 - i1, n - i2);
        let (minus, one) = (-1.0f32, 1.0f32);
        // Column-major views: U[i1.., i2..] read with leading dimension n is its
        // transpose [rest, count]; Err (ld count) is Errᵀ [count, rows]; W[:, i2..]
        // (ld n) is its transpose [rest, rows]: Wᵀ −= Uᵀ·Errᵀ.
        // SAFETY: the three views lie inside u, err1 and wp.
        let s = unsafe {
            sys::cublasSgemm_v2(
                *self.blas.handle(),
                sys::cublasOperation_t::CUBLAS_OP_N,
                sys::cublasOperation_t::CUBLAS_OP_N,
                rest as i32,
                rows as i32,
                count as i32,
                &minus,
                (self.ptr(u) + 4 * (i1 * n + i2) as u64) as *const f32,
                n as i32,
                self.ptr(err1) as *const f32,
                count as i32,
                &one,
                (self.ptr(wp) + 4 * i2 as u64) as *mut f32,
                n as i32,
            )
        };
        blas_ok("Sgemm", s)
    }
}
