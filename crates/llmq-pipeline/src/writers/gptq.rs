//! GPTQ layout (GPTQModel `qweight`/`qzeros`/`scales`/`g_idx`, v1 or v2 zero points),
//! with `quantize_config.json` beside config.json. Modules of other widths than the
//! config's `bits` are GPTQModel `dynamic` overrides (`"+:^name$": {"bits": b}`, the
//! form GPTQModel and vLLM match with `re.match` against module names).

use super::{IntWriter, LayoutSpec};
use llmq_hfquant::gptq::{self, GptqFormat};
use llmq_hfquant::{HfTensor, IntQuantized};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

pub(super) struct GptqWriter {
    pub(super) spec: LayoutSpec,
    pub(super) fmt: GptqFormat,
}

impl IntWriter for GptqWriter {
    fn pack(
        &self,
        prefix: &str,
        q: &IntQuantized,
    ) -> llmq_hfquant::Result<Vec<(String, HfTensor)>> {
        Ok(gptq::pack(q, self.fmt)?.to_hf_tensors(prefix))
    }

    fn read(
        &self,
        get: &dyn Fn(&str) -> Option<HfTensor>,
        prefix: &str,
        _like: &IntQuantized,
    ) -> Result<IntQuantized, String> {
        let s = &self.spec;
        let t =
            gptq::GptqTensors::from_hf_tensors(s.bits, get, prefix).map_err(|e| e.to_string())?;
        gptq::unpack(&t, s.group_size, s.symmetric, self.fmt).map_err(|e| e.to_string())
    }

    fn quantization_config(&self, ignored: &[String], _any_g_idx: bool) -> Value {
        let s = &self.spec;
        let c = gptq::GptqConfig {
            bits: s.bits,
            group_size: s.group_size,
            desc_act: s.act_order,
            sym: s.symmetric,
            format: self.fmt,
            damp_percent: s.damp_percent,
            true_sequential: false,
            static_groups: false,
            lm_head: false,
            quantizer: format!("llm-quantize:{}", env!("CARGO_PKG_VERSION")),
        };
        let mut v = c.quantization_config_excluding(ignored);
        if let Some(m) = s.method {
            v["meta"]["calibration_method"] = json!(m);
        }
        v
    }

    fn quantization_config_mixed(
        &self,
        ignored: &[String],
        any_g_idx: bool,
        bits: &BTreeMap<String, u8>,
    ) -> Result<Value, String> {
        let mut v = self.quantization_config(ignored, any_g_idx);
        if v.get("dynamic").is_none() {
            v["dynamic"] = json!({});
        }
        let dynamic = v["dynamic"]
            .as_object_mut()
            .ok_or("dynamic is not an object")?;
        for (m, &b) in bits {
            if b != self.spec.bits {
                dynamic.insert(
                    format!("+:^{}$", m.replace('.', "\\.")),
                    json!({ "bits": b }),
                );
            }
        }
        Ok(v)
    }

    fn extra_files(&self, dir: &Path, qc: &Value) -> llmq_hfquant::Result<()> {
        let mut v = qc.clone();
        if let Some(m) = v.as_object_mut() {
            m.insert("model_name_or_path".into(), Value::Null);
            m.insert("model_file_base_name".into(), json!("model"));
        }
        llmq_hfquant::writer::write_json(&dir.join("quantize_config.json"), &v)
    }
}
