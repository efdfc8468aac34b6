//! Streaming-writer behaviour: layout and validation, parallel out-of-order writes,
//! exactly-once accounting, the `.tmp` → final rename, resume, and round trips through
//! `GgufFile`.

use llmq_formats::gguf::{
    temp_path_for, GgufArray, GgufError, GgufFile, GgufPlan, GgufStreamWriter, GgufValue,
    PlannedTensor,
};
use llmq_formats::GgmlType;
use std::path::Path;

/// A plan with a few tensors of different types and sizes (some needing padding).
fn sample_plan() -> GgufPlan {
    GgufPlan::new()
        .with_kv("general.architecture", "llama")
        .with_kv("general.file_type", 15u32)
        .with_kv("llama.context_length", 4096u32)
        .with_kv(
            "tokenizer.ggml.tokens",
            GgufValue::string_array(["a", "b", "c"]),
        )
        .with_kv(
            "test.nested",
            GgufArray::Array(vec![
                GgufArray::U16(vec![1, 2]),
                GgufArray::String(vec!["x".into()]),
            ]),
        )
        .with_kv("test.empty", GgufArray::I64(vec![]))
        .with_tensor(PlannedTensor::new(
            "token_embd.weight",
            vec![256, 3],
            GgmlType::Q4K,
        ))
        .with_tensor(PlannedTensor::new(
            "blk.0.attn_norm.weight",
            vec![5],
            GgmlType::F32,
        ))
        .with_tensor(PlannedTensor::new(
            "blk.0.ffn_down.weight",
            vec![64, 2, 1],
            GgmlType::Q8_0,
        ))
        .with_tensor(PlannedTensor::new(
            "output.weight",
            vec![256, 2],
            GgmlType::Q6K,
        ))
}

/// Deterministic, tensor-specific filler bytes.
fn filler(plan: &GgufPlan, i: usize) -> Vec<u8> {
    let n = plan.layout().unwrap().tensor_size(i) as usize;
    (0..n).map(|j| (j * 31 + i * 7 + 1) as u8).collect()
}

fn write_all(path: &Path, plan: &GgufPlan) {
    let w = GgufStreamWriter::create(path, plan).unwrap();
    for i in 0..plan.tensors.len() {
        w.write_tensor(i, &filler(plan, i)).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn writer_is_shareable_across_threads_and_shapes_convert() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GgufStreamWriter>();
    assert_send_sync::<GgufFile>();
    let t = PlannedTensor::from_torch_shape("w", &[4096, 11008], GgmlType::Q4K);
    assert_eq!(t.shape_ne, vec![11008, 4096]);
}

#[test]
fn layout_matches_spec_arithmetic() {
    let plan = sample_plan();
    let layout = plan.layout().unwrap();
    assert_eq!(layout.data_offset() % 32, 0);
    assert_eq!(layout.header_bytes().len() as u64, layout.data_offset());
    assert_eq!(&layout.header_bytes()[..8], b"GGUF\x03\0\0\0");
    // Q4_K 256×3: 3 blocks × 144 B = 432 → padded to 448.
    assert_eq!(layout.tensor_size(0), 432);
    assert_eq!(layout.tensor_offset(0), 0);
    assert_eq!(layout.tensor_size(1), 20);
    assert_eq!(layout.tensor_offset(1), 448);
    assert_eq!(layout.tensor_offset(2), 448 + 32);
    assert_eq!(layout.tensor_size(2), 4 * 34);
    assert_eq!(layout.tensor_offset(3), 480 + 160);
    assert_eq!(layout.tensor_size(3), 2 * 210);
    assert_eq!(layout.total_size(), layout.data_offset() + 640 + 448);
    // Deterministic: the same plan gives the same bytes.
    assert_eq!(sample_plan().layout().unwrap(), layout);
}

#[test]
fn round_trip_through_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let plan = sample_plan();
    write_all(&path, &plan);
    assert!(
        !temp_path_for(&path).exists(),
        "finish renames the .tmp away"
    );

    let file = GgufFile::open(&path).unwrap();
    let layout = plan.layout().unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), layout.total_size());
    assert_eq!(file.metadata(), &plan.metadata[..]);
    assert_eq!(file.data_offset(), layout.data_offset());
    assert_eq!(file.alignment(), 32);
    assert_eq!(file.architecture(), Some("llama"));
    assert_eq!(file.file_type(), Some(15));
    assert_eq!(
        file.get("llama.context_length").and_then(GgufValue::as_u32),
        Some(4096)
    );
    assert_eq!(
        file.get("test.nested")
            .and_then(GgufValue::as_nested_array)
            .map(|a| a.len()),
        Some(2)
    );
    assert_eq!(file.tensors().len(), 4);
    for (i, t) in plan.tensors.iter().enumerate() {
        let info = file.tensor(&t.name).unwrap();
        assert_eq!(info.shape_ne, t.shape_ne);
        assert_eq!(info.ggml_type, t.ggml_type);
        assert_eq!(info.offset, layout.tensor_offset(i));
        assert_eq!(file.tensor_bytes(info), &filler(&plan, i)[..]);
    }
    assert_eq!(
        file.tensor("blk.0.ffn_down.weight").unwrap().shape_torch(),
        vec![1, 2, 64]
    );
    // Padding bytes are zeros.
    let bytes = std::fs::read(&path).unwrap();
    let pad_start = (layout.tensor_file_offset(1) + 20) as usize;
    assert!(bytes[pad_start..layout.tensor_file_offset(2) as usize]
        .iter()
        .all(|b| *b == 0));
}

