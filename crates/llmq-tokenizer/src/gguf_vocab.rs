//! The vocabulary embedded in a GGUF file (`tokenizer.ggml.*`), tokenizing exactly as
//! llama.cpp does (`src/llama-vocab.cpp` of the llama.cpp bundled with
//! llama-cpp-python 0.3.36; this is our own implementation of its algorithms):
//!
//! - token attributes from `tokenizer.ggml.token_type`, then llama.cpp's load-time fix-ups
//!   (EOT/EOM/FIM/EOG tokens found by their text become control tokens, control tokens
//!   named `unused` become unused, the Phi-3 strip rules);
//! - special-token partitioning (`tokenizer_st_partition`): control/unknown tokens (only
//!   with `parse_special`) and user-defined tokens (always) are cut out of the text as
//!   whole tokens, longest text first;
//! - model `gpt2`: the pre-tokenizer of `tokenizer.ggml.pre` ([`crate::pretokenize`]),
//!   GPT-2 byte-to-unicode encoding, then BPE merges by rank (lowest rank first, leftmost
//!   on ties); pieces that are not tokens fall back to single bytes;
//! - model `llama` (SentencePiece): spaces become `▁` (with a leading one when
//!   `add_space_prefix` and the fragment follows a special token or starts the text),
//!   then bigrams merge by highest score (leftmost on ties) over the whole fragment, and
//!   characters that are not tokens become `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use llmq_formats::gguf::{GgufFile, GgufValue};

use crate::pretokenize::{byte_level_tables, PreTokenizer};
use crate::{Result, TokenizerError};

// llama_token_attr bits
pub(crate) const ATTR_UNKNOWN: u32 = 1 << 0;
pub(crate) const ATTR_UNUSED: u32 = 1 << 1;
pub(crate) const ATTR_NORMAL: u32 = 1 << 2;
pub(crate) const ATTR_CONTROL: u32 = 1 << 3;
pub(crate) const ATTR_USER_DEFINED: u32 = 1 << 4;
pub(crate) const ATTR_BYTE: u32 = 1 << 5;
const ATTR_LSTRIP: u32 = 1 << 7;
const ATTR_RSTRIP: u32 = 1 << 8;

const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const FIM_TEXTS: &[&[&str]] = &[
    &[
        "<|fim_prefix|>",
        "<fim-prefix>",
        "<fim_prefix>",
        "<｜fim▁begin｜>",
        "<PRE>",
        "▁<PRE>",
        "<|code_prefix|>",
        "<|prefix|>",
    ],
    &[
        "<|fim_suffix|>",
        "<fim-suffix>",
        "<fim_suffix>",
        "<｜fim▁hole｜>",
        "<SUF>",
        "▁<SUF>",
        "<|code_suffix|>",
        "<|suffix|>",
    ],
    &[
        "<|fim_middle|>",
        "<fim-middle>",
        "<fim_middle>",
        "<｜fim▁end｜>",
        "<MID>",
        "▁<MID>",
        "<|code_middle|>",
        "<|middle|>",
    ],
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    &[
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
    ],
    &["<|file_sep|>"],
];
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

#[derive(Debug)]
enum Model {
    /// SentencePiece-style score merging.
    Spm,
    /// Byte-level BPE with merge ranks keyed by `"left right"`.
    Bpe {
        pre: PreTokenizer,
        ranks: HashMap<String, u32>,
        ignore_merges: bool,
    },
}

/// A llama.cpp vocabulary read from GGUF metadata.
#[derive(Debug)]
pub(crate) struct GgufVocab {
    model: Model,
    tokens: Vec<String>,
    scores: Vec<f32>,
    attrs: Vec<u32>,
    token_to_id: HashMap<String, u32>,
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    pub(crate) eog: Vec<u32>,
    pub(crate) add_bos: bool,
    pub(crate) add_eos: bool,
    add_space_prefix: bool,
    special_cache: Vec<u32>,
    pub(crate) chat_template: Option<String>,
    byte_to_char: [char; 256],
    char_to_byte: HashMap<char, u8>,
}

