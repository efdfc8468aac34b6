//! compressed-tensors `pack-quantized` layout (`weight_packed`/`weight_scale`, optional
//! `weight_zero_point` and `weight_g_idx`); `lm_head` is always listed as ignored.
//! Modules of several widths: one config group per width, `group_0` the narrowest,
//! each listing its modules by full name in `targets` (no `Linear` group, so no
//! module matches two groups).

use super::{fetch, IntWriter, LayoutSpec};
use llmq_hfquant::compressed_tensors::{self as ct, CtStrategy, CtWeightScheme};
use llmq_hfquant::{HfTensor, IntQuantized};
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub(super) struct CtWriter {
    pub(super) spec: LayoutSpec,
}

impl CtWriter {
    fn scheme(&self) -> CtWeightScheme {
        CtWeightScheme {
            num_bits: self.spec.bits,
            symmetric: self.spec.symmetric,
            strategy: match self.spec.group_size {
                Some(g) => CtStrategy::Group(g),
                None => CtStrategy::Channel,
            },
        }
    }
}

impl IntWriter for CtWriter {
    fn pack(
        &self,
        prefix: &str,
        q: &IntQuantized,
    ) -> llmq_hfquant::Result<Vec<(String, HfTensor)>> {
        Ok(ct::pack(q, !q.has_default_g_idx())?.to_hf_tensors(prefix))
    }

    fn read(
        &self,
        get: &dyn Fn(&str) -> Option<HfTensor>,
        prefix: &str,
        like: &IntQuantized,
    ) -> Result<IntQuantized, String> {
        let p = fetch(get, prefix, "weight_packed")?;
        let s = fetch(get, prefix, "weight_scale")?;
        let t = ct::CtTensors {
            num_bits: self.spec.bits,
            out_features: like.out_features,
            in_features: like.in_features,
            n_groups: like.n_groups(),
            weight_packed: p.to_u32_words().ok_or("weight_packed dtype")?,
            weight_scale: s.to_f16_vec().ok_or("weight_scale dtype")?,
            weight_zero_point: match get(&format!("{prefix}.weight_zero_point")) {
                Some(z) => Some(z.to_u32_words().ok_or("zero point dtype")?),
                None => None,
            },
            weight_g_idx: match get(&format!("{prefix}.weight_g_idx")) {
                Some(g) => Some(g.to_i32_vec().ok_or("g_idx dtype")?),
                None => None,
            },
        };
        ct::unpack(&t, &self.scheme()).map_err(|e| e.to_string())
    }

    fn quantization_config(&self, ignored: &[String], any_g_idx: bool) -> Value {
        let mut ig = vec!["lm_head".to_string()];
        ig.extend(ignored.iter().cloned());
        ct::quantization_config(&self.scheme(), &ig, any_g_idx)
    }

    fn quantization_config_mixed(
        &self,
        ignored: &[String],
        any_g_idx: bool,
        bits: &BTreeMap<String, u8>,
    ) -> Result<Value, String> {
        let mut v = self.quantization_config(ignored, any_g_idx);
        let base = v["config_groups"]["group_0"].clone();
        let mut by_bits: BTreeMap<u8, Vec<&str>> = BTreeMap::new();
        for (m, &b) in bits {
            by_bits.entry(b).or_default().push(m);
        }
        let actorder = any_g_idx.then_some("group");
        let mut groups = serde_json::Map::new();
        for (i, (b, modules)) in by_bits.into_iter().enumerate() {
            let scheme = CtWeightScheme {
                num_bits: b,
                ..self.scheme()
            };
            let mut g = base.clone();
            g["targets"] = json!(modules);
            g["weights"] = scheme.weights_json(actorder);
            groups.insert(format!("group_{i}"), g);
        }
        v["config_groups"] = Value::Object(groups);
        Ok(v)
    }
}
