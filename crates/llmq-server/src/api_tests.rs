//! Tests of `api`: request parsing and validation, response shapes.

use super::*;

fn chat(body: &str) -> Result<ParsedRequest, ApiError> {
    parse_request(Endpoint::Chat, body.as_bytes())
}

#[test]
fn parses_a_full_chat_request() {
    let r = chat(
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],
            "max_tokens":5,"temperature":0,"top_p":0.5,"top_k":3,"min_p":0.1,"stop":"x",
            "seed":7,"n":1,"stream":true,"stream_options":{"include_usage":true},
            "presence_penalty":0.5,"frequency_penalty":-0.5}"#,
    )
    .unwrap();
    assert_eq!(r.max_tokens, Some(5));
    assert_eq!(r.sampling.temperature, 0.0);
    assert_eq!(r.sampling.top_k, 3);
    assert_eq!(r.sampling.seed, 7);
    assert_eq!(r.stop, vec!["x".to_string()]);
    assert!(r.stream && r.include_usage);
    match r.prompt {
        PromptInput::Messages(m) => assert_eq!(m[0].content, "hi"),
        _ => panic!(),
    }
}

#[test]
fn rejects_bad_fields_with_their_name() {
    for (body, param) in [
        (r#"{"messages":[]}"#, "messages"),
        (r#"{"messages":"hi"}"#, "messages"),
        (
            r#"{"messages":[{"role":"user","content":"a"}],"max_tokens":-1}"#,
            "max_tokens",
        ),
        (
            r#"{"messages":[{"role":"user","content":"a"}],"max_tokens":"5"}"#,
            "max_tokens",
        ),
        (r#"{"messages":[{"role":"user","content":"a"}],"n":2}"#, "n"),
        (
            r#"{"messages":[{"role":"user","content":"a"}],"temperature":3}"#,
            "temperature",
        ),
        (
            r#"{"messages":[{"role":"user","content":"a"}],"stop":[1]}"#,
            "stop",
        ),
        (
            r#"{"messages":[{"role":"user","content":5}]}"#,
            "messages[0].content",
        ),
        (r#"{"messages":[{"content":"a"}]}"#, "messages[0].role"),
        (
            r#"{"messages":[{"role":"wizard","content":"a"}]}"#,
            "messages[0].role",
        ),
        (
            r#"{"messages":[{"role":"user","content":"a"}],"top_k":-2}"#,
            "top_k",
        ),
        (
            r#"{"messages":[{"role":"user","content":"a"}],"logit_bias":[1]}"#,
            "logit_bias",
        ),
        (
            r#"{"messages":[{"role":"user","content":"a"}],"logit_bias":{"x":1}}"#,
            "logit_bias",
        ),
        (
            r#"{"messages":[{"role":"user","content":"a"}],"logit_bias":{"5":500}}"#,
            "logit_bias",
        ),
        (
            r#"{"messages":[{"role":"user","content":"a"}],"logit_bias":{"5":1}}"#,
            "logit_bias",
        ),
    ] {
        let e = chat(body).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
    }
    assert!(chat("{not json")
        .unwrap_err()
        .message
        .contains("not valid JSON"));
    assert!(chat("[1]").is_err());
    // documented acceptances: no `model`, top_k -1 / 0, an empty logit_bias
    let r =
        chat(r#"{"messages":[{"role":"user","content":"a"}],"top_k":-1,"logit_bias":{}}"#).unwrap();
    assert_eq!((r.model, r.sampling.top_k), (None, 0));
}

#[test]
fn completion_prompts() {
    let p = |b: &str| parse_request(Endpoint::Completion, b.as_bytes());
    assert!(matches!(
        p(r#"{"prompt":"a"}"#).unwrap().prompt,
        PromptInput::Text(_)
    ));
    assert!(matches!(
        p(r#"{"prompt":["a"]}"#).unwrap().prompt,
        PromptInput::Text(_)
    ));
    assert!(matches!(
        p(r#"{"prompt":[1,2]}"#).unwrap().prompt,
        PromptInput::Tokens(_)
    ));
    assert!(matches!(
        p(r#"{"prompt":[[1,2]]}"#).unwrap().prompt,
        PromptInput::Tokens(_)
    ));
    assert!(p(r#"{"prompt":["a","b"]}"#).is_err());
    assert!(p(r#"{"prompt":[-1]}"#).is_err());
    assert!(p(r#"{}"#).is_err());
}
