//! A fuzzing harness on stable Rust (not run in CI): a seeded structured mutator over
//! the inputs a user hands the tool, each exercised through load → first forward:
//!
//! - `gguf`: a tiny llama GGUF built here, mutated in its metadata values, tensor
//!   shapes and types, and raw bytes → `WeightSource::open_gguf` → `Model::load` → a
//!   forward step of two tokens;
//! - `safetensors`: a tiny Hugging Face folder, its safetensors header (shapes, dtypes,
//!   offsets) and bytes mutated → `WeightSource::open_hf` → load → forward;
//! - `config`: its `config.json` mutated (values replaced by zero, huge, negative,
//!   fractional or wrongly typed ones, keys dropped) → the same path;
//! - `tokenizer`: the shared Llama's `tokenizer.json` mutated structurally and in bytes
//!   → `Tokenizer::from_hf_dir` → encode / decode;
//! - `template`: chat templates composed from Jinja fragments (loops, namespaces,
//!   concatenation, macros, filters) → `render_chat` under its limits.
//!
//! Every execution runs under `catch_unwind`; a panic is a crash, reported with the
//! seed that reproduces it. An abort kills the harness itself (the seed is printed
//! before each execution with `--trace`).
//!
//! `cargo run --release --example fuzz_inputs -- [--target all|gguf|…] [--seconds N]
//! [--seed S] [--trace]`; `--target T --replay SEED` reruns one reported crash.

use llmq_engine::{KvCache, Logits, Model, SeqStep, WeightSource};
use llmq_formats::gguf::{GgufPlan, GgufStreamWriter, GgufValue, PlannedTensor};
use llmq_formats::GgmlType;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// xorshift64*: a seeded, reproducible stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, p: u32) -> bool {
        self.below(100) < p as usize
    }
    /// An integer of the kinds that break parsers: small, boundary, huge.
    fn nasty_int(&mut self) -> i64 {
        match self.below(9) {
            0 => 0,
            1 => -1,
            2 => 1,
            3 => i64::from(u32::MAX),
            4 => 1 << 31,
            5 => i64::MAX,
            6 => self.below(17) as i64,
            7 => 1_000_000_000_000,
            _ => self.below(1 << 20) as i64,
        }
    }
}

// ----- the tiny model ---------------------------------------------------------------

const D: usize = 8;
const FF: usize = 16;
const VOCAB: usize = 16;

/// (GGUF name, HF name, HF shape)
fn tiny_tensors() -> Vec<(&'static str, &'static str, Vec<usize>)> {
    vec![
        (
            "token_embd.weight",
            "model.embed_tokens.weight",
            vec![VOCAB, D],
        ),
        ("output_norm.weight", "model.norm.weight", vec![D]),
        ("output.weight", "lm_head.weight", vec![VOCAB, D]),
        (
            "blk.0.attn_norm.weight",
            "model.layers.0.input_layernorm.weight",
            vec![D],
        ),
        (
            "blk.0.attn_q.weight",
            "model.layers.0.self_attn.q_proj.weight",
            vec![D, D],
        ),
        (
            "blk.0.attn_k.weight",
            "model.layers.0.self_attn.k_proj.weight",
            vec![D / 2, D],
        ),
        (
            "blk.0.attn_v.weight",
            "model.layers.0.self_attn.v_proj.weight",
            vec![D / 2, D],
        ),
        (
            "blk.0.attn_output.weight",
            "model.layers.0.self_attn.o_proj.weight",
            vec![D, D],
        ),
        (
            "blk.0.ffn_norm.weight",
            "model.layers.0.post_attention_layernorm.weight",
            vec![D],
        ),
        (
            "blk.0.ffn_gate.weight",
            "model.layers.0.mlp.gate_proj.weight",
            vec![FF, D],
        ),
        (
            "blk.0.ffn_up.weight",
            "model.layers.0.mlp.up_proj.weight",
            vec![FF, D],
        ),
        (
            "blk.0.ffn_down.weight",
            "model.layers.0.mlp.down_proj.weight",
            vec![D, FF],
        ),
    ]
}

fn values(n: usize, seed: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (((i * 7 + seed) % 13) as f32 / 13.0 - 0.4).to_le_bytes())
        .collect()
}

/// GGUF pieces of the tiny llama: metadata and (name, ne shape, type, bytes).
type GgufParts = (
    Vec<(String, GgufValue)>,
    Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
);

