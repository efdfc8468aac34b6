//! One configurable decoder for every supported architecture, following llama.cpp's
//! graphs (`src/models/*.cpp`) over GGUF tensors and transformers' modeling files for
//! the semantics: Llama/Mistral/Mixtral, Qwen2 (q/k/v bias), Qwen3 (q/k norm),
//! Qwen3-MoE, Gemma 3 (scaled embeddings, sandwich norms, per-layer sliding window and
//! RoPE base, GELU), Phi-3 (fused qkv and gate|up) and DeepSeek-V2/V3 / GLM-4.7-Flash
//! (multi-head latent attention, DeepSeek-V2 paper arXiv 2405.04434, computed in the
//! absorbed form over the cached latent; sigmoid or softmax routing with correction
//! bias, group-limited top-k, shared experts, leading dense layers).
//!
//! The forward pass takes a batch of sequences, each with its own KV cache, and runs
//! all their new tokens through each weight product together. Compute is f32.

use crate::calib::{LinearObserver, LinearStage, Tap};
use crate::error::{EngineError, Result};
use crate::hparams::{Arch, Gating, Hparams, MoeParams};
use crate::ops::{
    gelu_tanh, rms_norm, rms_norm_rows, rope_apply, rope_table, sigmoid, silu, softmax,
};
use crate::weights::WeightSource;
use llmq_kernels::{matmul, WeightMatrix};
use rayon::prelude::*;

/// Attention projections of one layer.
enum Attention {
    /// separate or fused q/k/v (Phi-3's `attn_qkv`), optional biases and q/k norms
    Standard {
        wq: Option<WeightMatrix>,
        wk: Option<WeightMatrix>,
        wv: Option<WeightMatrix>,
        wqkv: Option<WeightMatrix>,
        bq: Option<Vec<f32>>,
        bk: Option<Vec<f32>>,
        bv: Option<Vec<f32>>,
        q_norm: Option<Vec<f32>>,
        k_norm: Option<Vec<f32>>,
        wo: WeightMatrix,
    },
    /// multi-head latent attention
    Mla {
        wq: Option<WeightMatrix>,
        wq_a: Option<WeightMatrix>,
        q_a_norm: Option<Vec<f32>>,
        wq_b: Option<WeightMatrix>,
        wkv_a: WeightMatrix,
        kv_a_norm: Vec<f32>,
        /// per head `[kv_lora, nope]`: q_nope → latent space
        k_b: Vec<WeightMatrix>,
        /// per head `[v, kv_lora]`: latent → value
        v_b: Vec<WeightMatrix>,
        wo: WeightMatrix,
    },
}

/// A gated MLP (`down(act(gate·x) * up·x)`); Phi-3 fuses gate|up into `up`.
struct Mlp {
    gate: Option<WeightMatrix>,
    up: WeightMatrix,
    down: WeightMatrix,
}

enum FeedForward {
    Dense(Mlp),
    Moe {
        router: WeightMatrix,
        bias: Option<Vec<f32>>,
        experts: Vec<Mlp>,
        shared: Option<Mlp>,
    },
}

struct Layer {
    attn_norm: Vec<f32>,
    attn: Attention,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    ffn: FeedForward,
    post_ffn_norm: Option<Vec<f32>>,
}

/// A loaded model.
pub struct Model {
    pub hp: Hparams,
    tok_embd: WeightMatrix,
    output_norm: Vec<f32>,
    output: WeightMatrix,
    layers: Vec<Layer>,
    gelu: bool,
}

/// One layer's cached keys and values (MLA: latent then roped key, in `k`).
#[derive(Clone, Default)]
struct LayerCache {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// The KV cache of one sequence.
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
    max_len: usize,
}

impl KvCache {
    /// An empty cache for up to `max_len` positions.
    pub fn new(model: &Model, max_len: usize) -> KvCache {
        KvCache {
            layers: vec![LayerCache::default(); model.hp.n_layer],
            len: 0,
            max_len,
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Forget everything after the first `n` positions.
    pub fn truncate(&mut self, n: usize, model: &Model) {
        if n >= self.len {
            return;
        }
        let (kw, vw) = model.cache_widths();
        for l in &mut self.layers {
            l.k.truncate(n * kw);
            l.v.truncate(n * vw);
        }
        self.len = n;
    }
}

/// Which logits a sequence wants back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    None,
    Last,
    All,
}

/// New tokens of one sequence for a forward step.
pub struct SeqStep<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    pub logits: Logits,
}

fn opt_vec(src: &WeightSource, name: &str) -> Result<Option<Vec<f32>>> {
    src.vector(name)
}

fn req_vec(src: &WeightSource, name: &str) -> Result<Vec<f32>> {
    src.vector(name)?
        .ok_or_else(|| EngineError::MissingTensor(name.into()))
}

fn check_dims(name: &str, w: &WeightMatrix, rows: usize, cols: usize) -> Result<()> {
    if w.rows != rows || w.cols != cols {
        return Err(EngineError::BadShape {
            name: name.into(),
            got: vec![w.cols, w.rows],
            want: vec![cols, rows],
        });
    }
    Ok(())
}

fn req_mat(src: &WeightSource, name: &str, rows: usize, cols: usize) -> Result<WeightMatrix> {
    let w = src.require(name)?;
    check_dims(name, &w, rows, cols)?;
    Ok(w)
}

