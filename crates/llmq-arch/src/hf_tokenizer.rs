//! A Hugging Face `tokenizer.json` + `tokenizer_config.json` from GGUF tokenizer
//! metadata: the reverse of [`crate::gguf_tokenizer`] for byte-level BPE (GGUF
//! `tokenizer.ggml.model = gpt2`) with the pre-tokenizers `gpt-2`, `qwen2` and
//! `llama-bpe` (llama.cpp `llama-vocab.cpp`: their split regexes, which are those of the
//! models' own tokenizer.json files), in the `tokenizers` JSON layout (model `BPE`,
//! `ByteLevel` byte mapping and decoder).
//!
//! Token types (`gguf.TokenType`): control tokens become special added tokens,
//! user-defined tokens non-special added tokens, unused `[PADn]` holes are left out.
//! Merges `"a b"` become pairs. BOS/EOS are added by a `TemplateProcessing`
//! post-processor only when `tokenizer.ggml.add_bos_token` / `add_eos_token` say so.
//! Refused ([`ArchError::NotReversible`]): SentencePiece (`llama`) and other tokenizer
//! models, other pre-tokenizers (llama.cpp knows their regexes by name only: each needs
//! its row here), `add_space_prefix = true`.

use crate::gguf_tokenizer::{TOKEN_CONTROL, TOKEN_UNUSED, TOKEN_USER_DEFINED};
use crate::hf_config::MetaReader;
use crate::ArchError;
use serde_json::{json, Map, Value};

