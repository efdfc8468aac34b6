//! From a user's text or chat messages to prompt tokens, the same way for every front
//! end (`generate`, `generate --chat`, the server's completions and chat completions):
//! a chat is rendered with a Hugging Face chat template (the model's own or one given),
//! and the rendered text, which already holds its special tokens as text, is tokenized
//! with those tokens parsed and without a second BOS.

use crate::RuntimeError;
use llmq_tokenizer::{ChatMessage, Tokenizer};

/// Render `messages` with `template` (a Jinja chat template), or with the model's own
/// template when `template` is `None`, ending with the generation prompt.
pub fn render_chat(
    tok: &Tokenizer,
    template: Option<&str>,
    messages: &[ChatMessage],
) -> Result<String, RuntimeError> {
    let text = match template {
        Some(t) => {
            llmq_tokenizer::render_chat(t, messages, true, &tok.bos_token(), &tok.eos_token())
        }
        None => tok.apply_chat_template(messages, true),
    }?;
    Ok(text)
}

/// The prompt tokens of `text`. Plain text gets the vocabulary's BOS/EOS and has any
/// special-token text tokenized as plain text; a rendered chat (`chat`) has its special
/// tokens parsed and gets BOS only when it does not already begin with BOS's text.
pub fn prompt_tokens(tok: &Tokenizer, text: &str, chat: bool) -> Result<Vec<u32>, RuntimeError> {
    let add_special = !chat || !starts_with_bos(tok, text);
    Ok(tok.encode(text, add_special, chat)?)
}

/// Whether `text` already begins with the BOS token's text.
fn starts_with_bos(tok: &Tokenizer, text: &str) -> bool {
    tok.bos_id()
        .map(|b| {
            let s = String::from_utf8_lossy(&tok.token_to_bytes(b)).to_string();
            !s.is_empty() && text.starts_with(&s)
        })
        .unwrap_or(false)
}