#[test]
fn parallel_out_of_order_writes_produce_identical_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut plan = GgufPlan::new().with_kv("general.architecture", "llama");
    for i in 0..40 {
        let t = [GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4K][i % 3];
        plan = plan.with_tensor(PlannedTensor::new(
            format!("blk.{i}.w"),
            vec![256, 1 + i as u64 % 5],
            t,
        ));
    }
    let sequential = dir.path().join("seq.gguf");
    write_all(&sequential, &plan);

    let parallel = dir.path().join("par.gguf");
    let w = GgufStreamWriter::create(&parallel, &plan).unwrap();
    std::thread::scope(|s| {
        for thread in 0..4 {
            let (w, plan) = (&w, &plan);
            s.spawn(move || {
                // Each thread takes every 4th tensor, last first.
                for i in (0..plan.tensors.len()).rev().filter(|i| i % 4 == thread) {
                    w.write_tensor(i, &filler(plan, i)).unwrap();
                }
            });
        }
    });
    w.finish().unwrap();
    assert_eq!(
        std::fs::read(&sequential).unwrap(),
        std::fs::read(&parallel).unwrap()
    );
}

#[test]
fn exactly_once_and_size_checks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let plan = sample_plan();
    let w = GgufStreamWriter::create(&path, &plan).unwrap();
    let short = vec![0u8; 19];
    assert!(matches!(
        w.write_tensor("blk.0.attn_norm.weight", &short),
        Err(GgufError::TensorSizeMismatch {
            expected: 20,
            got: 19,
            ..
        })
    ));
    w.write_tensor(1, &filler(&plan, 1)).unwrap();
    assert!(matches!(
        w.write_tensor("blk.0.attn_norm.weight", &filler(&plan, 1)),
        Err(GgufError::TensorWrittenTwice { .. })
    ));
    assert!(
        matches!(w.write_tensor("nope", &short), Err(GgufError::UnknownTensor(n)) if n == "'nope'")
    );
    assert!(matches!(w.write_tensor(9, &short), Err(GgufError::UnknownTensor(n)) if n == "#9"));
    assert!(w.is_written(1).unwrap());
    assert!(!w.is_written(0).unwrap());

    let err = w.finish().unwrap_err();
    match &err {
        GgufError::MissingTensors { missing, .. } => {
            assert_eq!(
                missing,
                &[
                    "token_embd.weight",
                    "blk.0.ffn_down.weight",
                    "output.weight"
                ]
            )
        }
        other => panic!("expected MissingTensors, got {other}"),
    }
    assert!(
        err.to_string().contains("3 of the planned tensors"),
        "{err}"
    );
    assert!(
        !path.exists(),
        "a failed finish must not create the final file"
    );
    assert!(temp_path_for(&path).exists());
}

