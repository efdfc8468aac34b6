//! Tokenizers and chat templates.
//!
//! [`Tokenizer`] is one type over two sources:
//! - a Hugging Face model folder (`tokenizer.json` through the `tokenizers` crate, plus
//!   `tokenizer_config.json` and `generation_config.json` for BOS/EOS and the chat
//!   template), tokenizing as transformers does;
//! - the vocabulary embedded in a GGUF file, tokenizing exactly as llama.cpp does
//!   (see [`gguf_vocab`] for what is followed).
//!
//! [`render_chat`] renders Hugging Face chat templates with `minijinja`; [`StreamDecoder`]
//! turns generated ids into complete UTF-8 pieces.

mod chat;
mod gguf_vocab;
mod hf;
mod pretokenize;
mod sandbox;
mod stream;
mod unicode_flags;

use std::path::{Path, PathBuf};

pub use chat::{render_chat, ChatMessage};
pub use stream::StreamDecoder;

use gguf_vocab::GgufVocab;
use hf::HfTokenizer;

/// Errors from loading a tokenizer, encoding, or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A JSON file is malformed.
    #[error("parsing {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// The `tokenizers` crate failed.
    #[error("tokenizer.json: {0}")]
    Hf(String),
    /// The GGUF vocabulary metadata is missing or malformed.
    #[error("GGUF vocabulary: {0}")]
    Gguf(String),
    /// A vocabulary type or pre-tokenizer we do not implement.
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    /// The model carries no chat template.
    #[error(
        "this model has no chat template: pass a Jinja template file (e.g. --chat-template FILE), \
         or use a model whose tokenizer_config.json / chat_template.jinja / GGUF metadata \
         (tokenizer.chat_template) provides one"
    )]
    NoChatTemplate,
    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
}

/// Result with [`TokenizerError`].
pub type Result<T> = std::result::Result<T, TokenizerError>;

#[derive(Debug)]
enum Inner {
    Hf(Box<HfTokenizer>),
    Gguf(Box<GgufVocab>),
}

/// A tokenizer from a Hugging Face folder or a GGUF vocabulary.
#[derive(Debug)]
pub struct Tokenizer {
    inner: Inner,
}

impl Tokenizer {
    /// Load `tokenizer.json` (+ `tokenizer_config.json`, `generation_config.json`,
    /// `chat_template.jinja` when present) from a model folder.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Tokenizer> {
        Ok(Tokenizer {
            inner: Inner::Hf(Box::new(HfTokenizer::from_dir(dir.as_ref())?)),
        })
    }

    /// The vocabulary embedded in a GGUF file (`tokenizer.ggml.*`).
    pub fn from_gguf(file: &llmq_formats::gguf::GgufFile) -> Result<Tokenizer> {
        Ok(Tokenizer {
            inner: Inner::Gguf(Box::new(GgufVocab::from_gguf(file)?)),
        })
    }

    /// Token ids of `text`. `add_special` adds BOS/EOS as the vocabulary asks
    /// (`add_bos` / `add_eos`); `parse_special` matches special tokens written in the text
    /// (otherwise they are tokenized as plain text).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        match &self.inner {
            Inner::Hf(t) => t.encode(text, add_special, parse_special),
            Inner::Gguf(v) => Ok(v.encode(text, add_special, parse_special)),
        }
    }

    /// The raw bytes one token stands for (byte-level mapping undone, `▁` as space,
    /// `<0xXX>` as its byte, special tokens as their text). Empty for unknown ids.
    pub fn token_to_bytes(&self, id: u32) -> Vec<u8> {
        match &self.inner {
            Inner::Hf(t) => t.token_to_bytes(id),
            Inner::Gguf(v) => v.token_to_bytes(id),
        }
    }

    /// Whether `id` is a control (special) token that text output usually hides.
    pub fn is_special(&self, id: u32) -> bool {
        match &self.inner {
            Inner::Hf(t) => t.is_special(id),
            Inner::Gguf(v) => v.is_control(id),
        }
    }

    /// Whether decoding drops the one space the encoder puts in front of the text
    /// (SentencePiece `add_space_prefix`).
    pub(crate) fn strips_leading_space(&self) -> bool {
        match &self.inner {
            Inner::Hf(t) => t.strips_leading_space(),
            Inner::Gguf(v) => v.strips_leading_space(),
        }
    }

    /// Text of `ids`, special tokens included as their text; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_inner(ids, false)
    }

    /// Text of `ids` without control/special tokens.
    pub fn decode_skip_special(&self, ids: &[u32]) -> String {
        self.decode_inner(ids, true)
    }

    fn decode_inner(&self, ids: &[u32], skip_special: bool) -> String {
        let mut d = StreamDecoder::new(self, skip_special);
        let mut s = String::new();
        for &id in ids {
            s.push_str(&d.push(id));
        }
        s.push_str(&d.finish());
        s
    }

    /// A decoder for ids arriving one at a time.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder<'_> {
        StreamDecoder::new(self, skip_special)
    }

    /// The BOS id, if the vocabulary has one.
    pub fn bos_id(&self) -> Option<u32> {
        match &self.inner {
            Inner::Hf(t) => t.bos_id(),
            Inner::Gguf(v) => v.bos,
        }
    }

    /// Every id that ends generation (EOS, EOT, `generation_config.json`'s list, ...),
    /// sorted, without duplicates.
    pub fn eos_ids(&self) -> Vec<u32> {
        match &self.inner {
            Inner::Hf(t) => t.eos_ids(),
            Inner::Gguf(v) => v.eog.clone(),
        }
    }

    /// Number of tokens (added tokens included).
    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Hf(t) => t.vocab_size(),
            Inner::Gguf(v) => v.n_tokens(),
        }
    }

    /// Whether `encode(.., add_special = true, ..)` puts BOS first.
    pub fn add_bos(&self) -> bool {
        match &self.inner {
            Inner::Hf(t) => t.add_bos(),
            Inner::Gguf(v) => v.add_bos && v.bos.is_some(),
        }
    }

    /// Id of the token with exactly this text.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        match &self.inner {
            Inner::Hf(t) => t.token_id(token),
            Inner::Gguf(v) => v.token_id(token),
        }
    }

    /// The model's chat template, if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        match &self.inner {
            Inner::Hf(t) => t.chat_template(),
            Inner::Gguf(v) => v.chat_template.as_deref(),
        }
    }

    fn special_text(&self, id: Option<u32>) -> String {
        match (&self.inner, id) {
            (Inner::Hf(t), Some(id)) => t.token_text(id).unwrap_or_default(),
            (Inner::Gguf(v), Some(id)) => v.token_text(id).unwrap_or_default().to_string(),
            _ => String::new(),
        }
    }

    /// Text of the BOS token ("" when none).
    pub fn bos_token(&self) -> String {
        match &self.inner {
            Inner::Hf(t) => t.bos_token().unwrap_or_default().to_string(),
            Inner::Gguf(v) => self.special_text(v.bos),
        }
    }

    /// Text of the EOS token ("" when none).
    pub fn eos_token(&self) -> String {
        match &self.inner {
            Inner::Hf(t) => t.eos_token().unwrap_or_default().to_string(),
            Inner::Gguf(v) => self.special_text(v.eos),
        }
    }

    /// Render the model's chat template for `messages`; [`TokenizerError::NoChatTemplate`]
    /// when it has none.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self.chat_template().ok_or(TokenizerError::NoChatTemplate)?;
        render_chat(
            template,
            messages,
            add_generation_prompt,
            &self.bos_token(),
            &self.eos_token(),
        )
    }
}
