//! SentencePiece-style `tokenizer.json` (BPE with byte fallback) exported as a `llama`
//! vocabulary, compared with llama.cpp's converter output for the same files
//! (`tests/data/spm/converter_vocab.json`, made with `--vocab-only`). Only the scores
//! differ on purpose (see `gguf_tokenizer::vocab_llama_hf`).

use llmq_arch::gguf_tokenizer::tokenizer_metadata;
use llmq_arch::{Family, MetaValue};
use serde_json::Value;
use std::path::PathBuf;

#[test]
fn llama_hf_vocab_matches_the_converter() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/spm");
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("converter_vocab.json")).unwrap())
            .unwrap();
    let m = tokenizer_metadata(&dir, Family::Llama, 957).unwrap();
    let keys: Vec<&str> = m.keys().collect();
    let want_keys: Vec<&str> = want["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(keys, want_keys);
    for (k, v) in &m.0 {
        let w = &want["metadata"][k.as_str()][1];
        match v {
            MetaValue::ArrF32(scores) => {
                assert_eq!(k, "tokenizer.ggml.scores");
                assert!(w
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|x| x.as_f64() == Some(-1000.0)));
                // ours: minus the merge rank; "▁t" is the first merge of this vocabulary
                let Some(MetaValue::ArrStr(tokens)) = m.get("tokenizer.ggml.tokens") else {
                    panic!()
                };
                let merges = serde_json::from_str::<Value>(
                    &std::fs::read_to_string(dir.join("tokenizer.json")).unwrap(),
                )
                .unwrap()["model"]["merges"]
                    .clone();
                let first = merges[0].as_array().unwrap();
                let joined = format!(
                    "{}{}",
                    first[0].as_str().unwrap(),
                    first[1].as_str().unwrap()
                );
                let at = tokens.iter().position(|t| *t == joined).unwrap();
                assert_eq!(scores[at], 0.0);
                assert_eq!(scores[3], 0.0, "byte tokens are never merged");
                assert!(
                    scores
                        .iter()
                        .filter(|s| **s < -600.0 && **s > -1000.0)
                        .count()
                        > 0
                );
                assert_eq!(scores[956], -1000.0, "added token");
            }
            MetaValue::ArrStr(x) => assert_eq!(&Value::from(x.clone()), w, "{k}"),
            MetaValue::ArrI32(x) => assert_eq!(&Value::from(x.clone()), w, "{k}"),
            MetaValue::U32(x) => assert_eq!(w.as_u64(), Some(*x as u64), "{k}"),
            MetaValue::Bool(x) => assert_eq!(w.as_bool(), Some(*x), "{k}"),
            MetaValue::Str(x) => assert_eq!(w.as_str(), Some(x.as_str()), "{k}"),
            other => panic!("{k}: unexpected {other:?}"),
        }
    }
    // byte tokens, control tokens and the user-defined added token
    let Some(MetaValue::ArrI32(types)) = m.get("tokenizer.ggml.token_type") else {
        panic!()
    };
    assert_eq!(&types[..4], &[3, 3, 3, 6]);
    assert_eq!(types[956], 4);
}
