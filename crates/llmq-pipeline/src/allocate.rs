//! The allocate stage: what each tensor becomes, decided before any tensor is
//! quantized — its method and its quantization (a GGML type, an integer grid, or kept
//! in full precision) — as one [`TensorSpec`] per tensor name, with a default for
//! tensors not listed.
//!
//! Today the specs come from the level: the llama.cpp mix rules for GGUF (per tensor
//! already: `attn_v` and `ffn_down` get more bits in `_M` mixes, …) and one uniform
//! grid for the Hugging Face layouts, with MoE routers kept in full precision. Both
//! drivers read every tensor's spec from the [`Allocation`] only, so an allocator
//! that measures sensitivity (bits per tensor, per expert) replaces the table, not
//! the drivers.

use crate::error::{PipelineError, Result};
use crate::request::{IntGrid, Method};
use crate::run::TensorJob;
use llmq_formats::gguf::{GgufPlan, PlannedTensor};
use llmq_formats::GgmlType;
use llmq_hfquant::FpScheme;
use std::collections::BTreeMap;

mod trellis;
pub use trellis::{TrellisTarget, EXL3_HEAD_BITS};

/// How one tensor is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantSpec {
    /// GGML blocks of this type (F16/F32/BF16 included)
    Ggml(GgmlType),
    /// an integer grid (Hugging Face layouts)
    Int(IntGrid),
    /// trellis codes of `k` bits per weight (EXL3)
    Trellis { k: u32 },
    /// a floating-point grid (NVFP4, MXFP4, FP8), its codes in the space of a
    /// block-Hadamard input rotation of size `hadamard` when set (MR-GPTQ)
    Fp {
        scheme: FpScheme,
        hadamard: Option<usize>,
    },
    /// left in the source's precision (e.g. MoE routers)
    Keep,
}

/// One tensor's method and storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorSpec {
    pub method: Method,
    pub quant: QuantSpec,
}

/// Every tensor's spec: listed names, else the default.
#[derive(Debug, Clone)]
pub struct Allocation {
    default: Option<TensorSpec>,
    tensors: BTreeMap<String, TensorSpec>,
}

impl Allocation {
    /// The GGUF allocation: the type the mix rules chose for every planned tensor.
    pub fn from_gguf_jobs(jobs: &[TensorJob]) -> Allocation {
        Allocation {
            default: None,
            tensors: jobs
                .iter()
                .map(|j| {
                    (
                        j.name.clone(),
                        TensorSpec {
                            method: Method::KQuant,
                            quant: QuantSpec::Ggml(j.ty),
                        },
                    )
                })
                .collect(),
        }
    }

    /// One grid and method for every Linear, with `kept` (module weight names) left
    /// in full precision.
    pub fn uniform(method: Method, grid: IntGrid) -> Allocation {
        Allocation {
            default: Some(TensorSpec {
                method,
                quant: QuantSpec::Int(grid),
            }),
            tensors: BTreeMap::new(),
        }
    }

    /// Trellis codes of `k` bits for every Linear (EXL3).
    pub fn uniform_trellis(k: u32) -> Allocation {
        Allocation {
            default: Some(TensorSpec {
                method: Method::Trellis,
                quant: QuantSpec::Trellis { k },
            }),
            tensors: BTreeMap::new(),
        }
    }

    /// One floating-point grid (and rotation) and method for every Linear.
    pub fn uniform_fp(method: Method, scheme: FpScheme, hadamard: Option<usize>) -> Allocation {
        Allocation {
            default: Some(TensorSpec {
                method,
                quant: QuantSpec::Fp { scheme, hadamard },
            }),
            tensors: BTreeMap::new(),
        }
    }

    /// Give `name` its own spec.
    pub fn set(&mut self, name: &str, spec: TensorSpec) {
        self.tensors.insert(name.to_string(), spec);
    }

    /// The spec of `name`.
    pub fn spec(&self, name: &str) -> Result<TensorSpec> {
        self.tensors
            .get(name)
            .copied()
            .or(self.default)
            .ok_or_else(|| {
                PipelineError::general(
                    format!("tensor {name} has no allocated quantization"),
                    "Report this as a bug",
                )
            })
    }

