//! compressed-tensors `pack-quantized` layout (`weight_packed`/`weight_scale`, optional
//! `weight_zero_point` and `weight_g_idx`); `lm_head` is always listed as ignored.

use super::{fetch, IntWriter, LayoutSpec};
use llmq_hfquant::compressed_tensors::{self as ct, CtStrategy, CtWeightScheme};
use llmq_hfquant::{HfTensor, IntQuantized};
use serde_json::Value;

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
}
