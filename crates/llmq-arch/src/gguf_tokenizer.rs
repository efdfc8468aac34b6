//! GGUF tokenizer metadata from a Hugging Face `tokenizer.json` + `tokenizer_config.json`
//! (+ `config.json`), as llama.cpp's converter writes it for byte-level BPE
//! (`conversion/base.py` `_set_vocab_gpt2` / `get_vocab_base`, `gguf-py/gguf/vocab.py`
//! `SpecialVocab`), with the pre-tokenizer name that `src/llama-vocab.cpp` maps to the
//! same split regex.
//!
//! The converter picks `tokenizer.ggml.pre` by hashing the tokenization of a probe text
//! against known models; a custom tokenizer matches none. We decide from the
//! pre-tokenizer itself: a plain `ByteLevel` pre-tokenizer with its built-in regex and no
//! prefix space is GPT-2's split, which llama.cpp implements as pre `gpt-2`
//! (`LLAMA_VOCAB_PRE_TYPE_GPT2`); llama-tokenize then gave the same ids as HF on 200 kB of
//! the shared test text. Other pre-tokenizers (explicit `Split` regexes) are reported as
//! unsupported rather than guessed.
//!
//! SentencePiece-style BPE in `tokenizer.json` (byte fallback, `Sequence` decoder) is
//! exported for Llama-family models as the converter's `LlamaHfVocab` path does (model
//! `llama`, pre `default`), except for the scores (see `vocab_llama_hf`). Unigram
//! vocabularies and `tokenizer.model` files are not implemented.

use crate::config::Family;
use crate::meta::{MetaList, MetaValue};
use crate::ArchError;
use serde_json::Value;
use std::path::Path;

/// llama.cpp token types (`gguf.TokenType`).
pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_UNKNOWN: i32 = 2;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;
pub const TOKEN_UNUSED: i32 = 5;
pub const TOKEN_BYTE: i32 = 6;

fn read_json(path: &Path) -> Result<Option<Value>, ArchError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| ArchError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| ArchError::TokenizerJson {
            file: path.display().to_string(),
            source,
        })
}

/// Read the tokenizer files of a model folder and build the tokenizer metadata.
pub fn tokenizer_metadata(
    dir: &Path,
    family: Family,
    vocab_size: usize,
) -> Result<MetaList, ArchError> {
    let tok = read_json(&dir.join("tokenizer.json"))?.ok_or_else(|| {
        ArchError::UnsupportedTokenizer(format!("no tokenizer.json in {}", dir.display()))
    })?;
    let tc = read_json(&dir.join("tokenizer_config.json"))?;
    let cfg = read_json(&dir.join("config.json"))?;
    let jinja = dir.join("chat_template.jinja");
    let jinja = if jinja.is_file() {
        Some(
            std::fs::read_to_string(&jinja).map_err(|source| ArchError::Io {
                path: jinja.display().to_string(),
                source,
            })?,
        )
    } else {
        None
    };
    tokenizer_metadata_from_json(&tok, tc.as_ref(), cfg.as_ref(), jinja, family, vocab_size)
}

/// The `tokenizer.ggml.pre` value for a byte-level BPE pre-tokenizer.
pub fn pre_tokenizer_name(tokenizer_json: &Value) -> Result<&'static str, ArchError> {
    let pre = tokenizer_json
        .get("pre_tokenizer")
        .filter(|p| !p.is_null())
        .ok_or_else(|| ArchError::UnsupportedTokenizer("no pre_tokenizer".into()))?;
    let ty = pre.get("type").and_then(Value::as_str).unwrap_or("");
    if ty == "ByteLevel" {
        let prefix = pre
            .get("add_prefix_space")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let regex = pre
            .get("use_regex")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        if !prefix && regex {
            return Ok("gpt-2");
        }
        return Err(ArchError::UnsupportedTokenizer(format!(
            "ByteLevel pre-tokenizer with add_prefix_space={prefix}, use_regex={regex} has no llama.cpp equivalent"
        )));
    }
    Err(ArchError::UnsupportedTokenizer(format!(
        "pre-tokenizer `{ty}`: only the GPT-2 ByteLevel split is recognised (llama.cpp names others by a hash of known models)"
    )))
}