fn tiny_gguf() -> GgufParts {
    let meta: Vec<(String, GgufValue)> = vec![
        ("general.architecture".into(), "llama".into()),
        ("llama.block_count".into(), 1u32.into()),
        ("llama.embedding_length".into(), (D as u32).into()),
        ("llama.feed_forward_length".into(), (FF as u32).into()),
        ("llama.attention.head_count".into(), 2u32.into()),
        ("llama.attention.head_count_kv".into(), 1u32.into()),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            1e-5f32.into(),
        ),
        ("llama.context_length".into(), 64u32.into()),
        ("llama.rope.dimension_count".into(), 4u32.into()),
    ];
    let tensors = tiny_tensors()
        .into_iter()
        .enumerate()
        .map(|(i, (name, _, shape))| {
            let n: usize = shape.iter().product();
            let ne: Vec<u64> = shape.iter().rev().map(|&x| x as u64).collect();
            (name.to_string(), ne, GgmlType::F32, values(n, i))
        })
        .collect();
    (meta, tensors)
}

fn write_gguf(path: &Path, parts: &GgufParts) -> Result<(), String> {
    let mut plan = GgufPlan::new();
    plan.metadata = parts.0.clone();
    for (name, ne, ty, _) in &parts.1 {
        plan = plan.with_tensor(PlannedTensor::new(name, ne.clone(), *ty));
    }
    let w = GgufStreamWriter::create(path, &plan).map_err(|e| e.to_string())?;
    for (name, _, _, bytes) in &parts.1 {
        w.write_tensor(name.as_str(), bytes)
            .map_err(|e| e.to_string())?;
    }
    w.finish().map_err(|e| e.to_string()).map(|_| ())
}

fn tiny_config() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": D, "intermediate_size": FF, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": VOCAB,
        "rms_norm_eps": 1e-5, "max_position_embeddings": 64, "tie_word_embeddings": false,
        "rope_theta": 10000.0, "hidden_act": "silu", "torch_dtype": "float32"
    })
}

