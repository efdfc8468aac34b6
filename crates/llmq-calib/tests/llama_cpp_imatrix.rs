//! Checks our imatrix reader/writer against llama.cpp itself (the llama-cpp-python
//! 0.3.36 build: `llama-imatrix`, `llama-quantize`).
//!
//! Needs: the llama.cpp binaries (`LLAMA_CPP_BIN` as `scripts/test.sh` sets it, or
//! `LLAMA_CPP_BIN_DIR`, default `~/.cache/llm-quantize/peer/llama.cpp-0.3.36/bin`), an
//! F16 GGUF of the shared Llama model (`LLMQ_CALIB_F16_GGUF`, or made with
//! `target/release/llm-quantize`), and the shared corpus (`LLMQ_SHARED_DIR`, default
//! `<workspace>/../shared`). A missing input fails the test with what to do.

use llmq_calib::imatrix::{ImatrixCollector, ImatrixData};
use llmq_formats::gguf::GgufFile;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn shared() -> PathBuf {
    std::env::var_os("LLMQ_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared"))
}

fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("LLAMA_CPP_BIN")
        .or_else(|| std::env::var_os("LLAMA_CPP_BIN_DIR"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/llm-quantize/peer/llama.cpp-0.3.36/bin")
        });
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} missing: run `bash scripts/peer-llama-cpp.sh` (or set LLAMA_CPP_BIN)",
        p.display()
    );
    p
}

struct Fixture {
    dir: tempfile::TempDir,
    f16: PathBuf,
    calib: PathBuf,
}

/// F16 GGUF of the shared Llama model + calibration text, made once per test binary.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    make_fixture(&F, "llama", "LLMQ_CALIB_F16_GGUF")
}

/// The same for the shared Mixtral (MoE: 8 experts, 2 used).
fn moe_fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    make_fixture(&F, "mixtral", "LLMQ_CALIB_MOE_F16_GGUF")
}

fn make_fixture(cell: &'static OnceLock<Fixture>, model: &str, env: &str) -> &'static Fixture {
    cell.get_or_init(|| {
        bin("llama-imatrix");
        bin("llama-quantize");
        let dir = tempfile::tempdir().unwrap();
        let f16 = match std::env::var_os(env) {
            Some(p) => PathBuf::from(p),
            None => {
                let exe = workspace().join("target/release/llm-quantize");
                assert!(
                    exe.exists(),
                    "{} missing: `cargo build --release -p llm-quantize` (or set {env})",
                    exe.display()
                );
                let out = dir.path().join("f16");
                let st = Command::new(&exe)
                    .args(["quantize"])
                    .arg(shared().join("models").join(model))
                    .args(["gguf", "-q", "F16", "-o"])
                    .arg(&out)
                    .args(["--no-checkpoints", "--no-validate"])
                    .output()
                    .unwrap();
                assert!(st.status.success(), "llm-quantize F16 failed: {st:?}");
                std::fs::read_dir(&out)
                    .unwrap()
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|x| x == "gguf"))
                    .expect("llm-quantize wrote no .gguf")
            }
        };
        let corpus = shared().join("data/corpus/train.txt");
        let text = std::fs::read(&corpus)
            .unwrap_or_else(|e| panic!("{}: {e} (set LLMQ_SHARED_DIR)", corpus.display()));
        let calib = dir.path().join("calib.txt");
        let mut end = 20_000.min(text.len());
        while end < text.len() && (text[end] & 0xC0) == 0x80 {
            end += 1;
        }
        std::fs::write(&calib, &text[..end]).unwrap();
        Fixture { dir, f16, calib }
    })
}

