//! AWQ (Lin et al., arXiv 2306.00978) of every Linear of one block: scale and clip
//! search on the observed inputs, scales folded into the norms (or the previous
//! projection), the folded weights put back into the engine. The searches run where
//! the statistics are ([`AwqSites`]): on the CPU over the observer's [`Collector`],
//! or on the GPU (`super::device_awq`); everything else here is shared.

use super::blocks::rmse;
use super::methods::BlockCx;
use super::observe::{Collector, SiteKey};
use super::write::round_to;
use super::{engine_err, Tensors, MIN_EXPERT_TOKENS};
use crate::allocate::Allocation;
use crate::error::{PipelineError, Result};
use crate::report::{CalibrationDetail, TensorReport};
use llmq_arch::Transform;
use llmq_calib::awq::{self as awq_algo, AwqLayer, ScaleSearch};
use llmq_engine::{Backend, LinearStage, Model};
use llmq_hfquant::IntQuantized;
use std::collections::{BTreeMap, HashMap};

/// The measured Linear inputs of one block as AWQ reads them, and its two searches
/// on them.
pub(super) trait AwqSites {
    /// the sites, in key order
    fn keys(&self) -> Vec<SiteKey>;
    /// the (GGUF) weights applied to a site's rows
    fn weights(&self, key: &SiteKey) -> &[&'static str];
    /// input features
    fn cols(&self, key: &SiteKey) -> usize;
    /// rows seen
    fn rows(&self, key: &SiteKey) -> u64;
    /// rows in the sample the searches measure on
    fn n_sample(&self, key: &SiteKey) -> usize;
    /// `Σ|x|` per input feature over every row seen
    fn abs_sum(&self, key: &SiteKey) -> Result<Vec<f64>>;
    /// [`awq_algo::search_scale`] on the site's sample
    fn search_scale(
        &self,
        key: &SiteKey,
        layers: &[AwqLayer<'_>],
        mean: &[f32],
        bits: u8,
        gs: usize,
    ) -> Result<ScaleSearch>;
    /// [`awq_algo::search_clip`] of `w` (`[out, cols]`, scaled by `scales` when given)
    /// on the site's sample divided by `scales`
    fn search_clip(
        &self,
        key: &SiteKey,
        w: &[f32],
        out: usize,
        scales: Option<&[f32]>,
        bits: u8,
        gs: usize,
    ) -> Result<Vec<f32>>;
    /// routed experts seen (0 for a dense block)
    fn n_experts(&self) -> usize;
}

impl AwqSites for Collector {
    fn keys(&self) -> Vec<SiteKey> {
        let mut keys: Vec<SiteKey> = self.sites.keys().copied().collect();
        keys.sort();
        keys
    }
    fn weights(&self, key: &SiteKey) -> &[&'static str] {
        &self.sites[key].weights
    }
    fn cols(&self, key: &SiteKey) -> usize {
        self.sites[key].cols
    }
    fn rows(&self, key: &SiteKey) -> u64 {
        self.sites[key].rows
    }
    fn n_sample(&self, key: &SiteKey) -> usize {
        let acc = &self.sites[key];
        acc.sample.len() / acc.cols.max(1)
    }
    fn abs_sum(&self, key: &SiteKey) -> Result<Vec<f64>> {
        Ok(self.sites[key].abs_sum.clone())
    }
    fn search_scale(
        &self,
        key: &SiteKey,
        layers: &[AwqLayer<'_>],
        mean: &[f32],
        bits: u8,
        gs: usize,
    ) -> Result<ScaleSearch> {
        let acc = &self.sites[key];
        let n = self.n_sample(key);
        Ok(awq_algo::search_scale(
            layers,
            acc.cols,
            mean,
            &acc.sample,
            n,
            bits,
            gs,
        ))
    }
    fn search_clip(
        &self,
        key: &SiteKey,
        w: &[f32],
        out: usize,
        scales: Option<&[f32]>,
        bits: u8,
        gs: usize,
    ) -> Result<Vec<f32>> {
        let acc = &self.sites[key];
        let inp = acc.cols;
        let mut x = acc.sample.clone();
        if let Some(s) = scales {
            for row in x.chunks_mut(inp) {
                row.iter_mut().zip(s).for_each(|(v, s)| *v /= s);
            }
        }
        let n = self.n_sample(key);
        Ok(awq_algo::search_clip(w, out, inp, &x, n, bits, gs))
    }
    fn n_experts(&self) -> usize {
        self.expert_tokens.len()
    }
}

/// The norm (engine name, HF name) whose weight produces a site's input, when the
/// AWQ scales can be folded into it.
pub(super) fn fold_norm(
    tensors: &Tensors,
    layer: usize,
    stage: LinearStage,
    weights: &[&'static str],
    moe_layer: bool,
) -> Option<(String, String, bool)> {
    let gguf = match stage {
        LinearStage::AttnInput => "attn_norm.weight",
        LinearStage::AttnLatent if weights[0] == "attn_q_b.weight" => "attn_q_a_norm.weight",
        LinearStage::AttnLatent => "attn_kv_a_norm.weight",
        LinearStage::FfnInput if !moe_layer => "ffn_norm.weight",
        _ => return None,
    };
    let spec = tensors.spec(layer, gguf)?;
    if spec.sources.len() != 1 {
        return None;
    }
    let add_one = matches!(spec.transform, Transform::AddOne);
    Some((spec.gguf_name.clone(), spec.sources[0].clone(), add_one))
}

/// AWQ of every Linear of one block on the CPU.
pub(super) fn quantize_block_awq(cx: BlockCx<'_>) -> Result<()> {
    let BlockCx {
        alloc,
        tensors,
        model,
        layer,
        col,
        out,
        overrides,
        ..
    } = cx;
    awq_block(alloc, tensors, model, layer, col, overrides, out)
}

/// AWQ of every Linear of one block on the measured `sites`, folding the scales into
/// the norms of `model` (and the up projections into the down projections' inputs);
/// the quantized modules go to `out`, the norms' new values to `overrides`.
pub(super) fn awq_block<B: Backend>(
    alloc: &Allocation,
    tensors: &Tensors,
    model: &mut Model<B>,
    layer: usize,
    sites: &dyn AwqSites,
    overrides: &mut HashMap<String, Vec<f32>>,
    out: &mut Vec<(String, IntQuantized, TensorReport)>,
) -> Result<()> {
    let moe_layer = tensors.spec(layer, "ffn_gate_inp.weight").is_some();
    // weights (HF name → current f32 values, with scales applied) and the per-input
    // scales each one's input is divided by
    let mut w_cur: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut info: BTreeMap<String, (SiteKey, Option<f32>, Option<String>)> = BTreeMap::new();
    let mut site_scales: HashMap<SiteKey, Vec<f32>> = HashMap::new();
    let keys = sites.keys();
    // 1. scale search, stage by stage (FfnDown after FfnInput, so up is final)
    for key in &keys {
        let (stage, expert, _) = *key;
        let weights = sites.weights(key);
        let acc_rows = sites.rows(key);
        let mut hf: Vec<String> = Vec::new();
        for g in weights {
            for n in tensors.hf_names(layer, g, expert) {
                if !hf.contains(&n) {
                    hf.push(n);
                }
            }
        }
        for n in &hf {
            if !w_cur.contains_key(n) {
                w_cur.insert(n.clone(), tensors.hf_f32(n)?);
            }
        }
        let inp = sites.cols(key);
        let n_rows = sites.n_sample(key);
        let (bits, gs) = shared_grid(alloc, &hf)?;
        if expert.is_some() && acc_rows < MIN_EXPERT_TOKENS {
            for n in &hf {
                info.insert(
                    n.clone(),
                    (
                        *key,
                        None,
                        Some(format!(
                            "expert got {} calibration tokens (< {MIN_EXPERT_TOKENS}): no AWQ search, round-to-nearest",
                            acc_rows
                        )),
                    ),
                );
            }
            continue;
        }
        // where can 1/s go?
        let target: Option<(String, String, bool)> =
            fold_norm(tensors, layer, stage, weights, moe_layer);
        let prev_up: Option<String> = if stage == LinearStage::FfnDown {
            let up = match expert {
                Some(_) => "ffn_up_exps.weight",
                None if weights[0] == "ffn_down_shexp.weight" => "ffn_up_shexp.weight",
                None => "ffn_up.weight",
            };
            // a fused gate|up (Phi-3) cannot take a scale on the up half alone here,
            // nor can a biased up (GPT-OSS: `(clamp(up) + 1)·glu` is not linear in up)
            let fused = (expert.is_none()
                && up == "ffn_up.weight"
                && tensors.spec(layer, "ffn_gate.weight").is_none())
                || tensors.spec(layer, "ffn_up_exps.bias").is_some();
            if fused {
                None
            } else {
                tensors.hf_names(layer, up, expert).into_iter().next()
            }
        } else {
            None
        };
        let can_scale = target.is_some() || prev_up.is_some();
        let mut ratio = None;
        let mut note = None;
        if can_scale && n_rows > 0 {
            let mean: Vec<f32> = sites
                .abs_sum(key)?
                .iter()
                .map(|s| (*s / acc_rows as f64) as f32)
                .collect();
            let shapes: Vec<usize> = hf.iter().map(|n| tensors.shape(n)[0]).collect();
            let layers: Vec<AwqLayer<'_>> = hf
                .iter()
                .zip(&shapes)
                .map(|(n, &o)| AwqLayer {
                    w: &w_cur[n],
                    out: o,
                })
                .collect();
            let found = sites.search_scale(key, &layers, &mean, bits, gs)?;
            let s = found.scales;
            ratio = Some(found.ratio);
            // weights' columns × s
            for n in &hf {
                let w = w_cur.get_mut(n).unwrap();
                for row in w.chunks_mut(inp) {
                    row.iter_mut().zip(&s).for_each(|(v, s)| *v *= s);
                }
            }
            if let Some((gguf, hfn, add_one)) = &target {
                // effective norm weight / s, rounded to what the file stores
                let cur: Vec<f32> = match overrides.get(hfn) {
                    Some(v) => v.clone(),
                    None => tensors.hf_f32(hfn)?,
                };
                let st_dtype = tensors.st.info(hfn).map(|i| i.dtype);
                let new_hf: Vec<f32> = cur
                    .iter()
                    .zip(&s)
                    .map(|(&w, &s)| {
                        let eff = if *add_one { w + 1.0 } else { w };
                        let v = eff / s - if *add_one { 1.0 } else { 0.0 };
                        round_to(v, st_dtype)
                    })
                    .collect();
                let eff: Vec<f32> = new_hf
                    .iter()
                    .map(|&v| if *add_one { v + 1.0 } else { v })
                    .collect();
                model.replace_vector(gguf, eff).map_err(engine_err)?;
                overrides.insert(hfn.clone(), new_hf);
            } else if let Some(up) = &prev_up {
                // rows of up / s (up is quantized afterwards, with this folded in)
                if !w_cur.contains_key(up) {
                    w_cur.insert(up.clone(), tensors.hf_f32(up)?);
                }
                let upw = w_cur.get_mut(up).unwrap();
                let up_in = upw.len() / s.len();
                for (r, row) in upw.chunks_mut(up_in).enumerate() {
                    row.iter_mut().for_each(|v| *v /= s[r]);
                }
            }
            site_scales.insert(*key, s);
        } else if !can_scale {
            note = Some("input cannot take AWQ scales here (shared with the router, GQA v→o, or fused): clip search only".to_string());
        }
        for n in &hf {
            info.insert(n.clone(), (*key, ratio, note.clone()));
        }
    }
    // 2. clip search and quantization, with inputs divided by the scales
    for (n, (key, ratio, note)) in &info {
        let (stage, expert, _) = *key;
        let acc_rows = sites.rows(key);
        let inp = sites.cols(key);
        let shape = tensors.shape(n);
        let o = shape[0];
        let w = &w_cur[n];
        let starved = expert.is_some() && acc_rows < MIN_EXPERT_TOKENS;
        let n_rows = sites.n_sample(key);
        let (bits, gs) = awq_grid(alloc, n)?;
        let no_clip = starved
            || n_rows == 0
            || (stage == LinearStage::AttnInput
                && (n.contains("q_proj") || n.contains("k_proj") || n.contains("qkv")));
        let clip = if no_clip {
            None
        } else {
            let s = site_scales.get(key).map(|s| s.as_slice());
            Some(sites.search_clip(key, w, o, s, bits, gs)?)
        };
        let q = awq_algo::awq_quantize(w, o, inp, bits, gs, clip.as_deref());
        // error against the original weight, in the original basis
        let mut deq = q.dequantize();
        if let Some(s) = site_scales.get(key) {
            for row in deq.chunks_mut(inp) {
                row.iter_mut().zip(s).for_each(|(v, s)| *v /= s);
            }
        }
        let orig = tensors.hf_f32(n)?;
        let (r, rel) = rmse(&orig, &deq);
        let label = if starved {
            "rtn:few-tokens".to_string()
        } else {
            "awq".to_string()
        };
        let report = TensorReport::integer(
            n,
            &q,
            label,
            (r, rel),
            CalibrationDetail {
                tokens: acc_rows,
                awq_ratio: *ratio,
                note: note.clone(),
                ..Default::default()
            },
        );
        out.push((n.clone(), q, report));
    }
    // experts that never fired: RTN with AWQ's quantizer
    for e in 0..sites.n_experts() {
        for g in [
            "ffn_gate_exps.weight",
            "ffn_up_exps.weight",
            "ffn_down_exps.weight",
        ] {
            for n in tensors.hf_names(layer, g, Some(e)) {
                if info.contains_key(&n) {
                    continue;
                }
                // its up may have been scaled? no: a missing expert has no sites at all
                let shape = tensors.shape(&n);
                let (o, i) = (shape[0], shape[1]);
                let w = tensors.hf_f32(&n)?;
                let (bits, gs) = awq_grid(alloc, &n)?;
                let q = awq_algo::awq_quantize(&w, o, i, bits, gs, None);
                let (r, rel) = rmse(&w, &q.dequantize());
                let report = TensorReport::integer(
                    &n,
                    &q,
                    "rtn:no-tokens".into(),
                    (r, rel),
                    CalibrationDetail {
                        tokens: 0,
                        note: Some(format!(
                            "expert {e} got no calibration tokens: round-to-nearest"
                        )),
                        ..Default::default()
                    },
                );
                out.push((n.clone(), q, report));
            }
        }
    }
    Ok(())
}

/// AWQ's grid of one weight: bits and group size (AWQ always has groups).
fn awq_grid(alloc: &Allocation, name: &str) -> Result<(u8, usize)> {
    let g = alloc.int_grid(name)?;
    let gs = g.group_size.ok_or_else(|| {
        PipelineError::invalid(
            format!("{name}: AWQ needs grouped quantization, not per channel"),
            "Give a group size of 32, 64 or 128",
        )
    })?;
    Ok((g.bits, gs))
}

/// The one grid of the weights sharing an input: AWQ's scale search assumes it.
fn shared_grid(alloc: &Allocation, names: &[String]) -> Result<(u8, usize)> {
    let mut grids = names.iter().map(|n| awq_grid(alloc, n));
    let first = match grids.next() {
        Some(g) => g?,
        // no weights at this input: nothing is quantized on the grid
        None => return Ok((4, 128)),
    };
    for g in grids {
        if g? != first {
            return Err(PipelineError::unsupported(
                format!(
                    "weights sharing an input ({}) are allocated different grids",
                    names.join(", ")
                ),
                "AWQ searches one scale per shared input: allocate one grid to them",
            ));
        }
    }
    Ok(first)
}