    /// The integer grid of `name` (a Hugging Face layout's Linear weight).
    pub fn int_grid(&self, name: &str) -> Result<IntGrid> {
        match self.spec(name)?.quant {
            QuantSpec::Int(g) => Ok(g),
            other => Err(PipelineError::general(
                format!("tensor {name} is allocated {other:?}, not an integer grid"),
                "Report this as a bug",
            )),
        }
    }

    /// The trellis bits of `name` (an EXL3 Linear weight).
    pub fn trellis_k(&self, name: &str) -> Result<u32> {
        match self.spec(name)?.quant {
            QuantSpec::Trellis { k } => Ok(k),
            other => Err(PipelineError::general(
                format!("tensor {name} is allocated {other:?}, not trellis codes"),
                "Report this as a bug",
            )),
        }
    }

    /// The floating-point grid and rotation of `name`.
    pub fn fp_grid(&self, name: &str) -> Result<(FpScheme, Option<usize>)> {
        match self.spec(name)?.quant {
            QuantSpec::Fp { scheme, hadamard } => Ok((scheme, hadamard)),
            other => Err(PipelineError::general(
                format!("tensor {name} is allocated {other:?}, not a floating-point grid"),
                "Report this as a bug",
            )),
        }
    }

    /// Set every GGUF job's type (and the file plan's) from the allocation.
    pub fn apply_to_gguf(&self, jobs: &mut [TensorJob], plan: &mut GgufPlan) -> Result<()> {
        for j in jobs.iter_mut() {
            match self.spec(&j.name)?.quant {
                QuantSpec::Ggml(ty) => j.ty = ty,
                other => {
                    return Err(PipelineError::unsupported(
                        format!(
                            "tensor {} is allocated {other:?}, which GGUF cannot store",
                            j.name
                        ),
                        "Allocate a GGML type to every GGUF tensor",
                    ))
                }
            }
        }
        plan.tensors = jobs
            .iter()
            .map(|j| PlannedTensor {
                name: j.name.clone(),
                shape_ne: j.shape_ne.clone(),
                ggml_type: j.ty,
            })
            .collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(bits: u8) -> IntGrid {
        IntGrid {
            bits,
            group_size: Some(128),
            symmetric: true,
            act_order: false,
        }
    }

    #[test]
    fn listed_tensors_override_the_default() {
        let mut a = Allocation::uniform(Method::Gptq, grid(4));
        a.set(
            "model.layers.0.mlp.down_proj.weight",
            TensorSpec {
                method: Method::Gptq,
                quant: QuantSpec::Int(grid(8)),
            },
        );
        assert_eq!(
            a.int_grid("model.layers.0.mlp.down_proj.weight")
                .unwrap()
                .bits,
            8
        );
        assert_eq!(
            a.int_grid("model.layers.1.mlp.down_proj.weight")
                .unwrap()
                .bits,
            4
        );
        a.set(
            "r",
            TensorSpec {
                method: Method::Rtn,
                quant: QuantSpec::Keep,
            },
        );
        assert!(a.int_grid("r").is_err());
    }

    #[test]
    fn gguf_allocation_sets_job_and_plan_types() {
        let mut jobs = vec![TensorJob {
            name: "blk.0.ffn_down.weight".into(),
            shape_ne: vec![256, 4],
            ty: GgmlType::Q4K,
            unit: 0,
        }];
        let mut a = Allocation::from_gguf_jobs(&jobs);
        a.set(
            "blk.0.ffn_down.weight",
            TensorSpec {
                method: Method::KQuant,
                quant: QuantSpec::Ggml(GgmlType::Q6K),
            },
        );
        let mut plan = GgufPlan {
            metadata: Vec::new(),
            tensors: Vec::new(),
            alignment: 32,
        };
        a.apply_to_gguf(&mut jobs, &mut plan).unwrap();
        assert_eq!(jobs[0].ty, GgmlType::Q6K);
        assert_eq!(plan.tensors[0].ggml_type, GgmlType::Q6K);
        let no_gguf = Allocation::uniform(Method::Gptq, grid(4));
        assert_eq!(
            no_gguf
                .apply_to_gguf(&mut jobs, &mut plan)
                .unwrap_err()
                .kind(),
            crate::ErrorKind::Unsupported
        );
    }
}
