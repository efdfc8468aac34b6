//! Calibration samples: token windows cut from a text, a JSON Lines file (`text` per
//! line) or a JSON array, or the bundled default text (`data/calibration/`).
//!
//! Plain text is tokenized as a whole and cut into consecutive windows of `seq_len`
//! tokens; when there are more windows than samples asked for, the samples are picked
//! evenly spaced over the text (deterministic). A JSONL/JSON document is one sample,
//! truncated to `seq_len` tokens (as llm-compressor and GPTQModel treat datasets).

use std::path::Path;

/// The calibration text compiled into the binary (see `data/calibration/README.md`).
pub const DEFAULT_CALIBRATION_TEXT: &str = include_str!("../../../data/calibration/default.txt");

/// What went wrong reading calibration data (the CLI reports it as invalid arguments).
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read calibration data {path}: {why}")]
    Io { path: String, why: String },
    #[error("calibration data {path}: {why}")]
    Invalid { path: String, why: String },
}

/// Calibration token windows.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationSet {
    pub samples: Vec<Vec<u32>>,
    /// where they came from (`default` or the path)
    pub source: String,
    /// windows (text) or documents (JSON) available before picking
    pub available: usize,
    /// things the user should know (fewer samples than asked, truncation)
    pub notes: Vec<String>,
}

impl CalibrationSet {
    pub fn n_tokens(&self) -> usize {
        self.samples.iter().map(|s| s.len()).sum()
    }
}

/// How samples are cut.
#[derive(Debug, Clone, Copy)]
pub struct DatasetOptions {
    pub n_samples: usize,
    pub seq_len: usize,
    /// prepend this token to every sample (the tokenizer's BOS when it adds one);
    /// it counts towards `seq_len`
    pub bos: Option<u32>,
}

/// Tokenizer callback: text → ids (no special tokens), or a message.
pub type Encode<'a> = &'a dyn Fn(&str) -> Result<Vec<u32>, String>;

/// Load `path` (or the bundled text when `None`) and cut it into samples.
pub fn load_calibration(
    path: Option<&Path>,
    encode: Encode<'_>,
    o: &DatasetOptions,
) -> Result<CalibrationSet, DatasetError> {
    let (label, text) = match path {
        None => ("default".to_string(), DEFAULT_CALIBRATION_TEXT.to_string()),
        Some(p) => {
            let label = p.display().to_string();
            let bytes = std::fs::read(p).map_err(|e| DatasetError::Io {
                path: label.clone(),
                why: e.to_string(),
            })?;
            let text = String::from_utf8(bytes).map_err(|e| DatasetError::Invalid {
                path: label.clone(),
                why: format!("not UTF-8 text ({e})"),
            })?;
            (label, text)
        }
    };
    let invalid = |why: String| DatasetError::Invalid {
        path: label.clone(),
        why,
    };
    if o.n_samples == 0 {
        return Err(invalid("--calibration-samples must be at least 1".into()));
    }
    if o.seq_len < 2 {
        return Err(invalid("--calibration-seq-len must be at least 2".into()));
    }
    if text.trim().is_empty() {
        return Err(invalid("the file is empty".into()));
    }
    let ext = path
        .and_then(|p| p.extension())
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let docs: Option<Vec<String>> = match ext.as_str() {
        "jsonl" => Some(jsonl_docs(&text).map_err(invalid)?),
        "json" => Some(json_docs(&text).map_err(invalid)?),
        _ => None,
    };
    let body = o.seq_len - usize::from(o.bos.is_some());
    let with_bos = |mut w: Vec<u32>| -> Vec<u32> {
        if let Some(b) = o.bos {
            w.insert(0, b);
        }
        w
    };
    let mut notes = Vec::new();
    match docs {
        Some(docs) => {
            let mut samples = Vec::new();
            let mut truncated = 0usize;
            for d in &docs {
                let mut ids = encode(d).map_err(&invalid)?;
                if ids.is_empty() {
                    continue;
                }
                if ids.len() > body {
                    ids.truncate(body);
                    truncated += 1;
                }
                samples.push(with_bos(ids));
            }
            if samples.is_empty() {
                return Err(invalid("no document has any text".into()));
            }
            let available = samples.len();
            if truncated > 0 {
                notes.push(format!(
                    "{truncated} of {available} documents were truncated to {} tokens",
                    o.seq_len
                ));
            }
            let samples = pick_evenly(samples, o.n_samples);
            if samples.len() < o.n_samples {
                notes.push(format!(
                    "calibration data has {} documents, fewer than the {} samples asked for: using all",
                    samples.len(),
                    o.n_samples
                ));
            }
            Ok(CalibrationSet {
                samples,
                source: label,
                available,
                notes,
            })
        }
        None => {
            let ids = encode(&text).map_err(&invalid)?;
            if ids.len() < body {
                return Err(invalid(format!(
                    "the text has {} tokens, shorter than one sample of {} tokens; give more text or lower --calibration-seq-len",
                    ids.len(),
                    o.seq_len
                )));
            }
            let windows: Vec<Vec<u32>> = ids
                .chunks_exact(body)
                .map(|c| with_bos(c.to_vec()))
                .collect();
            let available = windows.len();
            let samples = pick_evenly(windows, o.n_samples);
            if samples.len() < o.n_samples {
                notes.push(format!(
                    "calibration text gives {} windows of {} tokens, fewer than the {} samples asked for: using all",
                    samples.len(),
                    o.seq_len,
                    o.n_samples
                ));
            }
            Ok(CalibrationSet {
                samples,
                source: label,
                available,
                notes,
            })
        }
    }
}

