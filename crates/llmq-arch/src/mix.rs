//! Per-tensor type choice of llama.cpp's quantization mixes, as in `src/llama-quant.cpp`
//! of llama.cpp 0.3.36 (`tensor_allows_quantization`, `tensor_get_category`,
//! `llama_tensor_get_type_impl`, `tensor_type_fallback`, `llama_ftype_get_default_type`,
//! `init_quantize_state_counters`), without imatrix-only or user-override paths.
//!
//! Tensors are visited in the order of llama.cpp's loader map (`weight_name_comparer`:
//! by `blk.N.` layer, non-block tensors first, then by name); the `attn_v` / `ffn_*`
//! counters follow that order, whatever order the input is given in.

use crate::ArchError;
use llmq_formats::GgmlType;

/// The llama-quantize mixes this project produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mix {
    Q2K,
    Q3KS,
    Q3KM,
    Q3KL,
    Q4_0,
    Q4KS,
    Q4KM,
    Q5KS,
    Q5KM,
    Q6K,
    Q8_0,
    IQ4XS,
    /// llama.cpp's `MXFP4_MOE`: stacked expert tensors MXFP4, the rest Q8_0.
    MXFP4MOE,
    /// Ours (llama.cpp has no such mix): every quantized Linear weight MXFP4, embeddings
    /// and output Q8_0 as in `MXFP4_MOE`; written with `MXFP4_MOE`'s file type.
    MXFP4,
    /// Ours (llama.cpp 0.3.36 reads NVFP4 but `llama-quantize` has no NVFP4 mix): every
    /// quantized Linear weight NVFP4 (rows not a multiple of 64 fall back to Q8_0),
    /// embeddings and output Q8_0 as in `MXFP4`; file type `LLAMA_FTYPE_MOSTLY_NVFP4`.
    NVFP4,
    F16,
    BF16,
}

const MIXES: [(Mix, &str, u32); 17] = [
    (Mix::Q2K, "Q2_K", 10),
    (Mix::Q3KS, "Q3_K_S", 11),
    (Mix::Q3KM, "Q3_K_M", 12),
    (Mix::Q3KL, "Q3_K_L", 13),
    (Mix::Q4_0, "Q4_0", 2),
    (Mix::Q4KS, "Q4_K_S", 14),
    (Mix::Q4KM, "Q4_K_M", 15),
    (Mix::Q5KS, "Q5_K_S", 16),
    (Mix::Q5KM, "Q5_K_M", 17),
    (Mix::Q6K, "Q6_K", 18),
    (Mix::Q8_0, "Q8_0", 7),
    (Mix::IQ4XS, "IQ4_XS", 30),
    (Mix::MXFP4MOE, "MXFP4_MOE", 38),
    (Mix::MXFP4, "MXFP4", 38),
    (Mix::NVFP4, "NVFP4", 39),
    (Mix::F16, "F16", 1),
    (Mix::BF16, "BF16", 32),
];

impl Mix {
    /// All mixes.
    pub fn all() -> impl Iterator<Item = Mix> {
        MIXES.iter().map(|m| m.0)
    }

    /// Parse `Q4_K_M`, `q4_k_m`, ... (llama-quantize spelling, case-insensitive).
    pub fn from_name(s: &str) -> Option<Mix> {
        MIXES
            .iter()
            .find(|m| m.1.eq_ignore_ascii_case(s))
            .map(|m| m.0)
    }

    pub fn name(self) -> &'static str {
        MIXES
            .iter()
            .find(|m| m.0 == self)
            .map(|m| m.1)
            .unwrap_or_default()
    }

    /// `general.file_type` (`llama_ftype`).
    pub fn file_type(self) -> u32 {
        MIXES
            .iter()
            .find(|m| m.0 == self)
            .map(|m| m.2)
            .unwrap_or_default()
    }

    /// The default tensor type (`llama_ftype_get_default_type`).
    pub fn base_type(self) -> GgmlType {
        match self {
            Mix::Q2K => GgmlType::Q2K,
            Mix::Q3KS | Mix::Q3KM | Mix::Q3KL => GgmlType::Q3K,
            Mix::Q4_0 => GgmlType::Q4_0,
            Mix::Q4KS | Mix::Q4KM => GgmlType::Q4K,
            Mix::Q5KS | Mix::Q5KM => GgmlType::Q5K,
            Mix::Q6K => GgmlType::Q6K,
            Mix::Q8_0 => GgmlType::Q8_0,
            Mix::IQ4XS => GgmlType::IQ4XS,
            Mix::MXFP4MOE | Mix::MXFP4 => GgmlType::MXFP4,
            Mix::NVFP4 => GgmlType::NVFP4,
            Mix::F16 => GgmlType::F16,
            Mix::BF16 => GgmlType::BF16,
        }
    }
}

