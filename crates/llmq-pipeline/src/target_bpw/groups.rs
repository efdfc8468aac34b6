//! The tensor groups the measured allocator gives one type each, from GGUF tensor
//! names: `embeddings` (`token_embd`), `head` (`output`), per block `blk.N.attn` (every
//! attention matrix), `blk.N.mlp` (a dense MLP), `blk.N.shared_experts` (`*_shexp`),
//! and for routed experts one measured group per expert, `blk.N.expert.E` (its rows
//! of the three stacked `ffn_*_exps` tensors). Only tensors the base level quantizes
//! are grouped; the rest (norms, routers) keep the level's type.
//!
//! [`Granularity::Fine`] (EXL3, GPTQ, compressed-tensors, which store one choice per
//! Linear) splits each block's groups as exllamav3's own rule does: the attention
//! into `blk.N.attn_qkv` (every input projection, MLA's included) and
//! `blk.N.attn_output`, the dense MLP into `blk.N.mlp_gate_up` and `blk.N.mlp_down`,
//! the shared experts into `blk.N.shared_experts_gate_up` and
//! `blk.N.shared_experts_down`. GGUF keeps [`Granularity::Block`].
//!
//! GGUF stores one type per stacked expert tensor (llama.cpp reads `ffn_*_exps` as
//! one ggml tensor), so the written allocation merges a block's experts into one
//! group `blk.N.experts` whose loss is the sum of its experts' measured losses.

use crate::run::TensorJob;

/// One tensor (or one expert's rows of a stacked tensor) of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// index into the job list
    pub job: usize,
    /// rows `[start, end)` of the tensor (`None`: all of it)
    pub rows: Option<(usize, usize)>,
}

/// A measured group.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub label: String,
    /// the block it belongs to (`None`: embeddings, head)
    pub layer: Option<usize>,
    pub members: Vec<Member>,
    /// the written group it merges into (its own index unless it is an expert)
    pub written: usize,
}

/// `blk.N.rest` → (N, rest).
fn split_block(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("blk.")?;
    let (n, tail) = rest.split_once('.')?;
    Some((n.parse().ok()?, tail))
}

/// How finely a block's dense tensors are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// one group for the attention, one for the MLP, one for the shared experts
    Block,
    /// attention input projections / output, gate+up / down (MLP and shared experts)
    Fine,
}

/// Measured groups (in a fixed order: embeddings, blocks in order, head) and the
/// labels of the written groups they merge into, per block ([`Granularity::Block`]).
pub fn groups(jobs: &[TensorJob]) -> (Vec<Group>, Vec<String>) {
    groups_with(jobs, Granularity::Block)
}

