//! Pre-tokenization of byte-level BPE vocabularies the way llama.cpp does it
//! (`unicode_regex_split` in llama.cpp's `src/unicode.cpp`): the text is cut into words by
//! a list of regexes applied one after another, each one splitting the pieces left by the
//! previous one. The three regexes llama.cpp runs with hand-written matchers (GPT-2,
//! Llama 3, Qwen2) are hand-written here too, following the same codepoint-category rules,
//! so that their quirks are reproduced. Any other regex runs through `fancy-regex` on the
//! same "collapsed" text llama.cpp feeds to `std::regex`: ASCII stays, non-ASCII
//! whitespace becomes `\x0B`, and (when the regex uses `\p{..}`) every other non-ASCII
//! codepoint becomes one placeholder per Unicode category.
//!
//! Categories come from [`crate::unicode_flags`], the table llama.cpp uses.

use crate::unicode_flags::{MAX_CODEPOINT, RANGES};
use crate::{Result, TokenizerError};

pub(crate) const F_NUMBER: u16 = 0x002;
pub(crate) const F_LETTER: u16 = 0x004;
pub(crate) const F_MARK: u16 = 0x010;
pub(crate) const F_PUNCT: u16 = 0x020;
pub(crate) const F_SYMBOL: u16 = 0x040;
pub(crate) const F_WHITESPACE: u16 = 0x100;
const F_UNDEFINED: u16 = 0x001;

/// Category flags of one codepoint (never 0 for a real codepoint).
pub(crate) fn cpt_flags(cp: u32) -> u16 {
    if cp >= MAX_CODEPOINT {
        return F_UNDEFINED;
    }
    let i = RANGES.partition_point(|&(start, _)| start <= cp);
    RANGES[i - 1].1
}

/// GPT-2's reversible byte -> printable-char table: `(byte_to_char, char_to_byte)`.
pub(crate) fn byte_level_tables() -> ([char; 256], std::collections::HashMap<char, u8>) {
    let mut to_char = ['\0'; 256];
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let mut extra = 0u32;
    for b in 0u32..256 {
        let c = if printable(b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        to_char[b as usize] = char::from_u32(c).expect("valid codepoint");
    }
    let back = to_char
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect();
    (to_char, back)
}

/// One regex step of a pre-tokenizer.
#[derive(Debug)]
enum Step {
    Gpt2,
    Llama3,
    Qwen2,
    Regex {
        re: fancy_regex::Regex,
        collapsed: bool,
    },
}

/// The word splitter of one `tokenizer.ggml.pre` value.
#[derive(Debug)]
pub(crate) struct PreTokenizer {
    steps: Vec<Step>,
}

const GPT2_RE: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const STARCODER_RE: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// The regex list llama.cpp's `llm_tokenizer_bpe` uses for a `tokenizer.ggml.pre` value,
/// or `None` for a value we do not know (an error, as in llama.cpp).
fn regexes_for(pre: &str) -> Option<Vec<&'static str>> {
    Some(match pre {
        "" | "default" => vec![
            r"[\p{P}\$\+<=>\^~\|]+",
            GPT2_RE,
            r"\p{N}+",
            "[0-9][0-9][0-9]",
        ],
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" | "chatglm-bpe" => vec![LLAMA3_RE],
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "stablelm2" | "hunyuan"
        | "grok-2" => vec![QWEN2_RE],
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe"
        | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" => vec![GPT2_RE],
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
            vec![r"\p{N}", STARCODER_RE]
        }
        "falcon" => vec![
            r"[\p{P}\$\+<=>\^~\|`]+",
            STARCODER_RE,
            "[0-9][0-9][0-9]",
        ],
        "deepseek-llm" => vec![
            "[\r\n]",
            "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
            "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
            "\\s+$",
            "[一-龥ࠀ-一가-퟿]+",
            r"\p{N}+",
        ],
        "deepseek-coder" => vec![
            "[\r\n]",
            r"\s?\p{L}+",
            r"\s?\p{P}+",
            "[一-龥ࠀ-一가-퟿]+",
            r"\p{N}",
        ],
        "deepseek-v3" | "hunyuan-dense" | "joyai-llm" => vec![
            r"\p{N}{1,3}",
            "[一-龥぀-ゟ゠-ヿ]+",
            "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
        ],
        "poro-chat" | "bloom" | "gpt3-finnish" => vec![r" ?[^(\s|.,!?…。，、।۔،)]+"],
        "viking" => vec![r" ?[^(\s|.,!?…。，、।۔،)]+", r"\p{N}"],
        _ => return None,
    })
}