/// Model facts the mix rules read (`llama_hparams` as loaded from the GGUF).
#[derive(Debug, Clone, PartialEq)]
pub struct MixModel {
    /// `general.architecture` (only `falcon` changes rules)
    pub arch: String,
    /// `n_layer_all`: the counter denominators for ffn tensors
    pub n_layer: usize,
    pub n_head: usize,
    /// as written in the GGUF (1 for MLA models)
    pub n_head_kv: usize,
    pub n_expert: usize,
    /// llama.cpp classified the model as `LLM_TYPE_70B`
    pub is_70b: bool,
    pub has_imatrix: bool,
}

impl MixModel {
    /// The facts for a config exported by this crate's plan.
    pub fn from_config(cfg: &crate::ArchConfig) -> MixModel {
        let arch = crate::gguf_names::gguf_arch(cfg.family);
        let n_expert = cfg.moe.as_ref().map(|m| m.n_experts).unwrap_or(0);
        // `LLM_TYPE_70B` as the loaders assign it (src/models/llama.cpp, qwen2.cpp)
        let is_70b = cfg.num_layers == 80
            && match arch {
                "llama" => n_expert != 8 && cfg.num_heads != cfg.num_kv_heads,
                "qwen2" => true,
                _ => false,
            };
        MixModel {
            arch: arch.into(),
            n_layer: cfg.num_layers,
            n_head: cfg.num_heads,
            n_head_kv: if cfg.mla.is_some() {
                1
            } else {
                cfg.num_kv_heads
            },
            n_expert,
            is_70b,
            has_imatrix: false,
        }
    }

    fn n_gqa(&self) -> usize {
        self.n_head / self.n_head_kv.max(1)
    }
}

/// One tensor as the quantizer sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct MixTensor {
    pub name: String,
    pub shape_ne: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    Output,
    AttnQkv,
    AttnKvB,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

/// `tensor_get_category`: substring tests in this order.
fn category(name: &str) -> Category {
    use Category::*;
    if name == "output.weight" {
        return Output;
    }
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        return TokenEmbd;
    }
    let table: [(&str, Category); 9] = [
        ("attn_qkv.weight", AttnQkv),
        ("attn_kv_b.weight", AttnKvB),
        ("attn_v.weight", AttnV),
        ("attn_k.weight", AttnK),
        ("attn_q.weight", AttnQ),
        ("attn_output.weight", AttnOutput),
        ("ffn_up", FfnUp),
        ("ffn_gate", FfnGate),
        ("ffn_down", FfnDown),
    ];
    table
        .iter()
        .find(|(s, _)| name.contains(s))
        .map(|(_, c)| *c)
        .unwrap_or(Other)
}

fn is_attn_v_like(c: Category) -> bool {
    matches!(c, Category::AttnV | Category::AttnQkv | Category::AttnKvB)
}

/// `tensor_allows_quantization` for the tensors this project writes (2-D/3-D `*.weight`,
/// not norms, not the router, not position embeddings).
pub fn allows_quantization(name: &str, n_dims: usize) -> bool {
    n_dims >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && !name.contains("ffn_gate_tid2eid.weight")
        && !name.contains("altup")
        && !name.contains("laurel")
        && !name.contains("per_layer_model_proj")
        && name != "position_embd.weight"
        && name != "token_types.weight"
        && !name.contains("ssm_conv1d")
        && !name.contains("attn_rel_b.weight")
}

/// Type a tensor keeps when it is not quantized: the converter stores 1-D tensors,
/// norms, routers and every tensor not named `*.weight` (GPT-OSS's 2-D expert biases) as F32 (`ModelBase.prepare_tensors`), other tensors in the file's
/// float type (F16 unless the mix is BF16).
pub fn unquantized_type(name: &str, n_dims: usize, mix: Mix) -> GgmlType {
    if n_dims <= 1
        || name.ends_with("_norm.weight")
        || name.contains("ffn_gate_inp.weight")
        || !name.ends_with(".weight")
    {
        GgmlType::F32
    } else if mix == Mix::BF16 {
        GgmlType::BF16
    } else {
        GgmlType::F16
    }
}

