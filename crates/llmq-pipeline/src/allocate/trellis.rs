//! Per-tensor trellis bits (K) for EXL3 output.
//!
//! Two entry points, both ending in an [`Allocation`] of `QuantSpec::Trellis { k }`:
//!
//! * [`Allocation::trellis_from_map`]: a K per tensor given by the caller (the measured
//!   allocator plugs in here), checked against what exllamav3 can load: K in 1…8 and one
//!   K across the experts of a projection (its block-sparse MLP stacks them).
//! * [`Allocation::trellis_for_bpw`]: the rule exllamav3's converter applies to `-b BPW`
//!   (`conversion/allocation.py create_q_strategy`, re-implemented from its description):
//!   every budgeted Linear starts at `floor(bpw)`; the budget `floor(bpw · Σ numel)` is then
//!   spent one whole bit at a time per group (a layer's q/k/v, its o, its gate/up, its
//!   down, all the experts of its MoE), in rounds over the groups in a fixed order —
//!   attention before MLP before routed experts, then layers nearest either end of the
//!   stack first, then the lower layer, then q/k/v before o and gate/up before down — a
//!   group being bumped when its whole cost still fits. No K exceeds 8. A whole `bpw`
//!   spends nothing: every K is `bpw`. The rounds stop only when no group below 8 can
//!   be bumped within the budget, so the realised average is at most `bpw` and more
//!   than `bpw − c / Σ numel`, `c` the cost (its element count) of the smallest group
//!   still below 8 — at most the largest group's (and no bound is needed when every
//!   group is at 8).

use super::{Allocation, QuantSpec, TensorSpec};
use crate::error::{PipelineError, Result};
use crate::request::Method;
use std::collections::BTreeMap;

/// The K of the output head in EXL3 folders (exllamav3's `--head_bits` default).
pub const EXL3_HEAD_BITS: u32 = 6;

/// A trellis-coded Linear the budget covers: its weight name and element count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrellisTarget {
    pub name: String,
    pub numel: u64,
}

