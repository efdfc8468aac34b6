//! The tokenizer crate against references it did not write: the token counts of the
//! shared test and valid splits published in `shared/models/README.md` (computed by
//! Hugging Face `tokenizers`), lossless decoding and streaming detokenization, and chat
//! templates rendered by Python's Jinja2 with the settings transformers uses
//! (`trim_blocks`, `lstrip_blocks`).

use llmq_tokenizer::{render_chat, ChatMessage, Tokenizer};
use std::path::{Path, PathBuf};
use std::process::Command;

fn shared() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    assert!(
        p.join("models").is_dir(),
        "shared/ not found at {}: these tests need ../shared",
        p.display()
    );
    p
}

fn shared_tokenizer() -> Tokenizer {
    Tokenizer::from_hf_dir(shared().join("models/llama")).unwrap()
}

fn split(name: &str) -> String {
    std::fs::read_to_string(shared().join("data/corpus").join(name)).unwrap()
}

#[test]
fn split_token_counts_equal_the_published_ones() {
    let tok = shared_tokenizer();
    // README: "The test split has N = 102,935 tokens, the valid split 102,252."
    for (file, n) in [("test.txt", 102_935), ("valid.txt", 102_252)] {
        let ids = tok.encode(&split(file), false, false).unwrap();
        assert_eq!(ids.len(), n, "{file}");
    }
}

#[test]
fn decoding_is_lossless_and_streaming_gives_the_same_text() {
    let tok = shared_tokenizer();
    let text =
        split("test.txt")[..20_000].to_string() + "\nnaïve café — 東京タワー 🎉🦀 ﬁ \u{200b}end\n";
    let ids = tok.encode(&text, false, false).unwrap();
    assert_eq!(tok.decode(&ids), text);
    let mut dec = tok.stream_decoder(false);
    let mut streamed = String::new();
    let mut pieces_with_replacement = 0;
    for &id in &ids {
        let piece = dec.push(id);
        if piece.contains('\u{fffd}') {
            pieces_with_replacement += 1;
        }
        streamed.push_str(&piece);
    }
    streamed.push_str(&dec.finish());
    assert_eq!(streamed, text);
    // multi-byte characters split over byte tokens are held back until complete
    assert_eq!(pieces_with_replacement, 0);
}

#[test]
fn special_tokens_are_parsed_only_when_asked() {
    let tok = shared_tokenizer();
    let eot = tok
        .token_id("<|endoftext|>")
        .expect("<|endoftext|> in the vocabulary");
    let parsed = tok.encode("a<|endoftext|>b", false, true).unwrap();
    assert!(parsed.contains(&eot), "{parsed:?}");
    let literal = tok.encode("a<|endoftext|>b", false, false).unwrap();
    assert!(!literal.contains(&eot), "{literal:?}");
    assert!(tok.is_special(eot));
    // generation_config.json lists eos_token_id [0, 2]: <|endoftext|> and <|im_end|>
    let im_end = tok.token_id("<|im_end|>").unwrap();
    assert_eq!(tok.eos_ids(), vec![eot, im_end]);
}

