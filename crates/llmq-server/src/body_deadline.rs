//! A deadline on reading a request body: a client that sends a request head and then
//! stalls or trickles its body cannot hold a connection (and a queue of parsed bytes)
//! forever. [`limit`] wraps every request body in a [`DeadlineBody`] that fails with
//! [`BodyDeadline`] once [`BODY_READ_TIMEOUT`] has passed since the head arrived; the
//! handler's body error then becomes `408 Request Timeout` ([`is_deadline`]) and
//! hyper closes the connection, as it does for any request whose body was not read
//! to its end (RFC 9110 §15.5.9).

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Time a client has, from the end of its request head, to send the whole body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The body did not arrive within [`BODY_READ_TIMEOUT`].
#[derive(Debug)]
pub struct BodyDeadline;

impl std::fmt::Display for BodyDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s",
            BODY_READ_TIMEOUT.as_secs()
        )
    }
}

impl std::error::Error for BodyDeadline {}

/// A request body that fails with [`BodyDeadline`] when its deadline passes before
/// its last frame.
pub struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|r| r.map_err(Into::into))),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyDeadline)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: start the body's deadline now, as the request head has arrived.
pub async fn limit(req: Request, next: Next) -> Response {
    let sleep = Box::pin(tokio::time::sleep(BODY_READ_TIMEOUT));
    next.run(req.map(|inner| Body::new(DeadlineBody { inner, sleep })))
        .await
}

/// Whether an error (a body rejection, say) was caused by [`BodyDeadline`].
pub fn is_deadline(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyDeadline>() {
            return true;
        }
        cur = err.source();
    }
    false
}
