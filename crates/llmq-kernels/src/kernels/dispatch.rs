//! Which kernel computes which weight type: the activation format (ggml's `vec_dot_type`,
//! see `type_traits_cpu` in llama.cpp `ggml/src/ggml-cpu/ggml-cpu.c`) and the dot
//! product for the instruction set in use, one [`KernelRow`] per type in [`KERNELS`].
//! Types not listed here have no fast kernel and `matmul` falls back to the reference
//! path. A new kernel is one row here plus its dot product in a `dot_*` module.

use super::act_quant::Act;
use super::{
    dot_float as fl, dot_fp as fp, dot_fp4 as g4, dot_int as di, dot_kquants as kq,
    dot_legacy as lg, Isa,
};
#[cfg(target_arch = "x86_64")]
use super::{
    dot_float::avx2 as f2, dot_fp4::avx2 as g42, dot_kquants_avx2 as k2, dot_legacy::avx2 as l2,
};
#[cfg(target_arch = "x86_64")]
use super::{dot_kquants_avx512 as k5, dot_legacy_avx512 as x5, gemv_legacy512 as g5};
use crate::weight_type::{FpType, IntAct, IntType};
use llmq_formats::GgmlType;

/// One weight row against one activation row (both packed).
pub type DotFn = fn(&[u8], &[u8]) -> f32;
/// One weight row against four activation rows.
pub type Dot4Fn = fn(&[u8], [&[u8]; 4]) -> [f32; 4];
/// One weight row against eight activation rows in the group layout of
/// `dot_legacy::interleave8`.
pub type Dot8Fn = fn(&[u8], &[u8]) -> [f32; 8];
/// Consecutive weight rows against one activation row (decode), each row's result
/// that of the one-row `dot`.
#[cfg(target_arch = "x86_64")]
pub use super::gemv_legacy512::GemvFn;

/// A fast kernel for one weight type.
#[derive(Clone, Copy)]
pub struct Kernel {
    pub act: Act,
    pub dot: DotFn,
    /// The 4-token variant, where the instruction set has one.
    pub dot4: Option<Dot4Fn>,
    /// The 8-token variant (prompt processing), where there is one. Every variant gives
    /// each row exactly what `dot` gives it.
    pub dot8: Option<Dot8Fn>,
    /// The AVX-512 tiles (prompt processing), where the CPU has them and the type has
    /// one; same results as `dot`.
    #[cfg(target_arch = "x86_64")]
    pub tile: Option<Tile>,
    /// The multi-row one-token product (decode), where the CPU and type have one.
    #[cfg(target_arch = "x86_64")]
    pub gemv: Option<GemvFn>,
}

/// This layer's row of the type table: how `matmul` computes weights of `ty` from
/// packed blocks. A type without a row runs [`super::matmul_reference`] (dequantized
/// rows), so every row's type must also be in `llmq_quant::TYPES` (checked by a test).
#[derive(Clone, Copy)]
pub struct KernelRow {
    pub ty: GgmlType,
    /// The activation format (ggml's `vec_dot_type`).
    pub act: Act,
    /// The portable dot product.
    pub scalar: DotFn,
    /// The AVX2 one-row and four-row dot products.
    #[cfg(target_arch = "x86_64")]
    pub avx2: (DotFn, Dot4Fn),
    /// The AVX2 and AVX-VNNI eight-row kernels (prompt processing), where there are.
    #[cfg(target_arch = "x86_64")]
    pub dot8: Option<(Dot8Fn, Dot8Fn)>,
    /// The AVX-512 tiles, where there are.
    #[cfg(target_arch = "x86_64")]
    pub tile: Option<Tile>,
    /// The AVX-512 VNNI one-row dot product, where there is one.
    #[cfg(target_arch = "x86_64")]
    pub dot512: Option<DotFn>,
    /// The AVX-512 VNNI multi-row one-token product, where there is one.
    #[cfg(target_arch = "x86_64")]
    pub gemv512: Option<GemvFn>,
}

