//! `llm-quantize serve` end to end: the server binary on a free loopback port with a
//! small shared model, driven by a plain HTTP/1.1 client over `TcpStream` (so the
//! tests control every byte, disconnects included) and by the official `openai`
//! Python client (`serve_openai_client.py`; `python3` with `openai` is required, as
//! `scripts/test.sh` installs it).
//!
//! - the `openai` client: chat, completion, streaming, usage, stop sequences, errors;
//! - greedy output through the server equals `generate`'s while other requests run in
//!   the same batches;
//! - 32 concurrent streaming clients all complete; a flood beyond the queue gets 503s;
//!   a client that disconnects mid-stream frees its slot;
//! - bad input (invalid JSON, wrong types, unknown model, empty messages, huge bodies,
//!   negative `max_tokens`, broken HTTP) gets OpenAI-shaped 4xx errors and the server
//!   keeps serving;
//! - SIGTERM ends the server cleanly (exit 0, summary on stdout).
//!
//! Every server is killed when its test ends ([`Server`]'s `Drop`), and also if the
//! test process dies (`PR_SET_PDEATHSIG`).

mod common;
mod serve_support;
use common::*;
use serde_json::{json, Value};
use serve_support::*;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------

/// (a) The official `openai` Python client: chat, completion, streaming with usage,
/// stop sequences, seeds, and error cases, with `--api-key` required.
#[test]
fn the_openai_python_client_works_against_the_server() {
    let key = "sk-test-123";
    let srv = Server::start(&["--api-key", key]);
    // /v1/* needs the key; /health does not
    let r = srv.get("/v1/models");
    let e = assert_error(&r, 401, "no key");
    assert_eq!(e["code"], "invalid_api_key");
    let ok = request(
        &srv.addr,
        "GET",
        "/v1/models",
        &[("Authorization", &format!("Bearer {key}"))],
        b"",
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["data"][0]["id"], MODEL);

    let out = Command::new("python3")
        .arg(script("serve_openai_client.py"))
        .arg(format!("http://{}/v1", srv.addr))
        .arg(key)
        .arg(MODEL)
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 is required (with the `openai` package, see scripts/test.sh): {e}")
        });
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "the openai client checks failed ({}):\n{so}\n{se}\nserver log:\n{}",
        out.status,
        srv.log()
    );
    assert!(so.contains("checks passed"), "{so}\n{se}");
    eprintln!("{}", so.trim());
}

/// `generate --format json` at temperature 0.
fn generate_greedy(prompt: &str, max_tokens: usize, chat: bool) -> Value {
    let m = model();
    let n = max_tokens.to_string();
    let mut args = vec![
        "--format",
        "json",
        "generate",
        m.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-tokens",
        &n,
        "--temperature",
        "0",
        "--verbosity",
        "quiet",
    ];
    if chat {
        args.push("--chat");
    }
    let r = lq(&std::env::temp_dir(), &args);
    assert_eq!(r.code, 0, "generate: {}", r.stderr);
    r.json()
}

