//! Loading a model: hyper-parameters from the metadata, then every block's tensors by
//! their GGUF names, checked against the shapes the architecture implies and uploaded
//! to the backend. Which variant a layer is (fused or separate q/k/v, standard or
//! latent attention, low-rank query, dense MLP or experts, fused gate|up) is decided
//! here, once, from the tensors present.

use super::attention::{Attention, Qkv, StandardAttention};
use super::mla::{split_kv_b, MlaAttention, MlaQuery};
use super::mlp::{FeedForward, GateUp, Mlp, MlpBiases, Moe};
use super::{Layer, Model};
use crate::backend::{Activation, Backend, Cpu, Linear};
use crate::error::{EngineError, Result};
use crate::hparams::{Arch, Hparams, MlaParams, MoeParams};
use crate::weights::WeightSource;
use llmq_kernels::WeightMatrix;

/// `EngineError::BadShape` unless `w` is `[rows, cols]`.
pub(super) fn check_dims(name: &str, w: &WeightMatrix, rows: usize, cols: usize) -> Result<()> {
    if w.rows != rows || w.cols != cols {
        return Err(EngineError::BadShape {
            name: name.into(),
            got: vec![w.cols, w.rows],
            want: vec![cols, rows],
        });
    }
    Ok(())
}

fn check_len(name: &str, v: &Option<Vec<f32>>, n: usize) -> Result<()> {
    match v {
        Some(v) if v.len() != n => Err(EngineError::BadShape {
            name: name.into(),
            got: vec![v.len()],
            want: vec![n],
        }),
        _ => Ok(()),
    }
}

/// The hyper-parameters of the model in `src` (metadata, the HF config's overrides or
/// the GGUF RoPE factors).
pub(crate) fn hparams_of(src: &WeightSource) -> Result<Hparams> {
    let meta = src.metadata();
    let embd_shape = src
        .shape("token_embd.weight")
        .ok_or_else(|| EngineError::MissingTensor("token_embd.weight".into()))?;
    let n_vocab = embd_shape.get(1).copied().unwrap_or(0);
    let mut hp = Hparams::from_metadata(&meta, n_vocab)?;
    match src.hf_config() {
        Some(cfg) => hp.apply_hf_config(cfg),
        None => apply_rope_freqs(src, &mut hp)?,
    }
    Ok(hp)
}

/// Tensors of a weight source, uploaded to a backend.
pub(super) struct Loader<'a, B: Backend> {
    pub(super) src: &'a WeightSource,
    pub(super) be: &'a B,
    /// every tensor name the architecture asked for, present or not
    pub(super) asked: std::cell::RefCell<std::collections::HashSet<String>>,
}