/// [`groups`] at a given granularity.
pub fn groups_with(jobs: &[TensorJob], granularity: Granularity) -> (Vec<Group>, Vec<String>) {
    let fine = granularity == Granularity::Fine;
    let mut out: Vec<Group> = Vec::new();
    let mut written: Vec<String> = Vec::new();
    let mut add = |label: String, layer: Option<usize>, m: Member, w_label: String| {
        let w = match written.iter().position(|x| *x == w_label) {
            Some(i) => i,
            None => {
                written.push(w_label);
                written.len() - 1
            }
        };
        match out.iter_mut().find(|g| g.label == label) {
            Some(g) => g.members.push(m),
            None => out.push(Group {
                label,
                layer,
                members: vec![m],
                written: w,
            }),
        }
    };
    let mut order: Vec<usize> = (0..jobs.len())
        .filter(|&j| jobs[j].ty.is_quantized())
        .collect();
    // embeddings first, then blocks in order, the head last
    order.sort_by_key(|&j| {
        let n = &jobs[j].name;
        match split_block(n) {
            _ if n.starts_with("token_embd") => (0, 0),
            Some((l, _)) => (1, l),
            None => (2, 0),
        }
    });
    for j in order {
        let job = &jobs[j];
        let whole = Member { job: j, rows: None };
        let Some((l, rest)) = split_block(&job.name) else {
            let label = if job.name.starts_with("token_embd") {
                "embeddings".to_string()
            } else if job.name.starts_with("output") {
                "head".to_string()
            } else {
                job.name.clone()
            };
            add(label.clone(), None, whole, label);
            continue;
        };
        let down = rest.starts_with("ffn_down");
        let kind = if rest.starts_with("attn_output") && fine {
            "attn_output"
        } else if rest.starts_with("attn") && fine {
            "attn_qkv"
        } else if rest.starts_with("attn") {
            "attn"
        } else if rest.contains("_exps") && job.shape_ne.len() == 3 {
            let n_expert = job.shape_ne[2] as usize;
            let per = job.shape_ne[1] as usize;
            for e in 0..n_expert {
                add(
                    format!("blk.{l}.expert.{e}"),
                    Some(l),
                    Member {
                        job: j,
                        rows: Some((e * per, (e + 1) * per)),
                    },
                    format!("blk.{l}.experts"),
                );
            }
            continue;
        } else if rest.contains("_shexp") && fine {
            if down {
                "shared_experts_down"
            } else {
                "shared_experts_gate_up"
            }
        } else if rest.contains("_shexp") {
            "shared_experts"
        } else if rest.starts_with("ffn") && fine {
            if down {
                "mlp_down"
            } else {
                "mlp_gate_up"
            }
        } else if rest.starts_with("ffn") {
            "mlp"
        } else {
            "other"
        };
        let label = format!("blk.{l}.{kind}");
        add(label.clone(), Some(l), whole, label);
    }
    (out, written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmq_formats::GgmlType;

    fn job(name: &str, shape: &[u64], ty: GgmlType) -> TensorJob {
        TensorJob {
            name: name.into(),
            shape_ne: shape.to_vec(),
            ty,
            unit: 0,
        }
    }

    #[test]
    fn groups_by_role_and_expert() {
        let jobs = vec![
            job("output.weight", &[256, 100], GgmlType::Q6K),
            job("blk.0.attn_q.weight", &[256, 256], GgmlType::Q4K),
            job("blk.0.attn_norm.weight", &[256], GgmlType::F32),
            job("blk.0.ffn_gate_inp.weight", &[256, 4], GgmlType::F32),
            job("blk.0.ffn_up_exps.weight", &[256, 64, 4], GgmlType::Q4K),
            job("blk.0.ffn_down_shexp.weight", &[64, 256], GgmlType::Q4K),
            job("blk.1.ffn_down.weight", &[768, 256], GgmlType::Q6K),
            job("blk.0.attn_v.weight", &[256, 128], GgmlType::Q6K),
            job("token_embd.weight", &[256, 100], GgmlType::Q4K),
        ];
        let (g, written) = groups(&jobs);
        let labels: Vec<&str> = g.iter().map(|g| g.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "embeddings",
                "blk.0.attn",
                "blk.0.expert.0",
                "blk.0.expert.1",
                "blk.0.expert.2",
                "blk.0.expert.3",
                "blk.0.shared_experts",
                "blk.1.mlp",
                "head"
            ]
        );
        assert_eq!(g[1].members.len(), 2, "attn_q and attn_v");
        assert_eq!(
            g[3].members,
            vec![Member {
                job: 4,
                rows: Some((64, 128))
            }]
        );
        assert_eq!(g[2].written, g[5].written);
        assert_eq!(written[g[2].written], "blk.0.experts");
        assert_eq!(written.len(), 6);
        // fine: q and v together, the shared experts' down apart, the MLP's down apart
        let jobs2 = [
            jobs.clone(),
            vec![
                job("blk.0.attn_output.weight", &[256, 256], GgmlType::Q4K),
                job("blk.0.ffn_gate_shexp.weight", &[256, 64], GgmlType::Q4K),
                job("blk.1.ffn_up.weight", &[256, 768], GgmlType::Q4K),
                job("blk.1.ffn_gate.weight", &[256, 768], GgmlType::Q4K),
            ],
        ]
        .concat();
        let (g, written) = groups_with(&jobs2, Granularity::Fine);
        let labels: Vec<&str> = g.iter().map(|g| g.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "embeddings",
                "blk.0.attn_qkv",
                "blk.0.expert.0",
                "blk.0.expert.1",
                "blk.0.expert.2",
                "blk.0.expert.3",
                "blk.0.shared_experts_down",
                "blk.0.attn_output",
                "blk.0.shared_experts_gate_up",
                "blk.1.mlp_down",
                "blk.1.mlp_gate_up",
                "head"
            ]
        );
        assert_eq!(g[1].members.len(), 2, "attn_q and attn_v");
        assert_eq!(g[10].members.len(), 2, "ffn_up and ffn_gate");
        assert_eq!(written.len(), 9);
        // the block grouping of the same jobs is unchanged
        assert_eq!(groups(&jobs2).0.len(), 9);
    }
}
