//! The bad-input catalogue, GGUF files and command lines: hostile metadata, tensors and
//! bytes of our own GGUF of the shared Llama through `eval`, `generate`, `quantize` and
//! `info`; hostile arguments (missing paths, FIFOs, empty lists, parser errors,
//! absurd lengths, a template bomb); and failed runs, which must leave nothing
//! loadable. Each case asserts exit code, message and leftovers as in
//! `hostile_catalogue.rs`.

mod common;
mod hostile_support;
use common::*;
use hostile_support::*;
use llmq_formats::GgmlType;

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