fn tiny_safetensors() -> (Value, Vec<u8>) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (i, (_, hf, shape)) in tiny_tensors().into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let start = data.len();
        data.extend(values(n, i));
        header.insert(
            hf.into(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    (Value::Object(header), data)
}

fn st_bytes(header: &Value, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_vec(header).unwrap_or_default();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend(h);
    b.extend_from_slice(data);
    b
}

// ----- mutators ---------------------------------------------------------------------

fn flip_bytes(r: &mut Rng, b: &mut [u8], max: usize) {
    if b.is_empty() {
        return;
    }
    for _ in 0..1 + r.below(max) {
        let i = r.below(b.len());
        b[i] = match r.below(4) {
            0 => b[i] ^ (1 << r.below(8)),
            1 => 0xFF,
            2 => 0,
            _ => r.next() as u8,
        };
    }
}

/// A JSON value replaced by a hostile one.
fn nasty_json(r: &mut Rng) -> Value {
    match r.below(8) {
        0 => json!(r.nasty_int()),
        1 => json!(-(r.below(100) as i64)),
        2 => json!(r.below(100) as f64 + 0.5),
        3 => json!("8"),
        4 => Value::Null,
        5 => json!([1, 2]),
        6 => json!({}),
        _ => json!(true),
    }
}

fn mutate_json(r: &mut Rng, v: &mut Value, depth: usize) {
    match v {
        Value::Object(o) if !o.is_empty() => {
            let keys: Vec<String> = o.keys().cloned().collect();
            let k = &keys[r.below(keys.len())];
            match r.below(4) {
                0 => {
                    o.remove(k);
                }
                1 if depth < 6 => mutate_json(r, o.get_mut(k).unwrap(), depth + 1),
                _ => {
                    o.insert(k.clone(), nasty_json(r));
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = r.below(a.len());
            match r.below(3) {
                0 => {
                    a.remove(i);
                }
                1 if depth < 6 => mutate_json(r, &mut a[i], depth + 1),
                _ => a[i] = nasty_json(r),
            }
        }
        _ => *v = nasty_json(r),
    }
}

fn mutate_gguf(r: &mut Rng, parts: &mut GgufParts) {
    for _ in 0..1 + r.below(3) {
        match r.below(5) {
            0 => {
                let i = r.below(parts.0.len());
                parts.0[i].1 = match r.below(4) {
                    0 => GgufValue::U32(r.nasty_int() as u32),
                    1 => GgufValue::U64(r.nasty_int() as u64),
                    2 => GgufValue::F32(f32::from_bits(r.next() as u32)),
                    _ => "qwen3moe".into(),
                };
            }
            1 => {
                let i = r.below(parts.1.len());
                let t = &mut parts.1[i];
                let d = r.below(t.1.len());
                t.1[d] = r.nasty_int().clamp(0, 1 << 20) as u64;
                let n: u64 = t.1.iter().product();
                t.3.resize((n as usize).min(1 << 20) * 4, 0);
            }
            2 => {
                let i = r.below(parts.1.len());
                let ty = [
                    GgmlType::F16,
                    GgmlType::BF16,
                    GgmlType::Q8_0,
                    GgmlType::Q4K,
                    GgmlType::IQ2XXS,
                    GgmlType::MXFP4,
                ][r.below(6)];
                let t = &mut parts.1[i];
                let n: u64 = t.1.iter().product();
                let bytes = ty
                    .row_bytes(t.1[0] as usize)
                    .map(|rb| rb * (n / t.1[0].max(1)) as usize);
                if let Some(nb) = bytes {
                    t.2 = ty;
                    // a shape grown by mutation 1 can imply terabytes: keep the data
                    // small (the reader must then refuse the short tensor)
                    t.3.resize(nb.min(1 << 22), 0x3C);
                }
            }
            3 => {
                let i = r.below(parts.1.len());
                flip_bytes(r, &mut parts.1[i].3, 4);
            }
            _ => {
                if r.chance(50) {
                    let i = r.below(parts.1.len());
                    parts.1.remove(i);
                } else {
                    parts.1.push((
                        "blk.0.extra.weight".into(),
                        vec![D as u64],
                        GgmlType::F32,
                        values(D, 3),
                    ));
                }
            }
        }
    }
}

// ----- targets ----------------------------------------------------------------------

fn first_forward(src: &WeightSource) -> Result<(), String> {
    let m = Model::load(src).map_err(|e| e.to_string())?;
    let mut cache = KvCache::new(&m, 8);
    let tokens = [1u32, 2];
    let mut steps = [SeqStep {
        tokens: &tokens,
        cache: &mut cache,
        logits: Logits::Last,
    }];
    m.forward(&mut steps).map(|_| ()).map_err(|e| e.to_string())
}

struct Ctx {
    dir: PathBuf,
    tokenizer_json: Value,
}

fn target_gguf(r: &mut Rng, c: &Ctx) -> Result<(), String> {
    let mut parts = tiny_gguf();
    mutate_gguf(r, &mut parts);
    let p = c.dir.join("m.gguf");
    write_gguf(&p, &parts)?;
    if r.chance(30) {
        let mut b = std::fs::read(&p).map_err(|e| e.to_string())?;
        flip_bytes(r, &mut b, 8);
        if r.chance(20) {
            let n = r.below(b.len());
            b.truncate(n);
        }
        std::fs::write(&p, b).map_err(|e| e.to_string())?;
    }
    let src = WeightSource::open_gguf(&p).map_err(|e| e.to_string())?;
    first_forward(&src)
}

fn hf_folder(c: &Ctx, cfg: &Value, st: &[u8]) -> Result<(), String> {
    let d = c.dir.join("hf");
    std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
    std::fs::write(d.join("config.json"), cfg.to_string()).map_err(|e| e.to_string())?;
    std::fs::write(d.join("model.safetensors"), st).map_err(|e| e.to_string())?;
    let src = WeightSource::open_hf(&d).map_err(|e| e.to_string())?;
    first_forward(&src)
}

fn target_safetensors(r: &mut Rng, c: &Ctx) -> Result<(), String> {
    let (mut h, mut data) = tiny_safetensors();
    for _ in 0..1 + r.below(3) {
        match r.below(3) {
            0 => mutate_json(r, &mut h, 0),
            1 => flip_bytes(r, &mut data, 4),
            _ => {
                let n = r.below(data.len() + 1);
                data.truncate(n);
            }
        }
    }
    let mut b = st_bytes(&h, &data);
    if r.chance(20) {
        flip_bytes(r, &mut b, 4);
    }
    hf_folder(c, &tiny_config(), &b)
}

fn target_config(r: &mut Rng, c: &Ctx) -> Result<(), String> {
    let mut cfg = tiny_config();
    for _ in 0..1 + r.below(3) {
        mutate_json(r, &mut cfg, 0);
    }
    let (h, data) = tiny_safetensors();
    hf_folder(c, &cfg, &st_bytes(&h, &data))
}

fn target_tokenizer(r: &mut Rng, c: &Ctx) -> Result<(), String> {
    let mut t = c.tokenizer_json.clone();
    for _ in 0..1 + r.below(4) {
        mutate_json(r, &mut t, 0);
    }
    let d = c.dir.join("tok");
    std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
    let mut text = t.to_string().into_bytes();
    if r.chance(10) {
        flip_bytes(r, &mut text, 4);
    }
    std::fs::write(d.join("tokenizer.json"), text).map_err(|e| e.to_string())?;
    let tok = llmq_tokenizer::Tokenizer::from_hf_dir(&d).map_err(|e| e.to_string())?;
    let ids = tok
        .encode("Once upon a time, <s> héllo 123 \u{1F600}", true, true)
        .map_err(|e| e.to_string())?;
    let _ = tok.decode(&ids);
    Ok(())
}

const FRAGMENTS: &[&str] = &[
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
    "{% set ns = namespace(s='ab') %}",
    "{% for i in range(30) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{{ ns.s | length }}",
    "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{% endif %}x{% endmacro %}{{ f(300) }}",
    "{{ 'abc' * 1000000 }}",
    "{% for i in range(2000) %}{% for j in range(2000) %}{% endfor %}{% endfor %}",
    "{{ messages[0]['content'] | upper | replace('A', 'AAAA') }}",
    "{{ raise_exception('no') }}",
    "{% if add_generation_prompt %}assistant:{% endif %}",
    "{{ messages | tojson }}",
    "{{ undefined_thing.attr }}",
    "{% for m in messages %}{{ m.content.strip().split(' ') | join(',') }}{% endfor %}",
    "{{ bos_token }}{{ eos_token }}",
    "{% set x = [1, 2, 3] %}{% for i in range(20) %}{% set x = x + x %}{% endfor %}{{ x | length }}",
    "{{ strftime_now('%Y-%m-%d') }}",
    "{% for",
    "{{ 1 / 0 }}",
];

fn target_template(r: &mut Rng, _c: &Ctx) -> Result<(), String> {
    let mut t = String::new();
    for _ in 0..1 + r.below(5) {
        t.push_str(FRAGMENTS[r.below(FRAGMENTS.len())]);
    }
    let msgs = [
        llmq_tokenizer::ChatMessage::new("system", "be brief"),
        llmq_tokenizer::ChatMessage::new("user", "Hello A world"),
    ];
    llmq_tokenizer::render_chat(&t, &msgs, r.chance(50), "<s>", "</s>")
        .map(|_| ())
        .map_err(|e| e.to_string())
}

type Target = fn(&mut Rng, &Ctx) -> Result<(), String>;

const TARGETS: &[(&str, Target)] = &[
    ("gguf", target_gguf),
    ("safetensors", target_safetensors),
    ("config", target_config),
    ("tokenizer", target_tokenizer),
    ("template", target_template),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let which = arg("--target").unwrap_or_else(|| "all".into());
    let seconds: u64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(60);
    let seed0: u64 = arg("--seed").and_then(|s| s.parse().ok()).unwrap_or(1);
    let trace = args.iter().any(|a| a == "--trace");
    let base = std::env::var("LLMQ_FUZZ_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            if Path::new("/dev/shm").is_dir() {
                PathBuf::from("/dev/shm")
            } else {
                std::env::temp_dir()
            }
        });
    let dir = base.join(format!("llmq-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let tok_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/llama/tokenizer.json");
    let tokenizer_json: Value = serde_json::from_str(
        &std::fs::read_to_string(&tok_path).expect("shared llama tokenizer.json"),
    )
    .expect("tokenizer JSON");
    let ctx = Ctx {
        dir: dir.clone(),
        tokenizer_json,
    };
    // `--replay SEED`: one execution of `--target`, its panic printed with a backtrace
    if let Some(seed) = arg("--replay").and_then(|s| s.parse::<u64>().ok()) {
        let (_, f) = TARGETS
            .iter()
            .find(|(n, _)| *n == which)
            .expect("--target NAME");
        println!("{:?}", f(&mut Rng(seed | 1), &ctx));
        return;
    }
    // panics are counted, not printed
    std::panic::set_hook(Box::new(|_| {}));
    let targets: Vec<&(&str, Target)> = TARGETS
        .iter()
        .filter(|(n, _)| which == "all" || *n == which)
        .collect();
    let per = Duration::from_secs(seconds) / targets.len().max(1) as u32;
    println!("target        execs    ok   refused  crashes  execs/s");
    let mut total = 0u64;
    for (name, f) in targets {
        let t0 = Instant::now();
        let (mut execs, mut ok, mut refused, mut crashes) = (0u64, 0u64, 0u64, Vec::new());
        while t0.elapsed() < per {
            let seed = seed0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (execs + 1);
            if trace {
                eprintln!("{name} seed {seed}");
            }
            let mut r = Rng(seed | 1);
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut r, &ctx))) {
                Ok(Ok(())) => ok += 1,
                Ok(Err(_)) => refused += 1,
                Err(p) => {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    crashes.push((seed, msg));
                }
            }
            execs += 1;
        }
        total += execs;
        println!(
            "{name:<12} {execs:>7} {ok:>5} {refused:>9} {:>8} {:>8.0}",
            crashes.len(),
            execs as f64 / t0.elapsed().as_secs_f64()
        );
        for (seed, msg) in crashes.iter().take(5) {
            println!("  crash: seed {seed}: {msg}");
        }
    }
    println!("total executions: {total}");
    let _ = std::fs::remove_dir_all(&dir);
}