/// The converter's `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

fn special_content(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

const SPECIAL_TYPES: [(&str, &str); 7] = [
    ("bos", "tokenizer.ggml.bos_token_id"),
    ("eos", "tokenizer.ggml.eos_token_id"),
    ("unk", "tokenizer.ggml.unknown_token_id"),
    ("sep", "tokenizer.ggml.seperator_token_id"),
    ("pad", "tokenizer.ggml.padding_token_id"),
    ("cls", "tokenizer.ggml.cls_token_id"),
    ("mask", "tokenizer.ggml.mask_token_id"),
];

/// Build the tokenizer metadata from already-parsed files.
pub fn tokenizer_metadata_from_json(
    tok: &Value,
    tokenizer_config: Option<&Value>,
    config: Option<&Value>,
    chat_template_file: Option<String>,
    family: Family,
    vocab_size: usize,
) -> Result<MetaList, ArchError> {
    let model = tok
        .get("model")
        .ok_or_else(|| ArchError::MalformedTokenizer("no `model`".into()))?;
    let mtype = model.get("type").and_then(Value::as_str).unwrap_or("");
    let byte_fallback = model.get("byte_fallback").and_then(Value::as_bool) == Some(true);
    let llama_family = matches!(family, Family::Llama | Family::Mistral | Family::Mixtral);
    let decoder_seq = tok
        .get("decoder")
        .and_then(|d| d.get("type"))
        .and_then(Value::as_str)
        == Some("Sequence");

    let mut m = MetaList::default();
    if llama_family {
        if let Some(p) = tokenizer_config
            .and_then(|c| c.get("add_prefix_space"))
            .and_then(Value::as_bool)
        {
            m.set("tokenizer.ggml.add_space_prefix", MetaValue::Bool(p));
        }
    }
    let n_vocab = if mtype == "BPE" && !byte_fallback {
        let pre = pre_tokenizer_name(tok)?;
        let (list, types) = vocab_gpt2(model, tok, vocab_size)?;
        let merges = parse_merges(model.get("merges"))?;
        m.set("tokenizer.ggml.model", MetaValue::Str("gpt2".into()));
        m.set("tokenizer.ggml.pre", MetaValue::Str(pre.into()));
        m.set("tokenizer.ggml.tokens", MetaValue::ArrStr(list));
        m.set("tokenizer.ggml.token_type", MetaValue::ArrI32(types));
        if !merges.is_empty() {
            m.set("tokenizer.ggml.merges", MetaValue::ArrStr(merges));
        }
        vocab_size
    } else if mtype == "BPE" && byte_fallback && decoder_seq && llama_family {
        let (list, scores, types) = vocab_llama_hf(model, tok, tokenizer_config)?;
        if list.len() > vocab_size {
            return Err(ArchError::MalformedTokenizer(format!(
                "{} tokens for vocab_size {vocab_size}",
                list.len()
            )));
        }
        let n = list.len();
        m.set("tokenizer.ggml.model", MetaValue::Str("llama".into()));
        m.set("tokenizer.ggml.pre", MetaValue::Str("default".into()));
        m.set("tokenizer.ggml.tokens", MetaValue::ArrStr(list));
        m.set("tokenizer.ggml.scores", MetaValue::ArrF32(scores));
        m.set("tokenizer.ggml.token_type", MetaValue::ArrI32(types));
        n
    } else {
        return Err(ArchError::UnsupportedTokenizer(format!(
            "tokenizer model `{mtype}` (byte_fallback {byte_fallback}) for {family:?}: only \
             byte-level BPE, and SentencePiece-style BPE for Llama-family models, are implemented"
        )));
    };

    let (ids, add_flags) = special_vocab(tok, tokenizer_config, config, n_vocab);
    for (typ, id) in &ids {
        let key = SPECIAL_TYPES
            .iter()
            .find(|(t, _)| t == typ)
            .map(|(_, k)| *k)
            .unwrap_or_default();
        m.set(key, MetaValue::U32(*id));
    }
    for (typ, flag) in add_flags {
        if matches!(typ, "bos" | "eos" | "sep") {
            m.set(
                format!("tokenizer.ggml.add_{typ}_token"),
                MetaValue::Bool(flag),
            );
        }
    }
    let template = tokenizer_config
        .and_then(|c| c.get("chat_template"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .or(chat_template_file);
    if let Some(t) = template {
        m.set("tokenizer.chat_template", MetaValue::Str(t));
    }
    Ok(m)
}

fn added_tokens(tok: &Value) -> Vec<&Value> {
    tok.get("added_tokens")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn model_vocab(model: &Value) -> Result<&serde_json::Map<String, Value>, ArchError> {
    model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| ArchError::MalformedTokenizer("model.vocab is not an object".into()))
}

/// `get_vocab_base`: ids `0..vocab_size`, holes as `[PADi]` (unused), added tokens
/// control (special or special-looking) or user-defined, the rest normal.
fn vocab_gpt2(
    model: &Value,
    tok: &Value,
    vocab_size: usize,
) -> Result<(Vec<String>, Vec<i32>), ArchError> {
    let vocab = model_vocab(model)?;
    let added = added_tokens(tok);
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| ArchError::MalformedTokenizer(format!("id of {text:?}")))?
            as usize;
        if id >= vocab_size {
            return Err(ArchError::MalformedTokenizer(format!(
                "token id {id} >= vocab_size {vocab_size}"
            )));
        }
        tokens[id] = Some(text.clone());
    }
    let mut added_by_id = std::collections::HashMap::new();
    for a in &added {
        let id = a
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| ArchError::MalformedTokenizer("added token id".into()))?
            as usize;
        let content = a
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if id >= vocab_size {
            return Err(ArchError::MalformedTokenizer(format!(
                "added token id {id} >= vocab_size {vocab_size}"
            )));
        }
        tokens[id] = Some(content);
        added_by_id.insert(id, *a);
    }
    let mut list = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for (i, t) in tokens.into_iter().enumerate() {
        match t {
            None => {
                list.push(format!("[PAD{i}]"));
                types.push(TOKEN_UNUSED);
            }
            Some(text) => match added_by_id.get(&i) {
                Some(a) => {
                    let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
                    if special || looks_special(&text) {
                        list.push(text);
                        types.push(TOKEN_CONTROL);
                    } else {
                        list.push(text.replace('\u{2581}', " "));
                        types.push(TOKEN_USER_DEFINED);
                    }
                }
                None => {
                    list.push(text);
                    types.push(TOKEN_NORMAL);
                }
            },
        }
    }
    Ok((list, types))
}

