//! compressed-tensors' `transform_config` (inside `quantization_config`; the
//! package's `TransformConfig` → `TransformScheme` → `TransformArgs`), as far as our
//! reader computes it: one `hadamard` scheme (deterministic Sylvester, not
//! randomized) with `head_dim` = the block size, applied online to the `input` of
//! every quantized Linear (`targets: ["Linear"]`, the quantization's own `ignore`),
//! optionally with the offline `weight_input` inverse that was fused into the
//! weights before quantization. That is the shape MR-GPTQ's rotation takes
//! (`llm-quantize … --method mr-gptq`); the weights are stored in the rotated space and
//! the layer computes `W'·(R·x)`. Any other non-empty transform config is refused,
//! so a checkpoint is never run without its rotations.

use crate::{Error, Result};
use serde_json::Value;
use std::collections::BTreeSet;

/// An online block-Hadamard rotation of every quantized Linear's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputRotation {
    /// the config group's name (the module's transform tensor is
    /// `<module>.<name>_input.weight`)
    pub name: String,
    /// `head_dim`: the Hadamard block
    pub block: usize,
}

fn refuse(why: impl std::fmt::Display) -> Error {
    Error::UnsupportedCheckpoint(format!(
        "compressed-tensors transform_config: {why} (supported: one deterministic `hadamard` scheme with a power-of-two head_dim on the input of every quantized Linear)"
    ))
}

fn names(v: &Value) -> Option<BTreeSet<String>> {
    match v {
        Value::Null => Some(BTreeSet::new()),
        Value::String(s) => Some([s.clone()].into()),
        Value::Array(a) => a.iter().map(|x| x.as_str().map(str::to_string)).collect(),
        _ => None,
    }
}

/// The rotation `qc` (a `quantization_config`) declares, `None` when it declares none.
pub fn input_rotation(qc: &Value) -> Result<Option<InputRotation>> {
    let groups = match qc.get("transform_config") {
        None | Some(Value::Null) => return Ok(None),
        Some(t) if t.as_object().is_some_and(|o| o.is_empty()) => return Ok(None),
        Some(t) => t
            .get("config_groups")
            .and_then(Value::as_object)
            .ok_or_else(|| refuse("no config_groups"))?,
    };
    if groups.is_empty() {
        return Ok(None);
    }
    if groups.len() != 1 {
        return Err(refuse(format!("{} schemes", groups.len())));
    }
    let (name, s) = groups.iter().next().expect("one group");
    if s["type"] != "hadamard" {
        return Err(refuse(format!("scheme type {}", s["type"])));
    }
    if s["randomize"].as_bool() == Some(true) || s["requires_grad"].as_bool() == Some(true) {
        return Err(refuse("a randomized or trainable Hadamard"));
    }
    let block = s["head_dim"]
        .as_u64()
        .map(|b| b as usize)
        .filter(|b| crate::hadamard::valid_block(*b))
        .ok_or_else(|| refuse(format!("head_dim {}", s["head_dim"])))?;
    let ignore = names(&qc["ignore"]).ok_or_else(|| refuse("quantization ignore list"))?;
    let mut online = 0;
    for a in s["apply"]
        .as_array()
        .ok_or_else(|| refuse("no apply list"))?
    {
        let targets = names(&a["targets"]).ok_or_else(|| refuse("targets"))?;
        let a_ignore = names(&a["ignore"]).ok_or_else(|| refuse("ignore"))?;
        let inverse = a["inverse"].as_bool().unwrap_or(false);
        if targets != BTreeSet::from(["Linear".to_string()]) || a_ignore != ignore {
            return Err(refuse(
                "targets other than every quantized Linear (targets [\"Linear\"] with the quantization's ignore list)",
            ));
        }
        match (a["location"].as_str(), inverse) {
            (Some("input"), false) => online += 1,
            // offline: already fused into the stored weights
            (Some("weight_input"), true) => {}
            (l, inv) => {
                return Err(refuse(format!(
                    "location {} (inverse {inv})",
                    l.unwrap_or("?")
                )))
            }
        }
    }
    if online != 1 {
        return Err(refuse("no single online input rotation"));
    }
    Ok(Some(InputRotation {
        name: name.clone(),
        block,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn qc(apply: Value, head_dim: Value) -> Value {
        json!({"ignore": ["lm_head"], "transform_config": {"config_groups": {"mr": {
            "type": "hadamard", "head_dim": head_dim, "randomize": false, "apply": apply}}}})
    }

    #[test]
    fn ours_is_read_and_others_are_refused() {
        let input = json!({"targets": ["Linear"], "location": "input", "inverse": false, "ignore": ["lm_head"]});
        let fused = json!({"targets": ["Linear"], "location": "weight_input", "inverse": true, "ignore": ["lm_head"]});
        let ok = input_rotation(&qc(json!([input, fused]), json!(64))).unwrap();
        assert_eq!(
            ok,
            Some(InputRotation {
                name: "mr".into(),
                block: 64
            })
        );
        assert_eq!(
            input_rotation(&json!({"transform_config": {}})).unwrap(),
            None
        );
        assert_eq!(input_rotation(&json!({})).unwrap(), None);
        for bad in [
            qc(json!([input]), json!(48)),
            qc(json!([fused]), json!(64)),
            qc(
                json!([{"targets": ["Linear"], "location": "output", "ignore": ["lm_head"]}]),
                json!(64),
            ),
            qc(
                json!([{"targets": ["q_proj"], "location": "input", "ignore": ["lm_head"]}]),
                json!(64),
            ),
            qc(
                json!([{"targets": ["Linear"], "location": "input", "ignore": []}]),
                json!(64),
            ),
        ] {
            assert!(input_rotation(&bad).is_err(), "{bad}");
        }
        let mut random = qc(json!([input]), json!(64));
        random["transform_config"]["config_groups"]["mr"]["randomize"] = json!(true);
        assert!(input_rotation(&random).is_err());
    }
}
