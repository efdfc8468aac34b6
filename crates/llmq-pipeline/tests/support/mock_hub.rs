//! A local stand-in for the Hugging Face Hub, speaking the two endpoints `hf-hub` uses:
//! `GET /api/models/{repo}/revision/{rev}` (JSON with `sha` and `siblings`) and
//! `GET /{repo}/resolve/{rev}/{file}` with `Range` (206, `Content-Range`, `ETag`,
//! `X-Repo-Commit`). Repos can require a bearer token; a file can be served short.
//! The body bytes served are counted per file (`MockHub::served`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Default, Clone)]
pub struct MockRepo {
    pub files: Vec<(String, Vec<u8>)>,
    pub token: Option<String>,
    /// files whose body is cut to half (with a matching Content-Length, so the client
    /// sees a clean but short response)
    pub short: Vec<String>,
}

impl MockRepo {
    /// Every file of a local folder.
    pub fn from_dir(dir: &Path) -> MockRepo {
        let mut files = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.path().is_file() {
                files.push((
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                ));
            }
        }
        files.sort();
        MockRepo {
            files,
            ..Default::default()
        }
    }
}

pub struct MockHub {
    pub url: String,
    pub requests: Arc<Mutex<Vec<String>>>,
    /// body bytes sent, by file name
    pub served: Arc<Mutex<HashMap<String, usize>>>,
}

type Served = Mutex<HashMap<String, usize>>;

fn hex(b: &[u8]) -> String {
    // Small stable digest (FNV-1a) as an ETag; content-addressed like the Hub's.
    let mut h: u64 = 0xcbf29ce484222325;
    for x in b {
        h ^= *x as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}{}", b.len())
}

fn respond(mut s: &TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
}

fn handle(
    s: TcpStream,
    repos: &HashMap<String, MockRepo>,
    log: &Mutex<Vec<String>>,
    served: &Served,
) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    log.lock().unwrap().push(path.clone());
    let not_found = |s: &TcpStream| {
        respond(
            s,
            "404 Not Found",
            &[("X-Error-Code".into(), "RepoNotFound".into())],
            br#"{"error":"Repository not found"}"#,
        )
    };
    let (repo_id, rest) = if let Some(p) = path.strip_prefix("/api/models/") {
        match p.split_once("/revision/") {
            Some((id, _)) => (id.to_string(), None),
            None => return not_found(&s),
        }
    } else {
        match path[1..].split_once("/resolve/") {
            Some((id, r)) => (
                id.to_string(),
                Some(
                    r.split_once('/')
                        .map(|(_, f)| f.to_string())
                        .unwrap_or_default(),
                ),
            ),
            None => return not_found(&s),
        }
    };
    let Some(repo) = repos.get(&repo_id) else {
        return not_found(&s);
    };
    if let Some(t) = &repo.token {
        if headers.get("authorization") != Some(&format!("Bearer {t}")) {
            return respond(
                &s,
                "401 Unauthorized",
                &[("X-Error-Code".into(), "GatedRepo".into())],
                br#"{"error":"Access to this model is restricted"}"#,
            );
        }
    }
    let commit = "0123456789abcdef0123456789abcdef01234567".to_string();
    match rest {
        None => {
            let siblings: Vec<serde_json::Value> = repo
                .files
                .iter()
                .map(|(n, _)| serde_json::json!({"rfilename": n}))
                .collect();
            let body =
                serde_json::json!({"id": repo_id, "sha": commit, "siblings": siblings}).to_string();
            respond(
                &s,
                "200 OK",
                &[("Content-Type".into(), "application/json".into())],
                body.as_bytes(),
            );
        }
        Some(file) => {
            let Some((_, data)) = repo.files.iter().find(|(n, _)| *n == file) else {
                return respond(
                    &s,
                    "404 Not Found",
                    &[("X-Error-Code".into(), "EntryNotFound".into())],
                    b"{}",
                );
            };
            let start: usize = headers
                .get("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split('-').next())
                .and_then(|a| a.parse().ok())
                .unwrap_or(0);
            let end: usize = headers
                .get("range")
                .and_then(|r| r.split('-').nth(1))
                .and_then(|b| b.parse::<usize>().ok())
                .map(|b| b + 1)
                .unwrap_or(data.len())
                .min(data.len());
            let mut body = &data[start.min(data.len())..end];
            if repo.short.contains(&file) && body.len() > 1 {
                body = &body[..body.len() / 2];
            }
            let hdrs = vec![
                ("ETag".to_string(), format!("\"{}\"", hex(data))),
                ("X-Repo-Commit".to_string(), commit),
                (
                    "Content-Range".to_string(),
                    format!("bytes {start}-{}/{}", end.saturating_sub(1), data.len()),
                ),
                ("Accept-Ranges".to_string(), "bytes".to_string()),
            ];
            *served.lock().unwrap().entry(file.clone()).or_insert(0) += body.len();
            respond(&s, "206 Partial Content", &hdrs, body);
        }
    }
}

/// Serve `repos` (by id) on 127.0.0.1 until the test process ends.
pub fn start(repos: HashMap<String, MockRepo>) -> MockHub {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    let served = Arc::new(Mutex::new(HashMap::new()));
    let counted = served.clone();
    let repos = Arc::new(repos);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let repos = repos.clone();
            let log = log.clone();
            let counted = counted.clone();
            std::thread::spawn(move || handle(s, &repos, &log, &counted));
        }
    });
    MockHub {
        url,
        requests,
        served,
    }
}
