//! Streamed responses as server-sent events in OpenAI's chunk format: one
//! `data: {chunk}` event per piece of text, a last chunk with `finish_reason`, the usage
//! chunk under `stream_options.include_usage`, then `data: [DONE]`. The body owns the
//! request's event receiver, so when the client disconnects hyper drops the body, the
//! receiver closes and the scheduler cancels the sequence.

use crate::api::ResponseMeta;
use crate::scheduler::Event;
use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde_json::Value;
use std::convert::Infallible;
use tokio::sync::mpsc;

struct StreamState {
    rx: mpsc::UnboundedReceiver<Event>,
    meta: ResponseMeta,
    include_usage: bool,
    /// the opening chunk (chat: the assistant role) is still to be sent
    opening: bool,
    done: bool,
}

fn event(v: &Value, out: &mut String) {
    out.push_str("data: ");
    out.push_str(&v.to_string());
    out.push_str("\n\n");
}

const DONE: &str = "data: [DONE]\n\n";

/// The `text/event-stream` response for a request whose events arrive on `rx`.
pub fn response(
    meta: ResponseMeta,
    rx: mpsc::UnboundedReceiver<Event>,
    include_usage: bool,
) -> Response {
    let state = StreamState {
        rx,
        meta,
        include_usage,
        opening: true,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let mut out = String::new();
        if st.opening {
            st.opening = false;
            if st.meta.endpoint == crate::api::Endpoint::Chat {
                event(
                    &st.meta.chunk(true, Some(""), None, st.include_usage),
                    &mut out,
                );
                return Some((Ok::<Bytes, Infallible>(Bytes::from(out)), st));
            }
        }
        // Send every piece already waiting in one write.
        let mut next = st.rx.recv().await;
        loop {
            match next {
                Some(Event::Text(t)) => {
                    event(
                        &st.meta.chunk(false, Some(&t), None, st.include_usage),
                        &mut out,
                    );
                }
                Some(Event::Done { finish, usage }) => {
                    let last = match st.meta.endpoint {
                        crate::api::Endpoint::Chat => {
                            st.meta
                                .chunk(false, None, Some(finish.as_str()), st.include_usage)
                        }
                        crate::api::Endpoint::Completion => {
                            st.meta
                                .chunk(false, Some(""), Some(finish.as_str()), st.include_usage)
                        }
                    };
                    event(&last, &mut out);
                    if st.include_usage {
                        event(&st.meta.usage_chunk(usage), &mut out);
                    }
                    out.push_str(DONE);
                    st.done = true;
                    break;
                }
                Some(Event::Error(e)) => {
                    event(&e.body(), &mut out);
                    out.push_str(DONE);
                    st.done = true;
                    break;
                }
                None => {
                    let e = crate::api::ApiError::internal("generation ended unexpectedly");
                    event(&e.body(), &mut out);
                    out.push_str(DONE);
                    st.done = true;
                    break;
                }
            }
            match st.rx.try_recv() {
                Ok(ev) => next = Some(ev),
                Err(_) => break,
            }
        }
        Some((Ok(Bytes::from(out)), st))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(stream))
        .expect("a valid response")
}