/// Contents of the special tokens `transformers` reports (`all_special_tokens`).
fn special_contents(tc: Option<&Value>) -> Vec<String> {
    let Some(tc) = tc else { return vec![] };
    let mut out: Vec<String> = SPECIAL_TYPES
        .iter()
        .filter_map(|(t, _)| special_content(tc.get(format!("{t}_token"))))
        .collect();
    for key in ["additional_special_tokens", "extra_special_tokens"] {
        match tc.get(key) {
            Some(Value::Array(a)) => out.extend(a.iter().filter_map(|v| special_content(Some(v)))),
            Some(Value::Object(o)) => {
                out.extend(o.values().filter_map(|v| special_content(Some(v))))
            }
            _ => {}
        }
    }
    out
}

/// Special token ids by type (`bos`, `eos`, ...), in write order.
type SpecialIds = Vec<(&'static str, u32)>;
/// `add_*_token` flags by type, in write order.
type AddFlags = Vec<(&'static str, bool)>;

/// Tokens, scores and token types of a `llama` vocabulary.
type SpmVocab = (Vec<String>, Vec<f32>, Vec<i32>);

/// The converter's `LlamaHfVocab` (SentencePiece-style BPE in `tokenizer.json`): base
/// vocabulary in id order, then added tokens beyond it; `<0xXX>` are byte tokens,
/// special tokens control, other added tokens user-defined.
///
/// Scores: the converter writes -1000 for every token, and llama.cpp's SentencePiece
/// tokenizer then merges in the wrong order (on our 957-token test vocabulary it gave
/// 8947 tokens for 8874 HF ones). We write `-(rank of the merge that forms the token)`
/// (0 for unmerged pieces), with which llama.cpp reproduced HF's ids exactly.
fn vocab_llama_hf(
    model: &Value,
    tok: &Value,
    tokenizer_config: Option<&Value>,
) -> Result<SpmVocab, ArchError> {
    let vocab = model_vocab(model)?;
    let base = vocab.len();
    let mut tokens: Vec<Option<String>> = vec![None; base];
    for (text, id) in vocab {
        let id = id.as_u64().map(|x| x as usize).filter(|x| *x < base);
        let id = id.ok_or_else(|| {
            ArchError::MalformedTokenizer(format!("base vocabulary ids are not 0..{base}"))
        })?;
        tokens[id] = Some(text.clone());
    }
    let mut extra: Vec<(usize, String)> = Vec::new();
    for a in added_tokens(tok) {
        let id = a.get("id").and_then(Value::as_u64).unwrap_or(0) as usize;
        let content = a.get("content").and_then(Value::as_str).unwrap_or("");
        if id >= base {
            extra.push((id, content.to_string()));
        }
    }
    extra.sort();
    let specials = special_contents(tokenizer_config);
    let is_special = |text: &str| specials.iter().any(|s| s == text);
    let mut rank = std::collections::HashMap::new();
    for (r, m) in parse_merges(model.get("merges"))?.iter().enumerate() {
        if let Some((a, b)) = m.split_once(' ') {
            rank.entry(format!("{a}{b}")).or_insert(r);
        }
    }
    let mut list = Vec::with_capacity(base + extra.len());
    let mut scores = Vec::with_capacity(base + extra.len());
    let mut types = Vec::with_capacity(base + extra.len());
    for (i, t) in tokens.into_iter().enumerate() {
        let t = t.ok_or_else(|| ArchError::MalformedTokenizer(format!("no token with id {i}")))?;
        let is_byte = t.len() == 6
            && t.starts_with("<0x")
            && t.ends_with('>')
            && t[3..5].chars().all(|c| c.is_ascii_hexdigit());
        types.push(if is_byte {
            TOKEN_BYTE
        } else if is_special(&t) {
            TOKEN_CONTROL
        } else {
            TOKEN_NORMAL
        });
        scores.push(rank.get(&t).map(|r| -(*r as f32)).unwrap_or(0.0));
        list.push(t);
    }
    for (k, (id, text)) in extra.into_iter().enumerate() {
        if id != base + k {
            return Err(ArchError::MalformedTokenizer(format!(
                "added token ids beyond the base vocabulary are not contiguous at {id}"
            )));
        }
        types.push(if is_special(&text) {
            TOKEN_CONTROL
        } else {
            TOKEN_USER_DEFINED
        });
        scores.push(-1000.0);
        list.push(text);
    }
    Ok((list, scores, types))
}

/// `gguf.SpecialVocab`: special token ids and `add_*_token` flags, in the order the
/// converter writes them. Post-processors: `ByteLevel` adds nothing; a simple
/// `TemplateProcessing` sets bos/eos from its single template and sep from its pair
/// template (the converter's EOT/EOM re-labelling of unusual templates is not done).
fn special_vocab(
    tok: &Value,
    tc: Option<&Value>,
    config: Option<&Value>,
    n_vocab: usize,
) -> (SpecialIds, AddFlags) {
    let added = added_tokens(tok);
    let tc_str = |k: &str| special_content(tc.and_then(|c| c.get(format!("{k}_token"))));
    let mut bos = tc_str("bos").or_else(|| tc_str("cls"));
    let eos = tc_str("eos").or_else(|| tc_str("sep"));
    let (cls, sep) = (tc_str("cls"), tc_str("sep"));
    let mut flags: Vec<(&'static str, bool)> = Vec::new();
    let put = |flags: &mut Vec<(&'static str, bool)>, k: &'static str, v: bool| match flags
        .iter_mut()
        .find(|(t, _)| *t == k)
    {
        Some(slot) => slot.1 = v,
        None => flags.push((k, v)),
    };
    let sp_id = |e: &Value| -> Option<String> {
        e.get("SpecialToken")
            .and_then(|s| s.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    if let Some(pp) = tok.get("post_processor").filter(|p| !p.is_null()) {
        let procs: Vec<&Value> = match pp.get("processors").and_then(Value::as_array) {
            Some(a) => a.iter().collect(),
            None => vec![pp],
        };
        for p in procs {
            match p.get("type").and_then(Value::as_str) {
                Some("ByteLevel") => {
                    for t in ["bos", "eos"] {
                        if !flags.iter().any(|(k, _)| *k == t) {
                            flags.push((t, false));
                        }
                    }
                }
                Some("TemplateProcessing") => {
                    let empty = vec![];
                    let single = p.get("single").and_then(Value::as_array).unwrap_or(&empty);
                    let pair = p.get("pair").and_then(Value::as_array).unwrap_or(&empty);
                    let mut first = None;
                    let mut last = None;
                    if single.len() > 1 {
                        first = sp_id(&single[0]);
                        if let Some(f) = &first {
                            if bos.is_none() {
                                bos = Some(f.clone());
                            }
                            let ok = Some(f) == bos.as_ref() || Some(f) == cls.as_ref();
                            put(&mut flags, "bos", ok);
                        }
                        last = sp_id(&single[single.len() - 1]);
                        if let Some(l) = &last {
                            put(&mut flags, "eos", Some(l) == eos.as_ref());
                        }
                    }
                    if !pair.is_empty() {
                        let mut lo = 0;
                        let mut hi = pair.len();
                        if first.is_some() && sp_id(&pair[0]) == first {
                            lo = 1;
                        }
                        if last.is_some() && sp_id(&pair[pair.len() - 1]) == last {
                            hi -= 1;
                        }
                        let mid = &pair[lo..hi.max(lo)];
                        let seq = |e: &Value| {
                            e.get("Sequence")
                                .and_then(|s| s.get("id"))
                                .and_then(Value::as_str)
                                .map(str::to_string)
                        };
                        if mid.len() > 2
                            && seq(&mid[0]).as_deref() == Some("A")
                            && seq(&mid[mid.len() - 1]).as_deref() == Some("B")
                        {
                            let inner = &mid[1..mid.len() - 1];
                            let is_sep = |e: &Value| {
                                let s = sp_id(e);
                                s.is_some() && (s == sep || s == eos)
                            };
                            let mut add_sep = is_sep(&inner[0]) && last.is_none();
                            if inner.len() == 2 && is_sep(&inner[1]) {
                                add_sep = true;
                            }
                            put(&mut flags, "sep", add_sep);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut ids: Vec<(&'static str, u32)> = Vec::new();
    let mut set_id = |typ: &'static str, id: Option<u64>| {
        if let Some(id) = id {
            if (id as usize) < n_vocab && !ids.iter().any(|(t, _)| *t == typ) {
                ids.push((typ, id as u32));
            }
        }
    };
    for (typ, _) in SPECIAL_TYPES {
        if let Some(flag) = tc
            .and_then(|c| c.get(format!("add_{typ}_token")))
            .and_then(Value::as_bool)
        {
            if !flags.iter().any(|(k, _)| *k == typ) {
                flags.push((typ, flag));
            }
        }
        let content = match typ {
            "bos" => bos.clone(),
            _ => tc_str(typ),
        };
        if let Some(content) = content {
            let id = added
                .iter()
                .find(|a| a.get("content").and_then(Value::as_str) == Some(content.as_str()))
                .and_then(|a| a.get("id"))
                .and_then(Value::as_u64);
            set_id(typ, id);
        }
    }
    for (typ, _) in SPECIAL_TYPES {
        set_id(
            typ,
            config
                .and_then(|c| c.get(format!("{typ}_token_id")))
                .and_then(Value::as_u64),
        );
    }
    (ids, flags)
}

/// Merges as `"a b"` strings; pair-form merges with spaces inside a part encode the space
/// as U+0120 + 256 offset (`chr(ord(' ') + 256)`), as gguf-py does.
fn parse_merges(v: Option<&Value>) -> Result<Vec<String>, ArchError> {
    let Some(arr) = v.and_then(Value::as_array) else {
        return Ok(vec![]);
    };
    arr.iter()
        .map(|m| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(pair) if pair.len() == 2 => {
                let enc = |p: &Value| -> Result<String, ArchError> {
                    let s = p
                        .as_str()
                        .ok_or_else(|| ArchError::MalformedTokenizer("merge part".into()))?;
                    Ok(s.chars()
                        .map(|c| if c == ' ' { '\u{120}' } else { c })
                        .collect())
                };
                Ok(format!("{} {}", enc(&pair[0])?, enc(&pair[1])?))
            }
            _ => Err(ArchError::MalformedTokenizer(format!(
                "unknown merge entry {m}"
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn small_bpe_vocab() {
        let tok = json!({
            "model": {"type": "BPE", "vocab": {"<s>": 0, "a": 1, "b": 2, "ab": 3, "x y": 4},
                      "merges": [["a", "b"], ["x", " y"]]},
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
            "added_tokens": [{"id": 0, "content": "<s>", "special": true}, {"id": 4, "content": "x\u{2581}y", "special": false}],
            "post_processor": {"type": "ByteLevel"}
        });
        let tc =
            json!({"bos_token": "<s>", "eos_token": {"content": "<s>"}, "add_bos_token": true});
        let m =
            tokenizer_metadata_from_json(&tok, Some(&tc), None, None, Family::Qwen2, 6).unwrap();
        let toks = match m.get("tokenizer.ggml.tokens") {
            Some(MetaValue::ArrStr(v)) => v.clone(),
            x => panic!("{x:?}"),
        };
        assert_eq!(toks, vec!["<s>", "a", "b", "ab", "x y", "[PAD5]"]);
        assert_eq!(
            m.get("tokenizer.ggml.token_type"),
            Some(&MetaValue::ArrI32(vec![3, 1, 1, 1, 4, 5]))
        );
        assert_eq!(
            m.get("tokenizer.ggml.merges"),
            Some(&MetaValue::ArrStr(vec!["a b".into(), "x \u{120}y".into()]))
        );
        assert_eq!(
            m.get("tokenizer.ggml.bos_token_id"),
            Some(&MetaValue::U32(0))
        );
        // the ByteLevel post-processor adds nothing and wins over tokenizer_config
        assert_eq!(
            m.get("tokenizer.ggml.add_bos_token"),
            Some(&MetaValue::Bool(false))
        );
        assert_eq!(
            m.get("tokenizer.ggml.pre"),
            Some(&MetaValue::Str("gpt-2".into()))
        );
    }

    #[test]
    fn sentencepiece_style_is_unsupported() {
        let tok = json!({"model": {"type": "Unigram", "vocab": []}});
        let e = tokenizer_metadata_from_json(&tok, None, None, None, Family::Llama, 4).unwrap_err();
        assert!(matches!(e, ArchError::UnsupportedTokenizer(_)), "{e}");
        let tok = json!({"model": {"type": "BPE", "vocab": {}, "byte_fallback": true}});
        assert!(tokenizer_metadata_from_json(&tok, None, None, None, Family::Llama, 4).is_err());
        let tok =
            json!({"model": {"type": "BPE", "vocab": {}}, "pre_tokenizer": {"type": "Split"}});
        assert!(tokenizer_metadata_from_json(&tok, None, None, None, Family::Llama, 4).is_err());
    }
}