fn opt_mat(
    src: &WeightSource,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Option<WeightMatrix>> {
    match src.matrix(name)? {
        Some(w) => {
            check_dims(name, &w, rows, cols)?;
            Ok(Some(w))
        }
        None => Ok(None),
    }
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

impl Model {
    /// Load a model from its weight source.
    pub fn load(src: &WeightSource) -> Result<Model> {
        let meta = src.metadata();
        let embd_shape = src
            .shape("token_embd.weight")
            .ok_or_else(|| EngineError::MissingTensor("token_embd.weight".into()))?;
        let n_vocab = embd_shape.get(1).copied().unwrap_or(0);
        let mut hp = Hparams::from_metadata(&meta, n_vocab)?;
        if let Some(cfg) = src.hf_config() {
            hp.apply_hf_config(cfg);
        }
        let d = hp.n_embd;
        let tok_embd = req_mat(src, "token_embd.weight", n_vocab, d)?;
        let output = match opt_mat(src, "output.weight", n_vocab, d)? {
            Some(w) => w,
            None => tok_embd.clone(),
        };
        let output_norm = req_vec(src, "output_norm.weight")?;
        check_len("output_norm.weight", &Some(output_norm.clone()), d)?;
        let layers = (0..hp.n_layer)
            .map(|i| Self::load_layer(src, &hp, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Model {
            gelu: hp.arch == Arch::Gemma3,
            hp,
            tok_embd,
            output_norm,
            output,
            layers,
        })
    }

    fn load_layer(src: &WeightSource, hp: &Hparams, i: usize) -> Result<Layer> {
        let n = |s: &str| format!("blk.{i}.{s}");
        let d = hp.n_embd;
        let vec_n = |s: &str, len: usize| -> Result<Option<Vec<f32>>> {
            let v = opt_vec(src, &n(s))?;
            check_len(&n(s), &v, len)?;
            Ok(v)
        };
        let attn_norm = vec_n("attn_norm.weight", d)?
            .ok_or_else(|| EngineError::MissingTensor(n("attn_norm.weight")))?;
        let attn = if let Some(mla) = &hp.mla {
            let h = hp.n_head;
            let qk = mla.qk_nope + mla.qk_rope;
            let (wq, wq_a, q_a_norm, wq_b) = match mla.q_lora_rank {
                Some(r) => (
                    None,
                    Some(req_mat(src, &n("attn_q_a.weight"), r, d)?),
                    Some(
                        vec_n("attn_q_a_norm.weight", r)?
                            .ok_or_else(|| EngineError::MissingTensor(n("attn_q_a_norm.weight")))?,
                    ),
                    Some(req_mat(src, &n("attn_q_b.weight"), h * qk, r)?),
                ),
                None => (
                    Some(req_mat(src, &n("attn_q.weight"), h * qk, d)?),
                    None,
                    None,
                    None,
                ),
            };
            let lora = mla.kv_lora_rank;
            let wkv_a = req_mat(src, &n("attn_kv_a_mqa.weight"), lora + mla.qk_rope, d)?;
            let kv_a_norm = vec_n("attn_kv_a_norm.weight", lora)?
                .ok_or_else(|| EngineError::MissingTensor(n("attn_kv_a_norm.weight")))?;
            let (k_b, v_b) = match src.matrix(&n("attn_k_b.weight"))? {
                Some(kb) => {
                    check_dims(&n("attn_k_b.weight"), &kb, h * lora, mla.qk_nope)?;
                    let vb = req_mat(src, &n("attn_v_b.weight"), h * mla.v_head_dim, lora)?;
                    (
                        (0..h).map(|j| kb.row_range(j * lora, lora)).collect(),
                        (0..h)
                            .map(|j| vb.row_range(j * mla.v_head_dim, mla.v_head_dim))
                            .collect(),
                    )
                }
                None => {
                    // older files keep the joint `attn_kv_b` ([n_head*(nope+v), lora])
                    let kvb = req_mat(
                        src,
                        &n("attn_kv_b.weight"),
                        h * (mla.qk_nope + mla.v_head_dim),
                        lora,
                    )?;
                    split_kv_b(&kvb, h, mla.qk_nope, mla.v_head_dim)
                }
            };
            Attention::Mla {
                wq,
                wq_a,
                q_a_norm,
                wq_b,
                wkv_a,
                kv_a_norm,
                k_b,
                v_b,
                wo: req_mat(src, &n("attn_output.weight"), d, h * mla.v_head_dim)?,
            }
        } else {
            let qd = hp.n_head * hp.head_dim_k;
            let kd = hp.n_head_kv * hp.head_dim_k;
            let vd = hp.n_head_kv * hp.head_dim_v;
            let wqkv = opt_mat(src, &n("attn_qkv.weight"), qd + kd + vd, d)?;
            let (wq, wk, wv) = if wqkv.is_some() {
                (None, None, None)
            } else {
                (
                    Some(req_mat(src, &n("attn_q.weight"), qd, d)?),
                    Some(req_mat(src, &n("attn_k.weight"), kd, d)?),
                    Some(req_mat(src, &n("attn_v.weight"), vd, d)?),
                )
            };
            Attention::Standard {
                wq,
                wk,
                wv,
                wqkv,
                bq: vec_n("attn_q.bias", qd)?,
                bk: vec_n("attn_k.bias", kd)?,
                bv: vec_n("attn_v.bias", vd)?,
                q_norm: vec_n("attn_q_norm.weight", hp.head_dim_k)?,
                k_norm: vec_n("attn_k_norm.weight", hp.head_dim_k)?,
                wo: req_mat(src, &n("attn_output.weight"), d, hp.n_head * hp.head_dim_v)?,
            }
        };
        let post_attn_norm = vec_n("post_attention_norm.weight", d)?;
        let ffn_norm = vec_n("ffn_norm.weight", d)?
            .ok_or_else(|| EngineError::MissingTensor(n("ffn_norm.weight")))?;
        let post_ffn_norm = vec_n("post_ffw_norm.weight", d)?;
        let ffn = if hp.layers[i].moe {
            let p = hp.moe.as_ref().expect("moe layer has moe params");
            Self::load_moe(src, hp, p, i)?
        } else {
            FeedForward::Dense(Self::load_mlp(src, &n(""), "", hp.n_ff, d)?)
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

    /// `prefix` is `blk.N.`, `suffix` `""`, `_shexp` or `_exps`.
    fn load_mlp(
        src: &WeightSource,
        prefix: &str,
        suffix: &str,
        n_ff: usize,
        d: usize,
    ) -> Result<Mlp> {
        let name = |s: &str| format!("{prefix}ffn_{s}{suffix}.weight");
        let gate = src.matrix(&name("gate"))?;
        let up = src.require(&name("up"))?;
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
        let down = req_mat(src, &name("down"), d, ff)?;
        Ok(Mlp { gate, up, down })
    }

    fn load_moe(src: &WeightSource, hp: &Hparams, p: &MoeParams, i: usize) -> Result<FeedForward> {
        let d = hp.n_embd;
        let n = |s: &str| format!("blk.{i}.{s}");
        let router = req_mat(src, &n("ffn_gate_inp.weight"), p.n_expert, d)?;
        let bias = opt_vec(src, &n("exp_probs_b.bias"))?;
        check_len(&n("exp_probs_b.bias"), &bias, p.n_expert)?;
        let ff = p.n_ff_exp;
        let gate = req_mat(src, &n("ffn_gate_exps.weight"), p.n_expert * ff, d)?;
        let up = req_mat(src, &n("ffn_up_exps.weight"), p.n_expert * ff, d)?;
        let down = req_mat(src, &n("ffn_down_exps.weight"), p.n_expert * d, ff)?;
        let experts = (0..p.n_expert)
            .map(|e| Mlp {
                gate: Some(gate.row_range(e * ff, ff)),
                up: up.row_range(e * ff, ff),
                down: down.row_range(e * d, d),
            })
            .collect();
        let shared = if src.shape(&n("ffn_up_shexp.weight")).is_some() {
            let rows = src.shape(&n("ffn_up_shexp.weight")).unwrap()[1];
            Some(Self::load_mlp(src, &n(""), "_shexp", rows, d)?)
        } else {
            None
        };
        Ok(FeedForward::Moe {
            router,
            bias,
            experts,
            shared,
        })
    }

    /// Floats per position in each layer's K and V cache.
    fn cache_widths(&self) -> (usize, usize) {
        match &self.hp.mla {
            Some(m) => (m.kv_lora_rank + m.qk_rope, 0),
            None => (
                self.hp.n_head_kv * self.hp.head_dim_k,
                self.hp.n_head_kv * self.hp.head_dim_v,
            ),
        }
    }

    /// Vocabulary size (rows of the output head).
    pub fn n_vocab(&self) -> usize {
        self.hp.n_vocab
    }

    /// Run the new tokens of every sequence; returns, per sequence, the logits it asked
    /// for (`rows × n_vocab`, row-major).
    pub fn forward(&self, seqs: &mut [SeqStep<'_>]) -> Result<Vec<Vec<f32>>> {
        let hp = &self.hp;
        let d = hp.n_embd;
        // token → (sequence, position)
        let mut tok_seq = Vec::new();
        let mut tok_pos = Vec::new();
        let mut ids = Vec::new();
        for (s, step) in seqs.iter().enumerate() {
            let end = step.cache.len + step.tokens.len();
            if end > step.cache.max_len {
                return Err(EngineError::ContextOverflow {
                    len: end,
                    ctx: step.cache.max_len,
                });
            }
            for (i, &t) in step.tokens.iter().enumerate() {
                if t as usize >= hp.n_vocab {
                    return Err(EngineError::BadToken {
                        id: t,
                        vocab: hp.n_vocab,
                    });
                }
                tok_seq.push(s);
                tok_pos.push(step.cache.len + i);
                ids.push(t);
            }
        }
        let mut x = self.embed_ids(&ids);
        let mut tap = Tap::none();
        for (li, layer) in self.layers.iter().enumerate() {
            self.layer_forward(li, layer, &mut x, seqs, &tok_seq, &tok_pos, &mut tap)?;
        }
        for step in seqs.iter_mut() {
            step.cache.len += step.tokens.len();
        }
        // logits for the rows asked for
        let mut out_rows = Vec::new();
        let mut start = 0;
        for step in seqs.iter() {
            let n = step.tokens.len();
            match step.logits {
                Logits::None => {}
                Logits::Last if n > 0 => out_rows.push(start + n - 1),
                Logits::Last => {}
                Logits::All => out_rows.extend(start..start + n),
            }
            start += n;
        }
        let mut sel = Vec::with_capacity(out_rows.len() * d);
        for &r in &out_rows {
            sel.extend_from_slice(&x[r * d..(r + 1) * d]);
        }
        rms_norm_rows(&mut sel, &self.output_norm, hp.eps);
        let v = hp.n_vocab;
        let mut logits = vec![0.0f32; out_rows.len() * v];
        matmul(&self.output, &sel, out_rows.len(), &mut logits);
        if let Some(c) = hp.final_softcap {
            logits.iter_mut().for_each(|l| *l = (*l / c).tanh() * c);
        }
        let mut result = Vec::with_capacity(seqs.len());
        let mut k = 0;
        for step in seqs.iter() {
            let n = match step.logits {
                Logits::None => 0,
                Logits::Last => usize::from(!step.tokens.is_empty()),
                Logits::All => step.tokens.len(),
            };
            result.push(logits[k * v..(k + n) * v].to_vec());
            k += n;
        }
        Ok(result)
    }

    /// Replace a weight matrix (GGUF name and shape, e.g. `blk.3.attn_q.weight`
    /// `[out, in]`, a whole stacked `ffn_*_exps` tensor or MLA's `attn_k_b` /
    /// `attn_v_b` over all heads): calibration puts block i's quantized weights in
    /// before block i+1 is calibrated.
    pub fn replace_weight(&mut self, name: &str, w: WeightMatrix) -> Result<()> {
        let (li, suffix) = split_block_name(name)
            .filter(|(li, _)| *li < self.layers.len())
            .ok_or_else(|| EngineError::MissingTensor(name.into()))?;
        let d = self.hp.n_embd;
        let n_head = self.hp.n_head;
        let moe = self.hp.moe.clone();
        let layer = &mut self.layers[li];
        let missing = || EngineError::MissingTensor(name.to_string());
        let swap = |slot: &mut WeightMatrix, w: WeightMatrix| -> Result<()> {
            check_dims(name, &w, slot.rows, slot.cols)?;
            *slot = w;
            Ok(())
        };
        let swap_opt = |slot: &mut Option<WeightMatrix>, w: WeightMatrix| -> Result<()> {
            match slot {
                Some(s) => swap(s, w),
                None => Err(missing()),
            }
        };
        let swap_heads = |slots: &mut Vec<WeightMatrix>, w: WeightMatrix| -> Result<()> {
            let per = slots.first().map(|s| s.rows).unwrap_or(0);
            let cols = slots.first().map(|s| s.cols).unwrap_or(0);
            check_dims(name, &w, per * slots.len(), cols)?;
            for (h, s) in slots.iter_mut().enumerate() {
                *s = w.row_range(h * per, per);
            }
            Ok(())
        };
        match (&mut layer.attn, suffix) {
            (Attention::Standard { wq, .. }, "attn_q.weight") => return swap_opt(wq, w),
            (Attention::Standard { wk, .. }, "attn_k.weight") => return swap_opt(wk, w),
            (Attention::Standard { wv, .. }, "attn_v.weight") => return swap_opt(wv, w),
            (Attention::Standard { wqkv, .. }, "attn_qkv.weight") => return swap_opt(wqkv, w),
            (Attention::Standard { wo, .. }, "attn_output.weight") => return swap(wo, w),
            (Attention::Mla { wq, .. }, "attn_q.weight") => return swap_opt(wq, w),
            (Attention::Mla { wq_a, .. }, "attn_q_a.weight") => return swap_opt(wq_a, w),
            (Attention::Mla { wq_b, .. }, "attn_q_b.weight") => return swap_opt(wq_b, w),
            (Attention::Mla { wkv_a, .. }, "attn_kv_a_mqa.weight") => return swap(wkv_a, w),
            (Attention::Mla { k_b, .. }, "attn_k_b.weight") => return swap_heads(k_b, w),
            (Attention::Mla { v_b, .. }, "attn_v_b.weight") => return swap_heads(v_b, w),
            (Attention::Mla { k_b, v_b, .. }, "attn_kv_b.weight") => {
                let (nope, vdim) = (k_b[0].cols, v_b[0].rows);
                let lora = k_b[0].rows;
                check_dims(name, &w, n_head * (nope + vdim), lora)?;
                let (kb, vb) = split_kv_b(&w, n_head, nope, vdim);
                *k_b = kb;
                *v_b = vb;
                return Ok(());
            }
            (Attention::Mla { wo, .. }, "attn_output.weight") => return swap(wo, w),
            _ => {}
        }
        match (&mut layer.ffn, suffix) {
            (FeedForward::Dense(m), "ffn_gate.weight") => swap_opt(&mut m.gate, w),
            (FeedForward::Dense(m), "ffn_up.weight") => swap(&mut m.up, w),
            (FeedForward::Dense(m), "ffn_down.weight") => swap(&mut m.down, w),
            (
                FeedForward::Moe {
                    shared: Some(m), ..
                },
                "ffn_gate_shexp.weight",
            ) => swap_opt(&mut m.gate, w),
            (
                FeedForward::Moe {
                    shared: Some(m), ..
                },
                "ffn_up_shexp.weight",
            ) => swap(&mut m.up, w),
            (
                FeedForward::Moe {
                    shared: Some(m), ..
                },
                "ffn_down_shexp.weight",
            ) => swap(&mut m.down, w),
            (FeedForward::Moe { experts, .. }, "ffn_gate_exps.weight" | "ffn_up_exps.weight")
            | (FeedForward::Moe { experts, .. }, "ffn_down_exps.weight") => {
                let p = moe.as_ref().ok_or_else(missing)?;
                let ff = p.n_ff_exp;
                let (per, cols) = if suffix == "ffn_down_exps.weight" {
                    (d, ff)
                } else {
                    (ff, d)
                };
                check_dims(name, &w, per * experts.len(), cols)?;
                for (e, m) in experts.iter_mut().enumerate() {
                    let part = w.row_range(e * per, per);
                    match suffix {
                        "ffn_gate_exps.weight" => m.gate = Some(part),
                        "ffn_up_exps.weight" => m.up = part,
                        _ => m.down = part,
                    }
                }
                Ok(())
            }
            _ => Err(missing()),
        }
    }

    /// Replace a per-channel vector of a block (norm weights, biases), GGUF name.
    pub fn replace_vector(&mut self, name: &str, v: Vec<f32>) -> Result<()> {
        let (li, suffix) = split_block_name(name)
            .filter(|(li, _)| *li < self.layers.len())
            .ok_or_else(|| EngineError::MissingTensor(name.into()))?;
        let layer = &mut self.layers[li];
        let slot: Option<&mut Vec<f32>> = match suffix {
            "attn_norm.weight" => Some(&mut layer.attn_norm),
            "ffn_norm.weight" => Some(&mut layer.ffn_norm),
            "post_attention_norm.weight" => layer.post_attn_norm.as_mut(),
            "post_ffw_norm.weight" => layer.post_ffn_norm.as_mut(),
            _ => match (&mut layer.attn, suffix) {
                (Attention::Standard { bq, .. }, "attn_q.bias") => bq.as_mut(),
                (Attention::Standard { bk, .. }, "attn_k.bias") => bk.as_mut(),
                (Attention::Standard { bv, .. }, "attn_v.bias") => bv.as_mut(),
                (Attention::Standard { q_norm, .. }, "attn_q_norm.weight") => q_norm.as_mut(),
                (Attention::Standard { k_norm, .. }, "attn_k_norm.weight") => k_norm.as_mut(),
                (Attention::Mla { q_a_norm, .. }, "attn_q_a_norm.weight") => q_a_norm.as_mut(),
                (Attention::Mla { kv_a_norm, .. }, "attn_kv_a_norm.weight") => Some(kv_a_norm),
                _ => None,
            },
        };
        let slot = slot.ok_or_else(|| EngineError::MissingTensor(name.into()))?;
        if slot.len() != v.len() {
            return Err(EngineError::BadShape {
                name: name.into(),
                got: vec![v.len()],
                want: vec![slot.len()],
            });
        }
        *slot = v;
        Ok(())
    }

    /// Embedding rows of `ids` (scaled where the architecture does).
    fn embed_ids(&self, ids: &[u32]) -> Vec<f32> {
        let d = self.hp.n_embd;
        let mut x = vec![0.0f32; ids.len() * d];
        for (row, &id) in x.chunks_mut(d).zip(ids) {
            llmq_kernels::kernels::dequantize_row(
                self.tok_embd.ty,
                self.tok_embd.row(id as usize),
                row,
            );
            if let Some(s) = self.hp.embed_scale {
                row.iter_mut().for_each(|v| *v *= s);
            }
        }
        x
    }

    /// One decoder block over `x` (`[tokens, n_embd]`), in place.
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        li: usize,
        layer: &Layer,
        x: &mut [f32],
        seqs: &mut [SeqStep<'_>],
        tok_seq: &[usize],
        tok_pos: &[usize],
        tap: &mut Tap<'_>,
    ) -> Result<()> {
        let hp = &self.hp;
        let t_all = tok_seq.len();
        let xn = rms_norm(x, &layer.attn_norm, hp.eps);
        let mut a = self.attention(li, layer, &xn, seqs, tok_seq, tok_pos, tap)?;
        if let Some(w) = &layer.post_attn_norm {
            rms_norm_rows(&mut a, w, hp.eps);
        }
        x.iter_mut().zip(&a).for_each(|(x, a)| *x += a);
        let h = rms_norm(x, &layer.ffn_norm, hp.eps);
        let mut f = self.feed_forward(&layer.ffn, &h, t_all, tap);
        if let Some(w) = &layer.post_ffn_norm {
            rms_norm_rows(&mut f, w, hp.eps);
        }
        x.iter_mut().zip(&f).for_each(|(x, f)| *x += f);
        Ok(())
    }

    /// The embedding rows of `tokens` (`[tokens, n_embd]`), the input of block 0.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.hp.n_vocab) {
            return Err(EngineError::BadToken {
                id: t,
                vocab: self.hp.n_vocab,
            });
        }
        Ok(self.embed_ids(tokens))
    }

    /// Run block `layer` alone over `hidden` (`[Σ seq_lens, n_embd]`, the sequences one
    /// after another), in place: every sequence is independent, with positions from 0
    /// and no cache kept. `observer` sees the input rows of every Linear product.
    pub fn forward_block(
        &self,
        layer: usize,
        hidden: &mut [f32],
        seq_lens: &[usize],
        observer: Option<&mut dyn LinearObserver>,
    ) -> Result<()> {
        let d = self.hp.n_embd;
        let total: usize = seq_lens.iter().sum();
        if layer >= self.layers.len() {
            return Err(EngineError::Source(format!(
                "block {layer} does not exist (the model has {})",
                self.layers.len()
            )));
        }
        if hidden.len() != total * d {
            return Err(EngineError::Source(format!(
                "hidden holds {} values, {total} tokens x {d} need {}",
                hidden.len(),
                total * d
            )));
        }
        let mut tok_seq = Vec::with_capacity(total);
        let mut tok_pos = Vec::with_capacity(total);
        for (s, &n) in seq_lens.iter().enumerate() {
            tok_seq.extend(std::iter::repeat_n(s, n));
            tok_pos.extend(0..n);
        }
        let mut caches: Vec<KvCache> = seq_lens
            .iter()
            .map(|&n| KvCache::new(self, n.max(1)))
            .collect();
        let mut seqs: Vec<SeqStep<'_>> = caches
            .iter_mut()
            .map(|c| SeqStep {
                tokens: &[],
                cache: c,
                logits: Logits::None,
            })
            .collect();
        let mut tap = Tap {
            obs: observer,
            layer,
        };
        self.layer_forward(
            layer,
            &self.layers[layer],
            hidden,
            &mut seqs,
            &tok_seq,
            &tok_pos,
            &mut tap,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        li: usize,
        layer: &Layer,
        xn: &[f32],
        seqs: &mut [SeqStep<'_>],
        tok_seq: &[usize],
        tok_pos: &[usize],
        tap: &mut Tap<'_>,
    ) -> Result<Vec<f32>> {
        let hp = &self.hp;
        let t_all = tok_seq.len();
        let lp = &hp.layers[li];
        let mm = |w: &WeightMatrix, x: &[f32]| {
            let mut y = vec![0.0f32; t_all * w.rows];
            matmul(w, x, t_all, &mut y);
            y
        };
        match &layer.attn {
            Attention::Standard {
                wq,
                wk,
                wv,
                wqkv,
                bq,
                bk,
                bv,
                q_norm,
                k_norm,
                wo,
            } => {
                let (dk, dv) = (hp.head_dim_k, hp.head_dim_v);
                let (qd, kd, vd) = (hp.n_head * dk, hp.n_head_kv * dk, hp.n_head_kv * dv);
                if tap.wants(LinearStage::AttnInput) {
                    let names: &[&'static str] = if wqkv.is_some() {
                        &["attn_qkv.weight"]
                    } else {
                        &["attn_q.weight", "attn_k.weight", "attn_v.weight"]
                    };
                    tap.see(LinearStage::AttnInput, None, names, xn, t_all);
                }
                let (mut q, mut k, mut v) = match wqkv {
                    Some(w) => {
                        let qkv = mm(w, xn);
                        let w_all = qd + kd + vd;
                        let mut q = Vec::with_capacity(t_all * qd);
                        let mut k = Vec::with_capacity(t_all * kd);
                        let mut v = Vec::with_capacity(t_all * vd);
                        for row in qkv.chunks(w_all) {
                            q.extend_from_slice(&row[..qd]);
                            k.extend_from_slice(&row[qd..qd + kd]);
                            v.extend_from_slice(&row[qd + kd..]);
                        }
                        (q, k, v)
                    }
                    None => (
                        mm(wq.as_ref().unwrap(), xn),
                        mm(wk.as_ref().unwrap(), xn),
                        mm(wv.as_ref().unwrap(), xn),
                    ),
                };
                for (buf, b) in [(&mut q, bq), (&mut k, bk), (&mut v, bv)] {
                    if let Some(b) = b {
                        for row in buf.chunks_mut(b.len()) {
                            row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
                        }
                    }
                }
                if let Some(w) = q_norm {
                    rms_norm_rows(&mut q, w, hp.eps);
                }
                if let Some(w) = k_norm {
                    rms_norm_rows(&mut k, w, hp.eps);
                }
                for t in 0..t_all {
                    let tab = rope_table(tok_pos[t], hp.n_rot, lp.rope_base, hp.rope_scale);
                    for head in q[t * qd..(t + 1) * qd].chunks_mut(dk) {
                        rope_apply(head, &tab, hp.rope_kind);
                    }
                    for head in k[t * kd..(t + 1) * kd].chunks_mut(dk) {
                        rope_apply(head, &tab, hp.rope_kind);
                    }
                }
                for t in 0..t_all {
                    let c = &mut seqs[tok_seq[t]].cache.layers[li];
                    c.k.extend_from_slice(&k[t * kd..(t + 1) * kd]);
                    c.v.extend_from_slice(&v[t * vd..(t + 1) * vd]);
                }
                let caches: Vec<&LayerCache> = seqs.iter().map(|s| &s.cache.layers[li]).collect();
                let gqa = hp.gqa();
                let scale = hp.attn_scale;
                let mut out = vec![0.0f32; t_all * hp.n_head * dv];
                out.par_chunks_mut(dv).enumerate().for_each(|(idx, o)| {
                    let (t, h) = (idx / hp.n_head, idx % hp.n_head);
                    let kvh = h / gqa;
                    let c = caches[tok_seq[t]];
                    let p = tok_pos[t];
                    let first = match lp.sliding_window {
                        Some(w) => (p + 1).saturating_sub(w),
                        None => 0,
                    };
                    let qh = &q[t * qd + h * dk..t * qd + (h + 1) * dk];
                    let mut scores: Vec<f32> = (first..=p)
                        .map(|j| {
                            let kj = &c.k[j * kd + kvh * dk..j * kd + (kvh + 1) * dk];
                            crate::ops::dot(qh, kj) * scale
                        })
                        .collect();
                    softmax(&mut scores);
                    for (s, j) in scores.iter().zip(first..=p) {
                        let vj = &c.v[j * vd + kvh * dv..j * vd + (kvh + 1) * dv];
                        crate::ops::axpy(o, *s, vj);
                    }
                });
                tap.see(
                    LinearStage::AttnOutput,
                    None,
                    &["attn_output.weight"],
                    &out,
                    t_all,
                );
                Ok(mm(wo, &out))
            }
            Attention::Mla {
                wq,
                wq_a,
                q_a_norm,
                wq_b,
                wkv_a,
                kv_a_norm,
                k_b,
                v_b,
                wo,
            } => {
                let m = hp.mla.as_ref().unwrap();
                let h_n = hp.n_head;
                let (nope, rope, lora, vdim) = (m.qk_nope, m.qk_rope, m.kv_lora_rank, m.v_head_dim);
                let qk = nope + rope;
                if tap.wants(LinearStage::AttnInput) {
                    let names: &[&'static str] = if wq.is_some() {
                        &["attn_q.weight", "attn_kv_a_mqa.weight"]
                    } else {
                        &["attn_q_a.weight", "attn_kv_a_mqa.weight"]
                    };
                    tap.see(LinearStage::AttnInput, None, names, xn, t_all);
                }
                let q = match wq {
                    Some(w) => mm(w, xn),
                    None => {
                        let mut qa = mm(wq_a.as_ref().unwrap(), xn);
                        rms_norm_rows(&mut qa, q_a_norm.as_ref().unwrap(), hp.eps);
                        tap.see(
                            LinearStage::AttnLatent,
                            None,
                            &["attn_q_b.weight"],
                            &qa,
                            t_all,
                        );
                        let wb = wq_b.as_ref().unwrap();
                        let mut y = vec![0.0f32; t_all * wb.rows];
                        matmul(wb, &qa, t_all, &mut y);
                        y
                    }
                };
                let kv = mm(wkv_a, xn);
                let kw = lora + rope;
                // cache rows: normalized latent, then the roped shared key
                let mut q_rope = vec![0.0f32; t_all * h_n * rope];
                let mut latent = Vec::new();
                let want_latent = tap.wants(LinearStage::AttnLatent);
                for t in 0..t_all {
                    let tab = rope_table(tok_pos[t], rope, lp.rope_base, hp.rope_scale);
                    let mut row = kv[t * kw..(t + 1) * kw].to_vec();
                    rms_norm_rows(&mut row[..lora], kv_a_norm, hp.eps);
                    if want_latent {
                        latent.extend_from_slice(&row[..lora]);
                    }
                    rope_apply(&mut row[lora..], &tab, hp.rope_kind);
                    seqs[tok_seq[t]].cache.layers[li].k.extend_from_slice(&row);
                    for h in 0..h_n {
                        let src = &q[t * h_n * qk + h * qk + nope..t * h_n * qk + (h + 1) * qk];
                        let dst = &mut q_rope[(t * h_n + h) * rope..(t * h_n + h + 1) * rope];
                        dst.copy_from_slice(src);
                        rope_apply(dst, &tab, hp.rope_kind);
                    }
                }
                if want_latent {
                    tap.see(
                        LinearStage::AttnLatent,
                        None,
                        &["attn_k_b.weight", "attn_v_b.weight"],
                        &latent,
                        t_all,
                    );
                }
                // absorbed query: q_lat[t,h] = k_b[h] · q_nope[t,h]
                let mut q_lat = vec![0.0f32; t_all * h_n * lora];
                for h in 0..h_n {
                    let mut qn = Vec::with_capacity(t_all * nope);
                    for t in 0..t_all {
                        qn.extend_from_slice(
                            &q[t * h_n * qk + h * qk..t * h_n * qk + h * qk + nope],
                        );
                    }
                    let mut y = vec![0.0f32; t_all * lora];
                    matmul(&k_b[h], &qn, t_all, &mut y);
                    for t in 0..t_all {
                        q_lat[(t * h_n + h) * lora..(t * h_n + h + 1) * lora]
                            .copy_from_slice(&y[t * lora..(t + 1) * lora]);
                    }
                }
                let caches: Vec<&LayerCache> = seqs.iter().map(|s| &s.cache.layers[li]).collect();
                let scale = hp.attn_scale;
                let mut o_lat = vec![0.0f32; t_all * h_n * lora];
                o_lat.par_chunks_mut(lora).enumerate().for_each(|(idx, o)| {
                    let t = idx / h_n;
                    let c = caches[tok_seq[t]];
                    let p = tok_pos[t];
                    let first = match lp.sliding_window {
                        Some(w) => (p + 1).saturating_sub(w),
                        None => 0,
                    };
                    let ql = &q_lat[idx * lora..(idx + 1) * lora];
                    let qr = &q_rope[idx * rope..(idx + 1) * rope];
                    let mut scores: Vec<f32> = (first..=p)
                        .map(|j| {
                            let row = &c.k[j * kw..(j + 1) * kw];
                            (crate::ops::dot(ql, &row[..lora]) + crate::ops::dot(qr, &row[lora..]))
                                * scale
                        })
                        .collect();
                    softmax(&mut scores);
                    for (s, j) in scores.iter().zip(first..=p) {
                        crate::ops::axpy(o, *s, &c.k[j * kw..j * kw + lora]);
                    }
                });
                let mut out = vec![0.0f32; t_all * h_n * vdim];
                for h in 0..h_n {
                    let mut ol = Vec::with_capacity(t_all * lora);
                    for t in 0..t_all {
                        ol.extend_from_slice(
                            &o_lat[(t * h_n + h) * lora..(t * h_n + h + 1) * lora],
                        );
                    }
                    let mut y = vec![0.0f32; t_all * vdim];
                    matmul(&v_b[h], &ol, t_all, &mut y);
                    for t in 0..t_all {
                        out[(t * h_n + h) * vdim..(t * h_n + h + 1) * vdim]
                            .copy_from_slice(&y[t * vdim..(t + 1) * vdim]);
                    }
                }
                tap.see(
                    LinearStage::AttnOutput,
                    None,
                    &["attn_output.weight"],
                    &out,
                    t_all,
                );
                Ok(mm(wo, &out))
            }
        }
    }

    fn mlp(&self, m: &Mlp, x: &[f32], n: usize, tap: &mut Tap<'_>, kind: MlpKind) -> Vec<f32> {
        if tap.wants(LinearStage::FfnInput) {
            let (names, expert): (&[&'static str], _) = match kind {
                MlpKind::Dense if m.gate.is_some() => (&["ffn_gate.weight", "ffn_up.weight"], None),
                MlpKind::Dense => (&["ffn_up.weight"], None),
                MlpKind::Expert(e) => (&["ffn_gate_exps.weight", "ffn_up_exps.weight"], Some(e)),
                MlpKind::Shared => (&["ffn_gate_shexp.weight", "ffn_up_shexp.weight"], None),
            };
            tap.see(LinearStage::FfnInput, expert, names, x, n);
        }
        let up_rows = m.up.rows;
        let mut up = vec![0.0f32; n * up_rows];
        matmul(&m.up, x, n, &mut up);
        let act = |v: f32| if self.gelu { gelu_tanh(v) } else { silu(v) };
        let (ff, hidden) = match &m.gate {
            Some(g) => {
                let mut gate = vec![0.0f32; n * g.rows];
                matmul(g, x, n, &mut gate);
                gate.iter_mut().zip(&up).for_each(|(g, u)| *g = act(*g) * u);
                (g.rows, gate)
            }
            None => {
                // fused gate|up rows (Phi-3): first half gate, second half up
                let ff = up_rows / 2;
                let mut h = vec![0.0f32; n * ff];
                for (t, row) in up.chunks(up_rows).enumerate() {
                    for i in 0..ff {
                        h[t * ff + i] = act(row[i]) * row[ff + i];
                    }
                }
                (ff, h)
            }
        };
        debug_assert_eq!(m.down.cols, ff);
        if tap.wants(LinearStage::FfnDown) {
            let (names, expert): (&[&'static str], _) = match kind {
                MlpKind::Dense => (&["ffn_down.weight"], None),
                MlpKind::Expert(e) => (&["ffn_down_exps.weight"], Some(e)),
                MlpKind::Shared => (&["ffn_down_shexp.weight"], None),
            };
            tap.see(LinearStage::FfnDown, expert, names, &hidden, n);
        }
        let mut y = vec![0.0f32; n * m.down.rows];
        matmul(&m.down, &hidden, n, &mut y);
        y
    }

    fn feed_forward(&self, ffn: &FeedForward, h: &[f32], n: usize, tap: &mut Tap<'_>) -> Vec<f32> {
        match ffn {
            FeedForward::Dense(m) => self.mlp(m, h, n, tap, MlpKind::Dense),
            FeedForward::Moe {
                router,
                bias,
                experts,
                shared,
            } => {
                let p = self.hp.moe.as_ref().unwrap();
                let d = self.hp.n_embd;
                let mut logits = vec![0.0f32; n * p.n_expert];
                matmul(router, h, n, &mut logits);
                // per expert: (token, weight)
                let mut assigned: Vec<Vec<(usize, f32)>> = vec![Vec::new(); p.n_expert];
                for (t, l) in logits.chunks(p.n_expert).enumerate() {
                    for (e, w) in route(l, bias.as_deref(), p) {
                        assigned[e].push((t, w));
                    }
                }
                if tap.obs.is_some() {
                    let counts: Vec<usize> = assigned.iter().map(|a| a.len()).collect();
                    tap.expert_counts(&counts);
                }
                let mut out = vec![0.0f32; n * d];
                for (e, toks) in assigned.iter().enumerate() {
                    if toks.is_empty() {
                        continue;
                    }
                    let mut xe = Vec::with_capacity(toks.len() * d);
                    for (t, _) in toks {
                        xe.extend_from_slice(&h[t * d..(t + 1) * d]);
                    }
                    let ye = self.mlp(&experts[e], &xe, toks.len(), tap, MlpKind::Expert(e));
                    for (k, (t, w)) in toks.iter().enumerate() {
                        let dst = &mut out[t * d..(t + 1) * d];
                        crate::ops::axpy(dst, *w, &ye[k * d..(k + 1) * d]);
                    }
                }
                if let Some(s) = shared {
                    let ys = self.mlp(s, h, n, tap, MlpKind::Shared);
                    out.iter_mut().zip(&ys).for_each(|(o, y)| *o += y);
                }
                out
            }
        }
    }
}

/// `blk.N.rest` → (N, rest).
fn split_block_name(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("blk.")?;
    let (n, tail) = rest.split_once('.')?;
    Some((n.parse().ok()?, tail))
}

/// Which MLP of a block runs (names its weights for observers).
#[derive(Clone, Copy)]
enum MlpKind {
    Dense,
    Expert(usize),
    Shared,
}

/// Choose experts for one token from its router logits: `(expert, weight)` pairs.
pub fn route(logits: &[f32], bias: Option<&[f32]>, p: &MoeParams) -> Vec<(usize, f32)> {
    let n = logits.len();
    let probs: Vec<f32> = match p.gating {
        Gating::Softmax => {
            let mut v = logits.to_vec();
            softmax(&mut v);
            v
        }
        Gating::Sigmoid => logits.iter().map(|l| sigmoid(*l)).collect(),
    };
    let mut sel: Vec<f32> = match bias {
        Some(b) => probs.iter().zip(b).map(|(p, b)| p + b).collect(),
        None => probs.clone(),
    };
    if p.n_group > 1 && p.topk_group < p.n_group {
        // a group's score is the sum of its two best biased scores
        let per = n / p.n_group;
        let mut gscore: Vec<(usize, f32)> = (0..p.n_group)
            .map(|g| {
                let mut v: Vec<f32> = sel[g * per..(g + 1) * per].to_vec();
                v.sort_by(|a, b| b.total_cmp(a));
                (g, v.iter().take(2).sum())
            })
            .collect();
        gscore.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for &(g, _) in &gscore[p.topk_group..] {
            sel[g * per..(g + 1) * per].fill(f32::NEG_INFINITY);
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| sel[b].total_cmp(&sel[a]).then(a.cmp(&b)));
    order.truncate(p.n_expert_used);
    let mut w: Vec<f32> = order.iter().map(|&e| probs[e]).collect();
    if p.norm_weights {
        let s: f32 = w.iter().sum();
        if s > 0.0 {
            w.iter_mut().for_each(|x| *x /= s);
        }
    }
    w.iter_mut().for_each(|x| *x *= p.weights_scale);
    order.into_iter().zip(w).collect()
}

/// Split a joint `kv_b` (`[n_head * (nope + v), lora]`) into per-head `k_b`
/// (`[lora, nope]`, transposed) and `v_b` (`[v, lora]`), as f32.
fn split_kv_b(
    kvb: &WeightMatrix,
    h: usize,
    nope: usize,
    v: usize,
) -> (Vec<WeightMatrix>, Vec<WeightMatrix>) {
    let lora = kvb.cols;
    let all = kvb.to_f32();
    let mut kb = Vec::with_capacity(h);
    let mut vb = Vec::with_capacity(h);
    for j in 0..h {
        let base = j * (nope + v);
        let mut kt = vec![0.0f32; lora * nope];
        for c in 0..nope {
            for l in 0..lora {
                kt[l * nope + c] = all[(base + c) * lora + l];
            }
        }
        kb.push(WeightMatrix::from_f32(lora, nope, kt));
        vb.push(WeightMatrix::from_f32(
            v,
            lora,
            all[(base + nope) * lora..(base + nope + v) * lora].to_vec(),
        ));
    }
    (kb, vb)
}
