//! `--measurements FILE`: the measured curves of an earlier `--target-bpw` run (its
//! JSON result, `metadata.allocation`), so that other targets for the same model and
//! calibration are chosen without measuring again. Every group of this run must be
//! there, with the same candidates; experts come from `experts`, the rest from
//! `groups`.

use super::groups::Group;
use super::measure::Measured;
use crate::error::{PipelineError, Result};
use serde_json::Value;
use std::path::Path;

/// The curves of `groups` read from `path`.
pub fn read(path: &Path, groups: &[Group], candidates: &[String]) -> Result<Measured> {
    let text =
        std::fs::read_to_string(path).map_err(|e| PipelineError::io("cannot read", path, &e))?;
    let bad = |why: String| {
        PipelineError::invalid(
            format!("--measurements {}: {why}", path.display()),
            "Give the JSON result (--format json) of an earlier --target-bpw run of this model",
        )
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
    let a = if v["metadata"]["allocation"].is_object() {
        &v["metadata"]["allocation"]
    } else {
        &v
    };
    let names: Vec<&str> = a["candidates"]
        .as_array()
        .map(|c| c.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    let want: Vec<&str> = candidates.iter().map(|c| c.as_str()).collect();
    if names != want {
        return Err(bad(format!(
            "its candidates {names:?} are not this run's {want:?}"
        )));
    }
    let curve = |list: &Value, label: &str| -> Option<Vec<f64>> {
        let g = list
            .as_array()?
            .iter()
            .find(|g| g["group"].as_str() == Some(label))?;
        let l: Vec<f64> = g["delta_kl"]
            .as_array()?
            .iter()
            .filter_map(|x| x.as_f64())
            .collect();
        (l.len() == want.len() && l.iter().all(|x| x.is_finite())).then_some(l)
    };
    let loss = groups
        .iter()
        .map(|g| {
            curve(&a["experts"], &g.label)
                .or_else(|| curve(&a["groups"], &g.label))
                .ok_or_else(|| bad(format!("no measured curve for group {}", g.label)))
        })
        .collect::<Result<Vec<_>>>()?;
    let cal = &a["calibration"];
    Ok(Measured {
        loss,
        tokens: cal["tokens"].as_u64().unwrap_or(0) as usize,
        windows: cal["windows"].as_u64().unwrap_or(0) as usize,
        source: cal["source"].as_str().unwrap_or("").to_string(),
    })
}