impl<B: Backend> Loader<'_, B> {
    /// A tensor as a matrix, if present (recorded as asked for).
    fn matrix(&self, name: &str) -> Result<Option<WeightMatrix>> {
        self.asked.borrow_mut().insert(name.to_string());
        self.src.matrix(name)
    }

    /// A required tensor as a matrix (recorded as asked for).
    pub(super) fn require(&self, name: &str) -> Result<WeightMatrix> {
        self.matrix(name)?
            .ok_or_else(|| EngineError::MissingTensor(name.into()))
    }

    /// The shape of a tensor, if present (recorded as asked for).
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.asked.borrow_mut().insert(name.to_string());
        self.src.shape(name)
    }

    /// A GGUF file's tensors that no part of the architecture asked for: a file whose
    /// metadata does not explain its tensors is refused, not half-used.
    pub(super) fn check_unexplained(&self) -> Result<()> {
        let WeightSource::Gguf(f) = self.src else {
            // a safetensors checkpoint's tensors are checked against config.json by
            // the plan (`llmq_arch::validate`)
            return Ok(());
        };
        let asked = self.asked.borrow();
        let extra = f.tensors().iter().map(|t| t.name.as_str()).find(|n| {
            !asked.contains(*n) && !n.starts_with("rope_freqs") && !n.starts_with("rope_factors")
        });
        match extra {
            Some(n) => Err(EngineError::BadTensor {
                name: n.into(),
                why: "not used by the model the metadata describes (block_count, expert_count, \
                      head counts …): the file's tensors and metadata disagree"
                    .into(),
            }),
            None => Ok(()),
        }
    }

    /// A required matrix on the host, checked to be `[rows, cols]`.
    fn host(&self, name: &str, rows: usize, cols: usize) -> Result<WeightMatrix> {
        let w = self.require(name)?;
        check_dims(name, &w, rows, cols)?;
        Ok(w)
    }

    /// `w` (tensor `name`) on the backend, if the backend computes its type.
    fn linear(&self, name: &str, w: WeightMatrix) -> Result<Linear<B>> {
        self.be.check_weight(name, &w)?;
        Ok(Linear::new(self.be, w))
    }

    /// A required `[rows, cols]` Linear.
    pub(super) fn req(&self, name: &str, rows: usize, cols: usize) -> Result<Linear<B>> {
        self.linear(name, self.host(name, rows, cols)?)
    }

    /// An optional `[rows, cols]` Linear.
    pub(super) fn opt(&self, name: &str, rows: usize, cols: usize) -> Result<Option<Linear<B>>> {
        match self.matrix(name)? {
            Some(w) => {
                check_dims(name, &w, rows, cols)?;
                Ok(Some(self.linear(name, w)?))
            }
            None => Ok(None),
        }
    }

    /// An optional vector of `len` values.
    fn vec(&self, name: &str, len: usize) -> Result<Option<B::Buf>> {
        let v = self.matrix(name)?.map(|m| m.to_f32());
        check_len(name, &v, len)?;
        Ok(v.map(|v| self.be.upload(v)))
    }

    /// A required vector of `len` values.
    pub(super) fn req_vec(&self, name: &str, len: usize) -> Result<B::Buf> {
        self.vec(name, len)?
            .ok_or_else(|| EngineError::MissingTensor(name.into()))
    }
}

/// A GGUF's per-pair RoPE frequency factors into the layers' RoPE settings:
/// `rope_freqs.weight` (llama3 scaling, applied by llama.cpp to every layer) or Phi-3's
/// `rope_factors_short.weight` (LongRoPE's short regime; longer sequences than the
/// original context are then refused).
fn apply_rope_freqs(src: &WeightSource, hp: &mut Hparams) -> Result<()> {
    let (name, v) = match src.vector("rope_freqs.weight")? {
        Some(v) => ("rope_freqs.weight", v),
        None => match src.vector("rope_factors_short.weight")? {
            Some(v) => {
                let long = src.vector("rope_factors_long.weight")?.unwrap_or_default();
                let f64s = |v: &[f32]| v.iter().map(|x| f64::from(*x)).collect();
                hp.rope_scaling = llmq_arch::RopeScaling::LongRope {
                    short_factor: f64s(&v),
                    long_factor: f64s(&long),
                    attention_factor: hp.layers.first().map_or(1.0, |l| l.rope.attn_factor) as f64,
                    original_max_position_embeddings: hp.n_ctx_orig,
                };
                hp.rope_exact_ctx = Some(hp.n_ctx_orig);
                ("rope_factors_short.weight", v)
            }
            None => return Ok(()),
        },
    };
    check_len(name, &Some(v.clone()), hp.n_rot / 2)?;
    let factors: std::sync::Arc<[f32]> = v.into();
    for lp in &mut hp.layers {
        lp.rope.factors = Some(factors.clone());
    }
    Ok(())
}

impl Model<Cpu> {
    /// Load a model from its weight source onto the CPU.
    pub fn load(src: &WeightSource) -> Result<Model> {
        Model::load_on(Cpu, src)
    }
}