fn run_imatrix(fx: &Fixture, out: &Path, extra: &[&str]) {
    let o = Command::new(bin("llama-imatrix"))
        .arg("-m")
        .arg(&fx.f16)
        .arg("-f")
        .arg(&fx.calib)
        .args(["-c", "128", "--chunks", "4", "-t", "2", "--no-ppl", "-o"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "llama-imatrix failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs llama-quantize in `dir` with `--imatrix <imatrix_name>` (a path relative to
/// `dir`, since llama-quantize stores the path in the output) and returns the output.
fn run_quantize(fx: &Fixture, dir: &Path, imatrix_name: Option<&str>, level: &str) -> Vec<u8> {
    let mut c = Command::new(bin("llama-quantize"));
    c.current_dir(dir);
    if let Some(name) = imatrix_name {
        c.args(["--imatrix", name]);
    }
    let o = c
        .arg(&fx.f16)
        .args(["out.gguf", level, "2"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "llama-quantize failed: {log}");
    if imatrix_name.is_some() {
        assert!(log.contains("importance matrix entries"), "{log}");
    }
    std::fs::read(dir.join("out.gguf")).unwrap()
}

fn subdir(fx: &Fixture, name: &str) -> PathBuf {
    let d = fx.dir.path().join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn reads_llama_imatrix_gguf_and_matches_the_model() {
    let fx = fixture();
    let d = subdir(fx, "read");
    let path = d.join("imatrix.gguf");
    run_imatrix(fx, &path, &[]);
    let data = ImatrixData::read(&path).unwrap();
    assert!(!data.legacy);
    assert_eq!(data.chunk_size, 128);
    assert_eq!(data.chunk_count, 4);
    assert_eq!(data.datasets, vec![fx.calib.to_string_lossy().into_owned()]);

    let model = GgufFile::open(&fx.f16).unwrap();
    // every matrix of every block is there, with its input width
    let mut expected: Vec<&str> = model
        .tensors()
        .iter()
        .filter(|t| t.name.starts_with("blk.") && t.shape_ne.len() >= 2)
        .map(|t| t.name.as_str())
        .collect();
    expected.sort();
    let got: Vec<&str> = data.entries.keys().map(String::as_str).collect();
    assert_eq!(got, expected);
    for (name, e) in &data.entries {
        let t = model.tensor(name).unwrap();
        assert_eq!(e.n_cols() as u64, t.shape_ne[0], "{name}");
        assert_eq!(e.n_mat(), 1, "{name} (dense model)");
        assert_eq!(e.counts, vec![4 * 128], "{name}: 4 chunks of 128 tokens");
        let imp = data.importance(name).unwrap();
        assert_eq!(imp.len(), e.sum2.len());
        assert!(imp.iter().all(|v| v.is_finite() && *v > 0.0), "{name}");
    }
    eprintln!(
        "read {} entries, e.g. blk.0.attn_q.weight importance[0..4] = {:?}",
        data.entries.len(),
        &data.importance("blk.0.attn_q.weight").unwrap()[..4]
    );

    // our writer reproduces llama-imatrix's file byte for byte
    let ours = d.join("ours.gguf");
    data.write_gguf(&ours).unwrap();
    assert_eq!(std::fs::read(&ours).unwrap(), std::fs::read(&path).unwrap());
}

#[test]
fn llama_quantize_gives_identical_output_with_our_rewritten_imatrix() {
    let fx = fixture();
    let a = subdir(fx, "quant_orig");
    let b = subdir(fx, "quant_ours");
    let c = subdir(fx, "quant_none");
    run_imatrix(fx, &a.join("imatrix.gguf"), &[]);
    let data = ImatrixData::read(a.join("imatrix.gguf")).unwrap();
    data.write_gguf(b.join("imatrix.gguf")).unwrap();
    let with_orig = run_quantize(fx, &a, Some("imatrix.gguf"), "Q4_K_M");
    let with_ours = run_quantize(fx, &b, Some("imatrix.gguf"), "Q4_K_M");
    let without = run_quantize(fx, &c, None, "Q4_K_M");
    assert!(with_orig == with_ours, "Q4_K_M outputs differ");
    assert_ne!(with_orig.len(), 0);
    // and the imatrix did change the quantization
    let q = GgufFile::from_bytes(with_orig).unwrap();
    let n = GgufFile::from_bytes(without).unwrap();
    let name = "blk.0.attn_q.weight";
    assert_ne!(q.tensor_data(name), n.tensor_data(name));
}

#[test]
fn llama_quantize_accepts_an_imatrix_from_our_collector() {
    let fx = fixture();
    let model = GgufFile::open(&fx.f16).unwrap();
    let mut col = ImatrixCollector::new(128, vec!["synthetic".into()]);
    for t in model.tensors() {
        if t.name.starts_with("blk.") && t.shape_ne.len() == 2 {
            let n = t.shape_ne[0] as usize;
            // 256 tokens whose columns have very different scales
            let x: Vec<f32> = (0..256 * n)
                .map(|i| {
                    let (tok, j) = (i / n, i % n);
                    (((tok * 31 + j * 17) % 97) as f32 / 97.0 - 0.5) * (1.0 + (j % 7) as f32)
                })
                .collect();
            col.add(&t.name, &x, n).unwrap();
        }
    }
    let data = col.finish();
    assert_eq!(data.chunk_count, 2);
    let d = subdir(fx, "quant_collector");
    data.write_gguf(d.join("imatrix.gguf")).unwrap();
    let out = run_quantize(fx, &d, Some("imatrix.gguf"), "Q4_K_M");
    let f = GgufFile::from_bytes(out).unwrap();
    assert_eq!(
        f.get("quantize.imatrix.entries_count")
            .and_then(|v| v.to_i64()),
        Some(data.entries.len() as i64)
    );
    // legacy writer: llama-quantize accepts it too
    let d2 = subdir(fx, "quant_collector_dat");
    data.write_legacy(d2.join("imatrix.dat")).unwrap();
    run_quantize(fx, &d2, Some("imatrix.dat"), "Q4_K_M");
}

#[test]
fn legacy_dat_matches_llama_imatrix_byte_for_byte() {
    let fx = fixture();
    let d = subdir(fx, "dat");
    let dat = d.join("imatrix.dat");
    let gguf = d.join("imatrix.gguf");
    run_imatrix(fx, &dat, &["--output-format", "dat"]);
    run_imatrix(fx, &gguf, &[]);
    let from_dat = ImatrixData::read(&dat).unwrap();
    let from_gguf = ImatrixData::read(&gguf).unwrap();
    assert!(from_dat.legacy);
    assert_eq!(from_dat.chunk_count, 4);
    assert_eq!(from_dat.datasets, from_gguf.datasets);
    assert_eq!(
        from_dat.entries.keys().collect::<Vec<_>>(),
        from_gguf.entries.keys().collect::<Vec<_>>()
    );
    let mut worst = 0.0f32;
    for name in from_gguf.entries.keys() {
        let a = from_gguf.importance(name).unwrap();
        let b = from_dat.importance(name).unwrap();
        for (x, y) in a.iter().zip(&b) {
            worst = worst.max((x - y).abs() / x.abs());
        }
    }
    assert!(worst < 1e-6, "legacy vs GGUF importance differ by {worst}");
    let orig = std::fs::read(&dat).unwrap();
    // .dat → ours → .dat, and GGUF data → our legacy writer: both byte-identical
    assert_eq!(from_dat.to_legacy_bytes().unwrap(), orig);
    assert_eq!(from_gguf.to_legacy_bytes().unwrap(), orig);
    // and llama-quantize gives the same output from our .dat as from its own
    let a = subdir(fx, "dat_orig");
    let b = subdir(fx, "dat_ours");
    std::fs::copy(&dat, a.join("imatrix.dat")).unwrap();
    from_gguf.write_legacy(b.join("imatrix.dat")).unwrap();
    let qa = run_quantize(fx, &a, Some("imatrix.dat"), "Q4_K_M");
    let qb = run_quantize(fx, &b, Some("imatrix.dat"), "Q4_K_M");
    assert!(qa == qb, "Q4_K_M outputs from .dat differ");
}

#[test]
fn reads_a_moe_imatrix_with_per_expert_counts() {
    let fx = moe_fixture();
    let d = subdir(fx, "moe");
    let path = d.join("imatrix.gguf");
    run_imatrix(fx, &path, &[]);
    let data = ImatrixData::read(&path).unwrap();
    let model = GgufFile::open(&fx.f16).unwrap();
    let mut n_3d = 0;
    for (name, e) in &data.entries {
        let t = model.tensor(name).unwrap();
        assert_eq!(e.n_cols() as u64, t.shape_ne[0], "{name}");
        let imp = data.importance(name).unwrap();
        assert!(imp.iter().all(|v| v.is_finite() && *v > 0.0), "{name}");
        if t.shape_ne.len() == 3 {
            n_3d += 1;
            assert_eq!(
                e.n_mat() as u64,
                t.shape_ne[2],
                "{name}: one count per expert"
            );
            // 512 tokens, 2 experts each
            assert_eq!(e.counts.iter().sum::<u64>(), 512 * 2, "{name}");
            for (j, &c) in e.counts.iter().enumerate() {
                let want = e.sum2[j * e.n_cols()] / c as f32;
                assert_eq!(imp[j * e.n_cols()], want);
            }
        } else {
            assert_eq!(e.counts, vec![512], "{name}");
        }
    }
    assert!(n_3d >= 3, "expected expert tensors, found {n_3d}");
    let ours = d.join("ours.gguf");
    data.write_gguf(&ours).unwrap();
    assert_eq!(std::fs::read(&ours).unwrap(), std::fs::read(&path).unwrap());

    // an expert that saw no token gets importance 1, and llama-quantize still takes it
    let mut partial = data.clone();
    let e = partial.entries.get_mut("blk.0.ffn_up_exps.weight").unwrap();
    let n = e.n_cols();
    e.counts[3] = 0;
    e.sum2[3 * n..4 * n].fill(0.0);
    let imp = partial.importance("blk.0.ffn_up_exps.weight").unwrap();
    assert!(imp[3 * n..4 * n].iter().all(|&v| v == 1.0));
    let q = subdir(fx, "moe_quant");
    partial.write_gguf(q.join("imatrix.gguf")).unwrap();
    run_quantize(fx, &q, Some("imatrix.gguf"), "Q4_K_M");
}