/// (b) Greedy output through the server, streamed or not, equals `generate`'s for
/// the same prompt while sampled requests share the batches.
#[test]
fn greedy_output_equals_generate_while_other_requests_are_batched() {
    let long_prompt =
        "The whale swam under the ship, and the sailors watched the sea from the deck \
        while the captain spoke of the storm that had carried them far from home; the wind \
        rose and the sails were torn, and still the whale followed them through the night";
    // (prompt, chat?)
    let cases: Vec<(&str, bool)> = vec![
        ("The whale", false),
        ("Once upon a time", false),
        (long_prompt, false),
        ("Tell me about the sea and the ship.", true),
    ];
    let max_tokens = 24;
    let expected: Vec<Value> = cases
        .iter()
        .map(|(p, chat)| generate_greedy(p, max_tokens, *chat))
        .collect();
    // a small prompt chunk so the long prompt is split over several batched steps
    let srv = Server::start(&["--max-batch", "6", "--prompt-chunk", "16"]);
    let stop = Arc::new(AtomicBool::new(false));
    let addr = srv.addr.clone();
    // background load: sampled streams of assorted lengths
    let load: Vec<_> = (0..3)
        .map(|i| {
            let (stop, addr) = (stop.clone(), addr.clone());
            thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let s = stream(
                        &addr,
                        "/v1/completions",
                        &json!({"prompt": format!("The sailor number {i} said {n}"),
                            "max_tokens": 10 + 13 * ((i + n) % 4), "temperature": 0.9,
                            "seed": n, "stream": true}),
                    );
                    assert!(s.finish.is_some());
                    n += 1;
                }
                n
            })
        })
        .collect();
    srv.wait_for("background load", 30, |s| {
        s.metric("llmq_active_sequences") >= 2.0
    });
    let steps0 = srv.metric("llmq_forward_steps_total");
    let tokens0 = srv.metric("llmq_generation_tokens_total");
    // every greedy request twice (plain and streamed), all at once
    let mut handles = Vec::new();
    for (i, (p, chat)) in cases.iter().enumerate() {
        for streamed in [false, true] {
            let addr = addr.clone();
            let (p, chat) = (p.to_string(), *chat);
            handles.push(thread::spawn(move || {
                let (path, mut body) = if chat {
                    (
                        "/v1/chat/completions",
                        json!({"messages": [{"role": "user", "content": p}]}),
                    )
                } else {
                    ("/v1/completions", json!({"prompt": p}))
                };
                body["max_tokens"] = json!(max_tokens);
                body["temperature"] = json!(0);
                body["model"] = json!(MODEL);
                if streamed {
                    body["stream"] = json!(true);
                    body["stream_options"] = json!({"include_usage": true});
                    let s = stream(&addr, path, &body);
                    (i, streamed, s.text, s.finish.unwrap(), s.usage.unwrap())
                } else {
                    let r = request(&addr, "POST", path, &[], body.to_string().as_bytes());
                    assert_eq!(r.status, 200, "{}", r.text());
                    let v = r.json();
                    let c = &v["choices"][0];
                    let text = if chat {
                        c["message"]["content"].as_str().unwrap().to_string()
                    } else {
                        c["text"].as_str().unwrap().to_string()
                    };
                    let finish = c["finish_reason"].as_str().unwrap().to_string();
                    (i, streamed, text, finish, v["usage"].clone())
                }
            }));
        }
    }
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let steps = srv.metric("llmq_forward_steps_total") - steps0;
    let tokens = srv.metric("llmq_generation_tokens_total") - tokens0;
    stop.store(true, Ordering::Relaxed);
    let background: usize = load.into_iter().map(|h| h.join().unwrap()).sum();
    for (i, streamed, text, finish, usage) in results {
        let want = &expected[i];
        let what = format!("case {i} {:?} (streamed: {streamed})", cases[i].0);
        assert_eq!(text, want["text"].as_str().unwrap(), "{what}");
        assert_eq!(finish, want["finish_reason"].as_str().unwrap(), "{what}");
        assert_eq!(
            usage["completion_tokens"], want["completion_tokens"],
            "{what}"
        );
        assert_eq!(usage["prompt_tokens"], want["prompt_tokens"], "{what}");
    }
    // batching did happen: fewer forward steps than tokens generated
    assert!(
        steps < tokens * 0.75,
        "{steps} forward steps for {tokens} tokens: the requests were not batched"
    );
    eprintln!(
        "greedy == generate for {} requests; {background} background requests; {tokens} tokens in {steps} steps",
        cases.len() * 2
    );
}

/// (c) 32 concurrent streaming clients all complete, none errors; tokens/s and time
/// to first token reported (by the clients and by /metrics).
#[test]
fn thirty_two_concurrent_streaming_clients_all_complete() {
    let srv = Server::start(&["--max-batch", "8", "--max-queue", "64"]);
    let clients = 32;
    let max_tokens = 32;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let addr = srv.addr.clone();
            thread::spawn(move || {
                let (path, mut body) = if i % 2 == 0 {
                    (
                        "/v1/completions",
                        json!({"prompt": format!("The ship {i} sailed")}),
                    )
                } else {
                    (
                        "/v1/chat/completions",
                        json!({"messages": [{"role": "user", "content": format!("Story {i}")}]}),
                    )
                };
                body["max_tokens"] = json!(max_tokens);
                body["temperature"] = json!(0.7);
                body["seed"] = json!(i);
                body["stream"] = json!(true);
                body["stream_options"] = json!({"include_usage": true});
                stream(&addr, path, &body)
            })
        })
        .collect();
    let results: Vec<Streamed> = handles
        .into_iter()
        .map(|h| h.join().expect("a client failed"))
        .collect();
    let wall = t0.elapsed().as_secs_f64();
    let mut total = 0u64;
    let mut ttfts = Vec::new();
    for (i, s) in results.iter().enumerate() {
        let u = s
            .usage
            .as_ref()
            .unwrap_or_else(|| panic!("client {i}: no usage"));
        let n = u["completion_tokens"].as_u64().unwrap();
        assert!(n >= 1 && n <= max_tokens as u64, "client {i}: {u}");
        assert_eq!(
            u["total_tokens"].as_u64().unwrap(),
            n + u["prompt_tokens"].as_u64().unwrap()
        );
        let f = s.finish.as_deref().unwrap();
        assert!(f == "length" || f == "stop", "client {i}: finish {f}");
        if f == "length" {
            assert_eq!(n, max_tokens as u64, "client {i}");
        }
        total += n;
        if let Some(t) = s.ttft {
            ttfts.push(t);
        }
    }
    ttfts.sort_by(f64::total_cmp);
    assert_eq!(srv.metric("llmq_requests_completed_total"), clients as f64);
    assert_eq!(srv.metric("llmq_generation_tokens_total"), total as f64);
    assert_eq!(
        srv.metric("llmq_time_to_first_token_seconds_count"),
        clients as f64
    );
    assert!(srv.metric("llmq_requests_failed_total") == 0.0);
    assert!(srv.metric("llmq_requests_rejected_total") == 0.0);
    let metrics = srv.get("/metrics").text();
    assert!(metrics.contains("# TYPE llmq_tokens_per_second gauge"));
    assert!(metrics.contains("# TYPE llmq_queue_depth gauge"));
    // back to idle
    srv.wait_for("an idle server", 10, |s| {
        let h = s.get("/health").json();
        h["active_sequences"] == 0 && h["queued_requests"] == 0
    });
    let med = ttfts.get(ttfts.len() / 2).copied().unwrap_or(0.0);
    let max = ttfts.last().copied().unwrap_or(0.0);
    eprintln!(
        "{clients} streaming clients: {total} tokens in {wall:.2} s = {:.0} tokens/s; time to first token median {med:.3} s, max {max:.3} s",
        total as f64 / wall
    );
}

