//! The harness of the bad-input catalogue (`hostile_catalogue*.rs`): a case runs one
//! command on one hostile input and checks the contract's exit code, the JSON error
//! naming the problem, and that nothing a reader would take for a model is left; the
//! editors build hostile variants of the shared Llama (its folder, and GGUF files made
//! from it once per test process).
#![allow(dead_code)]

use super::common::*;
use llmq_formats::gguf::{GgufFile, GgufPlan, GgufStreamWriter, GgufValue, PlannedTensor};
use llmq_formats::GgmlType;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One case: a name, the expected exit code, a word the message must hold, the
/// command (`{in}` stands for the hostile input's path).
pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) code: i32,
    pub(crate) needle: &'static str,
    pub(crate) args: Vec<String>,
    pub(crate) input: PathBuf,
    pub(crate) dir: tempfile::TempDir,
}

pub(crate) fn run_case(c: &Case) -> Result<(), String> {
    let args: Vec<String> = ["--format", "json"]
        .iter()
        .map(|s| s.to_string())
        .chain(
            c.args
                .iter()
                .map(|a| a.replace("{in}", c.input.to_str().unwrap())),
        )
        .collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = lq(c.dir.path(), &refs);
    let ctx = || {
        format!(
            "{}: {refs:?}\nstdout:\n{}\nstderr:\n{}",
            c.name, r.stdout, r.stderr
        )
    };
    if r.code != c.code {
        return Err(format!("exit {} (want {})\n{}", r.code, c.code, ctx()));
    }
    let v: Value =
        serde_json::from_str(&r.stdout).map_err(|e| format!("no JSON ({e})\n{}", ctx()))?;
    if v["status"] != "error" || v["error_code"] != c.code {
        return Err(format!("bad error object\n{}", ctx()));
    }
    let msg = v["message"].as_str().unwrap_or("").to_lowercase();
    if !msg.contains(&c.needle.to_lowercase()) {
        return Err(format!("message lacks {:?}\n{}", c.needle, ctx()));
    }
    if v["suggestion"].as_str().is_none_or(str::is_empty) {
        return Err(format!("no suggestion\n{}", ctx()));
    }
    if let Some(p) = loadable_leftover(c.dir.path(), &c.input) {
        return Err(format!("left a loadable {}\n{}", p.display(), ctx()));
    }
    Ok(())
}

/// A file with the GGUF magic or a folder with config.json + safetensors under `dir`,
/// other than the input itself.
pub(crate) fn loadable_leftover(dir: &Path, input: &Path) -> Option<PathBuf> {
    let inputs = dir.join("in");
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if d.starts_with(&inputs) {
            continue;
        }
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut has_config = false;
        let mut has_weights = false;
        for e in rd.flatten() {
            let p = e.path();
            if p == input {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let name = e.file_name().to_string_lossy().into_owned();
                has_config |= name == "config.json";
                has_weights |= name.ends_with(".safetensors");
                let mut magic = [0u8; 4];
                if std::io::Read::read_exact(&mut std::fs::File::open(&p).unwrap(), &mut magic)
                    .is_ok()
                    && &magic == b"GGUF"
                {
                    return Some(p);
                }
            }
        }
        if has_config && has_weights && d != dir {
            return Some(d);
        }
    }
    None
}

pub(crate) fn new_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

// ----- Hugging Face folders -------------------------------------------------------

pub(crate) fn llama_copy(dir: &Path, model: &str) -> PathBuf {
    copy_model(&shared_model(model), &dir.join("in"))
}

pub(crate) fn edit_config(m: &Path, f: impl FnOnce(&mut Value)) {
    let p = m.join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut c);
    std::fs::write(&p, c.to_string()).unwrap();
}

pub(crate) fn st_read(p: &Path) -> (Value, Vec<u8>) {
    let b = std::fs::read(p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&b[8..8 + n]).unwrap(),
        b[8 + n..].to_vec(),
    )
}

pub(crate) fn st_write(p: &Path, h: &Value, data: &[u8]) {
    let mut hb = serde_json::to_vec(h).unwrap();
    while !hb.len().is_multiple_of(8) {
        hb.push(b' ');
    }
    let mut b = (hb.len() as u64).to_le_bytes().to_vec();
    b.extend(hb);
    b.extend_from_slice(data);
    std::fs::write(p, b).unwrap();
}

pub(crate) fn edit_weights(m: &Path, f: impl FnOnce(&mut Value, &mut Vec<u8>)) {
    let p = m.join("model.safetensors");
    let (mut h, mut d) = st_read(&p);
    f(&mut h, &mut d);
    st_write(&p, &h, &d);
}

