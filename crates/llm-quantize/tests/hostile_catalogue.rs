//! The bad-input catalogue: hostile variants of one tiny model (the shared Llama, and
//! GGUF files made from it once), each run through the command a user would run. Every
//! case asserts the contract's exit code, a JSON error whose message names the problem,
//! and that nothing a reader would take for a model was left behind (no file starting
//! with the GGUF magic, no folder with `config.json` and weights, outside the inputs).

mod common;
use common::*;
use llmq_formats::gguf::{GgufFile, GgufPlan, GgufStreamWriter, GgufValue, PlannedTensor};
use llmq_formats::GgmlType;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One case: a name, the expected exit code, a word the message must hold, the
/// command (`{in}` stands for the hostile input's path).
struct Case {
    name: String,
    code: i32,
    needle: &'static str,
    args: Vec<String>,
    input: PathBuf,
    dir: tempfile::TempDir,
}

fn run_case(c: &Case) -> Result<(), String> {
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
fn loadable_leftover(dir: &Path, input: &Path) -> Option<PathBuf> {
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

fn new_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

// ----- Hugging Face folders -------------------------------------------------------

fn llama_copy(dir: &Path, model: &str) -> PathBuf {
    copy_model(&shared_model(model), &dir.join("in"))
}

fn edit_config(m: &Path, f: impl FnOnce(&mut Value)) {
    let p = m.join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut c);
    std::fs::write(&p, c.to_string()).unwrap();
}

fn st_read(p: &Path) -> (Value, Vec<u8>) {
    let b = std::fs::read(p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&b[8..8 + n]).unwrap(),
        b[8 + n..].to_vec(),
    )
}

fn st_write(p: &Path, h: &Value, data: &[u8]) {
    let mut hb = serde_json::to_vec(h).unwrap();
    while !hb.len().is_multiple_of(8) {
        hb.push(b' ');
    }
    let mut b = (hb.len() as u64).to_le_bytes().to_vec();
    b.extend(hb);
    b.extend_from_slice(data);
    std::fs::write(p, b).unwrap();
}

fn edit_weights(m: &Path, f: impl FnOnce(&mut Value, &mut Vec<u8>)) {
    let p = m.join("model.safetensors");
    let (mut h, mut d) = st_read(&p);
    f(&mut h, &mut d);
    st_write(&p, &h, &d);
}

fn offset(h: &Value, name: &str) -> usize {
    h[name]["data_offsets"][0].as_u64().unwrap() as usize
}

type FolderEdit = Box<dyn Fn(&Path)>;

fn cfg(f: impl Fn(&mut Value) + 'static) -> FolderEdit {
    Box::new(move |m: &Path| edit_config(m, &f))
}

fn weights(f: impl Fn(&mut Value, &mut Vec<u8>) + 'static) -> FolderEdit {
    Box::new(move |m: &Path| edit_weights(m, &f))
}

/// Tensors by name: (dtype, shape, bytes).
type Tensors = std::collections::BTreeMap<String, (Value, Value, Vec<u8>)>;