#[test]
fn drop_without_finish_keeps_tmp_and_resume_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.Q4_K_M.gguf");
    assert_eq!(
        temp_path_for(&path),
        dir.path().join("model.Q4_K_M.gguf.tmp")
    );
    let plan = sample_plan();
    {
        let w = GgufStreamWriter::create(&path, &plan).unwrap();
        w.write_tensor(0, &filler(&plan, 0)).unwrap();
        w.write_tensor(2, &filler(&plan, 2)).unwrap();
        w.sync().unwrap();
        // "crash": dropped without finish
    }
    assert!(!path.exists());
    let tmp = temp_path_for(&path);
    assert!(tmp.exists());

    let w = GgufStreamWriter::open_existing(&path, &plan).unwrap();
    assert_eq!(w.read_tensor(0).unwrap(), filler(&plan, 0));
    assert_eq!(
        w.read_tensor(1).unwrap(),
        vec![0u8; 20],
        "never written: zeros"
    );
    w.mark_written(0).unwrap();
    w.mark_written("blk.0.ffn_down.weight").unwrap();
    assert!(matches!(
        w.mark_written(0),
        Err(GgufError::TensorWrittenTwice { .. })
    ));
    w.write_tensor(1, &filler(&plan, 1)).unwrap();
    w.write_tensor(3, &filler(&plan, 3)).unwrap();
    w.finish().unwrap();
    assert!(!tmp.exists());

    let fresh = dir.path().join("fresh.gguf");
    write_all(&fresh, &plan);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&fresh).unwrap()
    );
}

#[test]
fn resume_rejects_a_tmp_from_another_plan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let plan = sample_plan();
    drop(GgufStreamWriter::create(&path, &plan).unwrap());

    // Same sizes, one metadata value different.
    let mut other = sample_plan();
    other.metadata[2].1 = 8192u32.into();
    match GgufStreamWriter::open_existing(&path, &other) {
        Err(GgufError::ResumeMismatch { why, .. }) => {
            assert!(why.contains("header differs"), "{why}")
        }
        other => panic!("expected ResumeMismatch, got {other:?}"),
    }
    // A different tensor type changes the size.
    let mut other = sample_plan();
    other.tensors[3].ggml_type = GgmlType::Q8_0;
    match GgufStreamWriter::open_existing(&path, &other) {
        Err(GgufError::ResumeMismatch { why, .. }) => assert!(why.contains("bytes"), "{why}"),
        other => panic!("expected ResumeMismatch, got {other:?}"),
    }
    // Nothing to resume.
    let missing = dir.path().join("none.gguf");
    match GgufStreamWriter::open_existing(&missing, &plan) {
        Err(e @ GgufError::Io { .. }) => assert!(e.to_string().contains("none.gguf.tmp"), "{e}"),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn io_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no_such_dir").join("m.gguf");
    let err = GgufStreamWriter::create(&path, &sample_plan()).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }));
    assert!(err.to_string().contains("no_such_dir/m.gguf.tmp"), "{err}");
}