/// The tokenizer files and the special ids `config.json` repeats.
#[derive(Debug, Clone)]
pub struct HfTokenizer {
    pub tokenizer_json: Value,
    pub tokenizer_config: Value,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

fn not_rev(what: impl Into<String>) -> ArchError {
    ArchError::NotReversible(what.into())
}

const SPECIAL_KEYS: [(&str, &str); 7] = [
    ("bos", "tokenizer.ggml.bos_token_id"),
    ("eos", "tokenizer.ggml.eos_token_id"),
    ("unk", "tokenizer.ggml.unknown_token_id"),
    ("sep", "tokenizer.ggml.seperator_token_id"),
    ("pad", "tokenizer.ggml.padding_token_id"),
    ("cls", "tokenizer.ggml.cls_token_id"),
    ("mask", "tokenizer.ggml.mask_token_id"),
];

/// llama.cpp's split regex for `qwen2` (`llama-vocab.cpp`, as in Qwen2's tokenizer.json).
const QWEN2_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's split regex for `llama-bpe` / `llama3` (Llama 3's tokenizer.json).
const LLAMA3_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizers` pre-tokenizer for a `tokenizer.ggml.pre`, and whether BPE skips
/// merges for words already in the vocabulary (llama.cpp's `ignore_merges`, set for the
/// Llama 3 split). `gpt-2` is `ByteLevel`'s own regex; the others split by their regex
/// first and then map bytes (llama.cpp applies no normalizer for any of them).
fn pre_tokenizer(pre: &str) -> Option<(Value, bool)> {
    let split = |re: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]})
    };
    match pre {
        "gpt-2" => Some((
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
            false,
        )),
        "qwen2" => Some((split(QWEN2_RE), false)),
        "llama-bpe" | "llama3" | "llama-v3" => Some((split(LLAMA3_RE), true)),
        _ => None,
    }
}

/// Builds the tokenizer files; `model_max_length` is the context length.
pub fn hf_tokenizer(m: &MetaReader, model_max_length: u64) -> Result<HfTokenizer, ArchError> {
    let model = m
        .string("tokenizer.ggml.model")
        .ok_or_else(|| not_rev("the GGUF has no tokenizer (tokenizer.ggml.model)"))?;
    if model != "gpt2" {
        return Err(not_rev(format!(
            "tokenizer.ggml.model `{model}` is not reversed (only byte-level BPE, `gpt2`)"
        )));
    }
    let pre = m.string("tokenizer.ggml.pre").unwrap_or("default");
    let (pre_tokenizer, ignore_merges) = pre_tokenizer(pre).ok_or_else(|| {
        not_rev(format!(
            "tokenizer.ggml.pre `{pre}` is not reversed (only gpt-2, qwen2, llama-bpe: \
             llama.cpp knows the other split regexes by name only)"
        ))
    })?;
    if let Some(v) = m.get("tokenizer.ggml.add_space_prefix") {
        if v.as_bool() != Some(false) {
            return Err(not_rev(
                "tokenizer.ggml.add_space_prefix = true is not reversed",
            ));
        }
    }
    let tokens = m
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_string_array())
        .ok_or_else(|| not_rev("tokenizer.ggml.tokens is missing or not a string array"))?;
    let types: Vec<i32> = match m.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .as_i32_array()
            .filter(|t| t.len() == tokens.len())
            .ok_or_else(|| not_rev("tokenizer.ggml.token_type does not match the tokens"))?
            .to_vec(),
        None => vec![1; tokens.len()],
    };
    // scores carry no information for BPE (merges decide)
    let _ = m.get("tokenizer.ggml.scores");
    let merges: Vec<Value> = match m.get("tokenizer.ggml.merges") {
        Some(v) => v
            .as_string_array()
            .ok_or_else(|| not_rev("tokenizer.ggml.merges is not a string array"))?
            .iter()
            .map(|s| {
                let parts: Vec<&str> = s.split(' ').collect();
                match parts.as_slice() {
                    [a, b] if !a.is_empty() && !b.is_empty() => Ok(json!([a, b])),
                    _ => Err(not_rev(format!("merge {s:?} is not two parts"))),
                }
            })
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let mut vocab = Map::new();
    let mut added = Vec::new();
    let mut decoder = Map::new();
    for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
        if *ty == TOKEN_UNUSED && *t == format!("[PAD{i}]") {
            continue;
        }
        vocab.insert(t.clone(), json!(i));
        if *ty == TOKEN_CONTROL || *ty == TOKEN_USER_DEFINED {
            let special = *ty == TOKEN_CONTROL;
            let entry = json!({"content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": !special, "special": special});
            let mut a = json!({"id": i});
            a.as_object_mut()
                .expect("object")
                .extend(entry.as_object().expect("object").clone());
            added.push(a);
            decoder.insert(i.to_string(), entry);
        }
    }
    let id_of = |key: &str| -> Result<Option<u32>, ArchError> {
        match m.uint(key)? {
            Some(id) if (id as usize) < tokens.len() => Ok(Some(id as u32)),
            Some(id) => Err(not_rev(format!("{key} {id} is outside the vocabulary"))),
            None => Ok(None),
        }
    };
    let mut specials = Map::new();
    let mut ids = Vec::new();
    for (typ, key) in SPECIAL_KEYS {
        let id = id_of(key)?;
        ids.push(id);
        if let Some(id) = id {
            specials.insert(format!("{typ}_token"), json!(tokens[id as usize]));
        }
    }
    let flag = |k: &str| -> Result<bool, ArchError> {
        match m.get(k) {
            None => Ok(false),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| not_rev(format!("{k} is not a bool"))),
        }
    };
    let (add_bos, add_eos) = (
        flag("tokenizer.ggml.add_bos_token")?,
        flag("tokenizer.ggml.add_eos_token")?,
    );
    if flag("tokenizer.ggml.add_sep_token")? {
        return Err(not_rev(
            "tokenizer.ggml.add_sep_token = true is not reversed",
        ));
    }
    let (bos, eos) = (ids[0], ids[1]);
    let post = if add_bos || add_eos {
        let piece = |id: Option<u32>, what: &str| -> Result<(String, u32), ArchError> {
            let id = id.ok_or_else(|| not_rev(format!("add_{what}_token without a {what} id")))?;
            Ok((tokens[id as usize].clone(), id))
        };
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut st = Map::new();
        // the second sequence of a pair and its special tokens have type id 1
        let sp =
            |(t, _): &(String, u32), ty: u32| json!({"SpecialToken": {"id": t, "type_id": ty}});
        let seq = |s: &str, ty: u32| json!({"Sequence": {"id": s, "type_id": ty}});
        let b = add_bos.then(|| piece(bos, "bos")).transpose()?;
        let e = add_eos.then(|| piece(eos, "eos")).transpose()?;
        if let Some(x) = &b {
            single.push(sp(x, 0));
            pair.push(sp(x, 0));
        }
        single.push(seq("A", 0));
        pair.push(seq("A", 0));
        if let Some(x) = &e {
            single.push(sp(x, 0));
            pair.push(sp(x, 0));
        }
        if let Some(x) = &b {
            pair.push(sp(x, 1));
        }
        pair.push(seq("B", 1));
        if let Some(x) = &e {
            pair.push(sp(x, 1));
        }
        for (t, id) in b.iter().chain(e.iter()) {
            st.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
        }
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": st})
    } else {
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
    };
    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges},
    });
    let mut tc = Map::new();
    tc.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    for typ in ["bos", "eos", "pad", "unk"] {
        let key = format!("{typ}_token");
        tc.insert(
            key.clone(),
            specials.get(&key).cloned().unwrap_or(Value::Null),
        );
    }
    for (typ, _) in SPECIAL_KEYS.iter().skip(3) {
        let key = format!("{typ}_token");
        if let Some(v) = specials.get(&key) {
            tc.insert(key, v.clone());
        }
    }
    tc.insert("add_bos_token".into(), json!(add_bos));
    tc.insert("add_eos_token".into(), json!(add_eos));
    tc.insert("add_prefix_space".into(), json!(false));
    tc.insert("clean_up_tokenization_spaces".into(), json!(false));
    tc.insert("model_max_length".into(), json!(model_max_length));
    tc.insert("added_tokens_decoder".into(), Value::Object(decoder));
    if let Some(t) = m.string("tokenizer.chat_template") {
        tc.insert("chat_template".into(), json!(t));
    }
    Ok(HfTokenizer {
        tokenizer_json,
        tokenizer_config: Value::Object(tc),
        bos_token_id: bos,
        eos_token_id: eos,
        pad_token_id: ids[4],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Family;
    use crate::gguf_tokenizer::tokenizer_metadata_from_json;
    use llmq_formats::gguf::GgufValue;

    #[test]
    fn byte_level_bpe_round_trips_through_gguf_metadata() {
        let tok = json!({
            "model": {"type": "BPE", "vocab": {"<s>": 0, "a": 1, "b": 2, "ab": 3, "\u{120}a": 4},
                      "merges": [["a", "b"], ["\u{120}", "a"]]},
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
            "added_tokens": [{"id": 0, "content": "<s>", "special": true}],
            "post_processor": {"type": "ByteLevel"}
        });
        let tc = json!({"bos_token": "<s>", "eos_token": "<s>", "chat_template": "{{ x }}"});
        let meta = tokenizer_metadata_from_json(&tok, Some(&tc), None, None, Family::Qwen2, 6)
            .unwrap()
            .to_gguf();
        let mut kv = meta.clone();
        kv.push(("general.architecture".into(), "qwen2".into()));
        let m = MetaReader::new(&kv);
        let t = hf_tokenizer(&m, 64).unwrap();
        m.finish().unwrap();
        let j = &t.tokenizer_json;
        // the [PAD5] hole is left out; ids, merges and the special token come back
        assert_eq!(j["model"]["vocab"], tok["model"]["vocab"]);
        assert_eq!(j["model"]["merges"], tok["model"]["merges"]);
        assert_eq!(j["added_tokens"][0]["content"], "<s>");
        assert_eq!(j["added_tokens"][0]["special"], true);
        assert_eq!(j["post_processor"]["type"], "ByteLevel");
        assert_eq!(t.bos_token_id, Some(0));
        assert_eq!(t.tokenizer_config["chat_template"], "{{ x }}");
        assert_eq!(t.tokenizer_config["bos_token"], "<s>");
        // add_bos_token: a template puts BOS before each sequence
        let mut bos = kv.clone();
        bos.retain(|(k, _)| k != "tokenizer.ggml.add_bos_token");
        bos.push(("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(true)));
        let t = hf_tokenizer(&MetaReader::new(&bos), 64).unwrap();
        let post = &t.tokenizer_json["post_processor"];
        assert_eq!(post["type"], "TemplateProcessing");
        assert_eq!(post["single"][0]["SpecialToken"]["id"], "<s>");
        assert_eq!(post["single"][1]["Sequence"]["id"], "A");
        assert_eq!(post["special_tokens"]["<s>"]["ids"], json!([0]));
        assert_eq!(t.tokenizer_config["add_bos_token"], true);
        // SentencePiece vocabularies are refused
        let mut spm = kv.clone();
        for (k, v) in spm.iter_mut() {
            if k == "tokenizer.ggml.model" {
                *v = "llama".into();
            }
        }
        let e = hf_tokenizer(&MetaReader::new(&spm), 64).unwrap_err();
        assert!(e.to_string().contains("`llama`"), "{e}");
    }
}