fn get_id(f: &GgufFile, key: &str, n: usize) -> Option<Option<u32>> {
    let v = f.get(key)?.to_u64()?;
    if (v as usize) < n {
        Some(Some(v as u32))
    } else {
        None // out of range: keep the default, as llama.cpp does
    }
}

fn get_bool(f: &GgufFile, key: &str) -> Option<bool> {
    f.get(key).and_then(GgufValue::as_bool)
}

/// An item of the partitioned input: raw text (byte range) or a special token.
#[derive(Debug, Clone, Copy)]
enum Frag {
    Text(usize, usize),
    Token(u32),
}

impl GgufVocab {
    pub(crate) fn from_gguf(f: &GgufFile) -> Result<GgufVocab> {
        let bad = |m: String| TokenizerError::Gguf(m);
        let model_name = f
            .get("tokenizer.ggml.model")
            .and_then(GgufValue::as_str)
            .ok_or_else(|| {
                bad("no tokenizer.ggml.model: this GGUF file has no vocabulary".into())
            })?;
        let pre_name = f
            .get("tokenizer.ggml.pre")
            .and_then(GgufValue::as_str)
            .unwrap_or("");
        let tokens: Vec<String> = f
            .get("tokenizer.ggml.tokens")
            .and_then(GgufValue::as_string_array)
            .ok_or_else(|| bad("tokenizer.ggml.tokens missing or not a string array".into()))?
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if t.is_empty() {
                    format!("[EMPTY_{i}]")
                } else {
                    t.clone()
                }
            })
            .collect();
        let n = tokens.len();
        let scores: Vec<f32> = match f.get("tokenizer.ggml.scores") {
            None => vec![0.0; n],
            Some(v) => {
                let s: Vec<f32> = if let Some(a) = v.as_f32_array() {
                    a.to_vec()
                } else if let Some(a) = v.as_i32_array() {
                    a.iter().map(|&x| x as f32).collect()
                } else {
                    return Err(bad("tokenizer.ggml.scores must be f32 or i32".into()));
                };
                if s.len() < n {
                    return Err(bad("fewer scores than tokens".into()));
                }
                s
            }
        };
        let mut attrs: Vec<u32> = match f.get("tokenizer.ggml.token_type") {
            None => vec![ATTR_NORMAL; n],
            Some(v) => {
                let t = v
                    .as_i32_array()
                    .ok_or_else(|| bad("tokenizer.ggml.token_type must be i32".into()))?;
                if t.len() < n {
                    return Err(bad("fewer token types than tokens".into()));
                }
                t[..n]
                    .iter()
                    .map(|&ty| match ty {
                        1 => ATTR_NORMAL,
                        2 => ATTR_UNKNOWN,
                        3 => ATTR_CONTROL,
                        4 => ATTR_USER_DEFINED,
                        5 => ATTR_UNUSED,
                        6 => ATTR_BYTE,
                        _ => 0,
                    })
                    .collect()
            }
        };
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            token_to_id.insert(t.clone(), i as u32); // a later duplicate wins, as in llama.cpp
        }

        let (model, mut bos, mut eos, mut add_bos, mut add_eos, mut add_space_prefix);
        match model_name {
            "llama" => {
                model = Model::Spm;
                (bos, eos) = (Some(1), Some(2));
                (add_bos, add_eos, add_space_prefix) = (true, false, true);
            }
            "gpt2" => {
                let merges = f
                    .get("tokenizer.ggml.merges")
                    .and_then(GgufValue::as_string_array)
                    .ok_or_else(|| bad("tokenizer.ggml.merges missing for a gpt2 vocabulary".into()))?;
                let mut ranks = HashMap::with_capacity(merges.len());
                for (i, m) in merges.iter().enumerate() {
                    // llama.cpp splits at the first space after the first byte
                    // (so the pair is the whole line, looked up as "left right")
                    if m.bytes().skip(1).any(|b| b == b' ') {
                        ranks.entry(m.clone()).or_insert(i as u32);
                    }
                }
                let ignore_merges = matches!(
                    pre_name,
                    "llama3"
                        | "llama-v3"
                        | "llama-bpe"
                        | "falcon3"
                        | "falcon-h1"
                        | "pixtral"
                        | "midm-2.0"
                        | "lfm2"
                        | "jina-v5-nano"
                );
                model = Model::Bpe { pre: PreTokenizer::new(pre_name)?, ranks, ignore_merges };
                (bos, eos) = (Some(11), Some(11));
                (add_bos, add_eos, add_space_prefix) = (false, false, false);
            }
            other => {
                return Err(TokenizerError::Unsupported(format!(
                    "GGUF tokenizer model '{other}' is not implemented (only 'gpt2' BPE and 'llama' SentencePiece)"
                )))
            }
        }
        if let Some(v) = get_bool(f, "tokenizer.ggml.add_space_prefix") {
            add_space_prefix = v;
        }
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        bos = in_range(bos);
        eos = in_range(eos);
        let mut eot = None;
        let mut eom = None;
        if let Some(v) = get_id(f, "tokenizer.ggml.bos_token_id", n) {
            bos = v;
        }
        if let Some(v) = get_id(f, "tokenizer.ggml.eos_token_id", n) {
            eos = v;
        }
        if let Some(v) = get_id(f, "tokenizer.ggml.eot_token_id", n) {
            eot = v;
        }
        if let Some(v) = get_id(f, "tokenizer.ggml.eom_token_id", n) {
            eom = v;
        }
        let mut fim: Vec<Option<u32>> = [
            "tokenizer.ggml.fim_pre_token_id",
            "tokenizer.ggml.fim_suf_token_id",
            "tokenizer.ggml.fim_mid_token_id",
            "tokenizer.ggml.fim_pad_token_id",
            "tokenizer.ggml.fim_rep_token_id",
            "tokenizer.ggml.fim_sep_token_id",
        ]
        .iter()
        .map(|k| get_id(f, k, n).flatten())
        .collect();
        if let Some(v) = get_bool(f, "tokenizer.ggml.add_bos_token") {
            add_bos = v;
        }
        if let Some(v) = get_bool(f, "tokenizer.ggml.add_eos_token") {
            add_eos = v;
        }

        // find EOT / EOM / FIM tokens by their text (llama.cpp walks its hash map; we
        // walk ids in order) and make them control tokens
        for (i, t) in tokens.iter().enumerate() {
            let id = i as u32;
            if token_to_id.get(t) != Some(&id) {
                continue;
            }
            let mut hit = false;
            if eot.is_none() && EOT_TEXTS.contains(&t.as_str()) {
                eot = Some(id);
                hit = true;
            }
            if eom.is_none() && t == "<|eom_id|>" {
                eom = Some(id);
                hit = true;
            }
            for (slot, texts) in fim.iter_mut().zip(FIM_TEXTS) {
                if slot.is_none() && texts.contains(&t.as_str()) {
                    *slot = Some(id);
                    hit = true;
                }
            }
            if hit {
                attrs[i] |= ATTR_CONTROL;
            }
        }
        // control tokens named "unused" are unused
        for (i, t) in tokens.iter().enumerate() {
            if attrs[i] & ATTR_CONTROL != 0 && t.contains("unused") {
                attrs[i] |= ATTR_UNUSED;
            }
        }
        // end-of-generation set
        let mut eog: Vec<u32> = fim[3..].iter().flatten().copied().collect();
        for (i, t) in tokens.iter().enumerate() {
            if token_to_id.get(t) == Some(&(i as u32)) && EOG_TEXTS.contains(&t.as_str()) {
                eog.push(i as u32);
                attrs[i] |= ATTR_CONTROL;
            }
        }
        for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(&id) = token_to_id.get(t) {
                attrs[id as usize] = ATTR_USER_DEFINED;
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();

        // special tokens, longest text first
        let mut special_cache: Vec<u32> = (0..n as u32)
            .filter(|&i| attrs[i as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0)
            .collect();
        special_cache.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));

        // per-model attributes (llama.cpp sets these by general.name)
        let general_name = f
            .get("general.name")
            .and_then(GgufValue::as_str)
            .unwrap_or("")
            .to_ascii_lowercase();
        if general_name.contains("phi-3") || general_name.contains("phi3") {
            for &id in &special_cache {
                attrs[id as usize] |= ATTR_RSTRIP;
            }
            if let Some(&id) = token_to_id.get("</s>") {
                attrs[id as usize] |= ATTR_RSTRIP;
            }
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                if let Some(&id) = token_to_id.get(t) {
                    attrs[id as usize] &= !ATTR_RSTRIP;
                }
            }
        }

        let chat_template = f
            .get("tokenizer.chat_template")
            .and_then(GgufValue::as_str)
            .map(str::to_string);
        let (byte_to_char, char_to_byte) = byte_level_tables();
        Ok(GgufVocab {
            model,
            tokens,
            scores,
            attrs,
            token_to_id,
            bos,
            eos,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
            special_cache,
            chat_template,
            byte_to_char,
            char_to_byte,
        })
    }

    pub(crate) fn n_tokens(&self) -> usize {
        self.tokens.len()
    }

    pub(crate) fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    pub(crate) fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub(crate) fn is_control(&self, id: u32) -> bool {
        self.attrs
            .get(id as usize)
            .is_some_and(|a| a & (ATTR_CONTROL | ATTR_UNKNOWN) != 0)
    }

    /// `tokenizer_st_partition`: cut special tokens out of the text.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Frag> {
        let mut frags = vec![Frag::Text(0, text.len())];
        if text.is_empty() {
            return Vec::new();
        }
        let bytes = text.as_bytes();
        for &id in &self.special_cache {
            let attr = self.attrs[id as usize];
            if !parse_special && attr & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
                continue;
            }
            let tok = self.tokens[id as usize].as_str();
            let mut out = Vec::with_capacity(frags.len());
            for frag in frags {
                let Frag::Text(mut start, end) = frag else {
                    out.push(frag);
                    continue;
                };
                loop {
                    let Some(rel) = text[start..end].find(tok) else {
                        out.push(Frag::Text(start, end));
                        break;
                    };
                    let m = start + rel;
                    if m > start {
                        let mut left_end = m;
                        if attr & ATTR_LSTRIP != 0 {
                            while left_end > start && bytes[left_end - 1].is_ascii_whitespace() {
                                left_end -= 1;
                            }
                        }
                        if left_end > start {
                            out.push(Frag::Text(start, left_end));
                        }
                    }
                    out.push(Frag::Token(id));
                    let mut right = m + tok.len();
                    if right >= end {
                        break;
                    }
                    if attr & ATTR_RSTRIP != 0 {
                        while right < end && bytes[right].is_ascii_whitespace() {
                            right += 1;
                        }
                    }
                    if right >= end {
                        break;
                    }
                    start = right;
                }
            }
            frags = out;
        }
        frags.retain(|f| !matches!(f, Frag::Text(a, b) if a >= b));
        frags
    }

    pub(crate) fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let frags = self.partition(text, parse_special);
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let mut prev_special = true;
        for frag in frags {
            match frag {
                Frag::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Frag::Text(a, b) => {
                    let piece = &text[a..b];
                    match &self.model {
                        Model::Spm => {
                            let mut s = String::with_capacity(piece.len() + 3);
                            if self.add_space_prefix && prev_special {
                                s.push(' ');
                            }
                            s.push_str(piece);
                            let s = s.replace(' ', "\u{2581}");
                            self.spm_tokenize(&s, &mut out);
                        }
                        Model::Bpe {
                            pre,
                            ranks,
                            ignore_merges,
                        } => {
                            self.bpe_tokenize(piece, pre, ranks, *ignore_merges, &mut out);
                        }
                    }
                    prev_special = false;
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    fn spm_tokenize(&self, text: &str, out: &mut Vec<u32>) {
        let mut sym = Sym::chain(text);
        let mut heap: BinaryHeap<SpmBigram> = BinaryHeap::new();
        let try_add = |sym: &[Sym], heap: &mut BinaryHeap<SpmBigram>, l: isize, r: isize| {
            if l < 0 || r < 0 {
                return;
            }
            let (l, r) = (l as usize, r as usize);
            let size = sym[l].len + sym[r].len;
            let s = &text[sym[l].start..sym[l].start + size];
            if let Some(&id) = self.token_to_id.get(s) {
                heap.push(SpmBigram {
                    score: self.scores[id as usize],
                    left: l,
                    right: r,
                    size,
                });
            }
        };
        for i in 1..sym.len() {
            try_add(&sym, &mut heap, i as isize - 1, i as isize);
        }
        while let Some(b) = heap.pop() {
            let Some((p, nx)) = Sym::merge(&mut sym, b.left, b.right, b.size) else {
                continue;
            };
            try_add(&sym, &mut heap, p, b.left as isize);
            try_add(&sym, &mut heap, b.left as isize, nx);
        }
        let mut i: isize = if sym.is_empty() { -1 } else { 0 };
        while i >= 0 {
            let s = &sym[i as usize];
            let piece = &text[s.start..s.start + s.len];
            if let Some(&id) = self.token_to_id.get(piece) {
                out.push(id);
            } else {
                for &b in piece.as_bytes() {
                    if let Some(id) = self.spm_byte_token(b) {
                        out.push(id);
                    }
                }
            }
            i = s.next;
        }
    }

    fn spm_byte_token(&self, b: u8) -> Option<u32> {
        self.token_to_id
            .get(&format!("<0x{b:02X}>"))
            .or_else(|| {
                let c = [b];
                std::str::from_utf8(&c)
                    .ok()
                    .and_then(|s| self.token_to_id.get(s))
            })
            .copied()
    }

    fn bpe_tokenize(
        &self,
        text: &str,
        pre: &PreTokenizer,
        ranks: &HashMap<String, u32>,
        ignore_merges: bool,
        out: &mut Vec<u32>,
    ) {
        let words = match pre.split(text) {
            Ok(w) => w,
            Err(_) => vec![text],
        };
        let mut key = String::new();
        for word in words {
            let enc: String = word
                .bytes()
                .map(|b| self.byte_to_char[b as usize])
                .collect();
            if ignore_merges {
                if let Some(&id) = self.token_to_id.get(&enc) {
                    out.push(id);
                    continue;
                }
            }
            let mut sym = Sym::chain(&enc);
            let mut heap: BinaryHeap<std::cmp::Reverse<(u32, usize, usize, usize)>> =
                BinaryHeap::new();
            let mut try_add = |sym: &[Sym], heap: &mut BinaryHeap<_>, l: isize, r: isize| {
                if l < 0 || r < 0 {
                    return;
                }
                let (l, r) = (l as usize, r as usize);
                key.clear();
                key.push_str(&enc[sym[l].start..sym[l].start + sym[l].len]);
                key.push(' ');
                key.push_str(&enc[sym[r].start..sym[r].start + sym[r].len]);
                if let Some(&rank) = ranks.get(key.as_str()) {
                    heap.push(std::cmp::Reverse((rank, l, r, sym[l].len + sym[r].len)));
                }
            };
            for i in 1..sym.len() {
                try_add(&sym, &mut heap, i as isize - 1, i as isize);
            }
            while let Some(std::cmp::Reverse((_, l, r, size))) = heap.pop() {
                let Some((p, nx)) = Sym::merge(&mut sym, l, r, size) else {
                    continue;
                };
                try_add(&sym, &mut heap, p, l as isize);
                try_add(&sym, &mut heap, l as isize, nx);
            }
            for s in sym.iter().filter(|s| s.len > 0) {
                let piece = &enc[s.start..s.start + s.len];
                if let Some(&id) = self.token_to_id.get(piece) {
                    out.push(id);
                } else {
                    // llama.cpp looks up each single byte of the encoded piece
                    for &b in piece.as_bytes() {
                        let one = [b];
                        if let Some(id) = std::str::from_utf8(&one)
                            .ok()
                            .and_then(|s| self.token_to_id.get(s))
                        {
                            out.push(*id);
                        }
                    }
                }
            }
        }
    }

    /// The bytes of one token as llama.cpp's `token_to_piece(special = true)` gives them.
    pub(crate) fn token_to_bytes(&self, id: u32) -> Vec<u8> {
        let Some(text) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        let attr = self.attrs[id as usize];
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED) != 0 {
            return text.as_bytes().to_vec();
        }
        if attr & ATTR_NORMAL != 0 {
            return match self.model {
                Model::Spm => text.replace('\u{2581}', " ").into_bytes(),
                Model::Bpe { .. } => {
                    let mut v = Vec::with_capacity(text.len());
                    for c in text.chars() {
                        match self.char_to_byte.get(&c) {
                            Some(&b) => v.push(b),
                            None => v.extend_from_slice(c.to_string().as_bytes()),
                        }
                    }
                    v
                }
            };
        }
        if attr & ATTR_BYTE != 0 {
            if let Some(b) = text
                .strip_prefix("<0x")
                .and_then(|h| h.strip_suffix('>'))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                return vec![b];
            }
        }
        Vec::new()
    }

    /// Whether decoding should drop one leading space (SPM with `add_space_prefix`).
    pub(crate) fn strips_leading_space(&self) -> bool {
        self.add_space_prefix
    }
}