/// `n` of `items`, evenly spaced (all of them when there are not more).
fn pick_evenly<T>(items: Vec<T>, n: usize) -> Vec<T> {
    let m = items.len();
    if m <= n {
        return items;
    }
    let want: std::collections::HashSet<usize> = (0..n).map(|k| k * m / n).collect();
    items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| want.contains(i))
        .map(|(_, x)| x)
        .collect()
}

fn text_of(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(m) => m.get("text").and_then(|t| t.as_str()).map(str::to_string),
        _ => None,
    }
}

fn jsonl_docs(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: not JSON ({e})", i + 1))?;
        let t = text_of(&v).ok_or_else(|| format!("line {}: no string field \"text\"", i + 1))?;
        out.push(t);
    }
    if out.is_empty() {
        return Err("no JSON lines".into());
    }
    Ok(out)
}

fn json_docs(text: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    let arr = match &v {
        serde_json::Value::Array(a) => a.clone(),
        serde_json::Value::Object(m) => match m.get("text") {
            Some(serde_json::Value::Array(a)) => a.clone(),
            _ => vec![v.clone()],
        },
        _ => return Err("expected an array of strings or of objects with \"text\"".into()),
    };
    arr.iter()
        .enumerate()
        .map(|(i, d)| text_of(d).ok_or_else(|| format!("item {i}: no string \"text\"")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> Result<Vec<u32>, String> {
        Ok(s.split_whitespace().map(|w| w.len() as u32).collect())
    }

    fn opts(n: usize, len: usize) -> DatasetOptions {
        DatasetOptions {
            n_samples: n,
            seq_len: len,
            bos: None,
        }
    }

    #[test]
    fn text_windows_are_picked_evenly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        std::fs::write(&p, "a ".repeat(100)).unwrap();
        let s = load_calibration(Some(&p), &enc, &opts(3, 10)).unwrap();
        assert_eq!(s.available, 10);
        assert_eq!(s.samples.len(), 3);
        assert!(s.samples.iter().all(|w| w.len() == 10));
        let s = load_calibration(Some(&p), &enc, &opts(30, 10)).unwrap();
        assert_eq!(s.samples.len(), 10);
        assert_eq!(s.notes.len(), 1);
    }

    #[test]
    fn bos_counts_towards_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        std::fs::write(&p, "a ".repeat(20)).unwrap();
        let mut o = opts(2, 5);
        o.bos = Some(7);
        let s = load_calibration(Some(&p), &enc, &o).unwrap();
        assert_eq!(s.samples[0], vec![7, 1, 1, 1, 1]);
    }

    #[test]
    fn empty_and_short_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.txt");
        std::fs::write(&p, "  \n").unwrap();
        let e = load_calibration(Some(&p), &enc, &opts(4, 8)).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        std::fs::write(&p, "a b c").unwrap();
        let e = load_calibration(Some(&p), &enc, &opts(4, 8)).unwrap_err();
        assert!(e.to_string().contains("shorter than one sample"), "{e}");
        let e =
            load_calibration(Some(&dir.path().join("none.txt")), &enc, &opts(4, 8)).unwrap_err();
        assert!(matches!(e, DatasetError::Io { .. }));
    }

    #[test]
    fn jsonl_and_json_documents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, "{\"text\": \"a bb ccc\"}\n\n{\"text\": \"dddd\"}\n").unwrap();
        let s = load_calibration(Some(&p), &enc, &opts(8, 2)).unwrap();
        assert_eq!(s.samples, vec![vec![1, 2], vec![4]]);
        let p = dir.path().join("d.json");
        std::fs::write(&p, "[\"a bb\", {\"text\": \"ccc\"}]").unwrap();
        let s = load_calibration(Some(&p), &enc, &opts(8, 4)).unwrap();
        assert_eq!(s.samples, vec![vec![1, 2], vec![3]]);
        std::fs::write(&p, "{\"nope\": 1}").unwrap();
        assert!(load_calibration(Some(&p), &enc, &opts(8, 4)).is_err());
    }

    #[test]
    fn bundled_text_is_there() {
        assert!(DEFAULT_CALIBRATION_TEXT.len() > 200_000);
    }
}