pub(crate) fn offset(h: &Value, name: &str) -> usize {
    h[name]["data_offsets"][0].as_u64().unwrap() as usize
}

pub(crate) type FolderEdit = Box<dyn Fn(&Path)>;

pub(crate) fn cfg(f: impl Fn(&mut Value) + 'static) -> FolderEdit {
    Box::new(move |m: &Path| edit_config(m, &f))
}

pub(crate) fn weights(f: impl Fn(&mut Value, &mut Vec<u8>) + 'static) -> FolderEdit {
    Box::new(move |m: &Path| edit_weights(m, &f))
}

/// Tensors by name: (dtype, shape, bytes).
pub(crate) type Tensors = std::collections::BTreeMap<String, (Value, Value, Vec<u8>)>;

/// Edit the tensors themselves; the file is repacked with fresh offsets, so it stays a
/// well-formed safetensors file.
pub(crate) fn tensors(f: impl Fn(&mut Tensors) + 'static) -> FolderEdit {
    Box::new(move |m: &Path| {
        let p = m.join("model.safetensors");
        let (h, d) = st_read(&p);
        let mut ts: Tensors = h
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(k, v)| {
                let s = v["data_offsets"][0].as_u64().unwrap() as usize;
                let e = v["data_offsets"][1].as_u64().unwrap() as usize;
                let t = (v["dtype"].clone(), v["shape"].clone(), d[s..e].to_vec());
                (k.clone(), t)
            })
            .collect();
        f(&mut ts);
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (k, (dtype, shape, b)) in ts {
            let s = data.len();
            data.extend(b);
            let e = data.len();
            header.insert(
                k,
                json!({"dtype": dtype, "shape": shape, "data_offsets": [s, e]}),
            );
        }
        st_write(&p, &Value::Object(header), &data);
    })
}

pub(crate) fn drop_tensor(name: &'static str) -> FolderEdit {
    tensors(move |ts| {
        ts.remove(name);
    })
}

/// Our own GGUF of the shared Llama at `level`, made once per test process.
pub(crate) fn base_gguf(level: &'static str) -> PathBuf {
    static F16: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    static Q8: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let cell = if level == "F16" { &F16 } else { &Q8 };
    cell.get_or_init(|| {
        let d = new_dir();
        let r = lq(
            d.path(),
            &[
                "quantize",
                shared_model("llama").to_str().unwrap(),
                "gguf",
                "-q",
                level,
                "-o",
                "o",
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let p = files_ending(&d.path().join("o"), ".gguf")[0].clone();
        (d, p)
    })
    .1
    .clone()
}

pub(crate) struct Tensor {
    pub(crate) name: String,
    pub(crate) shape: Vec<u64>,
    pub(crate) ty: GgmlType,
    pub(crate) bytes: Vec<u8>,
}

pub(crate) type GgufEdit = Box<dyn Fn(&mut Vec<(String, GgufValue)>, &mut Vec<Tensor>)>;

/// A copy of `src` with its metadata and tensors edited, written as a valid GGUF.
pub(crate) fn rewrite(src: &Path, dst: &Path, edit: &GgufEdit) {
    let f = GgufFile::open(src).unwrap();
    let mut meta = f.metadata().to_vec();
    let mut tensors: Vec<Tensor> = f
        .tensors()
        .iter()
        .map(|t| Tensor {
            name: t.name.clone(),
            shape: t.shape_ne.clone(),
            ty: t.ggml_type,
            bytes: f.tensor_bytes(t).to_vec(),
        })
        .collect();
    edit(&mut meta, &mut tensors);
    let mut plan = GgufPlan::new();
    plan.metadata = meta;
    plan.alignment = f.alignment();
    for t in &tensors {
        plan = plan.with_tensor(PlannedTensor::new(&t.name, t.shape.clone(), t.ty));
    }
    let w = GgufStreamWriter::create(dst, &plan).unwrap();
    for t in &tensors {
        w.write_tensor(t.name.as_str(), &t.bytes).unwrap();
    }
    w.finish().unwrap();
}

pub(crate) fn set_u32(key: &'static str, v: u32) -> GgufEdit {
    Box::new(move |m, _| {
        for (k, val) in m.iter_mut() {
            if k == key {
                *val = GgufValue::U32(v);
            }
        }
    })
}

pub(crate) fn on_tensor(name: &'static str, f: impl Fn(&mut Tensor) + 'static) -> GgufEdit {
    Box::new(move |_, ts| {
        for t in ts.iter_mut().filter(|t| t.name == name) {
            f(t);
        }
    })
}
