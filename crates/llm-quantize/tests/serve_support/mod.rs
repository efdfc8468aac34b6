//! The harness of the `serve` tests: a server process on a free loopback port (killed
//! with its test, or with the test process), a plain HTTP/1.1 client over `TcpStream`
//! (chunked bodies, server-sent events, raw requests), and the error-shape checks.
#![allow(dead_code)]

use super::common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The model every test serves: a 5M-parameter Qwen2 with a ChatML template.
pub(crate) const MODEL: &str = "qwen2";

pub(crate) fn model() -> PathBuf {
    shared_model(MODEL)
}

/// A running `llm-quantize serve`, killed on drop.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: String,
    pub(crate) log: Arc<Mutex<String>>,
}

impl Server {
    /// Start `serve MODEL --port 0 EXTRA…` and wait until `/health` answers.
    pub(crate) fn start(extra: &[&str]) -> Server {
        Self::start_with_env(extra, &[])
    }

    /// As [`Server::start`], with extra environment variables (test hooks).
    pub(crate) fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut c = Command::new(bin());
        c.envs(env.iter().copied());
        c.arg("serve")
            .arg(model())
            .args(["--port", "0"])
            .args(extra)
            .env_remove("LLM_QUANTIZE_API_KEY")
            .env_remove("HF_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the
        // server if the test thread that started it goes away without the Drop.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = c.spawn().expect("cannot start llm-quantize serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server did not print `listening on`:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        let s = Server { child, addr, log };
        let t0 = Instant::now();
        loop {
            if let Ok(r) = try_request(&s.addr, "GET", "/health", &[], b"") {
                if r.status == 200 {
                    break;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "/health never answered 200:\n{}",
                s.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        s
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub(crate) fn get(&self, path: &str) -> Resp {
        request(&self.addr, "GET", path, &[], b"")
    }

    pub(crate) fn post(&self, path: &str, body: &Value) -> Resp {
        request(&self.addr, "POST", path, &[], body.to_string().as_bytes())
    }

    /// One value of `/metrics` (the sample `name{model="…"}`).
    pub(crate) fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").text();
        let prefix = format!("{name}{{");
        text.lines()
            .find(|l| l.starts_with(&prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// Wait until `cond` holds (polling), panicking with `what` after `secs`.
    pub(crate) fn wait_for(&self, what: &str, secs: u64, mut cond: impl FnMut(&Server) -> bool) {
        let t0 = Instant::now();
        while !cond(self) {
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {what}; server log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Still running (not crashed)?
    pub(crate) fn assert_alive(&mut self) {
        if let Some(st) = self.child.try_wait().unwrap() {
            panic!("the server exited ({st}):\n{}", self.log());
        }
        let h = self.get("/health");
        assert_eq!(h.status, 200, "{}", h.text());
        assert_eq!(h.json()["status"], "ok");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response.
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Resp {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of a server-sent-events body.
    pub(crate) fn sse(&self) -> Vec<String> {
        sse_events(&self.text())
    }
}

pub(crate) fn sse_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data event: {e:?}"))
                .to_string()
        })
        .collect()
}

/// Send one request (`Connection: close`) and read the whole response.
pub(crate) fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub(crate) fn request_head(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    len: usize,
) -> String {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

pub(crate) fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    // no test should wait this long: a hung connection fails the test
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    Ok(s)
}

pub(crate) fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Resp, String> {
    let mut s = connect(addr).map_err(|e| e.to_string())?;
    let mut msg = request_head(addr, method, path, headers, body.len()).into_bytes();
    msg.extend_from_slice(body);
    if body.len() > 1 << 16 {
        // A big body is written from another thread: the server may answer (413)
        // before reading all of it.
        let mut w = s.try_clone().map_err(|e| e.to_string())?;
        thread::spawn(move || {
            let _ = w.write_all(&msg);
        });
    } else {
        s.write_all(&msg).map_err(|e| e.to_string())?;
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    parse_response(&raw)
}

pub(crate) fn parse_response(raw: &[u8]) -> Result<Resp, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            format!(
                "no complete HTTP head in {:?}",
                String::from_utf8_lossy(raw)
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

pub(crate) fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let nl = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunked body")?;
        let size_text = String::from_utf8_lossy(&b[..nl]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .map_err(|e| format!("bad chunk size {size_text:?}: {e}"))?;
        b = &b[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// What a streamed completion delivered.
#[derive(Debug, Default)]
pub(crate) struct Streamed {
    pub(crate) text: String,
    pub(crate) finish: Option<String>,
    pub(crate) usage: Option<Value>,
    /// seconds from sending the request to the first non-empty text
    pub(crate) ttft: Option<f64>,
    pub(crate) done: bool,
    pub(crate) events: usize,
}

/// A streamed request read incrementally (to time the first token), as OpenAI
/// clients do. Panics on anything but a 200 event stream ending in `[DONE]`.
pub(crate) fn stream(addr: &str, path: &str, body: &Value) -> Streamed {
    let t0 = Instant::now();
    let mut s = connect(addr).unwrap();
    let b = body.to_string();
    s.write_all(request_head(addr, "POST", path, &[], b.len()).as_bytes())
        .unwrap();
    s.write_all(b.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let mut out = Streamed::default();
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if out.ttft.is_none() {
            let t = String::from_utf8_lossy(&raw);
            if t.contains("\"text\":\"") && !t.contains("\"text\":\"\"")
                || t.contains("\"content\":\"") && t.matches("\"content\":\"").count() > 1
            {
                out.ttft = Some(t0.elapsed().as_secs_f64());
            }
        }
    }
    let r = parse_response(&raw).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    for ev in r.sse() {
        out.events += 1;
        assert!(!out.done, "data after [DONE]: {ev}");
        if ev == "[DONE]" {
            out.done = true;
            continue;
        }
        let v: Value =
            serde_json::from_str(&ev).unwrap_or_else(|e| panic!("bad chunk {ev:?}: {e}"));
        assert!(v.get("error").is_none(), "error in the stream: {ev}");
        if !v["usage"].is_null() {
            out.usage = Some(v["usage"].clone());
        }
        for c in v["choices"].as_array().unwrap() {
            if let Some(t) = c["text"].as_str() {
                out.text.push_str(t);
            }
            if let Some(t) = c["delta"]["content"].as_str() {
                out.text.push_str(t);
            }
            if let Some(f) = c["finish_reason"].as_str() {
                out.finish = Some(f.to_string());
            }
        }
    }
    assert!(out.done, "the stream did not end with [DONE]: {}", r.text());
    out
}

/// Start a streamed request and return the open connection once `events` SSE events
/// have arrived (the request is then running in the batch).
pub(crate) fn start_stream(addr: &str, body: &Value, events: usize) -> TcpStream {
    let mut s = connect(addr).unwrap();
    let b = body.to_string();
    s.write_all(request_head(addr, "POST", "/v1/completions", &[], b.len()).as_bytes())
        .unwrap();
    s.write_all(b.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&raw).matches("data: ").count() < events {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
    }
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    s
}

/// Check an OpenAI-shaped error: `{"error": {"message", "type", "param", "code"}}`.
pub(crate) fn assert_error(r: &Resp, status: u16, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{what}: content-type {:?}",
        r.header("content-type")
    );
    let v = r.json();
    let e = &v["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    assert!(e["type"].is_string(), "{what}: {v}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{what}: {v}"
    );
    e.clone()
}

pub(crate) fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name)
}