/// `name` with the expert index replaced by `*`, when it is a routed expert's weight
/// (`….experts.3.up_proj.weight` → `….experts.*.up_proj.weight`).
fn expert_projection(name: &str) -> Option<String> {
    let i = name.find(".experts.")? + ".experts.".len();
    let rest = &name[i..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    (digits > 0 && rest[digits..].starts_with('.'))
        .then(|| format!("{}*{}", &name[..i], &rest[digits..]))
}

/// The layer index of a `….layers.N.…` name.
fn layer_of(name: &str) -> Option<usize> {
    let i = name.find(".layers.")? + ".layers.".len();
    let rest = &name[i..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

/// The group a Linear is bumped with, its priority (higher first) and its rank
/// inside the layer (lower first), after exllamav3's `qgroup` / `q_priority`.
fn group_of(name: &str) -> (String, u32, u32) {
    let module = name.strip_suffix(".weight").unwrap_or(name);
    if let Some(p) = expert_projection(name) {
        let moe = &p[..p.find(".experts.").unwrap_or(0)];
        return (format!("{moe}.block_gud"), 0, 0);
    }
    let (parent, leaf) = module.rsplit_once('.').unwrap_or(("", module));
    let attn = parent.ends_with("attn") || parent.ends_with("attention");
    if attn {
        let qkv = matches!(
            leaf,
            "q_proj" | "k_proj" | "v_proj" | "qkv_proj" | "query_key_value" | "c_attn"
        ) || leaf.starts_with("q_")
            || leaf.starts_with("kv_");
        return if qkv {
            (format!("{parent}.qkv"), 2, 0)
        } else {
            (format!("{parent}.o"), 2, 1)
        };
    }
    let down = matches!(leaf, "down_proj" | "w2" | "fc2" | "c_proj");
    if down {
        (format!("{parent}.d"), 1, 1)
    } else {
        (format!("{parent}.gu"), 1, 0)
    }
}

fn trellis(k: u32) -> TensorSpec {
    TensorSpec {
        method: Method::Trellis,
        quant: QuantSpec::Trellis { k },
    }
}

impl Allocation {
    /// Trellis codes of `ks[name]` bits for every listed tensor and `default_k` for
    /// any other. Refused: a K outside 1…8, and experts of one projection at
    /// different K (exllamav3 stores them stacked at one K).
    pub fn trellis_from_map(default_k: u32, ks: &BTreeMap<String, u32>) -> Result<Allocation> {
        Self::trellis_map(default_k, ks, true)
    }

    /// [`Allocation::trellis_from_map`] with experts of one projection free to differ:
    /// our engine runs such a folder, exllamav3 does not load it.
    pub fn trellis_from_map_per_expert(
        default_k: u32,
        ks: &BTreeMap<String, u32>,
    ) -> Result<Allocation> {
        Self::trellis_map(default_k, ks, false)
    }

    fn trellis_map(
        default_k: u32,
        ks: &BTreeMap<String, u32>,
        one_k_per_projection: bool,
    ) -> Result<Allocation> {
        let bad_k = |k: u32| !(1..=8).contains(&k);
        if bad_k(default_k) {
            return Err(PipelineError::invalid(
                format!("trellis K {default_k} is out of range"),
                "Use 1 to 8 bits per weight",
            ));
        }
        let mut per_projection: BTreeMap<String, (u32, &str)> = BTreeMap::new();
        for (name, &k) in ks {
            if bad_k(k) {
                return Err(PipelineError::invalid(
                    format!("tensor {name}: trellis K {k} is out of range"),
                    "Use 1 to 8 bits per weight",
                ));
            }
            if let Some(p) = expert_projection(name).filter(|_| one_k_per_projection) {
                let (k0, first) = *per_projection.entry(p).or_insert((k, name));
                if k0 != k {
                    return Err(PipelineError::unsupported(
                        format!("experts {first} (K={k0}) and {name} (K={k}) differ: EXL3 stores the experts of a projection at one K"),
                        "Give every expert of a projection the same K",
                    ));
                }
            }
        }
        let mut a = Allocation::uniform_trellis(default_k);
        for (name, &k) in ks {
            if k != default_k {
                a.set(name, trellis(k));
            }
        }
        Ok(a)
    }

    /// exllamav3's allocation of `bpw` (1…8) over `targets` (the rule in the module
    /// doc), with the realised average bits per weight over them. The result depends
    /// only on the set of targets, not on their order.
    pub fn trellis_for_bpw(bpw: f64, targets: &[TrellisTarget]) -> Result<(Allocation, f64)> {
        if !(bpw.is_finite() && (1.0..=8.0).contains(&bpw)) {
            return Err(PipelineError::invalid(
                format!("exl3 bits per weight {bpw} is out of range"),
                "Use 1.0 to 8.0",
            ));
        }
        let base = bpw.floor() as u32;
        let ks = trellis_ks(bpw, targets);
        let numel: u64 = targets.iter().map(|t| t.numel).sum();
        let bits: u64 = targets.iter().map(|t| t.numel * ks[&t.name] as u64).sum();
        let avg = if numel > 0 {
            bits as f64 / numel as f64
        } else {
            base as f64
        };
        Ok((Allocation::trellis_from_map(base, &ks)?, avg))
    }
}

/// One group of Linears bumped together.
struct Group<'a> {
    key: String,
    priority: u32,
    layer: Option<usize>,
    rank: u32,
    members: Vec<&'a TrellisTarget>,
    k: u32,
}

/// The K of every target under the rule of the module doc.
fn trellis_ks(bpw: f64, targets: &[TrellisTarget]) -> BTreeMap<String, u32> {
    let base = bpw.floor() as u32;
    let mut targets: Vec<&TrellisTarget> = targets.iter().collect();
    targets.sort_by(|a, b| a.name.cmp(&b.name));
    targets.dedup_by(|a, b| a.name == b.name);
    let mut by_key: BTreeMap<String, Group<'_>> = BTreeMap::new();
    for t in &targets {
        let (key, priority, rank) = group_of(&t.name);
        by_key
            .entry(key.clone())
            .or_insert_with(|| Group {
                key,
                priority,
                layer: layer_of(&t.name),
                rank,
                members: Vec::new(),
                k: base,
            })
            .members
            .push(t);
    }
    let last = by_key.values().filter_map(|g| g.layer).max().unwrap_or(0);
    let mut order: Vec<Group<'_>> = by_key.into_values().collect();
    order.sort_by_key(|g| {
        let dist = g.layer.map_or(0, |l| l.min(last - l));
        (
            std::cmp::Reverse(g.priority),
            dist,
            g.layer.map_or(-1, |l| l as i64),
            g.rank,
            g.key.clone(),
        )
    });
    let sum_numel: u64 = targets.iter().map(|t| t.numel).sum();
    let max_bits = (bpw * sum_numel as f64).floor() as u64;
    let mut sum_bits = sum_numel * base as u64;
    while sum_bits < max_bits {
        let mut updated = false;
        for g in order.iter_mut().filter(|g| g.k < 8) {
            let cost: u64 = g.members.iter().map(|t| t.numel).sum();
            if cost > 0 && sum_bits + cost <= max_bits {
                g.k += 1;
                sum_bits += cost;
                updated = true;
            }
        }
        if !updated {
            break;
        }
    }
    order
        .iter()
        .flat_map(|g| g.members.iter().map(|t| (t.name.clone(), g.k)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared 4-layer llama's Linears (hidden 256, kv 128, ff 768).
    fn llama() -> Vec<TrellisTarget> {
        let mut t = Vec::new();
        for l in 0..4 {
            for (m, o, i) in [
                ("self_attn.q_proj", 256, 256),
                ("self_attn.k_proj", 128, 256),
                ("self_attn.v_proj", 128, 256),
                ("self_attn.o_proj", 256, 256),
                ("mlp.gate_proj", 768, 256),
                ("mlp.up_proj", 768, 256),
                ("mlp.down_proj", 256, 768),
            ] {
                t.push(TrellisTarget {
                    name: format!("model.layers.{l}.{m}.weight"),
                    numel: o * i,
                });
            }
        }
        t
    }

    #[test]
    fn whole_bpw_is_uniform() {
        for b in 1..=8u32 {
            let (a, avg) = Allocation::trellis_for_bpw(b as f64, &llama()).unwrap();
            assert_eq!(avg, b as f64);
            for t in llama() {
                assert_eq!(a.trellis_k(&t.name).unwrap(), b);
            }
            assert!(a.tensors.is_empty());
        }
    }

    #[test]
    fn fractional_bpw_meets_the_budget_deterministically() {
        let targets = llama();
        let n: u64 = targets.iter().map(|t| t.numel).sum();
        for bpw in [1.5, 2.25, 2.5, 3.5, 4.75, 7.9] {
            let (a, avg) = Allocation::trellis_for_bpw(bpw, &targets).unwrap();
            // the smallest group still below 8 bounds the unspent budget
            let mut groups: BTreeMap<String, u64> = BTreeMap::new();
            for t in &targets {
                if a.trellis_k(&t.name).unwrap() < 8 {
                    *groups.entry(group_of(&t.name).0).or_default() += t.numel;
                }
            }
            let c = groups.values().copied().min().unwrap_or(0);
            assert!(c <= 393216, "{bpw}: smallest open group {c}");
            let slack = c as f64 / n as f64;
            assert!(
                avg <= bpw && avg > bpw - slack,
                "{bpw}: {avg} (slack {slack})"
            );
            let bits: u64 = targets
                .iter()
                .map(|t| t.numel * a.trellis_k(&t.name).unwrap() as u64)
                .sum();
            assert_eq!(bits as f64 / n as f64, avg);
            // the same whatever the order of the targets
            let mut rev = targets.clone();
            rev.reverse();
            let (b, avg2) = Allocation::trellis_for_bpw(bpw, &rev).unwrap();
            assert_eq!(avg, avg2);
            for t in &targets {
                assert_eq!(a.trellis_k(&t.name).unwrap(), b.trellis_k(&t.name).unwrap());
                let k = a.trellis_k(&t.name).unwrap();
                assert!(k == bpw.floor() as u32 || k == bpw.floor() as u32 + 1);
            }
        }
        // 2.5: attention first, from the ends of the stack inward (layers 0 and 3
        // before 1 and 2), then the MLPs
        let (a, _) = Allocation::trellis_for_bpw(2.5, &targets).unwrap();
        let k = |n: &str| a.trellis_k(n).unwrap();
        for l in 0..4 {
            assert_eq!(k(&format!("model.layers.{l}.self_attn.q_proj.weight")), 3);
            assert_eq!(k(&format!("model.layers.{l}.self_attn.o_proj.weight")), 3);
        }
        assert_eq!(k("model.layers.0.mlp.gate_proj.weight"), 3);
        assert_eq!(
            k("model.layers.0.mlp.up_proj.weight"),
            k("model.layers.0.mlp.gate_proj.weight")
        );
    }

    #[test]
    fn experts_of_a_layer_share_k() {
        let mut t = Vec::new();
        for l in 0..2 {
            for e in 0..4 {
                for p in ["gate_proj", "up_proj", "down_proj"] {
                    t.push(TrellisTarget {
                        name: format!("model.layers.{l}.mlp.experts.{e}.{p}.weight"),
                        numel: 65536,
                    });
                }
            }
            t.push(TrellisTarget {
                name: format!("model.layers.{l}.self_attn.q_proj.weight"),
                numel: 65536,
            });
        }
        let (a, avg) = Allocation::trellis_for_bpw(3.5, &t).unwrap();
        assert!(avg <= 3.5);
        for l in 0..2 {
            let k0 = a
                .trellis_k(&format!("model.layers.{l}.mlp.experts.0.gate_proj.weight"))
                .unwrap();
            for e in 0..4 {
                for p in ["gate_proj", "up_proj", "down_proj"] {
                    let n = format!("model.layers.{l}.mlp.experts.{e}.{p}.weight");
                    assert_eq!(a.trellis_k(&n).unwrap(), k0);
                }
            }
        }
    }

    #[test]
    fn map_entry_checks_k_and_experts() {
        let mut ks = BTreeMap::new();
        ks.insert("model.layers.0.mlp.down_proj.weight".to_string(), 5);
        ks.insert("lm_head.weight".to_string(), 6);
        let a = Allocation::trellis_from_map(4, &ks).unwrap();
        assert_eq!(
            a.trellis_k("model.layers.0.mlp.down_proj.weight").unwrap(),
            5
        );
        assert_eq!(a.trellis_k("lm_head.weight").unwrap(), 6);
        assert_eq!(a.trellis_k("model.layers.0.mlp.up_proj.weight").unwrap(), 4);
        ks.insert("x".to_string(), 9);
        assert!(Allocation::trellis_from_map(4, &ks).is_err());
        let mut ks = BTreeMap::new();
        ks.insert("m.layers.0.mlp.experts.0.up_proj.weight".to_string(), 3);
        ks.insert("m.layers.0.mlp.experts.1.up_proj.weight".to_string(), 4);
        assert_eq!(
            Allocation::trellis_from_map(4, &ks).unwrap_err().kind(),
            crate::ErrorKind::Unsupported
        );
        assert_eq!(
            expert_projection("a.experts.12.w1.weight").as_deref(),
            Some("a.experts.*.w1.weight")
        );
        assert_eq!(expert_projection("a.shared_experts.w1.weight"), None);
    }
}