/// Regex text for one collapsed category placeholder plus its ASCII members, as
/// llama.cpp's `k_ucat_cpt` / `k_ucat_map` define them.
fn collapsed_class(cat: &str) -> Option<(char, &'static str)> {
    Some(match cat {
        r"\p{N}" => ('\u{E0D1}', "0-9"),
        r"\p{L}" | r"\p{Lu}" | r"\p{Ll}" | r"\p{Lt}" | r"\p{Lm}" | r"\p{Lo}" => {
            ('\u{E0D2}', "A-Za-z")
        }
        r"\p{P}" => ('\u{E0D3}', r"!-#%-*,-/:-;?-@\[-\]_\{\}"),
        r"\p{M}" => ('\u{E0D4}', ""),
        r"\p{S}" => ('\u{E0D5}', r"\$\+<->\^`\|~"),
        _ => return None,
    })
}

fn collapsed_char(cp: u32) -> char {
    if cp < 128 {
        return char::from_u32(cp).expect("ascii");
    }
    let f = cpt_flags(cp);
    if f & F_WHITESPACE != 0 {
        return '\x0B';
    }
    match f & 0xFF {
        F_NUMBER => '\u{E0D1}',
        F_LETTER => '\u{E0D2}',
        F_PUNCT => '\u{E0D3}',
        F_MARK => '\u{E0D4}',
        F_SYMBOL => '\u{E0D5}',
        _ => '\u{E0D0}',
    }
}

