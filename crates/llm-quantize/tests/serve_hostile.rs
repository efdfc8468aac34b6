//! `serve` against failures and hostile clients: an engine that fails (error or panic)
//! mid-request answers 500 with an OpenAI-shaped error, `/health` reports the failure,
//! and the server keeps serving; half-sent requests are cut off by the header-read
//! timeout, and stalled or trickled bodies by the body-read deadline (408); the
//! request fields the API decides on (roles, `top_k`, `logit_bias`,
//! `model`) get the documented answers.

mod common;
mod serve_support;
use serde_json::json;
use serve_support::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn completion() -> serde_json::Value {
    json!({"prompt": "Once upon a time", "max_tokens": 3, "temperature": 0})
}

fn engine_failure_is_reported_and_survived(hook: &str) {
    let mut srv = Server::start_with_env(&[], &[("LLMQ_TEST_ENGINE_FAIL", hook)]);
    // forward step 1 fails: the request in it gets 500, OpenAI-shaped
    let r = srv.post("/v1/completions", &completion());
    let e = assert_error(&r, 500, "engine failure");
    assert!(
        e["message"].as_str().unwrap().contains("engine failed"),
        "{e}"
    );
    // /health tells the truth
    let h = srv.get("/health");
    assert_eq!(h.status, 503, "{}", h.text());
    let hv = h.json();
    assert_eq!(hv["status"], "error", "{hv}");
    assert!(hv["error"]["message"].as_str().unwrap().contains("failed"));
    // the scheduler is not wedged: the next request is served and health recovers
    let ok = srv.post("/v1/completions", &completion());
    assert_eq!(ok.status, 200, "{}\n{}", ok.text(), srv.log());
    assert!(ok.json()["choices"][0]["text"].is_string());
    srv.assert_alive();
    assert_eq!(srv.metric("llmq_requests_failed_total"), 1.0);
}

#[test]
fn an_engine_error_mid_request_gives_500_and_the_server_keeps_serving() {
    engine_failure_is_reported_and_survived("1");
}

#[test]
fn an_engine_panic_mid_request_gives_500_and_the_server_keeps_serving() {
    engine_failure_is_reported_and_survived("1:panic");
}

#[test]
fn half_sent_requests_are_closed_by_the_header_timeout() {
    let mut srv = Server::start(&[]);
    let t0 = Instant::now();
    let mut conns: Vec<_> = (0..8)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&srv.addr).unwrap();
            s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s
        })
        .collect();
    // the server keeps answering others meanwhile
    assert_eq!(srv.get("/health").status, 200);
    for s in &mut conns {
        let mut buf = [0u8; 256];
        // closed (0 bytes, maybe after a 408) rather than held open
        let mut got = Vec::new();
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("connection still open after {:?}: {e}", t0.elapsed()),
            }
        }
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(25), "closed only after {took:?}");
    srv.assert_alive();
}

/// A client that sends its head, then stalls (one connection) or trickles a byte every
/// 2 s (another), gets 408 once the 30 s body deadline passes, and the connection is
/// closed; the server answers others meanwhile.
#[test]
fn stalled_and_trickled_bodies_get_408_at_the_body_deadline() {
    let mut srv = Server::start(&[]);
    let body = completion().to_string();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let open = || {
        let mut s = std::net::TcpStream::connect(&srv.addr).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body.as_bytes()[..5]).unwrap();
        s
    };
    let t0 = Instant::now();
    let mut stalled = open();
    let mut trickled = open();
    let mut sent = 5;
    // trickle a byte every 2 s (never finishing: the body is longer than 25 bytes)
    let trickler = {
        let mut s = trickled.try_clone().unwrap();
        let rest = body.as_bytes()[sent..].to_vec();
        std::thread::spawn(move || {
            for b in rest.iter().take(25) {
                std::thread::sleep(Duration::from_secs(2));
                if s.write_all(&[*b]).is_err() {
                    break;
                }
            }
        })
    };
    sent += 25;
    assert!(sent < body.len());
    assert_eq!(srv.get("/health").status, 200);
    for s in [&mut stalled, &mut trickled] {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("connection still open after {:?}: {e}", t0.elapsed()),
            }
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("request_timeout"), "{text}");
        assert!(text.contains("did not arrive within 30 s"), "{text}");
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(29) && took < Duration::from_secs(50),
        "closed after {took:?}"
    );
    trickler.join().unwrap();
    // a complete request is still served
    let ok = srv.post("/v1/completions", &completion());
    assert_eq!(ok.status, 200, "{}", ok.text());
    srv.assert_alive();
}

#[test]
fn request_fields_get_the_documented_answers() {
    let mut srv = Server::start(&[]);
    let chat = |extra: serde_json::Value, role: &str| {
        let mut b = json!({"messages": [{"role": role, "content": "hi"}], "max_tokens": 2});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    for (body, param) in [
        (chat(json!({}), "wizard"), "messages[0].role"),
        (chat(json!({"top_k": -7}), "user"), "top_k"),
        (
            chat(json!({"logit_bias": {"abc": 1}}), "user"),
            "logit_bias",
        ),
        (chat(json!({"logit_bias": {"12": 1}}), "user"), "logit_bias"),
    ] {
        let r = srv.post("/v1/chat/completions", &body);
        let e = assert_error(&r, 400, &body.to_string());
        assert_eq!(e["param"], param, "{body}");
    }
    // accepted: no `model`, top_k -1, an empty logit_bias
    let r = srv.post(
        "/v1/chat/completions",
        &chat(json!({"top_k": -1, "logit_bias": {}}), "user"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    srv.assert_alive();
}
