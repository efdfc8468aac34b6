//! `info` on a Hub id without the weights. `config.json` (and the shard index, if
//! any) come whole through the cache as [`crate::hub`] fetches them; of each
//! safetensors shard only the header, by two HTTP Range requests (RFC 9110 §14): the
//! first 8 bytes (the header's length N, u64 little-endian, per the safetensors
//! format) and then bytes 8..8+N (the JSON header). Each shard is written to a scratch
//! folder as a sparse file of the size the server announces (`Content-Range`), so the
//! ordinary reader checks the offsets against the real size while no tensor byte is
//! transferred or stored. The scratch folder is not the cache: no later run can take
//! these files for a download.

use crate::hub::{classify_http, connect, fetch_file, HubError, HubOptions};
use std::io::{Read, Write};

/// Largest safetensors header accepted (the format's own limit, 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// `config.json`, the index if the repo has one, and every shard's header, in a
/// scratch folder (removed when the returned value is dropped) that opens as a model
/// folder.
pub fn fetch_headers(repo_id: &str, opts: &HubOptions) -> Result<tempfile::TempDir, HubError> {
    let remote = connect(repo_id, opts)?;
    let files: Vec<String> = remote
        .repo
        .info()
        .map_err(|e| crate::hub::classify(repo_id, e))?
        .siblings
        .into_iter()
        .map(|s| s.rfilename)
        .collect();
    let has = |f: &str| files.iter().any(|x| x == f);
    let scratch = tempfile::Builder::new()
        .prefix(".info-headers-")
        .tempdir_in(&opts.cache_dir)
        .map_err(|source| HubError::Io {
            path: opts.cache_dir.display().to_string(),
            source,
        })?;
    let copy = |file: &str| -> Result<(), HubError> {
        let src = fetch_file(repo_id, &remote, file, opts)?;
        let dst = scratch.path().join(file);
        std::fs::copy(&src, &dst).map_err(|source| HubError::Io {
            path: dst.display().to_string(),
            source,
        })?;
        Ok(())
    };
    if !has("config.json") {
        return Err(HubError::Network {
            repo: repo_id.into(),
            why: "the repository has no config.json".into(),
        });
    }
    copy("config.json")?;
    let shards: Vec<String> = if has("model.safetensors.index.json") {
        copy("model.safetensors.index.json")?;
        crate::hub::shards_of_index(
            repo_id,
            &scratch.path().join("model.safetensors.index.json"),
        )?
    } else if has("model.safetensors") {
        vec!["model.safetensors".into()]
    } else {
        return Err(HubError::NoWeights {
            repo: repo_id.into(),
        });
    };
    for shard in &shards {
        // the reader refuses such names too; never write outside the scratch folder
        if shard.contains('/') || shard.contains('\\') || shard.starts_with('.') {
            return Err(HubError::Network {
                repo: repo_id.into(),
                why: format!("bad index: shard name `{shard}` is not a plain file name"),
            });
        }
        let url = remote.repo.url(shard);
        let bad = |why: String| HubError::Network {
            repo: repo_id.into(),
            why: format!("{shard}: {why}"),
        };
        let (len_bytes, total) = get_range(repo_id, &url, opts, 0, 8)?;
        let n = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        if n > MAX_HEADER || 8 + n > total {
            return Err(bad(format!(
                "header length {n} does not fit a file of {total} bytes"
            )));
        }
        let (header, _) = get_range(repo_id, &url, opts, 8, n)?;
        let path = scratch.path().join(shard);
        let io = |source| HubError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut f = std::fs::File::create(&path).map_err(io)?;
        f.write_all(&n.to_le_bytes()).map_err(io)?;
        f.write_all(&header).map_err(io)?;
        // the data region stays a hole: zeros on read, nothing on disk
        f.set_len(total).map_err(io)?;
    }
    Ok(scratch)
}

/// Bytes `start..start+len` of `url`, and the file's total size from `Content-Range`.
/// Reads at most `len` bytes even from a server that ignores the range.
fn get_range(
    repo_id: &str,
    url: &str,
    opts: &HubOptions,
    start: u64,
    len: u64,
) -> Result<(Vec<u8>, u64), HubError> {
    let mut req = ureq::get(url).set("Range", &format!("bytes={start}-{}", start + len - 1));
    if let Some(t) = &opts.token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let resp = req.call().map_err(|e| classify_http(repo_id, e))?;
    let bad = |why: String| HubError::Network {
        repo: repo_id.into(),
        why: format!("{url}: {why}"),
    };
    let total: u64 = match resp.status() {
        206 => resp
            .header("content-range")
            .and_then(|r| r.rsplit('/').next())
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad("a range answer without a total size".into()))?,
        _ => resp
            .header("content-length")
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad("no Content-Range or Content-Length".into()))?,
    };
    let ranged = resp.status() == 206;
    let mut reader = resp.into_reader();
    if !ranged {
        // the whole file is coming: skip to `start`, then read only what is needed
        std::io::copy(&mut (&mut reader).take(start), &mut std::io::sink())
            .map_err(|e| bad(e.to_string()))?;
    }
    let mut buf = Vec::with_capacity(len as usize);
    reader
        .take(len)
        .read_to_end(&mut buf)
        .map_err(|e| bad(e.to_string()))?;
    if (buf.len() as u64) < len {
        return Err(bad(format!("received {} of {len} bytes", buf.len())));
    }
    Ok((buf, total))
}