/// (c) A flood beyond the queue gets OpenAI-shaped 503s (not a crash); a client that
/// disconnects mid-stream frees its slot.
#[test]
fn a_flood_gets_503s_and_a_disconnected_client_frees_its_slot() {
    let mut srv = Server::start(&["--max-batch", "1", "--max-queue", "2"]);
    let ctx = 2048;
    // as many tokens as the context holds: seconds of work for one slot
    let hog = json!({"prompt": "The whale", "max_tokens": 100000, "temperature": 0,
        "stream": true, "ignore_eos": true});

    // 1. a client disconnects mid-stream: its sequence is dropped and the slot freed
    let conn = start_stream(&srv.addr, &hog, 3);
    drop(conn);
    srv.wait_for("the cancellation", 20, |s| {
        s.metric("llmq_requests_cancelled_total") == 1.0
    });
    srv.wait_for("a free slot", 10, |s| {
        s.metric("llmq_active_sequences") == 0.0
    });
    let generated = srv.metric("llmq_generation_tokens_total");
    assert!(
        generated < (ctx - 10) as f64,
        "{generated} tokens generated: the disconnected request ran on"
    );
    let r = srv.post(
        "/v1/completions",
        &json!({"prompt": "The sea", "max_tokens": 4}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // a non-streamed request whose client goes away is cancelled too
    {
        let mut s = connect(&srv.addr).unwrap();
        let b = json!({"prompt": "The ship", "max_tokens": 100000, "ignore_eos": true}).to_string();
        s.write_all(request_head(&srv.addr, "POST", "/v1/completions", &[], b.len()).as_bytes())
            .unwrap();
        s.write_all(b.as_bytes()).unwrap();
        srv.wait_for("the request to run", 20, |s| {
            s.metric("llmq_active_sequences") == 1.0
        });
        let _ = s.shutdown(Shutdown::Both);
    }
    srv.wait_for("the second cancellation", 20, |s| {
        s.metric("llmq_requests_cancelled_total") == 2.0
    });

    // 2. a flood: one running, two waiting, the rest 503 at once
    let conn = start_stream(&srv.addr, &hog, 3);
    let flood = 12;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..flood)
        .map(|i| {
            let addr = srv.addr.clone();
            thread::spawn(move || {
                let b = json!({"prompt": format!("Flood {i}"), "max_tokens": 4}).to_string();
                let r = request(&addr, "POST", "/v1/completions", &[], b.as_bytes());
                (r, t0.elapsed())
            })
        })
        .collect();
    // the queue is full: the 503s come back while the long request still runs
    srv.wait_for("a full queue", 20, |s| {
        s.get("/health").json()["queued_requests"] == 2
    });
    let mut rejected = 0;
    let mut waiting = handles;
    let t1 = Instant::now();
    while rejected < flood - 2 && t1.elapsed() < Duration::from_secs(20) {
        let (done, rest): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|h| h.is_finished());
        waiting = rest;
        for h in done {
            let (r, _) = h.join().unwrap();
            let e = assert_error(&r, 503, "flood");
            assert_eq!(e["code"], "server_overloaded", "{}", r.text());
            rejected += 1;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        rejected,
        flood - 2,
        "with --max-batch 1 --max-queue 2 and one running, all but 2 must get 503"
    );
    // only the two queued ones wait
    thread::sleep(Duration::from_millis(200));
    assert!(waiting.iter().all(|h| !h.is_finished()));
    assert_eq!(srv.metric("llmq_requests_rejected_total"), rejected as f64);
    assert_eq!(srv.metric("llmq_queue_depth"), 2.0);
    // the long request's client leaves: the queued ones run and complete
    drop(conn);
    for h in waiting {
        let (r, _) = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["usage"]["completion_tokens"], 4);
    }
    srv.wait_for("an idle server", 20, |s| {
        let h = s.get("/health").json();
        h["active_sequences"] == 0 && h["queued_requests"] == 0
    });
    assert_eq!(srv.metric("llmq_requests_cancelled_total"), 3.0);
    srv.assert_alive();
}

