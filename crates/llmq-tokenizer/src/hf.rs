//! A Hugging Face tokenizer folder: `tokenizer.json` through the `tokenizers` crate (the
//! reference implementation), with `tokenizer_config.json` (`bos_token`, `eos_token`,
//! `add_bos_token`, `add_eos_token`, `chat_template` as a string or a list of
//! `{name, template}`), `chat_template.jinja` (newer transformers save it apart) and
//! `generation_config.json` (`eos_token_id`, an int or a list), as transformers reads them.

use std::collections::HashSet;
use std::path::Path;

use serde_json::Value;

use crate::pretokenize::byte_level_tables;
use crate::{Result, TokenizerError};

#[derive(Debug)]
pub(crate) struct HfTokenizer {
    /// Parses special tokens written in the text.
    parse: tokenizers::Tokenizer,
    /// Treats special tokens as text (`encode_special_tokens`).
    literal: tokenizers::Tokenizer,
    byte_level: bool,
    strip_leading_space: bool,
    special_ids: HashSet<u32>,
    added_ids: HashSet<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    add_bos: bool,
    add_eos: bool,
    generation_eos: Vec<u32>,
    chat_template: Option<String>,
    char_to_byte: std::collections::HashMap<char, u8>,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| TokenizerError::Json {
            path: path.to_path_buf(),
            source,
        })
}

/// `"<s>"` or `{"content": "<s>", ...}` (transformers' AddedToken form).
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Whether any component of this JSON (possibly a `Sequence`) has the given `type`.
fn has_type(v: Option<&Value>, ty: &str) -> bool {
    let Some(v) = v else { return false };
    if v.get("type").and_then(Value::as_str) == Some(ty) {
        return true;
    }
    ["decoders", "pretokenizers", "normalizers"]
        .iter()
        .filter_map(|k| v.get(*k).and_then(Value::as_array))
        .flatten()
        .any(|x| has_type(Some(x), ty))
}