/// Rewrite `\p{..}` categories into classes over the collapsed text, like llama.cpp.
fn collapse_regex(re: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    let mut prev: Option<char> = None;
    let mut rest = re;
    while let Some(c) = rest.chars().next() {
        if c == '[' && prev != Some('\\') {
            out.push('[');
            inside = true;
        } else if inside && c == ']' && prev != Some('\\') {
            out.push(']');
            inside = false;
        } else if c == '\\' && rest.starts_with("\\p{") {
            if let Some(close) = rest.find('}') {
                if let Some((ph, members)) = collapsed_class(&rest[..=close]) {
                    if !inside {
                        out.push('[');
                    }
                    out.push(ph);
                    out.push_str(members);
                    if !inside {
                        out.push(']');
                    }
                    rest = &rest[close + 1..];
                    prev = Some('}');
                    continue;
                }
            }
            out.push(c);
        } else {
            out.push(c);
        }
        prev = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

impl PreTokenizer {
    /// The splitter for `tokenizer.ggml.pre`.
    pub(crate) fn new(pre: &str) -> Result<PreTokenizer> {
        let regexes = regexes_for(pre).ok_or_else(|| {
            TokenizerError::Unsupported(format!(
                "pre-tokenizer type '{pre}' is not implemented (llama.cpp knows it or not; \
                 we implement default, gpt-2, llama3/llama-bpe, qwen2, deepseek-llm, \
                 deepseek-coder, deepseek-v3, starcoder, falcon and relatives)"
            ))
        })?;
        let mut steps = Vec::new();
        for r in regexes {
            let step = match r {
                GPT2_RE => Step::Gpt2,
                LLAMA3_RE => Step::Llama3,
                QWEN2_RE => Step::Qwen2,
                _ => {
                    let collapsed = r.contains("\\p{");
                    let pattern = if collapsed {
                        collapse_regex(r)
                    } else {
                        r.to_string()
                    };
                    let re = fancy_regex::Regex::new(&pattern).map_err(|e| {
                        TokenizerError::Unsupported(format!("pre-tokenizer regex {r:?}: {e}"))
                    })?;
                    Step::Regex { re, collapsed }
                }
            };
            steps.push(step);
        }
        Ok(PreTokenizer { steps })
    }

    /// Split `text` into words (as `&str` slices, in order, covering the text).
    pub(crate) fn split<'a>(&self, text: &'a str) -> Result<Vec<&'a str>> {
        let cpts: Vec<u32> = text.chars().map(u32::from).collect();
        let mut lens = vec![cpts.len()];
        let mut wide: Option<String> = None;
        let mut collapsed: Option<String> = None;
        for step in &self.steps {
            let mut next = Vec::with_capacity(lens.len());
            let mut start = 0usize;
            for &len in &lens {
                let seg = &cpts[start..start + len];
                match step {
                    Step::Gpt2 => split_gpt2(seg, &mut next),
                    Step::Llama3 => split_llama3(seg, false, &mut next),
                    Step::Qwen2 => split_llama3(seg, true, &mut next),
                    Step::Regex { re, collapsed: c } => {
                        let s = if *c {
                            collapsed.get_or_insert_with(|| {
                                cpts.iter().map(|&cp| collapsed_char(cp)).collect()
                            })
                        } else {
                            wide.get_or_insert_with(|| {
                                cpts.iter()
                                    .map(|&cp| {
                                        if cp > 0x7F && cpt_flags(cp) & F_WHITESPACE != 0 {
                                            '\x0B'
                                        } else {
                                            char::from_u32(cp).expect("valid char")
                                        }
                                    })
                                    .collect()
                            })
                        };
                        split_regex(re, s, start, len, &mut next)?;
                    }
                }
                start += len;
            }
            lens = next;
        }
        // map codepoint lengths back to byte slices of the text
        let mut words = Vec::with_capacity(lens.len());
        let mut chars = text
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(text.len()));
        let mut begin = chars.next().unwrap_or(0);
        for len in lens {
            if len == 0 {
                continue;
            }
            let end = chars.nth(len - 1).expect("lengths cover the text");
            words.push(&text[begin..end]);
            begin = end;
        }
        Ok(words)
    }
}

/// Run a regex over codepoints `[start, start+len)` of `s` (one char per codepoint) and
/// push the lengths of the matches and of the unmatched gaps between them.
fn split_regex(
    re: &fancy_regex::Regex,
    s: &str,
    start: usize,
    len: usize,
    out: &mut Vec<usize>,
) -> Result<()> {
    let mut idx = s
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(s.len()));
    let b0 = idx.nth(start).unwrap_or(s.len());
    let b1 = if len == 0 {
        b0
    } else {
        idx.nth(len - 1).unwrap_or(s.len())
    };
    let seg = &s[b0..b1];
    let count = |a: usize, b: usize| seg[a..b].chars().count();
    let mut last = 0usize; // byte offset in seg
    for m in re.find_iter(seg) {
        let m = m.map_err(|e| TokenizerError::Unsupported(format!("regex failed: {e}")))?;
        if m.start() > last {
            out.push(count(last, m.start()));
        }
        if m.end() > m.start() {
            out.push(count(m.start(), m.end()));
        }
        last = m.end();
    }
    if last < seg.len() {
        out.push(count(last, seg.len()));
    }
    Ok(())
}

/// Accessors with llama.cpp's out-of-range conventions: flags 0 and no codepoint.
struct Seg<'a>(&'a [u32]);
impl Seg<'_> {
    fn cpt(&self, i: usize) -> Option<u32> {
        self.0.get(i).copied()
    }
    fn flags(&self, i: usize) -> u16 {
        self.0.get(i).map_or(0, |&c| cpt_flags(c))
    }
}