/// An AVX-512 tile family for prompt processing (`super::tiled`).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub enum Tile {
    /// Signed 32-value types: the row decoder of `tile_avx512`.
    Legacy(super::tile_avx512::DecodeFn),
    /// Q2_K and Q3_K on 16-bit products: `tile_wide` with the type's decoder.
    Wide(super::tile_wide::WideType),
    /// Q4_K, Q5_K, Q6_K and IQ4_XS on `vpdpbusd`: `tile_vnni` with the type's block decoder.
    Vnni(super::tile_vnni::VnniType),
}

#[cfg(target_arch = "x86_64")]
macro_rules! vnni {
    ($dec:ident, $block:ident, $mins:expr, $sub16:expr) => {
        Tile::Vnni(super::tile_vnni::VnniType {
            decode: super::tile_vnni::$dec,
            bytes: llmq_formats::blocks::$block::BYTES,
            mins: $mins,
            sub16: $sub16,
        })
    };
}

#[cfg(target_arch = "x86_64")]
macro_rules! wide {
    ($dec:ident, $extra:ident) => {
        Tile::Wide(super::tile_wide::WideType {
            decode: super::tile_wide_decode::$dec,
            extra: super::tile_wide::Extra::$extra,
        })
    };
}

macro_rules! row {
    ($ty:ident, $act:ident, $scalar:expr, avx2: $d:expr, $d4:expr
        $(, dot8: $d8:expr, $v8:expr)? $(, tile: $t:expr)? $(, dot512: $d5:expr)?
        $(, gemv512: $g5:expr)?) => {
        KernelRow {
            ty: GgmlType::$ty,
            act: Act::$act,
            scalar: $scalar,
            #[cfg(target_arch = "x86_64")]
            avx2: ($d, $d4),
            #[cfg(target_arch = "x86_64")]
            dot8: row!(@dot8 $($d8, $v8)?),
            #[cfg(target_arch = "x86_64")]
            tile: row!(@tile $($t)?),
            #[cfg(target_arch = "x86_64")]
            dot512: row!(@dot512 $($d5)?),
            #[cfg(target_arch = "x86_64")]
            gemv512: row!(@gemv512 $($g5)?),
        }
    };
    (@gemv512) => { None };
    (@gemv512 $g:expr) => { Some($g as GemvFn) };
    (@dot512) => { None };
    (@dot512 $d:expr) => { Some($d as DotFn) };
    (@tile) => { None };
    (@tile $t:expr) => { Some($t) };
    (@dot8) => { None };
    (@dot8 $d8:expr, $v8:expr) => { Some(($d8 as Dot8Fn, $v8 as Dot8Fn)) };
}

