//! Cross-checks against gguf-py (llama.cpp's Python GGUF package): a file written by
//! `GgufStreamWriter` must read back identically through `gguf.GGUFReader`, and a file
//! written by `gguf.GGUFWriter` must read identically through `GgufFile`.

use half::f16;
use llmq_formats::gguf::{GgufFile, GgufPlan, GgufStreamWriter, GgufValue, PlannedTensor};
use llmq_formats::GgmlType;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn py_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}

fn require_gguf_py() {
    let ok = Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "python3 cannot import gguf: install gguf: pip install gguf numpy"
    );
}

fn run_py(script: &str, arg: &Path) -> Vec<u8> {
    let out = Command::new("python3")
        .arg(py_script(script))
        .arg(arg)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn gguf_py_dump(path: &Path) -> Value {
    serde_json::from_slice(&run_py("read_gguf.py", path)).expect("read_gguf.py prints JSON")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One Q8_0 block: f16 scale then 32 signed bytes, packed by hand.
fn q8_0_block(scale: f32, quants: impl Fn(usize) -> i8) -> Vec<u8> {
    let mut block = f16::from_f32(scale).to_le_bytes().to_vec();
    block.extend((0..32).map(|i| quants(i) as u8));
    assert_eq!(block.len(), GgmlType::Q8_0.type_size());
    block
}

/// The JSON value gguf-py's `ReaderField.contents()` gives for one of our values.
fn expected_json(v: &GgufValue) -> Value {
    use serde_json::json;
    match v {
        GgufValue::U8(x) => json!(x),
        GgufValue::I8(x) => json!(x),
        GgufValue::U16(x) => json!(x),
        GgufValue::I16(x) => json!(x),
        GgufValue::U32(x) => json!(x),
        GgufValue::I32(x) => json!(x),
        GgufValue::F32(x) => json!(f64::from(*x)),
        GgufValue::Bool(x) => json!(x),
        GgufValue::String(x) => json!(x),
        GgufValue::U64(x) => json!(x),
        GgufValue::I64(x) => json!(x),
        GgufValue::F64(x) => json!(x),
        GgufValue::Array(_) => {
            if let Some(s) = v.as_string_array() {
                json!(s)
            } else if let Some(a) = v.as_i32_array() {
                json!(a)
            } else if let Some(a) = v.as_u32_array() {
                json!(a)
            } else if let Some(a) = v.as_f32_array() {
                json!(a.iter().map(|x| f64::from(*x)).collect::<Vec<_>>())
            } else if let Some(a) = v.as_u8_array() {
                json!(a)
            } else if let Some(a) = v.as_bool_array() {
                json!(a)
            } else {
                panic!("no JSON mapping for {v:?} in this test")
            }
        }
    }
}

#[test]
fn file_written_by_stream_writer_reads_back_in_gguf_py() {
    require_gguf_py();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ours.gguf");

    let metadata: Vec<(String, GgufValue)> = vec![
        ("general.architecture".into(), "llama".into()),
        ("general.name".into(), GgufValue::string("writer test ✓")),
        ("general.file_type".into(), 7u32.into()),
        ("general.quantization_version".into(), 2u32.into()),
        ("llama.block_count".into(), 1u32.into()),
        ("llama.rope.freq_base".into(), 500000.0f32.into()),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            1e-5f32.into(),
        ),
        ("test.bool".into(), true.into()),
        ("test.false".into(), false.into()),
        ("test.u64".into(), (u64::MAX - 3).into()),
        ("test.i64".into(), i64::MIN.into()),
        ("test.f64".into(), std::f64::consts::PI.into()),
        ("test.u8".into(), 200u8.into()),
        ("test.i8".into(), (-100i8).into()),
        ("test.u16".into(), 60000u16.into()),
        ("test.i16".into(), (-30000i16).into()),
        ("test.i32".into(), (-7i32).into()),
        ("tokenizer.ggml.model".into(), "gpt2".into()),
        (
            "tokenizer.ggml.tokens".into(),
            GgufValue::string_array(["<s>", "</s>", "Ġthe", "", "日本"]),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            vec![3i32, 3, 1, 1, -2].into(),
        ),
        (
            "tokenizer.ggml.scores".into(),
            vec![0.0f32, -1.5, 2.25, 1e-3, -0.0].into(),
        ),
        ("test.u32s".into(), vec![1u32, u32::MAX].into()),
        ("test.bytes".into(), vec![0u8, 1, 255].into()),
        ("test.bools".into(), vec![true, false, true].into()),
    ];

    let f32_data: Vec<u8> = (0..64)
        .flat_map(|i| (i as f32 * 0.25 - 3.0).to_le_bytes())
        .collect();
    let f16_data: Vec<u8> = (0..96)
        .flat_map(|i| f16::from_f32(i as f32 / 8.0).to_le_bytes())
        .collect();
    // 2 rows × 64 columns of Q8_0 = 4 blocks.
    let q8_data: Vec<u8> = (0..4)
        .flat_map(|b| {
            q8_0_block(0.01 * (b + 1) as f32, move |i| {
                (i as i8 - 16) * (b as i8 + 1)
            })
        })
        .collect();
    let i32_data: Vec<u8> = [5i32, -6, 7].iter().flat_map(|v| v.to_le_bytes()).collect();

    let plan = GgufPlan {
        metadata: metadata.clone(),
        tensors: vec![
            PlannedTensor::new("token_embd.weight", vec![16, 4], GgmlType::F32),
            PlannedTensor::new("blk.0.attn_norm.weight", vec![32, 3], GgmlType::F16),
            PlannedTensor::new("blk.0.attn_q.weight", vec![64, 2], GgmlType::Q8_0),
            PlannedTensor::new("blk.0.idx", vec![3], GgmlType::I32),
        ],
        alignment: 32,
    };
    let data = [&f32_data, &f16_data, &q8_data, &i32_data];
    let writer = GgufStreamWriter::create(&path, &plan).unwrap();
    // Out of order on purpose, by name and by index.
    writer
        .write_tensor("blk.0.attn_q.weight", &q8_data)
        .unwrap();
    writer.write_tensor(3, &i32_data).unwrap();
    writer.write_tensor(0, &f32_data).unwrap();
    writer
        .write_tensor("blk.0.attn_norm.weight", &f16_data)
        .unwrap();
    writer.finish().unwrap();

    let dump = gguf_py_dump(&path);
    let layout = plan.layout().unwrap();
    assert_eq!(dump["alignment"], 32);
    assert_eq!(dump["data_offset"].as_u64(), Some(layout.data_offset()));

    let fields = dump["fields"].as_array().unwrap();
    assert_eq!(fields.len(), metadata.len(), "gguf-py saw {fields:?}");
    for ((key, value), field) in metadata.iter().zip(fields) {
        assert_eq!(field["name"].as_str(), Some(key.as_str()));
        let mut types = vec![Value::from(value.value_type().id())];
        if let Some(a) = value.as_array() {
            types.push(a.element_type().id().into());
        }
        assert_eq!(field["types"], Value::Array(types), "types of {key}");
        assert_eq!(field["value"], expected_json(value), "value of {key}");
    }

    let tensors = dump["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), plan.tensors.len());
    for (i, (t, py)) in plan.tensors.iter().zip(tensors).enumerate() {
        assert_eq!(py["name"].as_str(), Some(t.name.as_str()));
        assert_eq!(py["shape_ne"], serde_json::json!(t.shape_ne), "{}", t.name);
        assert_eq!(py["type"].as_u64(), Some(u64::from(t.ggml_type.id())));
        assert_eq!(py["n_bytes"].as_u64(), Some(data[i].len() as u64));
        assert_eq!(
            py["data_offset"].as_u64(),
            Some(layout.tensor_file_offset(i))
        );
        assert_eq!(
            py["hex"].as_str(),
            Some(hex(data[i]).as_str()),
            "{}",
            t.name
        );
    }

    // And our own reader agrees with what we wrote.
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.metadata(), &metadata[..]);
    assert_eq!(file.file_type(), Some(7));
    for (i, t) in plan.tensors.iter().enumerate() {
        assert_eq!(file.tensor_data(&t.name), Some(&data[i][..]));
    }
}

#[test]
fn reads_a_file_written_by_gguf_py() {
    require_gguf_py();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("theirs.gguf");
    run_py("write_gguf.py", &path);

    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.architecture(), Some("llama"));
    assert_eq!(
        file.get("general.name").and_then(GgufValue::as_str),
        Some("tiny-test")
    );
    assert_eq!(
        file.get("llama.block_count").and_then(GgufValue::as_u32),
        Some(2)
    );
    assert_eq!(
        file.get("llama.attention.layer_norm_rms_epsilon")
            .and_then(GgufValue::as_f32),
        Some(1e-5)
    );
    assert_eq!(
        file.get("test.flag").and_then(GgufValue::as_bool),
        Some(true)
    );
    assert_eq!(
        file.get("test.big").and_then(GgufValue::as_u64),
        Some((1 << 40) + 7)
    );
    assert_eq!(file.get("test.i8").and_then(GgufValue::as_i8), Some(-5));
    assert_eq!(
        file.get("test.i64").and_then(GgufValue::as_i64),
        Some(-(1 << 40))
    );
    assert_eq!(file.get("test.f64").and_then(GgufValue::as_f64), Some(0.1));
    assert_eq!(
        file.get("test.u16").and_then(GgufValue::as_u16),
        Some(65535)
    );
    assert_eq!(
        file.get("tokenizer.ggml.tokens")
            .and_then(GgufValue::as_string_array),
        Some(&["<s>".to_string(), "</s>".into(), "héllo".into(), "".into()][..])
    );
    assert_eq!(
        file.get("tokenizer.ggml.token_type")
            .and_then(GgufValue::as_i32_array),
        Some(&[1, 3, -1][..])
    );
    assert_eq!(
        file.get("test.floats").and_then(GgufValue::as_f32_array),
        Some(&[0.5f32, -2.25][..])
    );
    assert_eq!(file.file_type(), Some(15));

    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.shape_ne, vec![32, 2]);
    assert_eq!(embd.shape_torch(), vec![2, 32]);
    assert_eq!(embd.ggml_type, GgmlType::F32);
    let floats: Vec<f32> = file
        .tensor_bytes(embd)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(floats, (0..64).map(|i| i as f32).collect::<Vec<_>>());

    let norm = file.tensor("output_norm.weight").unwrap();
    assert_eq!(
        (norm.ggml_type, norm.shape_ne.clone()),
        (GgmlType::F16, vec![32])
    );
    let halves: Vec<f32> = file
        .tensor_bytes(norm)
        .chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    assert_eq!(halves, (0..32).map(|i| i as f32 / 4.0).collect::<Vec<_>>());

    let q = file.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(
        (q.ggml_type, q.shape_ne.clone()),
        (GgmlType::Q8_0, vec![32, 3])
    );
    let qb = file.tensor_bytes(q);
    assert_eq!(qb.len(), 3 * 34);
    for r in 0..3 {
        let block = &qb[r * 34..(r + 1) * 34];
        assert_eq!(
            f16::from_le_bytes([block[0], block[1]]).to_f32(),
            0.5 * (r + 1) as f32
        );
        let quants: Vec<i8> = block[2..].iter().map(|b| *b as i8).collect();
        assert_eq!(
            quants,
            (0..32).map(|i| i - 16 + r as i8).collect::<Vec<_>>()
        );
    }

    let idx = file.tensor("blk.0.idx").unwrap();
    assert_eq!(
        (idx.ggml_type, idx.shape_ne.clone()),
        (GgmlType::I32, vec![3])
    );
    assert_eq!(
        file.tensor_bytes(idx),
        [7i32, -8, 9].map(i32::to_le_bytes).concat()
    );

    // Everything gguf-py itself sees in that file, we see the same way.
    let dump = gguf_py_dump(&path);
    assert_eq!(dump["data_offset"].as_u64(), Some(file.data_offset()));
    let fields = dump["fields"].as_array().unwrap();
    assert_eq!(fields.len(), file.metadata().len());
    for ((key, value), field) in file.metadata().iter().zip(fields) {
        assert_eq!(field["name"].as_str(), Some(key.as_str()));
        assert_eq!(field["value"], expected_json(value), "value of {key}");
    }
    let tensors = dump["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), file.tensors().len());
    for (t, py) in file.tensors().iter().zip(tensors) {
        assert_eq!(py["name"].as_str(), Some(t.name.as_str()));
        assert_eq!(py["shape_ne"], serde_json::json!(t.shape_ne));
        assert_eq!(py["type"].as_u64(), Some(u64::from(t.ggml_type.id())));
        assert_eq!(
            py["data_offset"].as_u64(),
            Some(file.data_offset() + t.offset)
        );
        assert_eq!(py["hex"].as_str(), Some(hex(file.tensor_bytes(t)).as_str()));
    }
}
