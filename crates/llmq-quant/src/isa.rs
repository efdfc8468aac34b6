//! CPU-feature detection, in one place for every fast path of the workspace: the
//! quantizers here and the dot-product kernels of `llmq-kernels` (which re-exports
//! [`Isa`]) ask this module, never `is_x86_feature_detected!` themselves.
//!
//! `LLMQ_KERNELS_SCALAR=1` forces the portable scalar code everywhere (the fast paths
//! give the same bytes and values, so this only changes speed);
//! `LLMQ_KERNELS_NO_VNNI=1` keeps AVX2 but switches AVX-VNNI off;
//! `LLMQ_KERNELS_NO_AVX512=1` keeps AVX2 but switches the AVX-512 tiles off. All are
//! read once.

use std::sync::OnceLock;

/// The instruction set a kernel runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust (any target).
    Scalar,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
}

impl Isa {
    /// Whether this CPU can run `self`.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 => false,
        }
    }

    /// The best available instruction set (cached); `LLMQ_KERNELS_SCALAR=1` forces
    /// [`Isa::Scalar`].
    pub fn detect() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            if !env_flag("LLMQ_KERNELS_SCALAR") && Isa::Avx2.available() {
                Isa::Avx2
            } else {
                Isa::Scalar
            }
        })
    }
}

/// Whether the AVX2 fast paths may run ([`Isa::detect`] chose [`Isa::Avx2`]).
#[inline]
pub fn avx2() -> bool {
    Isa::detect() == Isa::Avx2
}

/// Whether AVX-VNNI is there (and not switched off with `LLMQ_KERNELS_NO_VNNI=1`);
/// only asked by code already on the [`Isa::Avx2`] path.
pub fn vnni() -> bool {
    static VNNI: OnceLock<bool> = OnceLock::new();
    *VNNI.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avxvnni") && !env_flag("LLMQ_KERNELS_NO_VNNI")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether AVX-512 F/BW/VNNI are there (and not switched off with
/// `LLMQ_KERNELS_NO_AVX512=1`); only asked by code already on the [`Isa::Avx2`] path.
pub fn avx512_vnni() -> bool {
    static AVX512: OnceLock<bool> = OnceLock::new();
    *AVX512.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
                && !env_flag("LLMQ_KERNELS_NO_AVX512")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// An environment switch: set to anything but `0`.
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v != "0")
}