/// The weight types with a fast kernel, one row each (on every instruction set).
pub const KERNELS: &[KernelRow] = &[
    row!(F32, F32, fl::dot_f32, avx2: f2::dot_f32, f2::dot4_f32),
    row!(F16, F32, fl::dot_f16, avx2: f2::dot_f16, f2::dot4_f16),
    row!(BF16, F32, fl::dot_bf16, avx2: f2::dot_bf16, f2::dot4_bf16),
    row!(Q4_0, Q8_0, lg::dot_q4_0, avx2: l2::dot_q4_0, l2::dot4_q4_0,
        dot8: l2::dot8_q4_0, l2::dot8_vnni_q4_0, tile: Tile::Legacy(l2::offset_q4_0),
        dot512: x5::dot_q4_0, gemv512: g5::gemv_q4_0),
    row!(Q4_1, Q8_1, lg::dot_q4_1, avx2: l2::dot_q4_1, l2::dot4_q4_1,
        dot8: l2::dot8_q4_1, l2::dot8_vnni_q4_1),
    row!(Q5_0, Q8_0, lg::dot_q5_0, avx2: l2::dot_q5_0, l2::dot4_q5_0,
        dot8: l2::dot8_q5_0, l2::dot8_vnni_q5_0, tile: Tile::Legacy(l2::offset_q5_0),
        dot512: x5::dot_q5_0, gemv512: g5::gemv_q5_0),
    row!(Q5_1, Q8_1, lg::dot_q5_1, avx2: l2::dot_q5_1, l2::dot4_q5_1,
        dot8: l2::dot8_q5_1, l2::dot8_vnni_q5_1),
    row!(Q8_0, Q8_0, lg::dot_q8_0, avx2: l2::dot_q8_0, l2::dot4_q8_0,
        dot8: l2::dot8_q8_0, l2::dot8_vnni_q8_0, tile: Tile::Legacy(l2::offset_q8_0),
        dot512: x5::dot_q8_0, gemv512: g5::gemv_q8_0),
    row!(IQ4NL, Q8_0, lg::dot_iq4_nl, avx2: l2::dot_iq4_nl, l2::dot4_iq4_nl,
        dot8: l2::dot8_iq4_nl, l2::dot8_vnni_iq4_nl, tile: Tile::Legacy(l2::offset_iq4_nl),
        dot512: x5::dot_iq4_nl, gemv512: g5::gemv_iq4_nl),
    row!(MXFP4, Q8_0, lg::dot_mxfp4, avx2: l2::dot_mxfp4, l2::dot4_mxfp4,
        dot8: l2::dot8_mxfp4, l2::dot8_vnni_mxfp4, tile: Tile::Legacy(l2::offset_mxfp4),
        dot512: x5::dot_mxfp4, gemv512: g5::gemv_mxfp4),
    row!(NVFP4, Q8_0, g4::dot_nvfp4, avx2: g42::dot_nvfp4, g42::dot4_nvfp4,
        dot512: super::dot_fp4::avx512::dot_nvfp4),
    row!(Q2K, Q8K, kq::dot_q2_k, avx2: k2::dot_q2_k, k2::dot4_q2_k,
        tile: wide!(decode_q2_k, Mins16)),
    row!(Q3K, Q8K, kq::dot_q3_k, avx2: k2::dot_q3_k, k2::dot4_q3_k,
        tile: wide!(decode_q3_k, Offset4)),
    row!(Q4K, Q8K, kq::dot_q4_k, avx2: k2::dot_q4_k, k2::dot4_q4_k,
        tile: vnni!(decode_q4_k, BlockQ4K, true, false)),
    row!(Q5K, Q8K, kq::dot_q5_k, avx2: k2::dot_q5_k, k2::dot4_q5_k,
        tile: vnni!(decode_q5_k, BlockQ5K, true, false)),
    row!(Q6K, Q8K, kq::dot_q6_k, avx2: k2::dot_q6_k, k2::dot4_q6_k,
        tile: vnni!(decode_q6_k, BlockQ6K, false, true), dot512: k5::dot_q6_k),
    row!(IQ4XS, Q8K, kq::dot_iq4_xs, avx2: k2::dot_iq4_xs, k2::dot4_iq4_xs,
        tile: vnni!(decode_iq4_xs, BlockIq4Xs, false, false), dot512: k5::dot_iq4_xs),
];

/// The types of [`KERNELS`].
pub const FAST_TYPES: &[GgmlType] = &{
    let mut out = [GgmlType::F32; KERNELS.len()];
    let mut i = 0;
    while i < KERNELS.len() {
        out[i] = KERNELS[i].ty;
        i += 1;
    }
    out
};

/// Row index in [`KERNELS`] by type id (`u8::MAX`: none).
const ROW_OF_ID: [u8; 64] = {
    let mut idx = [u8::MAX; 64];
    let mut i = 0;
    while i < KERNELS.len() {
        idx[KERNELS[i].ty as usize] = i as u8;
        i += 1;
    }
    idx
};

/// The row of `ty`, if it has a fast kernel.
pub fn row(ty: GgmlType) -> Option<&'static KernelRow> {
    match ROW_OF_ID.get(ty as usize) {
        Some(&i) if i != u8::MAX => Some(&KERNELS[i as usize]),
        _ => None,
    }
}