#[test]
fn plan_validation() {
    let invalid = |plan: GgufPlan, needle: &str| match plan.layout() {
        Err(GgufError::InvalidPlan(why)) => {
            assert!(why.contains(needle), "{why:?} lacks {needle:?}")
        }
        other => panic!("expected InvalidPlan({needle}), got {other:?}"),
    };
    let t = |name: &str, ne: Vec<u64>, ty| PlannedTensor::new(name, ne, ty);

    // GGML_MAX_NAME = 64 includes the NUL: 63 bytes is the longest name.
    let ok = GgufPlan::new().with_tensor(t(&"x".repeat(63), vec![4], GgmlType::F32));
    assert!(ok.layout().is_ok());
    invalid(
        GgufPlan::new().with_tensor(t(&"x".repeat(64), vec![4], GgmlType::F32)),
        "64 bytes",
    );
    invalid(
        GgufPlan::new().with_tensor(t("", vec![4], GgmlType::F32)),
        "0 bytes",
    );
    invalid(
        GgufPlan::new()
            .with_tensor(t("a", vec![4], GgmlType::F32))
            .with_tensor(t("a", vec![4], GgmlType::F16)),
        "duplicate tensor name 'a'",
    );
    invalid(
        GgufPlan::new().with_tensor(t("q", vec![100, 2], GgmlType::Q4K)),
        "not a multiple",
    );
    invalid(
        GgufPlan::new().with_tensor(t("q", vec![1, 1, 1, 1, 1], GgmlType::F32)),
        "5 dimensions",
    );
    invalid(
        GgufPlan::new().with_tensor(t("q", vec![1 << 40, 1 << 40], GgmlType::F32)),
        "i64::MAX",
    );
    invalid(
        GgufPlan::new().with_kv("a", 1u8).with_kv("a", 2u8),
        "duplicate metadata key 'a'",
    );
    invalid(GgufPlan::new().with_kv("", 1u8), "1 to 65535");
    invalid(
        GgufPlan {
            alignment: 48,
            ..GgufPlan::new()
        },
        "power of two",
    );
    invalid(
        GgufPlan {
            alignment: 4,
            ..GgufPlan::new()
        },
        "multiple of 8",
    );
    invalid(
        GgufPlan {
            alignment: 64,
            ..GgufPlan::new()
        },
        "add general.alignment",
    );
    invalid(
        GgufPlan {
            alignment: 64,
            ..GgufPlan::new()
        }
        .with_kv("general.alignment", 64u64),
        "U32(64)",
    );
}

#[test]
fn custom_alignment_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let plan = GgufPlan {
        alignment: 64,
        ..GgufPlan::new()
    }
    .with_kv("general.alignment", 64u32)
    .with_tensor(PlannedTensor::new("a", vec![3], GgmlType::F32))
    .with_tensor(PlannedTensor::new("b", vec![3], GgmlType::F32));
    write_all(&path, &plan);
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_offset() % 64, 0);
    assert_eq!(file.tensor("b").unwrap().offset, 64);
}

#[test]
fn empty_plan_writes_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.gguf");
    let w = GgufStreamWriter::create(&path, &GgufPlan::new()).unwrap();
    assert_eq!(w.finish().unwrap(), path);
    let file = GgufFile::open(&path).unwrap();
    assert!(file.metadata().is_empty() && file.tensors().is_empty());
    assert_eq!(file.architecture(), None);
}

#[test]
fn an_unfinished_tmp_is_not_taken_for_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let plan = sample_plan();
    let w = GgufStreamWriter::create(&path, &plan).unwrap();
    for i in 0..plan.tensors.len() {
        w.write_tensor(i, &filler(&plan, i)).unwrap();
    }
    let tmp = w.temp_path().to_path_buf();
    drop(w);
    // complete in size, but never finished: readers refuse it, resume accepts it
    match GgufFile::open(&tmp) {
        Err(GgufError::Unfinished) => {}
        other => panic!("expected Unfinished, got {other:?}"),
    }
    let w = GgufStreamWriter::open_existing(&path, &plan).unwrap();
    for i in 0..plan.tensors.len() {
        w.mark_written(i).unwrap();
    }
    w.seal().unwrap();
    assert!(GgufFile::open(&tmp).is_ok(), "a sealed file reads");
    w.finish().unwrap();
    assert!(GgufFile::open(&path).is_ok());
}