fn is(f: u16, mask: u16) -> bool {
    f & mask != 0
}

/// Length of the English contraction at `pos` (`'s 't 'm 'd 're 've 'll`, lower case
/// unless `ignore_case`), 0 when there is none.
fn contraction(cpts: &[u32], pos: usize, ignore_case: bool) -> usize {
    let n = cpts.len();
    if cpts[pos] != u32::from('\'') || pos + 1 >= n {
        return 0;
    }
    let fold = |c: u32| -> u32 {
        if ignore_case && (u32::from('A')..=u32::from('Z')).contains(&c) {
            c + 32
        } else {
            c
        }
    };
    let nx = fold(cpts[pos + 1]);
    if [b's', b't', b'm', b'd'].iter().any(|&c| nx == u32::from(c)) {
        return 2;
    }
    if pos + 2 < n {
        let nn = fold(cpts[pos + 2]);
        let pair = |a: u8, b: u8| nx == u32::from(a) && nn == u32::from(b);
        if pair(b'r', b'e') || pair(b'v', b'e') || pair(b'l', b'l') {
            return 3;
        }
    }
    0
}

/// Where the piece at `pos` ends after a run of `nws` whitespace characters there:
/// `\s+(?!\S)` leaves the run's last character to the word that follows it, `\s+`
/// takes a run at the end of the text whole, and with no whitespace the piece is one
/// character.
fn whitespace_end(s: &Seg, pos: usize, nws: usize) -> usize {
    if nws > 1 && s.cpt(pos + nws).is_some() {
        pos + nws - 1
    } else if nws > 0 {
        pos + nws
    } else {
        pos + 1
    }
}

/// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`,
/// as llama.cpp's `unicode_regex_split_custom_gpt2`.
fn split_gpt2(cpts: &[u32], out: &mut Vec<usize>) {
    let s = Seg(cpts);
    let n = cpts.len();
    let mut prev = 0usize;
    let mut add = |end: usize, out: &mut Vec<usize>| {
        if end > prev {
            out.push(end - prev);
        }
        prev = end;
    };
    let mut pos = 0usize;
    while pos < n {
        let cpt = cpts[pos];
        let flags = s.flags(pos);
        let c = contraction(cpts, pos, false);
        if c > 0 {
            pos += c;
            add(pos, out);
            continue;
        }
        let space = cpt == u32::from(' ');
        let f2 = if space { s.flags(pos + 1) } else { flags };
        if is(f2, F_LETTER) {
            pos += usize::from(space);
            while is(s.flags(pos), F_LETTER) {
                pos += 1;
            }
            add(pos, out);
            continue;
        }
        if is(f2, F_NUMBER) {
            pos += usize::from(space);
            while is(s.flags(pos), F_NUMBER) {
                pos += 1;
            }
            add(pos, out);
            continue;
        }
        let other = |f: u16| !is(f, F_WHITESPACE | F_LETTER | F_NUMBER) && f != 0;
        if other(f2) {
            pos += usize::from(space);
            while other(s.flags(pos)) {
                pos += 1;
            }
            add(pos, out);
            continue;
        }
        let mut nws = 0;
        while is(s.flags(pos + nws), F_WHITESPACE) {
            nws += 1;
        }
        pos = whitespace_end(&s, pos, nws);
        add(pos, out);
    }
}