/// `weight_name_comparer`: layer of `blk.N.` (-1 otherwise), then name.
fn loader_key(name: &str) -> (i64, &str) {
    let layer = name
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse::<i64>().ok())
        .unwrap_or(-1);
    (layer, name)
}

fn use_more_bits(i: i64, n: i64) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// `tensor_type_fallback`: a type whose block does not divide ne[0].
pub fn fallback(ncols: usize, target: GgmlType) -> GgmlType {
    use GgmlType::*;
    if ncols.is_multiple_of(target.block_size()) {
        return target;
    }
    let ret = match target {
        IQ1S | IQ1M | IQ2XXS | IQ2XS | IQ2S | IQ3XXS | IQ3S | IQ4XS => IQ4NL,
        Q2K | Q3K | TQ1_0 | TQ2_0 => Q4_0,
        Q4K => Q5_0,
        Q5K => Q5_1,
        Q6K | NVFP4 => Q8_0,
        other => other,
    };
    if !ncols.is_multiple_of(ret.block_size()) {
        F16
    } else {
        ret
    }
}

struct State {
    n_attention_wv: i64,
    i_attention_wv: i64,
    i_ffn_down: i64,
    i_ffn_gate: i64,
    i_ffn_up: i64,
    tied: bool,
}

/// Choose the GGML type of every tensor for `mix`. The result is in input order.
pub fn choose_types(
    mix: Mix,
    model: &MixModel,
    tensors: &[MixTensor],
) -> Result<Vec<GgmlType>, ArchError> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| loader_key(&tensors[a].name).cmp(&loader_key(&tensors[b].name)));
    let mut st = State {
        n_attention_wv: tensors
            .iter()
            .filter(|t| is_attn_v_like(category(&t.name)))
            .count() as i64,
        i_attention_wv: 0,
        i_ffn_down: 0,
        i_ffn_gate: 0,
        i_ffn_up: 0,
        tied: !tensors.iter().any(|t| t.name == "output.weight"),
    };
    let mut out = vec![GgmlType::F32; tensors.len()];
    for i in order {
        let t = &tensors[i];
        let n_dims = t.shape_ne.len();
        out[i] = if !allows_quantization(&t.name, n_dims) {
            unquantized_type(&t.name, n_dims, mix)
        } else if !mix.base_type().is_quantized() {
            mix.base_type()
        } else {
            let ty = choose_one(mix, model, &mut st, t)?;
            fallback(t.shape_ne[0], ty)
        };
    }
    Ok(out)
}

fn layer_of(model: &MixModel, counter: i64, name: &str) -> Result<(i64, i64), ArchError> {
    let n = model.n_layer as i64;
    if model.n_expert > 1 {
        let l = loader_key(name).0;
        if l < 0 {
            return Err(ArchError::NoLayer(name.into()));
        }
        if l >= n {
            return Err(ArchError::BadLayer {
                name: name.into(),
                layer: l as usize,
                n_layer: model.n_layer,
            });
        }
        return Ok((l, n));
    }
    Ok((counter, n))
}