/// Edit the tensors themselves; the file is repacked with fresh offsets, so it stays a
/// well-formed safetensors file.
fn tensors(f: impl Fn(&mut Tensors) + 'static) -> FolderEdit {
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

fn drop_tensor(name: &'static str) -> FolderEdit {
    tensors(move |ts| {
        ts.remove(name);
    })
}

/// (name, base model, edit, exit code, needle)
fn folder_cases() -> Vec<(&'static str, &'static str, FolderEdit, i32, &'static str)> {
    let set = |k: &'static str, v: Value| cfg(move |c| c[k] = v.clone());
    vec![
        (
            "kv heads 0",
            "llama",
            set("num_key_value_heads", json!(0)),
            6,
            "num_key_value_heads",
        ),
        (
            "kv heads not dividing",
            "llama",
            set("num_key_value_heads", json!(3)),
            6,
            "num_key_value_heads",
        ),
        (
            "kv heads above heads",
            "llama",
            set("num_key_value_heads", json!(8)),
            6,
            "num_key_value_heads",
        ),
        (
            "heads 0",
            "llama",
            set("num_attention_heads", json!(0)),
            6,
            "num_attention_heads",
        ),
        (
            "hidden 1e12",
            "llama",
            set("hidden_size", json!(1_000_000_000_000u64)),
            6,
            "hidden_size",
        ),
        (
            "hidden float",
            "llama",
            set("hidden_size", json!(256.5)),
            6,
            "hidden_size",
        ),
        (
            "hidden string",
            "llama",
            set("hidden_size", json!("256")),
            6,
            "hidden_size",
        ),
        (
            "hidden disagrees",
            "llama",
            set("hidden_size", json!(512)),
            6,
            "shape",
        ),
        (
            "intermediate disagrees",
            "llama",
            set("intermediate_size", json!(1024)),
            6,
            "gate_proj",
        ),
        (
            "intermediate negative",
            "llama",
            set("intermediate_size", json!(-768)),
            6,
            "intermediate_size",
        ),
        (
            "layers 1e9",
            "llama",
            set("num_hidden_layers", json!(1_000_000_000)),
            6,
            "num_hidden_layers",
        ),
        (
            "layers one more",
            "llama",
            set("num_hidden_layers", json!(5)),
            6,
            "model.layers.4",
        ),
        (
            "layers one fewer",
            "llama",
            set("num_hidden_layers", json!(3)),
            6,
            "model.layers.3",
        ),
        (
            "layers 0",
            "llama",
            set("num_hidden_layers", json!(0)),
            6,
            "num_hidden_layers",
        ),
        (
            "vocab 1e12",
            "llama",
            set("vocab_size", json!(1_000_000_000_000u64)),
            6,
            "vocab_size",
        ),
        (
            "vocab disagrees",
            "llama",
            set("vocab_size", json!(4000)),
            6,
            "embed_tokens",
        ),
        (
            "head_dim 0",
            "llama",
            set("head_dim", json!(0)),
            6,
            "head_dim",
        ),
        (
            "head_dim disagrees",
            "llama",
            set("head_dim", json!(32)),
            6,
            "q_proj",
        ),
        (
            "head_dim huge",
            "llama",
            set("head_dim", json!(1u64 << 40)),
            6,
            "head_dim",
        ),
        (
            "sliding window 0",
            "mistral",
            set("sliding_window", json!(0)),
            6,
            "sliding_window",
        ),
        (
            "eps negative",
            "llama",
            set("rms_norm_eps", json!(-1e-6)),
            6,
            "rms_norm_eps",
        ),
        (
            "rope theta 0",
            "llama",
            cfg(|c| c["rope_parameters"]["rope_theta"] = json!(0.0)),
            6,
            "rope_theta",
        ),
        (
            "max positions 0",
            "llama",
            set("max_position_embeddings", json!(0)),
            6,
            "max_position_embeddings",
        ),
        (
            "architectures missing",
            "llama",
            cfg(|c| {
                c.as_object_mut().unwrap().remove("architectures");
            }),
            6,
            "architectures",
        ),
        (
            "architecture unknown",
            "llama",
            set("architectures", json!(["GPTNeoXForCausalLM"])),
            8,
            "GPTNeoXForCausalLM",
        ),
        (
            "activation unknown",
            "llama",
            set("hidden_act", json!("relu")),
            8,
            "hidden_act",
        ),
        (
            "rope type unknown",
            "llama",
            cfg(|c| c["rope_parameters"]["rope_type"] = json!("warp")),
            8,
            "rope",
        ),
        (
            "config not json",
            "llama",
            Box::new(|m: &Path| std::fs::write(m.join("config.json"), "{ not json").unwrap()),
            6,
            "json",
        ),
        (
            "config empty",
            "llama",
            Box::new(|m: &Path| std::fs::write(m.join("config.json"), "").unwrap()),
            6,
            "json",
        ),
        (
            "config an array",
            "llama",
            Box::new(|m: &Path| std::fs::write(m.join("config.json"), "[1,2]").unwrap()),
            6,
            "architectures",
        ),
        (
            "untied without lm_head",
            "llama",
            drop_tensor("lm_head.weight"),
            6,
            "lm_head",
        ),
        (
            "tensor removed",
            "llama",
            drop_tensor("model.layers.1.mlp.down_proj.weight"),
            6,
            "down_proj",
        ),
        (
            "norm removed",
            "llama",
            drop_tensor("model.norm.weight"),
            6,
            "model.norm",
        ),
        (
            "tensor transposed",
            "llama",
            weights(|h, _| {
                let s = &mut h["model.layers.0.mlp.up_proj.weight"]["shape"];
                let v: Vec<Value> = s.as_array().unwrap().iter().rev().cloned().collect();
                *s = json!(v);
            }),
            6,
            "up_proj",
        ),
        (
            "unexplained q_norm",
            "llama",
            tensors(|ts| {
                let t = (json!("BF16"), json!([64]), vec![0; 128]);
                ts.insert("model.layers.0.self_attn.q_norm.weight".into(), t);
            }),
            6,
            "q_norm",
        ),
        (
            "unknown tensor",
            "llama",
            tensors(|ts| {
                let norm = ts["model.norm.weight"].clone();
                ts.insert("model.extra.weight".into(), norm);
            }),
            6,
            "model.extra.weight",
        ),
        (
            "tensor resized",
            "llama",
            tensors(|ts| {
                let t = ts
                    .get_mut("model.layers.3.self_attn.o_proj.weight")
                    .unwrap();
                t.1 = json!([128, 512]);
            }),
            6,
            "o_proj",
        ),
        (
            "nan in weight",
            "llama",
            weights(|h, d| {
                let o = offset(h, "model.layers.2.self_attn.v_proj.weight") + 20;
                d[o] = 0xC0;
                d[o + 1] = 0x7F;
            }),
            6,
            "v_proj",
        ),
        (
            "inf in weight",
            "llama",
            weights(|h, d| {
                let o = offset(h, "model.layers.1.mlp.gate_proj.weight") + 40;
                d[o] = 0x80;
                d[o + 1] = 0x7F;
            }),
            6,
            "gate_proj",
        ),
        (
            "inf in embedding",
            "llama",
            weights(|h, d| {
                let o = offset(h, "model.embed_tokens.weight");
                d[o] = 0x80;
                d[o + 1] = 0xFF;
            }),
            6,
            "embed",
        ),
        (
            "offsets past the data",
            "llama",
            weights(|h, d| {
                h["model.norm.weight"]["data_offsets"][1] = json!(d.len() as u64 * 4);
            }),
            6,
            "model.safetensors",
        ),
        (
            "shape lies about bytes",
            "llama",
            weights(|h, _| {
                h["model.norm.weight"]["shape"] = json!([257]);
            }),
            6,
            "model.norm.weight",
        ),
        (
            "dtype unknown",
            "llama",
            weights(|h, _| {
                h["model.layers.0.mlp.down_proj.weight"]["dtype"] = json!("I16");
            }),
            8,
            "I16",
        ),
        (
            "safetensors truncated",
            "llama",
            Box::new(|m: &Path| {
                let p = m.join("model.safetensors");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() / 2]).unwrap();
            }),
            6,
            "model.safetensors",
        ),
        (
            "safetensors header length huge",
            "llama",
            Box::new(|m: &Path| {
                let p = m.join("model.safetensors");
                let mut b = std::fs::read(&p).unwrap();
                b[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
                std::fs::write(&p, &b).unwrap();
            }),
            6,
            "model.safetensors",
        ),
        (
            "safetensors header garbage",
            "llama",
            Box::new(|m: &Path| {
                let p = m.join("model.safetensors");
                let mut b = std::fs::read(&p).unwrap();
                for x in &mut b[8..40] {
                    *x = 0xFF;
                }
                std::fs::write(&p, &b).unwrap();
            }),
            6,
            "model.safetensors",
        ),
        (
            "weights missing",
            "llama",
            Box::new(|m: &Path| std::fs::remove_file(m.join("model.safetensors")).unwrap()),
            3,
            "safetensors",
        ),
        (
            "moe top-k above experts",
            "qwen3-moe",
            set("num_experts_per_tok", json!(9)),
            6,
            "num_experts_per_tok",
        ),
        (
            "moe fewer experts than tensors",
            "qwen3-moe",
            set("num_local_experts", json!(4)),
            6,
            "experts",
        ),
        (
            "moe expert counts disagree",
            "qwen3-moe",
            set("num_experts", json!(4)),
            6,
            "num_experts",
        ),
        (
            "moe experts 0",
            "qwen3-moe",
            set("num_local_experts", json!(0)),
            6,
            "experts",
        ),
        (
            "moe dense prefix beyond layers",
            "deepseek-v3",
            set("first_k_dense_replace", json!(99)),
            6,
            "first_k_dense_replace",
        ),
        (
            "moe groups not dividing",
            "deepseek-v3",
            set("n_group", json!(3)),
            6,
            "n_group",
        ),
        (
            "moe expert tensor removed",
            "qwen3-moe",
            drop_tensor("model.layers.1.mlp.experts.3.up_proj.weight"),
            6,
            "expert",
        ),
    ]
}