/// Llama 3 (`\p{N}{1,3}`) and Qwen2 (`\p{N}`, `single_digits`):
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`,
/// as llama.cpp's `unicode_regex_split_custom_llama3` / `_qwen2`.
fn split_llama3(cpts: &[u32], single_digits: bool, out: &mut Vec<usize>) {
    let s = Seg(cpts);
    let n = cpts.len();
    let mut prev = 0usize;
    let mut add = |end: usize, out: &mut Vec<usize>| {
        if end > prev {
            out.push(end - prev);
        }
        prev = end;
    };
    let is_rn = |c: Option<u32>| c == Some(u32::from('\r')) || c == Some(u32::from('\n'));
    let mut pos = 0usize;
    while pos < n {
        let cpt = cpts[pos];
        let flags = s.flags(pos);
        let c = contraction(cpts, pos, true);
        if c > 0 {
            pos += c;
            add(pos, out);
            continue;
        }
        if !(is_rn(Some(cpt)) || is(flags, F_NUMBER))
            && (is(flags, F_LETTER) || is(s.flags(pos + 1), F_LETTER))
        {
            pos += 1;
            while is(s.flags(pos), F_LETTER) {
                pos += 1;
            }
            add(pos, out);
            continue;
        }
        if is(flags, F_NUMBER) {
            if single_digits {
                pos += 1;
                add(pos, out);
                continue;
            }
            let mut ini = pos;
            while is(s.flags(pos), F_NUMBER) {
                pos += 1;
                if pos - ini >= 3 {
                    add(pos, out);
                    ini = pos;
                }
            }
            add(pos, out);
            continue;
        }
        let space = cpt == u32::from(' ');
        let mut f2 = if space { s.flags(pos + 1) } else { flags };
        let other = |f: u16| !is(f, F_WHITESPACE | F_LETTER | F_NUMBER) && f != 0;
        if !is(f2, F_WHITESPACE | F_LETTER | F_NUMBER) && flags != 0 {
            pos += usize::from(space);
            while other(f2) {
                pos += 1;
                f2 = s.flags(pos);
            }
            while is_rn(s.cpt(pos)) {
                pos += 1;
            }
            add(pos, out);
            continue;
        }
        let mut nws = 0;
        let mut last_rn = 0;
        while is(s.flags(pos + nws), F_WHITESPACE) {
            if is_rn(s.cpt(pos + nws)) {
                last_rn = pos + nws + 1;
            }
            nws += 1;
        }
        if last_rn > 0 {
            pos = last_rn;
            add(pos, out);
            continue;
        }
        pos = whitespace_end(&s, pos, nws);
        add(pos, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: &str, text: &str) -> Vec<String> {
        let p = PreTokenizer::new(pre).unwrap();
        p.split(text)
            .unwrap()
            .into_iter()
            .map(String::from)
            .collect()
    }

    #[test]
    fn gpt2_split_matches_the_regex() {
        assert_eq!(
            words("gpt-2", "Hello world's  end 123\n\n  x"),
            ["Hello", " world", "'s", " ", " end", " 123", "\n\n ", " x"]
        );
    }

    #[test]
    fn qwen2_splits_digits_and_newlines() {
        assert_eq!(
            words("qwen2", "ab 12\n\nc"),
            ["ab", " ", "1", "2", "\n\n", "c"]
        );
    }

    #[test]
    fn llama3_groups_three_digits() {
        assert_eq!(words("llama-bpe", "12345"), ["123", "45"]);
    }

    #[test]
    fn default_runs_regex_chain() {
        // punctuation runs are cut first, then GPT-2 words, digit runs, then groups of 3
        assert_eq!(
            words("default", "a, b!! 1234"),
            ["a", ",", " b", "!!", " ", "123", "4"]
        );
    }

    #[test]
    fn collapse_rewrites_categories() {
        assert_eq!(collapse_regex(r"\p{N}+"), "[\u{E0D1}0-9]+");
        assert_eq!(collapse_regex(r"[^\s\p{L}]"), "[^\\s\u{E0D2}A-Za-z]");
    }

    #[test]
    fn flags_of_common_codepoints() {
        assert!(is(cpt_flags('a' as u32), F_LETTER));
        assert!(is(cpt_flags('7' as u32), F_NUMBER));
        assert!(is(cpt_flags(' ' as u32), F_WHITESPACE));
        assert!(is(cpt_flags(0x3000), F_WHITESPACE));
        assert!(is(cpt_flags('中' as u32), F_LETTER));
    }
}