impl<B: Backend> Model<B> {
    /// Load a model from its weight source onto backend `be`.
    pub fn load_on(be: B, src: &WeightSource) -> Result<Model<B>> {
        let hp = hparams_of(src)?;
        let n_vocab = hp.n_vocab;
        let d = hp.n_embd;
        let ld = Loader {
            src,
            be: &be,
            asked: Default::default(),
        };
        let tok_embd = ld.req("token_embd.weight", n_vocab, d)?;
        let output = match ld.opt("output.weight", n_vocab, d)? {
            Some(w) => w,
            None => tok_embd.clone(),
        };
        let (tok_embd, output) = (Some(tok_embd), Some(output));
        let output_norm = ld.req_vec("output_norm.weight", d)?;
        let layers = (0..hp.n_layer)
            .map(|i| load_layer(&ld, &hp, i).map(Some))
            .collect::<Result<Vec<_>>>()?;
        ld.check_unexplained()?;
        let act = activation_of(&hp);
        Ok(Model {
            act,
            hp,
            be,
            tok_embd,
            output_norm,
            output,
            layers,
        })
    }
}

/// The MLP activation the architecture uses.
pub(super) fn activation_of(hp: &Hparams) -> Activation {
    match (hp.arch, hp.clamped_swiglu) {
        (Arch::Gemma3, _) => Activation::GeluTanh,
        (_, Some(c)) => Activation::ClampedSwiglu {
            alpha: c.alpha as f32,
            limit: c.limit as f32,
        },
        _ => Activation::Silu,
    }
}

pub(super) fn load_layer<B: Backend>(
    ld: &Loader<'_, B>,
    hp: &Hparams,
    i: usize,
) -> Result<Layer<B>> {
    let n = |s: &str| format!("blk.{i}.{s}");
    let d = hp.n_embd;
    let attn_norm = ld.req_vec(&n("attn_norm.weight"), d)?;
    let attn = match &hp.mla {
        Some(mla) => Attention::Mla(load_mla(ld, hp, mla, i)?),
        None => Attention::Standard(load_standard(ld, hp, i)?),
    };
    let (post_attn_norm, ffn_norm) = if hp.arch == Arch::GptOss {
        // gpt-oss's `attn_post_norm` is the norm in front of the MoE
        (None, ld.req_vec(&n("post_attention_norm.weight"), d)?)
    } else {
        (
            ld.vec(&n("post_attention_norm.weight"), d)?,
            ld.req_vec(&n("ffn_norm.weight"), d)?,
        )
    };
    let post_ffn_norm = ld.vec(&n("post_ffw_norm.weight"), d)?;
    let ffn = match (hp.layers[i].moe, &hp.moe) {
        (true, Some(p)) => FeedForward::Moe(load_moe(ld, hp, p, i)?),
        (true, None) => {
            return Err(EngineError::BadValue {
                key: "expert_count".into(),
                why: format!("layer {i} is a MoE layer but the model states no experts"),
            })
        }
        (false, _) => FeedForward::Dense(load_mlp(ld, &n(""), "", hp.n_ff, d)?),
    };
    Ok(Layer {
        attn_norm,
        attn,
        post_attn_norm,
        ffn_norm,
        ffn,
        post_ffn_norm,
    })
}

fn load_standard<B: Backend>(
    ld: &Loader<'_, B>,
    hp: &Hparams,
    i: usize,
) -> Result<StandardAttention<B>> {
    let n = |s: &str| format!("blk.{i}.{s}");
    let d = hp.n_embd;
    let qd = hp.n_head * hp.head_dim_k;
    let kd = hp.n_head_kv * hp.head_dim_k;
    let vd = hp.n_head_kv * hp.head_dim_v;
    let qkv = match ld.opt(&n("attn_qkv.weight"), qd + kd + vd, d)? {
        Some(w) => Qkv::Fused(w),
        None => Qkv::Separate {
            q: ld.req(&n("attn_q.weight"), qd, d)?,
            k: ld.req(&n("attn_k.weight"), kd, d)?,
            v: ld.req(&n("attn_v.weight"), vd, d)?,
        },
    };
    Ok(StandardAttention {
        qkv,
        bq: ld.vec(&n("attn_q.bias"), qd)?,
        bk: ld.vec(&n("attn_k.bias"), kd)?,
        bv: ld.vec(&n("attn_v.bias"), vd)?,
        q_norm: ld.vec(&n("attn_q_norm.weight"), hp.head_dim_k)?,
        k_norm: ld.vec(&n("attn_k_norm.weight"), hp.head_dim_k)?,
        wo: ld.req(&n("attn_output.weight"), d, hp.n_head * hp.head_dim_v)?,
        bo: ld.vec(&n("attn_output.bias"), d)?,
        sinks: ld.vec(&n("attn_sinks.weight"), hp.n_head)?,
    })
}