impl HfTokenizer {
    pub(crate) fn from_dir(dir: &Path) -> Result<HfTokenizer> {
        let tok_path = dir.join("tokenizer.json");
        let tok_json = read_json(&tok_path)?.ok_or_else(|| TokenizerError::Io {
            path: tok_path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no tokenizer.json in the model folder",
            ),
        })?;
        // the `tokenizers` crate panics on some malformed files (a merge not starting
        // with the continuing-subword prefix slices inside a character): a malformed
        // tokenizer.json is an error, never a crash
        let parse = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_file(&tok_path))
            .map_err(|_| {
                TokenizerError::Hf(format!(
                    "{} is malformed (the tokenizer library could not read it)",
                    tok_path.display()
                ))
            })?
            .map_err(|e| TokenizerError::Hf(e.to_string()))?;
        let mut literal = parse.clone();
        literal.set_encode_special_tokens(true);

        let decoder = tok_json.get("decoder");
        let byte_level =
            has_type(decoder, "ByteLevel") || has_type(tok_json.get("pre_tokenizer"), "ByteLevel");
        // SentencePiece-style: a Metaspace that prepends "▁", or a Strip decoder removing it
        let strip_leading_space = !byte_level
            && (has_type(decoder, "Strip")
                || tok_json.get("pre_tokenizer").is_some_and(|p| {
                    has_type(Some(p), "Metaspace")
                        && p.get("prepend_scheme").and_then(Value::as_str) != Some("never")
                }));

        let mut special_ids = HashSet::new();
        let mut added_ids = HashSet::new();
        for (id, t) in parse.get_added_tokens_decoder() {
            added_ids.insert(id);
            if t.special {
                special_ids.insert(id);
            }
        }

        let cfg = read_json(&dir.join("tokenizer_config.json"))?;
        let cfg = cfg.as_ref();
        let bos_token = token_string(cfg.and_then(|c| c.get("bos_token")));
        let eos_token = token_string(cfg.and_then(|c| c.get("eos_token")));
        let add_bos = cfg
            .and_then(|c| c.get("add_bos_token"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let add_eos = cfg
            .and_then(|c| c.get("add_eos_token"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut chat_template = match cfg.and_then(|c| c.get("chat_template")) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => {
                let named = |n: &str| {
                    list.iter()
                        .find(|e| e.get("name").and_then(Value::as_str) == Some(n))
                        .and_then(|e| e.get("template"))
                        .and_then(Value::as_str)
                };
                named("default")
                    .or_else(|| {
                        list.first()
                            .and_then(|e| e.get("template"))
                            .and_then(Value::as_str)
                    })
                    .map(str::to_string)
            }
            _ => None,
        };
        let jinja = dir.join("chat_template.jinja");
        if chat_template.is_none() && jinja.is_file() {
            chat_template =
                Some(
                    std::fs::read_to_string(&jinja).map_err(|source| TokenizerError::Io {
                        path: jinja.clone(),
                        source,
                    })?,
                );
        }
        let generation_eos = match read_json(&dir.join("generation_config.json"))?
            .as_ref()
            .and_then(|g| g.get("eos_token_id"))
        {
            Some(Value::Number(n)) => n.as_u64().map(|v| v as u32).into_iter().collect(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_u64)
                .map(|v| v as u32)
                .collect(),
            _ => Vec::new(),
        };
        let (_, char_to_byte) = byte_level_tables();
        Ok(HfTokenizer {
            parse,
            literal,
            byte_level,
            strip_leading_space,
            special_ids,
            added_ids,
            bos_token,
            eos_token,
            add_bos,
            add_eos,
            generation_eos,
            chat_template,
            char_to_byte,
        })
    }

    pub(crate) fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>> {
        let tok = if parse_special {
            &self.parse
        } else {
            &self.literal
        };
        let enc = tok
            .encode(text, add_special)
            .map_err(|e| TokenizerError::Hf(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special {
            // tokenizer_config's add_bos/add_eos when the post-processor did not add them
            if let Some(bos) = self.bos_id().filter(|_| self.add_bos) {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
            if let Some(eos) = self.eos_id().filter(|_| self.add_eos) {
                if ids.last() != Some(&eos) {
                    ids.push(eos);
                }
            }
        }
        Ok(ids)
    }

    pub(crate) fn token_text(&self, id: u32) -> Option<String> {
        self.parse.id_to_token(id)
    }

    pub(crate) fn token_to_bytes(&self, id: u32) -> Vec<u8> {
        let Some(text) = self.parse.id_to_token(id) else {
            return Vec::new();
        };
        if self.added_ids.contains(&id) {
            return text.into_bytes();
        }
        if self.byte_level {
            let mut v = Vec::with_capacity(text.len());
            for c in text.chars() {
                match self.char_to_byte.get(&c) {
                    Some(&b) => v.push(b),
                    None => v.extend_from_slice(c.to_string().as_bytes()),
                }
            }
            return v;
        }
        if let Some(b) = text
            .strip_prefix("<0x")
            .and_then(|h| h.strip_suffix('>'))
            .filter(|h| h.len() == 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            return vec![b];
        }
        text.replace('\u{2581}', " ").into_bytes()
    }

    pub(crate) fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    pub(crate) fn strips_leading_space(&self) -> bool {
        self.strip_leading_space
    }

    pub(crate) fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub(crate) fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub(crate) fn bos_id(&self) -> Option<u32> {
        self.bos_token
            .as_deref()
            .and_then(|t| self.parse.token_to_id(t))
    }

    fn eos_id(&self) -> Option<u32> {
        self.eos_token
            .as_deref()
            .and_then(|t| self.parse.token_to_id(t))
    }

    pub(crate) fn eos_ids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .eos_id()
            .into_iter()
            .chain(self.generation_eos.iter().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    pub(crate) fn vocab_size(&self) -> usize {
        self.parse.get_vocab_size(true)
    }

    pub(crate) fn add_bos(&self) -> bool {
        self.add_bos && self.bos_id().is_some()
    }

    pub(crate) fn token_id(&self, token: &str) -> Option<u32> {
        self.parse.token_to_id(token)
    }

    pub(crate) fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
}
