//! Which kernel computes which weight type: the activation format (ggml's `vec_dot_type`,
//! see `type_traits_cpu` in llama.cpp `ggml/src/ggml-cpu/ggml-cpu.c`) and the dot
//! product for the instruction set in use. Types not listed here have no fast kernel and
//! `matmul` falls back to the reference path.

use super::act_quant::Act;
use super::{dot_float as fl, dot_int as di, dot_kquants as kq, dot_legacy as lg, Isa};
use crate::tensor::{IntAct, IntType};
use llmq_formats::GgmlType;

/// One weight row against one activation row (both packed).
pub type DotFn = fn(&[u8], &[u8]) -> f32;
/// One weight row against four activation rows.
pub type Dot4Fn = fn(&[u8], [&[u8]; 4]) -> [f32; 4];
/// One weight row against eight activation rows in the group layout of
/// `dot_legacy::interleave8`.
pub type Dot8Fn = fn(&[u8], &[u8]) -> [f32; 8];

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
}

/// The weight types with a fast kernel (on every instruction set).
pub const FAST_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::IQ4NL,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::IQ4XS,
];

/// The activation format and scalar dot product of `ty`.
fn scalar(ty: GgmlType) -> Option<(Act, DotFn)> {
    use GgmlType::*;
    Some(match ty {
        F32 => (Act::F32, fl::dot_f32 as DotFn),
        F16 => (Act::F32, fl::dot_f16),
        BF16 => (Act::F32, fl::dot_bf16),
        Q4_0 => (Act::Q8_0, lg::dot_q4_0),
        Q4_1 => (Act::Q8_1, lg::dot_q4_1),
        Q5_0 => (Act::Q8_0, lg::dot_q5_0),
        Q5_1 => (Act::Q8_1, lg::dot_q5_1),
        Q8_0 => (Act::Q8_0, lg::dot_q8_0),
        IQ4NL => (Act::Q8_0, lg::dot_iq4_nl),
        Q2K => (Act::Q8K, kq::dot_q2_k),
        Q3K => (Act::Q8K, kq::dot_q3_k),
        Q4K => (Act::Q8K, kq::dot_q4_k),
        Q5K => (Act::Q8K, kq::dot_q5_k),
        Q6K => (Act::Q8K, kq::dot_q6_k),
        IQ4XS => (Act::Q8K, kq::dot_iq4_xs),
        _ => return None,
    })
}

#[cfg(target_arch = "x86_64")]
fn avx2(ty: GgmlType) -> Option<(DotFn, Dot4Fn)> {
    use super::dot_kquants_avx2 as k2;
    use fl::avx2 as f2;
    use lg::avx2 as l2;
    use GgmlType::*;
    Some(match ty {
        F32 => (f2::dot_f32 as DotFn, f2::dot4_f32 as Dot4Fn),
        F16 => (f2::dot_f16, f2::dot4_f16),
        BF16 => (f2::dot_bf16, f2::dot4_bf16),
        Q4_0 => (l2::dot_q4_0, l2::dot4_q4_0),
        Q4_1 => (l2::dot_q4_1, l2::dot4_q4_1),
        Q5_0 => (l2::dot_q5_0, l2::dot4_q5_0),
        Q5_1 => (l2::dot_q5_1, l2::dot4_q5_1),
        Q8_0 => (l2::dot_q8_0, l2::dot4_q8_0),
        IQ4NL => (l2::dot_iq4_nl, l2::dot4_iq4_nl),
        Q2K => (k2::dot_q2_k, k2::dot4_q2_k),
        Q3K => (k2::dot_q3_k, k2::dot4_q3_k),
        Q4K => (k2::dot_q4_k, k2::dot4_q4_k),
        Q5K => (k2::dot_q5_k, k2::dot4_q5_k),
        Q6K => (k2::dot_q6_k, k2::dot4_q6_k),
        IQ4XS => (k2::dot_iq4_xs, k2::dot4_iq4_xs),
        _ => return None,
    })
}

/// The 8-row kernel: AVX-VNNI's where the CPU has it (same results, fewer
/// instructions), else AVX2's.
#[cfg(target_arch = "x86_64")]
fn avx2_dot8(ty: GgmlType) -> Option<Dot8Fn> {
    use lg::avx2 as l2;
    use GgmlType::*;
    let vnni = vnni_available();
    let pick = |plain: Dot8Fn, vnni_fn: Dot8Fn| if vnni { vnni_fn } else { plain };
    Some(match ty {
        Q4_0 => pick(l2::dot8_q4_0, l2::dot8_vnni_q4_0),
        Q4_1 => pick(l2::dot8_q4_1, l2::dot8_vnni_q4_1),
        Q5_0 => pick(l2::dot8_q5_0, l2::dot8_vnni_q5_0),
        Q5_1 => pick(l2::dot8_q5_1, l2::dot8_vnni_q5_1),
        Q8_0 => pick(l2::dot8_q8_0, l2::dot8_vnni_q8_0),
        IQ4NL => pick(l2::dot8_iq4_nl, l2::dot8_vnni_iq4_nl),
        _ => return None,
    })
}

/// Whether AVX-VNNI is there (and not switched off with `LLMQ_KERNELS_NO_VNNI=1`).
#[cfg(target_arch = "x86_64")]
fn vnni_available() -> bool {
    static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| {
        is_x86_feature_detected!("avxvnni")
            && !std::env::var("LLMQ_KERNELS_NO_VNNI").is_ok_and(|v| v != "0")
    })
}

/// The kernel for `ty` on `isa` (which the caller has checked is available).
pub fn kernel(ty: GgmlType, isa: Isa) -> Option<Kernel> {
    let (act, dot) = scalar(ty)?;
    match isa {
        Isa::Scalar => Some(Kernel {
            act,
            dot,
            dot4: None,
            dot8: None,
        }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            let (dot, dot4) = avx2(ty)?;
            Some(Kernel {
                act,
                dot,
                dot4: Some(dot4),
                dot8: avx2_dot8(ty),
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 => Some(Kernel {
            act,
            dot,
            dot4: None,
            dot8: None,
        }),
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
            },
            8 => Kernel {
                act: Act::Q8_0,
                dot: di::avx2::dot_int8,
                dot4: Some(di::avx2::dot4_int8),
                dot8: None,
            },
            _ => scalar,
        }),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 => Some(scalar),
    }
}