fn load_mla<B: Backend>(
    ld: &Loader<'_, B>,
    hp: &Hparams,
    mla: &MlaParams,
    i: usize,
) -> Result<MlaAttention<B>> {
    let n = |s: &str| format!("blk.{i}.{s}");
    let d = hp.n_embd;
    let h = hp.n_head;
    let qk = mla.qk_nope + mla.qk_rope;
    let query = match mla.q_lora_rank {
        Some(r) => MlaQuery::LowRank {
            a: ld.req(&n("attn_q_a.weight"), r, d)?,
            norm: ld.req_vec(&n("attn_q_a_norm.weight"), r)?,
            b: ld.req(&n("attn_q_b.weight"), h * qk, r)?,
        },
        None => MlaQuery::Direct(ld.req(&n("attn_q.weight"), h * qk, d)?),
    };
    let lora = mla.kv_lora_rank;
    let wkv_a = ld.req(&n("attn_kv_a_mqa.weight"), lora + mla.qk_rope, d)?;
    let kv_a_norm = ld.req_vec(&n("attn_kv_a_norm.weight"), lora)?;
    let (k_b, v_b): (Vec<WeightMatrix>, Vec<WeightMatrix>) =
        match ld.matrix(&n("attn_k_b.weight"))? {
            Some(kb) => {
                check_dims(&n("attn_k_b.weight"), &kb, h * lora, mla.qk_nope)?;
                let vb = ld.host(&n("attn_v_b.weight"), h * mla.v_head_dim, lora)?;
                (
                    (0..h).map(|j| kb.row_range(j * lora, lora)).collect(),
                    (0..h)
                        .map(|j| vb.row_range(j * mla.v_head_dim, mla.v_head_dim))
                        .collect(),
                )
            }
            None => {
                // older files keep the joint `attn_kv_b` ([n_head*(nope+v), lora])
                let kvb = ld.host(
                    &n("attn_kv_b.weight"),
                    h * (mla.qk_nope + mla.v_head_dim),
                    lora,
                )?;
                split_kv_b(&kvb, h, mla.qk_nope, mla.v_head_dim)
            }
        };
    Ok(MlaAttention {
        dims: mla.clone(),
        query,
        wkv_a,
        kv_a_norm,
        k_b: k_b
            .into_iter()
            .map(|w| ld.linear(&n("attn_k_b.weight"), w))
            .collect::<Result<_>>()?,
        v_b: v_b
            .into_iter()
            .map(|w| ld.linear(&n("attn_v_b.weight"), w))
            .collect::<Result<_>>()?,
        wo: ld.req(&n("attn_output.weight"), d, h * mla.v_head_dim)?,
    })
}

