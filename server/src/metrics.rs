//! The Prometheus scrape endpoint (`[metrics] listen`, off by default): `GET /metrics` answers
//! with what `sesamed status --prometheus` prints. It is a minimal HTTP/1.1 server for one
//! purpose: a request head of at most [`MAX_HEAD`] bytes, read within [`READ_TIMEOUT`], one
//! answer, then the connection closes. At most [`MAX_CONNECTIONS`] connections are served at
//! once; more wait in the kernel's backlog. It never reads a request body and never echoes
//! anything from the request.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Longest request head (request line and headers).
pub const MAX_HEAD: usize = 8192;
/// How long a client may take to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 8;

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `GET /metrics` (or `HEAD`): the metrics.
    Metrics {
        /// `HEAD`: the headers only.
        head_only: bool,
    },
    /// `GET /`: a line pointing to `/metrics`.
    Index,
    /// Another path.
    NotFound,
    /// Another method.
    MethodNotAllowed,
    /// Not an HTTP request line.
    BadRequest,
}

/// Reads the request line of a request head (the bytes up to the first CRLF; bytes after it
/// are ignored, as are a missing final blank line and the headers).
pub fn parse_request(head: &[u8]) -> Request {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Request::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Request::BadRequest;
    }
    let path = target.split('?').next().unwrap_or(target);
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
            return Request::MethodNotAllowed;
        }
        _ => return Request::BadRequest,
    };
    match path {
        "/metrics" => Request::Metrics { head_only },
        "/" => Request::Index,
        _ => Request::NotFound,
    }
}

/// The whole answer to `request`; `metrics` renders the body when it is wanted.
pub fn respond(request: Request, metrics: impl FnOnce() -> String) -> Vec<u8> {
    let (status, content_type, body, head_only) = match request {
        Request::Metrics { head_only } => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(),
            head_only,
        ),
        Request::Index => (
            "200 OK",
            "text/plain; charset=utf-8",
            "sesamed: the metrics are at /metrics\n".to_owned(),
            false,
        ),
        Request::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: the metrics are at /metrics\n".to_owned(),
            false,
        ),
        Request::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".to_owned(),
            false,
        ),
        Request::BadRequest => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".to_owned(),
            false,
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        body.len(),
        if status.starts_with("405") {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        }
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Reads a request head: up to the blank line that ends it, [`MAX_HEAD`] bytes, or the
/// client's end of stream.
async fn read_head(stream: &mut tokio::net::TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n.min(MAX_HEAD - head.len())]);
    }
    Ok(head)
}

/// Serves the endpoint until the listener fails; `render` returns the metrics text.
pub async fn serve<F>(listener: TcpListener, render: F)
where
    F: Fn() -> String + Clone + 'static,
{
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = std::sync::Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (mut stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::task::spawn_local(async move {
            let _permit = permit;
            let Ok(Ok(head)) = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await
            else {
                return;
            };
            let answer = respond(parse_request(&head), render);
            let _ = tokio::time::timeout(READ_TIMEOUT, stream.write_all(&answer)).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_from_the_request_line() {
        let cases: [(&[u8], Request); 9] = [
            (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                Request::Metrics { head_only: false },
            ),
            (
                b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n",
                Request::Metrics { head_only: true },
            ),
            (b"GET / HTTP/1.1\r\n\r\n", Request::Index),
            (b"GET /etc/passwd HTTP/1.1\r\n\r\n", Request::NotFound),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Request::MethodNotAllowed),
            (b"GET /metrics\r\n\r\n", Request::BadRequest),
            (b"GET metrics HTTP/1.1\r\n\r\n", Request::BadRequest),
            (b"\xff\xfe / HTTP/1.1\r\n\r\n", Request::BadRequest),
            (b"", Request::BadRequest),
        ];
        for (head, want) in cases {
            assert_eq!(
                parse_request(head),
                want,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn answers_carry_a_length_and_close() {
        let a = String::from_utf8(respond(Request::Metrics { head_only: false }, || {
            "sesamed_grants_total 3\n".to_owned()
        }))
        .unwrap();
        assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
        assert!(a.contains("Content-Length: 23\r\n"), "{a}");
        assert!(a.contains("Connection: close\r\n"), "{a}");
        assert!(a.ends_with("\r\n\r\nsesamed_grants_total 3\n"), "{a}");
        let h = String::from_utf8(respond(Request::Metrics { head_only: true }, || {
            "x".repeat(10)
        }))
        .unwrap();
        assert!(
            h.contains("Content-Length: 10\r\n") && h.ends_with("\r\n\r\n"),
            "{h}"
        );
        let n = String::from_utf8(respond(Request::MethodNotAllowed, || unreachable!())).unwrap();
        assert!(
            n.starts_with("HTTP/1.1 405") && n.contains("Allow: GET, HEAD\r\n"),
            "{n}"
        );
    }
}
