//! Incremental detokenization for streaming generation: token bytes are buffered until
//! they form complete UTF-8, so a character split over several byte tokens (byte-level
//! BPE, SentencePiece `<0xXX>` fallback) is emitted once, whole. Like llama.cpp's
//! `detokenize`, the leading space a SentencePiece `add_space_prefix` vocabulary puts in
//! front of the text is dropped from the first piece.

use crate::Tokenizer;

/// Turns ids into text pieces as they arrive.
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    pending: Vec<u8>,
    first: bool,
}

impl<'a> StreamDecoder<'a> {
    /// A decoder; with `skip_special`, control/special tokens produce no text.
    pub fn new(tok: &'a Tokenizer, skip_special: bool) -> StreamDecoder<'a> {
        StreamDecoder {
            tok,
            skip_special,
            pending: Vec::new(),
            first: true,
        }
    }

    /// Add one id; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        if self.skip_special && self.tok.is_special(id) {
            return String::new();
        }
        let mut bytes = self.tok.token_to_bytes(id);
        if self.first {
            self.first = false;
            if self.tok.strips_leading_space()
                && !self.tok.is_special(id)
                && bytes.first() == Some(&b' ')
            {
                bytes.remove(0);
            }
        }
        self.pending.extend_from_slice(&bytes);
        self.take_complete()
    }

    /// Emit everything valid; keep an unfinished trailing sequence; invalid bytes become U+FFFD.
    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..good]).expect("valid prefix"));
                    match e.error_len() {
                        None => {
                            // incomplete sequence at the end: wait for more bytes
                            self.pending.drain(..good);
                            return out;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }

    /// Flush what is left (an unfinished sequence becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