/// `prefix` is `blk.N.`, `suffix` `""`, `_shexp` or `_exps`.
fn load_mlp<B: Backend>(
    ld: &Loader<'_, B>,
    prefix: &str,
    suffix: &str,
    n_ff: usize,
    d: usize,
) -> Result<Mlp<B>> {
    let name = |s: &str| format!("{prefix}ffn_{s}{suffix}.weight");
    let gate = ld.matrix(&name("gate"))?;
    let up = ld.require(&name("up"))?;
    let ff = if gate.is_some() {
        n_ff.max(1)
    } else {
        up.rows / 2
    };
    let ff = if n_ff == 0 || gate.is_none() {
        ff
    } else {
        n_ff
    };
    if let Some(g) = &gate {
        check_dims(&name("gate"), g, up.rows, d)?;
    } else if up.rows % 2 != 0 {
        return Err(EngineError::BadTensor {
            name: name("up"),
            why: "a fused gate|up projection needs an even row count".into(),
        });
    }
    check_dims(
        &name("up"),
        &up,
        if gate.is_some() { ff } else { 2 * ff },
        d,
    )?;
    let down = ld.req(&name("down"), d, ff)?;
    let gate_up = match gate {
        Some(g) => GateUp::Separate {
            gate: ld.linear(&name("gate"), g)?,
            up: ld.linear(&name("up"), up)?,
        },
        None => GateUp::Fused(ld.linear(&name("up"), up)?),
    };
    Ok(Mlp {
        gate_up,
        down,
        biases: None,
    })
}

fn load_moe<B: Backend>(
    ld: &Loader<'_, B>,
    hp: &Hparams,
    p: &MoeParams,
    i: usize,
) -> Result<Moe<B>> {
    let d = hp.n_embd;
    let n = |s: &str| format!("blk.{i}.{s}");
    let router = ld.req(&n("ffn_gate_inp.weight"), p.n_expert, d)?;
    let router_bias = ld.vec(&n("ffn_gate_inp.bias"), p.n_expert)?;
    let bias = ld.vec(&n("exp_probs_b.bias"), p.n_expert)?;
    let ff = p.n_ff_exp;
    // per-expert biases `[ff or d, n_expert]` (GPT-OSS): all three or none
    let host_bias = |s: &str, width: usize| -> Result<Option<Vec<f32>>> {
        let v = ld.matrix(&n(s))?.map(|m| m.to_f32());
        check_len(&n(s), &v, width * p.n_expert)?;
        Ok(v)
    };
    let expert_biases = match (
        host_bias("ffn_gate_exps.bias", ff)?,
        host_bias("ffn_up_exps.bias", ff)?,
        host_bias("ffn_down_exps.bias", d)?,
    ) {
        (Some(g), Some(u), Some(dn)) => Some((g, u, dn)),
        (None, None, None) => None,
        _ => {
            return Err(EngineError::MissingTensor(format!(
                "{} (the experts' gate, up and down biases come together)",
                n("ffn_*_exps.bias")
            )))
        }
    };
    let gate = ld.host(&n("ffn_gate_exps.weight"), p.n_expert * ff, d)?;
    let up = ld.host(&n("ffn_up_exps.weight"), p.n_expert * ff, d)?;
    let down = ld.host(&n("ffn_down_exps.weight"), p.n_expert * d, ff)?;
    let experts = (0..p.n_expert)
        .map(|e| {
            Ok(Mlp {
                gate_up: GateUp::Separate {
                    gate: ld.linear(&n("ffn_gate_exps.weight"), gate.row_range(e * ff, ff))?,
                    up: ld.linear(&n("ffn_up_exps.weight"), up.row_range(e * ff, ff))?,
                },
                down: ld.linear(&n("ffn_down_exps.weight"), down.row_range(e * d, d))?,
                biases: expert_biases.as_ref().map(|(g, u, dn)| MlpBiases {
                    gate: ld.be.upload(g[e * ff..(e + 1) * ff].to_vec()),
                    up: ld.be.upload(u[e * ff..(e + 1) * ff].to_vec()),
                    down: ld.be.upload(dn[e * d..(e + 1) * d].to_vec()),
                }),
            })
        })
        .collect::<Result<_>>()?;
    let shared = match ld.shape(&n("ffn_up_shexp.weight")) {
        Some(shape) => Some(load_mlp(ld, &n(""), "_shexp", shape[1], d)?),
        None => None,
    };
    Ok(Moe {
        params: p.clone(),
        router,
        router_bias,
        bias,
        experts,
        shared,
    })
}