/// The kernel for `ty` on `isa` (which the caller has checked is available).
pub fn kernel(ty: GgmlType, isa: Isa) -> Option<Kernel> {
    let r = row(ty)?;
    let scalar = Kernel {
        act: r.act,
        dot: r.scalar,
        dot4: None,
        dot8: None,
        #[cfg(target_arch = "x86_64")]
        tile: None,
        #[cfg(target_arch = "x86_64")]
        gemv: None,
    };
    match isa {
        Isa::Scalar => Some(scalar),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // AVX-VNNI's 8-row kernel where the CPU has it (same results, fewer
            // instructions), else AVX2's.
            let vnni = llmq_quant::isa::vnni();
            let avx512 = llmq_quant::isa::avx512_vnni();
            Some(Kernel {
                act: r.act,
                dot: r.dot512.filter(|_| avx512).unwrap_or(r.avx2.0),
                dot4: Some(r.avx2.1),
                dot8: r.dot8.map(|(plain, v)| if vnni { v } else { plain }),
                tile: r.tile.filter(|_| avx512),
                gemv: r.gemv512.filter(|_| avx512),
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 => Some(scalar),
    }
}

/// The Q8_0-activation kernel for integer weights in 32-column blocks (`None` for other
/// blocks or `IntAct::F32`, which run [`super::dot_int::dot_int_f32`]).
pub fn int_kernel(t: IntType, isa: Isa) -> Option<Kernel> {
    if t.block != 32 || t.act != IntAct::Q8_0 {
        return None;
    }
    let dot: DotFn = match t.bits {
        2 => di::dot_int_q8_0::<2>,
        3 => di::dot_int_q8_0::<3>,
        4 => di::dot_int_q8_0::<4>,
        5 => di::dot_int_q8_0::<5>,
        6 => di::dot_int_q8_0::<6>,
        7 => di::dot_int_q8_0::<7>,
        8 => di::dot_int_q8_0::<8>,
        _ => return None,
    };
    let scalar = Kernel {
        act: Act::Q8_0,
        dot,
        dot4: None,
        dot8: None,
        #[cfg(target_arch = "x86_64")]
        tile: None,
        #[cfg(target_arch = "x86_64")]
        gemv: None,
    };
    match isa {
        Isa::Scalar => Some(scalar),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(match t.bits {
            4 => Kernel {
                act: Act::Q8_0,
                dot: di::avx2::dot_int4,
                dot4: Some(di::avx2::dot4_int4),
                dot8: None,
                tile: None,
                gemv: None,
            },
            8 => Kernel {
                act: Act::Q8_0,
                dot: di::avx2::dot_int8,
                dot4: Some(di::avx2::dot4_int8),
                dot8: None,
                tile: None,
                gemv: None,
            },
            _ => scalar,
        }),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 => Some(scalar),
    }
}

/// The f32-activation kernel for floating-point coded weights ([`crate::fp_blocks`]).
pub fn fp_kernel(t: FpType, isa: Isa) -> Option<Kernel> {
    let dot: DotFn = match t {
        FpType::Nvfp4 => fp::dot_nvfp4,
        FpType::Mxfp4 => fp::dot_mxfp4_f32,
        FpType::Fp8 { block } => match block {
            1 => fp::dot_fp8_b1,
            2 => fp::dot_fp8_b2,
            4 => fp::dot_fp8_b4,
            8 => fp::dot_fp8_b8,
            16 => fp::dot_fp8_b16,
            32 => fp::dot_fp8_b32,
            64 => fp::dot_fp8_b64,
            128 => fp::dot_fp8_b128,
            _ => return None,
        },
    };
    let scalar = Kernel {
        act: Act::F32,
        dot,
        dot4: None,
        dot8: None,
        #[cfg(target_arch = "x86_64")]
        tile: None,
        #[cfg(target_arch = "x86_64")]
        gemv: None,
    };
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        use super::dot_fp::avx2 as a2;
        let (dot, dot4): (DotFn, Dot4Fn) = match t {
            FpType::Nvfp4 => (a2::dot_nvfp4, a2::dot4_nvfp4),
            FpType::Mxfp4 => (a2::dot_mxfp4_f32, a2::dot4_mxfp4_f32),
            FpType::Fp8 { block: 8 } => (a2::dot_fp8_b8, a2::dot4_fp8_b8),
            FpType::Fp8 { block: 16 } => (a2::dot_fp8_b16, a2::dot4_fp8_b16),
            FpType::Fp8 { block: 32 } => (a2::dot_fp8_b32, a2::dot4_fp8_b32),
            FpType::Fp8 { block: 64 } => (a2::dot_fp8_b64, a2::dot4_fp8_b64),
            FpType::Fp8 { block: 128 } => (a2::dot_fp8_b128, a2::dot4_fp8_b128),
            FpType::Fp8 { .. } => return Some(scalar),
        };
        return Some(Kernel {
            dot,
            dot4: Some(dot4),
            ..scalar
        });
    }
    let _ = isa;
    Some(scalar)
}