#[derive(Debug, Clone, Copy)]
/// A symbol of the merge loops (SPM and BPE): a byte range of the text, linked to its
/// neighbours (-1: none); a merged-away symbol has `len` 0.
struct Sym {
    start: usize,
    len: usize,
    prev: isize,
    next: isize,
}

impl Sym {
    /// One symbol per character of `text`, linked in order.
    fn chain(text: &str) -> Vec<Sym> {
        let mut sym: Vec<Sym> = Vec::new();
        for (i, c) in text.char_indices() {
            sym.push(Sym {
                start: i,
                len: c.len_utf8(),
                prev: sym.len() as isize - 1,
                next: -1,
            });
            let k = sym.len();
            if k >= 2 {
                sym[k - 2].next = (k - 1) as isize;
            }
        }
        sym
    }

    /// Merge `r` into its left neighbour `l` when the pair, `size` bytes long when it
    /// was queued, is still current; returns the merged symbol's (prev, next), the two
    /// new pairs to try. `None` for a stale pair.
    fn merge(sym: &mut [Sym], l: usize, r: usize, size: usize) -> Option<(isize, isize)> {
        if sym[l].len == 0 || sym[r].len == 0 || sym[l].len + sym[r].len != size {
            return None;
        }
        sym[l].len += sym[r].len;
        sym[r].len = 0;
        sym[l].next = sym[r].next;
        if sym[r].next >= 0 {
            let nx = sym[r].next as usize;
            sym[nx].prev = l as isize;
        }
        Some((sym[l].prev, sym[l].next))
    }
}

struct SpmBigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for SpmBigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for SpmBigram {}
impl PartialOrd for SpmBigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for SpmBigram {
    /// Highest score first, then leftmost.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
            .then_with(|| o.right.cmp(&self.right))
            .then_with(|| o.size.cmp(&self.size))
    }
}