/// `llama_tensor_get_type_impl` for the supported mixes.
fn choose_one(
    mix: Mix,
    model: &MixModel,
    st: &mut State,
    t: &MixTensor,
) -> Result<GgmlType, ArchError> {
    use GgmlType as G;
    use Mix as M;
    let cat = category(&t.name);
    let falcon = model.arch == "falcon";
    let mut ty = mix.base_type();
    let n_expert8 = model.n_expert == 8;
    if matches!(mix, M::MXFP4MOE | M::MXFP4) {
        // output (and tied embeddings) Q8_0; MoE tensors (ne[2] > 1) MXFP4, others Q8_0
        let output = cat == Category::Output || (st.tied && cat == Category::TokenEmbd);
        let expert = t.shape_ne.get(2).is_some_and(|&n| n > 1);
        let linear = cat != Category::TokenEmbd;
        return Ok(if output {
            G::Q8_0
        } else if expert || (mix == M::MXFP4 && linear) {
            G::MXFP4
        } else {
            G::Q8_0
        });
    }
    if mix == M::NVFP4 {
        // as `MXFP4`, with NVFP4 for every Linear weight
        return Ok(if matches!(cat, Category::Output | Category::TokenEmbd) {
            G::Q8_0
        } else {
            G::NVFP4
        });
    }
    if cat == Category::Output || (st.tied && cat == Category::TokenEmbd) {
        let nx = t.shape_ne[0];
        if falcon || !nx.is_multiple_of(ty.block_size()) {
            ty = G::Q8_0;
        } else if ty != G::Q8_0 {
            ty = G::Q6K;
        }
    } else if cat == Category::TokenEmbd {
        // only IQ1/IQ2/IQ3_XXS/TQ mixes change the untied token embeddings
    } else if is_attn_v_like(cat) {
        let gqa4 = model.n_gqa() >= 4;
        match mix {
            M::Q2K => ty = if gqa4 { G::Q4K } else { G::Q3K },
            M::Q3KM => {
                ty = if st.i_attention_wv < 2 {
                    G::Q5K
                } else {
                    G::Q4K
                }
            }
            M::Q3KL => ty = G::Q5K,
            M::IQ4XS if gqa4 => ty = G::Q5K,
            M::Q4KM | M::Q5KM if use_more_bits(st.i_attention_wv, st.n_attention_wv) => ty = G::Q6K,
            M::Q4KS if st.i_attention_wv < 4 => ty = G::Q5K,
            _ => {}
        }
        if model.is_70b && matches!(ty, G::Q3K | G::Q4K) {
            ty = G::Q5K;
        }
        if n_expert8 {
            ty = G::Q8_0;
        }
        st.i_attention_wv += 1;
    } else if cat == Category::AttnK {
        if n_expert8 {
            ty = G::Q8_0;
        }
    } else if cat == Category::FfnDown {
        let (i, n) = layer_of(model, st.i_ffn_down, &t.name)?;
        match mix {
            M::Q2K => ty = G::Q3K,
            M::Q3KM => {
                ty = if i < n / 16 {
                    G::Q5K
                } else if !falcon || use_more_bits(i, n) {
                    G::Q4K
                } else {
                    G::Q3K
                }
            }
            M::Q3KL => ty = if falcon { G::Q4K } else { G::Q5K },
            M::Q4KM => {
                if falcon {
                    ty = if i < n / 16 {
                        G::Q6K
                    } else if use_more_bits(i, n) {
                        G::Q5K
                    } else {
                        G::Q4K
                    };
                } else if use_more_bits(i, n) {
                    ty = G::Q6K;
                }
            }
            M::IQ4XS if i < n / 8 && !model.has_imatrix => ty = G::Q5K,
            M::Q5KM if use_more_bits(i, n) => ty = G::Q6K,
            M::Q4KS if !falcon && i < n / 8 => ty = G::Q5K,
            M::Q4_0 if model.has_imatrix && i < n / 8 => ty = G::Q4_1,
            _ => {}
        }
        st.i_ffn_down += 1;
    } else if cat == Category::AttnOutput {
        if !falcon {
            if n_expert8 {
                if matches!(
                    mix,
                    M::Q2K | M::Q3KS | M::Q3KM | M::Q4KS | M::Q4KM | M::IQ4XS
                ) {
                    ty = G::Q5K;
                }
            } else {
                match mix {
                    M::Q2K => ty = G::Q3K,
                    M::Q3KM => ty = G::Q4K,
                    M::Q3KL => ty = G::Q5K,
                    _ => {}
                }
            }
        } else if mix == M::Q3KL {
            ty = G::Q4K;
        }
    } else if cat == Category::FfnGate {
        layer_of(model, st.i_ffn_gate, &t.name)?;
        st.i_ffn_gate += 1;
    } else if cat == Category::FfnUp {
        layer_of(model, st.i_ffn_up, &t.name)?;
        st.i_ffn_up += 1;
    }
    Ok(ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama_like(n_layer: usize) -> (MixModel, Vec<MixTensor>) {
        let mut ts = vec![
            MixTensor {
                name: "token_embd.weight".into(),
                shape_ne: vec![4096, 128256],
            },
            MixTensor {
                name: "output.weight".into(),
                shape_ne: vec![4096, 128256],
            },
            MixTensor {
                name: "output_norm.weight".into(),
                shape_ne: vec![4096],
            },
        ];
        for l in 0..n_layer {
            for (n, ne) in [
                ("attn_norm", vec![4096]),
                ("attn_q", vec![4096, 4096]),
                ("attn_k", vec![4096, 1024]),
                ("attn_v", vec![4096, 1024]),
                ("attn_output", vec![4096, 4096]),
                ("ffn_norm", vec![4096]),
                ("ffn_gate", vec![4096, 14336]),
                ("ffn_up", vec![4096, 14336]),
                ("ffn_down", vec![14336, 4096]),
            ] {
                ts.push(MixTensor {
                    name: format!("blk.{l}.{n}.weight"),
                    shape_ne: ne,
                });
            }
        }
        let m = MixModel {
            arch: "llama".into(),
            n_layer,
            n_head: 32,
            n_head_kv: 8,
            n_expert: 0,
            is_70b: false,
            has_imatrix: false,
        };
        (m, ts)
    }

    fn layers_with(ts: &[MixTensor], ty: &[GgmlType], part: &str, want: GgmlType) -> Vec<usize> {
        ts.iter()
            .zip(ty)
            .filter(|(t, y)| t.name.ends_with(part) && **y == want)
            .map(|(t, _)| t.name.split('.').nth(1).unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn llama3_8b_q4_k_m_matches_the_published_rule() {
        let (m, ts) = llama_like(32);
        let ty = choose_types(Mix::Q4KM, &m, &ts).unwrap();
        let mut want: Vec<usize> = (0..4).chain((6..28).step_by(3)).chain(28..32).collect();
        want.sort();
        want.dedup();
        assert_eq!(want.len(), 16);
        let mut got = layers_with(&ts, &ty, ".attn_v.weight", GgmlType::Q6K);
        got.sort();
        assert_eq!(got, want);
        let mut got = layers_with(&ts, &ty, ".ffn_down.weight", GgmlType::Q6K);
        got.sort();
        assert_eq!(got, want);
        assert_eq!(
            ty[0],
            GgmlType::Q4K,
            "untied token_embd keeps the base type"
        );
        assert_eq!(ty[1], GgmlType::Q6K, "output.weight");
        assert_eq!(ty[2], GgmlType::F32);
        assert_eq!(
            layers_with(&ts, &ty, ".attn_q.weight", GgmlType::Q4K).len(),
            32
        );
    }

    #[test]
    fn llama3_8b_q3_k_m_and_q2_k() {
        let (m, ts) = llama_like(32);
        let ty = choose_types(Mix::Q3KM, &m, &ts).unwrap();
        assert_eq!(
            layers_with(&ts, &ty, ".attn_v.weight", GgmlType::Q5K),
            vec![0, 1]
        );
        assert_eq!(
            layers_with(&ts, &ty, ".ffn_down.weight", GgmlType::Q5K),
            vec![0, 1]
        );
        assert_eq!(
            layers_with(&ts, &ty, ".ffn_down.weight", GgmlType::Q4K).len(),
            30
        );
        assert_eq!(
            layers_with(&ts, &ty, ".attn_output.weight", GgmlType::Q4K).len(),
            32
        );
        let ty = choose_types(Mix::Q2K, &m, &ts).unwrap();
        // n_gqa = 4: attn_v Q4_K; ffn_down and attn_output Q3_K
        assert_eq!(
            layers_with(&ts, &ty, ".attn_v.weight", GgmlType::Q4K).len(),
            32
        );
        assert_eq!(
            layers_with(&ts, &ty, ".ffn_down.weight", GgmlType::Q3K).len(),
            32
        );
        assert_eq!(
            layers_with(&ts, &ty, ".attn_q.weight", GgmlType::Q2K).len(),
            32
        );
    }

    #[test]
    fn llama_70b_bumps_attn_v() {
        let (mut m, ts) = llama_like(80);
        m.is_70b = true;
        let ty = choose_types(Mix::Q4KM, &m, &ts).unwrap();
        assert_eq!(
            layers_with(&ts, &ty, ".attn_v.weight", GgmlType::Q6K).len(),
            40
        );
        assert_eq!(
            layers_with(&ts, &ty, ".attn_v.weight", GgmlType::Q5K).len(),
            40
        );
        assert_eq!(
            layers_with(&ts, &ty, ".ffn_down.weight", GgmlType::Q6K).len(),
            40
        );
        assert_eq!(
            layers_with(&ts, &ty, ".ffn_down.weight", GgmlType::Q4K).len(),
            40
        );
    }

    #[test]
    fn mixtral_8_experts_rules() {
        // n_expert == 8: attn_v and attn_k Q8_0, attn_output Q5_K; ffn_down layer from the name
        let mut ts = vec![MixTensor {
            name: "output.weight".into(),
            shape_ne: vec![256, 1000],
        }];
        for l in 0..8 {
            for (n, ne) in [
                ("attn_k", vec![256, 128]),
                ("attn_v", vec![256, 128]),
                ("attn_output", vec![256, 256]),
                ("ffn_down_exps", vec![512, 256, 8]),
                ("ffn_gate_inp", vec![256, 8]),
            ] {
                ts.push(MixTensor {
                    name: format!("blk.{l}.{n}.weight"),
                    shape_ne: ne,
                });
            }
        }
        let m = MixModel {
            arch: "llama".into(),
            n_layer: 8,
            n_head: 4,
            n_head_kv: 2,
            n_expert: 8,
            is_70b: false,
            has_imatrix: false,
        };
        let ty = choose_types(Mix::Q4KM, &m, &ts).unwrap();
        assert_eq!(
            layers_with(&ts, &ty, ".attn_v.weight", GgmlType::Q8_0).len(),
            8
        );
        assert_eq!(
            layers_with(&ts, &ty, ".attn_k.weight", GgmlType::Q8_0).len(),
            8
        );
        assert_eq!(
            layers_with(&ts, &ty, ".attn_output.weight", GgmlType::Q5K).len(),
            8
        );
        assert_eq!(
            layers_with(&ts, &ty, ".ffn_gate_inp.weight", GgmlType::F32).len(),
            8
        );
        // use_more_bits(i, 8): i < 1, i >= 7, (i - 1) % 3 == 2 -> {0, 3, 6, 7}
        assert_eq!(
            layers_with(&ts, &ty, ".ffn_down_exps.weight", GgmlType::Q6K),
            vec![0, 3, 6, 7]
        );
        // MXFP4_MOE: 3-D expert tensors MXFP4, other weights and the output Q8_0
        let moe = choose_types(Mix::MXFP4MOE, &m, &ts).unwrap();
        let all: Vec<usize> = (0..8).collect();
        assert_eq!(
            layers_with(&ts, &moe, ".ffn_down_exps.weight", GgmlType::MXFP4),
            all
        );
        assert_eq!(
            layers_with(&ts, &moe, ".attn_k.weight", GgmlType::Q8_0),
            all
        );
        assert_eq!(
            layers_with(&ts, &moe, ".ffn_gate_inp.weight", GgmlType::F32),
            all
        );
        assert_eq!(moe[0], GgmlType::Q8_0);
        // MXFP4: 2-D Linear weights too
        let pure = choose_types(Mix::MXFP4, &m, &ts).unwrap();
        assert_eq!(
            layers_with(&ts, &pure, ".attn_k.weight", GgmlType::MXFP4),
            all
        );
        assert_eq!(pure[0], GgmlType::Q8_0);
        // NVFP4: 2-D Linear weights and experts NVFP4, embeddings and output Q8_0
        let nv = choose_types(Mix::NVFP4, &m, &ts).unwrap();
        assert_eq!(
            layers_with(&ts, &nv, ".attn_k.weight", GgmlType::NVFP4),
            all
        );
        assert_eq!(
            layers_with(&ts, &nv, ".ffn_down_exps.weight", GgmlType::NVFP4),
            all
        );
        assert_eq!(nv[0], GgmlType::Q8_0);
        assert_eq!(fallback(96, GgmlType::NVFP4), GgmlType::Q8_0);
        assert_eq!(Mix::NVFP4.file_type(), 39);
    }

    #[test]
    fn fallbacks_and_ids() {
        assert_eq!(fallback(128, GgmlType::Q4K), GgmlType::Q5_0);
        assert_eq!(fallback(128, GgmlType::Q6K), GgmlType::Q8_0);
        assert_eq!(fallback(128, GgmlType::IQ4XS), GgmlType::IQ4NL);
        assert_eq!(fallback(48, GgmlType::Q4K), GgmlType::F16);
        assert_eq!(fallback(256, GgmlType::Q4K), GgmlType::Q4K);
        assert_eq!(Mix::from_name("q4_k_m"), Some(Mix::Q4KM));
        assert_eq!(Mix::Q4KM.file_type(), 15);
        assert_eq!(Mix::Q8_0.base_type(), GgmlType::Q8_0);
        assert_eq!(Mix::from_name("mxfp4_moe"), Some(Mix::MXFP4MOE));
        assert_eq!(Mix::MXFP4MOE.file_type(), 38);
        assert!(Mix::all().all(|m| Mix::from_name(m.name()) == Some(m)));
    }
}