/// Chat templates written in the styles real models use: ChatML (the shared models'),
/// a system-prompt default with `loop.first`, header tokens with `| trim`, a template
/// that raises on a bad role order, and one that uses `namespace` and `tojson`.
const TEMPLATES: &[&str] = &[
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    "{%- if messages[0]['role'] != 'system' %}\n    {{- '<|sys|>You are helpful.<|end|>\\n' }}\n{%- endif %}\n{%- for message in messages %}\n    {%- if loop.first and message['role'] == 'system' %}\n        {{- '<|sys|>' + message['content'] + '<|end|>\\n' }}\n    {%- else %}\n        {{- '<|' + message['role'] + '|>' + message['content'] + '<|end|>\\n' }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|assistant|>' }}\n{%- endif %}\n",
    "{{ bos_token }}{% for message in messages %}\n{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' %}\n{{ content }}\n{% endfor %}\n{% if add_generation_prompt %}\n<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
    "{% for message in messages %}\n  {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n    {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\n  {% endif %}\n  {% if message['role'] == 'user' %}\n{{ '[INST] ' + message['content'].strip() + ' [/INST]' }}\n  {% else %}\n{{ message['content'].strip() + eos_token }}\n  {% endif %}\n{% endfor %}",
    "{% set ns = namespace(n=0, sys='') %}{% for m in messages %}{% if m.role == 'system' %}{% set ns.sys = m.content %}{% else %}{% set ns.n = ns.n + 1 %}{% endif %}{% endfor %}<turns={{ ns.n }}>{% if ns.sys %}<sys>{{ ns.sys | tojson }}</sys>{% endif %}\n{% for m in messages if m.role != 'system' %}\n{{ m.role | upper }}: {{ m.content }}\n{% endfor %}\n{% if add_generation_prompt %}ASSISTANT:{% endif %}",
];

fn conversations() -> Vec<Vec<ChatMessage>> {
    vec![
        vec![ChatMessage::new("user", "Hello there!")],
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "  What is 2+2? "),
            ChatMessage::new("assistant", "4"),
            ChatMessage::new("user", "And \"quotes\" and\nnew lines?"),
        ],
        vec![
            ChatMessage::new("user", "ünïcödé 東京"),
            ChatMessage::new("assistant", " ok "),
        ],
    ]
}

/// Python's Jinja2 rendering of `template` (or its exception message, prefixed `ERROR:`).
fn jinja2(template: &str, msgs: &[ChatMessage], add_gen: bool) -> String {
    let messages: Vec<serde_json::Value> = msgs
        .iter()
        .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
        .collect();
    let input = serde_json::json!({
        "template": template,
        "messages": messages,
        "add_generation_prompt": add_gen,
    });
    let script = r#"
import json, sys
import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
a = json.load(sys.stdin)
def raise_exception(m):
    raise jinja2.exceptions.TemplateError(m)
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
env.globals["raise_exception"] = raise_exception
env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
try:
    out = env.from_string(a["template"]).render(messages=a["messages"],
        add_generation_prompt=a["add_generation_prompt"], bos_token="<s>", eos_token="</s>")
except jinja2.exceptions.TemplateError as e:
    out = "ERROR:" + str(e)
sys.stdout.write(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed for the Jinja2 reference (scripts/test.sh installs jinja2)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "python3 + jinja2 failed (scripts/test.sh installs jinja2): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn chat_templates_render_as_jinja2_does() {
    let mut compared = 0;
    for (ti, t) in TEMPLATES.iter().enumerate() {
        for (ci, msgs) in conversations().iter().enumerate() {
            for add_gen in [false, true] {
                let want = jinja2(t, msgs, add_gen);
                let got = render_chat(t, msgs, add_gen, "<s>", "</s>");
                match (want.strip_prefix("ERROR:"), got) {
                    (Some(msg), Err(e)) => {
                        assert!(e.to_string().contains(msg), "template {ti}: {e} vs {msg}")
                    }
                    (None, Ok(g)) => {
                        assert_eq!(g, want, "template {ti}, conversation {ci}, gen {add_gen}")
                    }
                    (w, g) => {
                        panic!("template {ti}, conversation {ci}: jinja2 {w:?} vs ours {g:?}")
                    }
                }
                compared += 1;
            }
        }
    }
    assert_eq!(compared, TEMPLATES.len() * 3 * 2);
}

#[test]
fn the_shared_models_template_comes_from_tokenizer_config() {
    let tok = shared_tokenizer();
    let t = tok
        .chat_template()
        .expect("chat_template in tokenizer_config.json");
    let msgs = [ChatMessage::new("user", "Hi")];
    assert_eq!(
        tok.apply_chat_template(&msgs, true).unwrap(),
        jinja2(t, &msgs, true).replace("<s>", &tok.bos_token())
    );
}