#[test]
fn hostile_folders() {
    let mut failures = Vec::new();
    let mut n = 0;
    for (name, base, edit, code, needle) in folder_cases() {
        // `info` reads config and headers only; `quantize` must refuse before writing
        for cmd in [
            vec!["info", "{in}"],
            vec!["quantize", "{in}", "gguf", "-q", "Q8_0", "-o", "out"],
        ] {
            let dir = new_dir();
            let input = llama_copy(dir.path(), base);
            edit(&input);
            // NaN/Inf are found reading the weights, which `info` does not
            // (and `info` describes a tensor of a dtype we do not quantize)
            let reads_weights =
                name.starts_with("nan") || name.starts_with("inf") || name == "dtype unknown";
            if reads_weights && cmd[0] == "info" {
                continue;
            }
            n += 1;
            let c = Case {
                name: format!("{name} ({})", cmd[0]),
                code,
                needle,
                args: cmd.iter().map(|s| s.to_string()).collect(),
                input,
                dir,
            };
            if let Err(e) = run_case(&c) {
                failures.push(e);
            }
        }
    }
    assert!(n >= 100, "{n} runs");
    assert!(
        failures.is_empty(),
        "{} of {n} failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn hostile_folders_for_calibrated_formats() {
    let mut failures = Vec::new();
    for (fmt, level) in [
        ("gptq", "4bit"),
        ("awq", "4bit"),
        ("compressed-tensors", "W4A16"),
    ] {
        for (name, edit, needle) in [
            (
                "nan",
                weights(|h, d| {
                    let o = offset(h, "model.layers.2.self_attn.v_proj.weight") + 20;
                    d[o] = 0xC0;
                    d[o + 1] = 0x7F;
                }),
                "v_proj",
            ),
            (
                "shape",
                cfg(|c| c["intermediate_size"] = json!(1024)),
                "gate_proj",
            ),
            (
                "missing",
                drop_tensor("model.layers.1.self_attn.o_proj.weight"),
                "o_proj",
            ),
        ] {
            let dir = new_dir();
            let input = llama_copy(dir.path(), "llama");
            edit(&input);
            let c = Case {
                name: format!("{fmt} {name}"),
                code: 6,
                needle,
                args: [
                    "quantize",
                    "{in}",
                    fmt,
                    "-q",
                    level,
                    "-o",
                    "out",
                    "--calibration-samples",
                    "2",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
                input,
                dir,
            };
            if let Err(e) = run_case(&c) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ----- GGUF files -----------------------------------------------------------------

/// Our own GGUF of the shared Llama at `level`, made once per test process.
fn base_gguf(level: &'static str) -> PathBuf {
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

struct Tensor {
    name: String,
    shape: Vec<u64>,
    ty: GgmlType,
    bytes: Vec<u8>,
}

type GgufEdit = Box<dyn Fn(&mut Vec<(String, GgufValue)>, &mut Vec<Tensor>)>;

/// A copy of `src` with its metadata and tensors edited, written as a valid GGUF.
fn rewrite(src: &Path, dst: &Path, edit: &GgufEdit) {
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

fn set_u32(key: &'static str, v: u32) -> GgufEdit {
    Box::new(move |m, _| {
        for (k, val) in m.iter_mut() {
            if k == key {
                *val = GgufValue::U32(v);
            }
        }
    })
}

fn on_tensor(name: &'static str, f: impl Fn(&mut Tensor) + 'static) -> GgufEdit {
    Box::new(move |_, ts| {
        for t in ts.iter_mut().filter(|t| t.name == name) {
            f(t);
        }
    })
}

fn gguf_cases() -> Vec<(&'static str, &'static str, GgufEdit, i32, &'static str)> {
    vec![
        (
            "block_count 2^31",
            "F16",
            set_u32("llama.block_count", 1 << 31),
            6,
            "block_count",
        ),
        (
            "block_count one more",
            "F16",
            set_u32("llama.block_count", 5),
            6,
            "blk.4",
        ),
        (
            "block_count one fewer",
            "F16",
            set_u32("llama.block_count", 3),
            6,
            "blk.3",
        ),
        (
            "head_count_kv 0",
            "F16",
            set_u32("llama.attention.head_count_kv", 0),
            6,
            "head_count_kv",
        ),
        (
            "embedding_length huge",
            "F16",
            set_u32("llama.embedding_length", 1 << 30),
            6,
            "embedding_length",
        ),
        (
            "context_length 0",
            "F16",
            set_u32("llama.context_length", 0),
            6,
            "context",
        ),
        (
            "nan in f16 tensor",
            "F16",
            on_tensor("blk.1.attn_v.weight", |t| {
                t.bytes[10..12].copy_from_slice(&half::f16::NAN.to_le_bytes());
            }),
            6,
            "blk.1.attn_v.weight",
        ),
        (
            "inf in f32 norm",
            "F16",
            on_tensor("blk.0.attn_norm.weight", |t| {
                t.bytes[0..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
            }),
            6,
            "blk.0.attn_norm.weight",
        ),
        (
            "nan in q8_0 scale",
            "Q8_0",
            on_tensor("blk.2.ffn_down.weight", |t| {
                t.bytes[34..36].copy_from_slice(&half::f16::NAN.to_le_bytes());
            }),
            6,
            "blk.2.ffn_down.weight",
        ),
        (
            "inf in q8_0 scale",
            "Q8_0",
            on_tensor("blk.0.attn_q.weight", |t| {
                t.bytes[0..2].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
            }),
            6,
            "blk.0.attn_q.weight",
        ),
        (
            "tensor removed",
            "F16",
            Box::new(|_, ts| ts.retain(|t| t.name != "blk.2.attn_k.weight")),
            6,
            "blk.2.attn_k.weight",
        ),
        (
            "tensor of wrong shape",
            "F16",
            on_tensor("blk.1.attn_output.weight", |t| {
                t.shape = vec![128, 512];
            }),
            6,
            "blk.1.attn_output.weight",
        ),
        (
            "unexplained tensor",
            "F16",
            Box::new(|_, ts| {
                ts.push(Tensor {
                    name: "blk.0.bogus.weight".into(),
                    shape: vec![256],
                    ty: GgmlType::F32,
                    bytes: vec![0; 1024],
                });
            }),
            6,
            "blk.0.bogus.weight",
        ),
    ]
}

#[test]
fn hostile_gguf_files() {
    let dataset = shared().join("data/corpus/valid.txt");
    let mut failures = Vec::new();
    let mut n = 0;
    for (name, base, edit, code, needle) in gguf_cases() {
        let commands: [&[&str]; 3] = [
            &[
                "eval",
                "{in}",
                "--dataset",
                dataset.to_str().unwrap(),
                "--samples",
                "1",
            ],
            &[
                "generate",
                "{in}",
                "--prompt",
                "Once upon",
                "--max-tokens",
                "2",
            ],
            &["quantize", "{in}", "gguf", "-q", "Q4_0", "-o", "out"],
        ];
        for cmd in commands {
            // requantizing reads what it converts: shapes and extra tensors it copies
            // through are the engine's to refuse, not a converter's
            let engine_only = matches!(
                name,
                "block_count one more"
                    | "block_count one fewer"
                    | "tensor removed"
                    | "tensor of wrong shape"
                    | "unexplained tensor"
                    | "context_length 0"
                    | "head_count_kv 0"
                    | "embedding_length huge"
                    | "block_count 2^31"
            );
            if engine_only && cmd[0] == "quantize" {
                continue;
            }
            let dir = new_dir();
            std::fs::create_dir_all(dir.path().join("in")).unwrap();
            let input = dir.path().join("in/model.gguf");
            rewrite(&base_gguf(base), &input, &edit);
            n += 1;
            let c = Case {
                name: format!("{name} ({})", cmd[0]),
                code,
                needle,
                args: cmd.iter().map(|s| s.to_string()).collect(),
                input,
                dir,
            };
            if let Err(e) = run_case(&c) {
                failures.push(e);
            }
        }
    }
    assert!(n >= 30, "{n} runs");
    assert!(
        failures.is_empty(),
        "{} of {n} failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Byte-level damage to a GGUF file (before any structure is read).
#[test]
fn damaged_gguf_bytes() {
    let mut failures = Vec::new();
    type Damage = fn(&mut Vec<u8>);
    let cases: [(&str, Damage, i32, &str); 5] = [
        ("truncated", |b| b.truncate(b.len() / 2), 6, "gguf"),
        (
            "version 99",
            |b| b[4..8].copy_from_slice(&99u32.to_le_bytes()),
            6,
            "version",
        ),
        (
            "tensor count huge",
            |b| b[8..16].copy_from_slice(&u64::MAX.to_le_bytes()),
            6,
            "gguf",
        ),
        (
            "unfinished output",
            |b| b[..4].copy_from_slice(b"GGU~"),
            6,
            "unfinished",
        ),
        (
            "not a gguf",
            |b| b[..4].copy_from_slice(b"ABCD"),
            2,
            "not a GGUF",
        ),
    ];
    for (name, damage, code, needle) in cases {
        for cmd in ["info", "eval"] {
            let dir = new_dir();
            std::fs::create_dir_all(dir.path().join("in")).unwrap();
            let input = dir.path().join("in/model.gguf");
            let mut b = std::fs::read(base_gguf("F16")).unwrap();
            damage(&mut b);
            std::fs::write(&input, &b).unwrap();
            let c = Case {
                name: format!("{name} ({cmd})"),
                code,
                needle,
                args: vec![cmd.into(), "{in}".into()],
                input,
                dir,
            };
            if let Err(e) = run_case(&c) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ----- the command line -----------------------------------------------------------

#[test]
fn hostile_command_lines() {
    let fifo_dir = new_dir();
    let fifo = fifo_dir.path().join("pipe");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a plain mkfifo on a fresh path
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let llama = shared_model("llama");
    let llama = llama.to_str().unwrap();
    let trailing_comma = format!("{llama},");
    let template = new_dir();
    let bomb = template.path().join("bomb.jinja");
    std::fs::write(
        &bomb,
        "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    )
    .unwrap();
    let cases: Vec<(&str, Vec<&str>, i32, &str)> = vec![
        (
            "relative gguf path missing",
            vec!["info", "models/nope.gguf"],
            3,
            "does not exist",
        ),
        (
            "relative safetensors path missing",
            vec!["info", "nope/model.safetensors"],
            3,
            "does not exist",
        ),
        ("fifo", vec!["info", fifo.to_str().unwrap()], 2, "fifo"),
        ("dev zero", vec!["info", "/dev/zero"], 2, "fifo"),
        (
            "bench empty models",
            vec!["bench", "--models", ""],
            2,
            "empty",
        ),
        (
            "bench empty entry",
            vec!["bench", "--models", &trailing_comma],
            2,
            "empty",
        ),
        (
            "unknown flag",
            vec!["quantize", llama, "gguf", "-q", "Q8_0", "--frobnicate"],
            2,
            "frobnicate",
        ),
        (
            "missing level",
            vec!["quantize", llama, "gguf"],
            2,
            "quant-level",
        ),
        (
            "bad format",
            vec!["quantize", llama, "zip", "-q", "Q8_0"],
            2,
            "zip",
        ),
        (
            "max-length absurd",
            vec!["eval", llama, "--max-length", "100000000"],
            2,
            "max-length",
        ),
        (
            "output name with slash",
            vec!["quantize", llama, "gguf", "-q", "Q8_0", "-n", "a/b.gguf"],
            2,
            "output-name",
        ),
        (
            "template bomb",
            vec![
                "generate",
                llama,
                "--prompt",
                "hi",
                "--chat",
                "--chat-template",
                bomb.to_str().unwrap(),
                "--max-tokens",
                "1",
            ],
            // a template given on the command line is an argument
            2,
            "memory limit",
        ),
    ];
    let mut failures = Vec::new();
    for (name, args, code, needle) in cases {
        let dir = new_dir();
        let c = Case {
            name: name.into(),
            code,
            needle,
            args: args.iter().map(|s| s.to_string()).collect(),
            input: dir.path().join("none"),
            dir,
        };
        if let Err(e) = run_case(&c) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A failed requantization that had started writing leaves its partial output marked
/// unfinished (checkpoints on) or nothing (checkpoints off); readers refuse it.
#[test]
fn failed_runs_leave_nothing_loadable() {
    for extra in [&[][..], &["--no-checkpoints"][..]] {
        let dir = new_dir();
        std::fs::create_dir_all(dir.path().join("in")).unwrap();
        let input = dir.path().join("in/model.gguf");
        // the NaN sits in the last block, found after earlier blocks were written
        let edit: GgufEdit = on_tensor("blk.3.ffn_down.weight", |t| {
            t.bytes[0..2].copy_from_slice(&half::f16::NAN.to_le_bytes());
        });
        rewrite(&base_gguf("F16"), &input, &edit);
        let mut args = vec![
            "--format",
            "json",
            "quantize",
            input.to_str().unwrap(),
            "gguf",
            "-q",
            "Q4_0",
            "-o",
            "out",
            "--max-workers",
            "1",
        ];
        args.extend_from_slice(extra);
        let r = lq(dir.path(), &args);
        assert_eq!(r.code, 6, "{}\n{}", r.stdout, r.stderr);
        assert!(loadable_leftover(dir.path(), &input).is_none());
        for tmp in files_ending(&dir.path().join("out"), ".tmp") {
            let r = lq(
                dir.path(),
                &["--format", "json", "info", tmp.to_str().unwrap()],
            );
            assert_ne!(
                r.code,
                0,
                "info took the partial {} for a model",
                tmp.display()
            );
        }
    }
}
