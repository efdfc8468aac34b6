//! AutoAWQ GEMM layout (`qweight`/`qzeros`/`scales`, 4-bit, column-permuted packing).

use super::{fetch, IntWriter, LayoutSpec};
use llmq_hfquant::awq;
use llmq_hfquant::{HfTensor, IntQuantized};
use serde_json::Value;

pub(super) struct AwqWriter {
    pub(super) spec: LayoutSpec,
}

impl AwqWriter {
    fn group_size(&self) -> usize {
        self.spec.group_size.unwrap_or(128)
    }
}

impl IntWriter for AwqWriter {
    fn pack(
        &self,
        prefix: &str,
        q: &IntQuantized,
    ) -> llmq_hfquant::Result<Vec<(String, HfTensor)>> {
        Ok(awq::pack(q)?.to_hf_tensors(prefix))
    }

    fn read(
        &self,
        get: &dyn Fn(&str) -> Option<HfTensor>,
        prefix: &str,
        like: &IntQuantized,
    ) -> Result<IntQuantized, String> {
        let qw = fetch(get, prefix, "qweight")?;
        let qz = fetch(get, prefix, "qzeros")?;
        let sc = fetch(get, prefix, "scales")?;
        let t = awq::AwqTensors {
            in_features: like.in_features,
            out_features: like.out_features,
            group_size: self.group_size(),
            qweight: qw.to_u32_words().ok_or("qweight dtype")?,
            qzeros: qz.to_u32_words().ok_or("qzeros dtype")?,
            scales: sc.to_f16_vec().ok_or("scales dtype")?,
        };
        awq::unpack(&t).map_err(|e| e.to_string())
    }

    fn quantization_config(&self, ignored: &[String], _any_g_idx: bool) -> Value {
        let ig: Option<Vec<String>> = (!ignored.is_empty()).then(|| ignored.to_vec());
        awq::quantization_config(self.group_size(), ig.as_deref())
    }
}
