//! The write and validate stages of GPTQ / MR-GPTQ on the floating-point grids: the
//! modules packed in compressed-tensors' `nvfp4-pack-quantized`,
//! `mxfp4-pack-quantized` or `float-quantized` layout ([`llmq_hfquant::ct_fp`]), MR-GPTQ's
//! rotation as the `transform_config` with one `<module>.mr_gptq_input.weight`
//! Hadamard tensor per module (the form compressed-tensors saves and vLLM loads),
//! every other tensor copied; then every module read back through
//! `llmq_hfquant::read` (which folds the rotation back in) must give exactly the
//! dense weights the run computed.

use super::write::write_unquantized;
use super::{hf_err, module_of, QModule, Tensors};
use crate::error::{PipelineError, Result};
use llmq_hfquant::{ct_fp, FpScheme, ShardedWriter};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

fn fp_modules(
    modules: &BTreeMap<String, QModule>,
) -> impl Iterator<Item = Result<(&String, &crate::checkpoint::block_codec::FpModule)>> {
    modules.iter().map(|(hf, m)| match m {
        QModule::Fp(f) => Ok((hf, f.as_ref())),
        _ => Err(PipelineError::general(
            format!("{hf} is not floating-point coded in a floating-point run"),
            "Report this as a bug",
        )),
    })
}

/// Packs the modules, copies every other tensor, writes config.json (with the
/// rotation's `transform_config` when the modules are rotated) and the tokenizer files.
pub(super) fn write_fp(
    tensors: &Tensors,
    modules: &BTreeMap<String, QModule>,
    tmp_dir: &Path,
    scheme: FpScheme,
    ignored: &[String],
    src_dir: &Path,
) -> Result<()> {
    let mut w = ShardedWriter::new(tmp_dir, llmq_hfquant::writer::DEFAULT_MAX_SHARD_BYTES)
        .map_err(hf_err)?;
    let mut blocks = std::collections::BTreeSet::new();
    for m in fp_modules(modules) {
        let (hf, f) = m?;
        let prefix = module_of(hf);
        w.add_all(ct_fp::pack(prefix, &f.q)).map_err(hf_err)?;
        blocks.insert(f.hadamard);
        if let Some(b) = f.hadamard {
            let (n, t) = ct_fp::rotation_tensor(prefix, b);
            w.add(n, t).map_err(hf_err)?;
        }
    }
    write_unquantized(&mut w, tensors, modules, &HashMap::new())?;
    w.finish().map_err(hf_err)?;
    // lm_head stays in full precision (as the streamed FP levels list it)
    let ignored: Vec<String> = std::iter::once("lm_head".to_string())
        .chain(ignored.iter().cloned())
        .collect();
    let ignored = &ignored[..];
    // one rotation for every module (the transform config has one head_dim)
    let qc = match blocks.into_iter().collect::<Vec<_>>()[..] {
        [] | [None] => ct_fp::quantization_config(scheme, ignored),
        [Some(b)] => ct_fp::quantization_config_rotated(scheme, ignored, b),
        _ => {
            return Err(PipelineError::general(
                "modules of one run were rotated differently",
                "Report this as a bug",
            ))
        }
    };
    llmq_hfquant::writer::copy_model_files(src_dir, tmp_dir, &qc).map_err(hf_err)?;
    Ok(())
}

/// Every module read back must be bit for bit the dense weight the run computed.
pub(super) fn validate_fp(dir: &Path, modules: &BTreeMap<String, QModule>) -> Result<()> {
    let expected = fp_modules(modules)
        .map(|m| m.map(|(hf, f)| (hf.clone(), f.dense())))
        .collect::<Result<Vec<_>>>()?;
    crate::fp_export::validate(dir, &expected)
}