/// (d) Malformed requests get OpenAI-shaped 4xx errors; nothing crashes or hangs.
#[test]
fn bad_input_gets_openai_shaped_4xx_errors() {
    let mut srv = Server::start(&["--max-body-bytes", "65536", "--ctx-size", "128"]);
    let chat = "/v1/chat/completions";
    let comp = "/v1/completions";
    let msg = r#"[{"role":"user","content":"hi"}]"#;
    // (path, body, status, param)
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        (chat, r#"{"messages": [{"role":"#.into(), 400, None),
        (chat, "not json at all".into(), 400, None),
        (chat, "[1, 2, 3]".into(), 400, None),
        (chat, "".into(), 400, None),
        (chat, r#"{"messages": "hi"}"#.into(), 400, Some("messages")),
        (chat, r#"{"messages": []}"#.into(), 400, Some("messages")),
        (chat, r#"{"max_tokens": 5}"#.into(), 400, Some("messages")),
        (
            chat,
            r#"{"messages": [{"role":"user","content":5}]}"#.into(),
            400,
            Some("messages[0].content"),
        ),
        (
            chat,
            r#"{"messages": [{"content":"hi"}]}"#.into(),
            400,
            Some("messages[0].role"),
        ),
        (
            chat,
            format!(r#"{{"messages": {msg}, "max_tokens": -1}}"#),
            400,
            Some("max_tokens"),
        ),
        (
            chat,
            format!(r#"{{"messages": {msg}, "max_tokens": 0}}"#),
            400,
            Some("max_tokens"),
        ),
        (
            chat,
            format!(r#"{{"messages": {msg}, "max_tokens": "10"}}"#),
            400,
            Some("max_tokens"),
        ),
        (
            chat,
            format!(r#"{{"messages": {msg}, "max_tokens": 2.5}}"#),
            400,
            Some("max_tokens"),
        ),
        (
            chat,
            format!(r#"{{"messages": {msg}, "temperature": "hot"}}"#),
            400,
            Some("temperature"),
        ),
        (
            chat,
            format!(r#"{{"messages": {msg}, "temperature": 9}}"#),
            400,
            Some("temperature"),
        ),
        (
            chat,
            format!(r#"{{"messages": {msg}, "top_p": 0}}"#),
            400,
            Some("top_p"),
        ),
        (
            chat,
            format!(r#"{{"messages": {msg}, "stream": "yes"}}"#),
            400,
            Some("stream"),
        ),
        (
            chat,
            format!(r#"{{"messages": {msg}, "stop": 7}}"#),
            400,
            Some("stop"),
        ),
        (
            chat,
            format!(r#"{{"messages": {msg}, "n": 3}}"#),
            400,
            Some("n"),
        ),
        (
            chat,
            format!(r#"{{"messages": {msg}, "seed": "x"}}"#),
            400,
            Some("seed"),
        ),
        (
            chat,
            format!(r#"{{"messages": {msg}, "stream_options": 1}}"#),
            400,
            Some("stream_options"),
        ),
        (
            chat,
            format!(r#"{{"messages": {msg}, "model": 42}}"#),
            400,
            Some("model"),
        ),
        (
            chat,
            format!(r#"{{"messages": {msg}, "model": "gpt-4"}}"#),
            404,
            Some("model"),
        ),
        (comp, r#"{"prompt": {}}"#.into(), 400, Some("prompt")),
        (comp, r#"{"prompt": []}"#.into(), 400, Some("prompt")),
        (
            comp,
            r#"{"prompt": ["a", "b"]}"#.into(),
            400,
            Some("prompt"),
        ),
        (comp, r#"{"prompt": [1, -2]}"#.into(), 400, Some("prompt")),
        (comp, r#"{"prompt": [999999]}"#.into(), 400, Some("prompt")),
        (comp, r#"{"prompt": ""}"#.into(), 400, Some("prompt")),
        (
            comp,
            r#"{"prompt": "a", "max_tokens": -100}"#.into(),
            400,
            Some("max_tokens"),
        ),
        (
            comp,
            format!(r#"{{"prompt": "{}"}}"#, "the whale ".repeat(200)),
            400,
            Some("prompt"),
        ),
        (
            comp,
            r#"{"model": "nope", "prompt": "a"}"#.into(),
            404,
            Some("model"),
        ),
    ];
    for (path, body, status, param) in &cases {
        let r = request(&srv.addr, "POST", path, &[], body.as_bytes());
        let what = format!("POST {path} {body:.80}");
        let e = assert_error(&r, *status, &what);
        if let Some(p) = param {
            assert_eq!(e["param"], *p, "{what}: {}", r.text());
        }
    }
    // a prompt longer than the context says so
    let r = srv.post(
        comp,
        &json!({"prompt": "the whale ".repeat(200), "max_tokens": 4}),
    );
    assert_eq!(
        assert_error(&r, 400, "long prompt")["code"],
        "context_length_exceeded"
    );
    // the unknown model is named
    let r = srv.post(
        chat,
        &json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}),
    );
    let e = assert_error(&r, 404, "unknown model");
    assert_eq!(e["code"], "model_not_found");
    assert!(e["message"].as_str().unwrap().contains("gpt-4"));
    // a huge body: 413, read or not
    let huge = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(1 << 20));
    let r = request(&srv.addr, "POST", comp, &[], huge.as_bytes());
    assert_eq!(
        assert_error(&r, 413, "huge body")["code"],
        "request_too_large"
    );
    // wrong method, unknown path
    assert_error(&srv.get(chat), 405, "GET chat");
    assert_error(&srv.post("/v1/nothing", &json!({})), 404, "unknown path");
    // max_tokens beyond the context is capped by it, not an error
    let r = srv.post(
        comp,
        &json!({"prompt": "The whale", "max_tokens": 1_000_000, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let total = v["usage"]["total_tokens"].as_u64().unwrap();
    assert!(total <= 128, "{v}");
    if v["choices"][0]["finish_reason"] == "length" {
        assert_eq!(total, 128, "{v}");
    }
    // broken HTTP: garbage, a truncated body, a client that sends nothing
    {
        let mut s = connect(&srv.addr).unwrap();
        s.write_all(b"THIS IS NOT HTTP\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw);
        assert!(
            raw.is_empty() || text.starts_with("HTTP/1.1 4"),
            "garbage got: {text}"
        );
    }
    {
        let mut s = connect(&srv.addr).unwrap();
        s.write_all(request_head(&srv.addr, "POST", comp, &[], 1000).as_bytes())
            .unwrap();
        s.write_all(br#"{"prompt": "#).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw);
        assert!(
            raw.is_empty() || text.starts_with("HTTP/1.1 4"),
            "truncated body got: {text}"
        );
    }
    drop(connect(&srv.addr).unwrap());
    // the server kept serving, and counted the refusals
    srv.assert_alive();
    let r = srv.post(comp, &json!({"prompt": "The whale", "max_tokens": 3}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["completion_tokens"], 3);
    assert!(srv.metric("llmq_requests_invalid_total") >= cases.len() as f64);
}

/// SIGTERM: running streams end, the server exits 0 and prints its summary.
#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut srv = Server::start(&[]);
    let r = srv.post(
        "/v1/completions",
        &json!({"prompt": "The whale", "max_tokens": 5}),
    );
    assert_eq!(r.status, 200);
    // a stream running when the signal comes: long enough to be running then, short
    // enough to finish within the 10 s grace on a loaded machine
    let body = json!({"prompt": "The sea", "max_tokens": 600, "stream": true,
        "ignore_eos": true});
    let mut conn = start_stream(&srv.addr, &body, 2);
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(srv.child.id() as i32, libc::SIGTERM);
    }
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = srv.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the server did not stop after SIGTERM:\n{}",
            srv.log()
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}:\n{}", srv.log());
    // the running stream was let finish
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("\"finish_reason\":\"length\"") && rest.contains("data: [DONE]"),
        "the running stream did not finish: {rest}"
    );
    let mut out = String::new();
    srv.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.starts_with("Served 2 requests"), "stdout: {out}");
    assert!(srv.log().contains("shutting down"), "{}", srv.log());
}
