//! Just enough HTTP/1.1 for the mock: requests with Content-Length or chunked bodies, keep-alive, and
//! responses either whole or as chunked SSE.

use std::io::{Error, ErrorKind};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub keep_alive: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Read side of a connection: a buffer that survives between keep-alive requests.
pub struct Connection {
    buf: BytesMut,
}

fn bad(msg: &str) -> Error {
    Error::new(ErrorKind::InvalidData, msg.to_string())
}

impl Connection {
    pub fn new() -> Self {
        Self {
            buf: BytesMut::with_capacity(16 * 1024),
        }
    }

    async fn fill(&mut self, stream: &mut TcpStream) -> std::io::Result<bool> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        Ok(stream.read_buf(&mut self.buf).await? > 0)
    }

    /// The bytes read past the last request: what a client sent after an upgrade request without waiting for
    /// the answer.
    pub fn into_buffered(self) -> Vec<u8> {
        self.buf.to_vec()
    }

    /// The next request, or `None` at a clean end of the connection.
    pub async fn read_request(
        &mut self,
        stream: &mut TcpStream,
    ) -> std::io::Result<Option<Request>> {
        let (head_len, mut req, content_length, chunked) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Request::new(&mut headers);
            match parsed.parse(&self.buf).map_err(|e| bad(&e.to_string()))? {
                httparse::Status::Complete(n) => {
                    let target = parsed.path.unwrap_or("/");
                    let (path, query) = match target.split_once('?') {
                        Some((p, q)) => (p.to_string(), Some(q.to_string())),
                        None => (target.to_string(), None),
                    };
                    let mut content_length = 0usize;
                    let mut chunked = false;
                    let mut keep_alive = parsed.version == Some(1);
                    let hs: Vec<(String, String)> = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    for (k, v) in &hs {
                        match k.as_str() {
                            "content-length" => {
                                content_length =
                                    v.trim().parse().map_err(|_| bad("content-length"))?
                            }
                            "transfer-encoding" => {
                                chunked = v.to_ascii_lowercase().contains("chunked")
                            }
                            "connection" => {
                                let v = v.to_ascii_lowercase();
                                if v.contains("close") {
                                    keep_alive = false;
                                } else if v.contains("keep-alive") {
                                    keep_alive = true;
                                }
                            }
                            _ => {}
                        }
                    }
                    let req = Request {
                        method: parsed.method.unwrap_or("GET").to_string(),
                        path,
                        query,
                        headers: hs,
                        body: Vec::new(),
                        keep_alive,
                    };
                    break (n, req, content_length, chunked);
                }
                httparse::Status::Partial => {
                    if self.buf.len() > MAX_HEAD {
                        return Err(bad("request head too large"));
                    }
                    if !self.fill(stream).await? {
                        return if self.buf.is_empty() {
                            Ok(None)
                        } else {
                            Err(Error::new(ErrorKind::UnexpectedEof, "eof in request head"))
                        };
                    }
                }
            }
        };
        self.buf.advance(head_len);
        if chunked {
            req.body = self.read_chunked(stream).await?;
        } else {
            if content_length > MAX_BODY {
                return Err(bad("body too large"));
            }
            while self.buf.len() < content_length {
                if !self.fill(stream).await? {
                    return Err(Error::new(ErrorKind::UnexpectedEof, "eof in body"));
                }
            }
            req.body = self.buf.split_to(content_length).to_vec();
        }
        Ok(Some(req))
    }

    async fn read_chunked(&mut self, stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                if !self.fill(stream).await? {
                    return Err(Error::new(ErrorKind::UnexpectedEof, "eof in chunk size"));
                }
            };
            let line = std::str::from_utf8(&self.buf[..line_end]).map_err(|_| bad("chunk size"))?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("chunk size"))?;
            self.buf.advance(line_end + 2);
            if body.len() + size > MAX_BODY {
                return Err(bad("body too large"));
            }
            if size == 0 {
                // Trailers (ignored) end with an empty line.
                loop {
                    let i = loop {
                        if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                            break i;
                        }
                        if !self.fill(stream).await? {
                            return Err(Error::new(ErrorKind::UnexpectedEof, "eof in trailers"));
                        }
                    };
                    self.buf.advance(i + 2);
                    if i == 0 {
                        return Ok(body);
                    }
                }
            }
            while self.buf.len() < size + 2 {
                if !self.fill(stream).await? {
                    return Err(Error::new(ErrorKind::UnexpectedEof, "eof in chunk"));
                }
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.advance(size + 2);
        }
    }
}

/// Write side of one exchange.
pub struct Responder<'a> {
    stream: &'a mut TcpStream,
    keep_alive: bool,
    /// Write streamed bytes this many at a time (with a pause between writes).
    write_bytes: Option<usize>,
    /// The `Content-Type` to claim instead of the right one (`Some(None)`: none at all).
    content_type: Option<Option<String>>,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

impl<'a> Responder<'a> {
    pub fn new(stream: &'a mut TcpStream, keep_alive: bool) -> Self {
        Self {
            stream,
            keep_alive,
            write_bytes: None,
            content_type: None,
        }
    }

    pub fn set_write_bytes(&mut self, n: Option<usize>) {
        self.write_bytes = n;
    }

    /// Labels every answer with this `Content-Type` (`"none"`: no `Content-Type` at all), whatever it is.
    pub fn set_content_type(&mut self, v: Option<&str>) {
        self.content_type = v.map(|v| (v != "none").then(|| v.to_string()));
    }

    /// The `content-type` line for an answer that really is `real`.
    fn content_type_line(&self, real: &str) -> String {
        match &self.content_type {
            None => format!("content-type: {real}\r\n"),
            Some(Some(ct)) => format!("content-type: {ct}\r\n"),
            Some(None) => String::new(),
        }
    }

    fn connection(&self) -> &'static str {
        if self.keep_alive {
            "keep-alive"
        } else {
            "close"
        }
    }

    /// A whole JSON response.
    pub async fn json(&mut self, status: u16, body: &[u8]) -> std::io::Result<()> {
        let head = format!(
            "HTTP/1.1 {status} {}\r\n{}content-length: {}\r\nconnection: {}\r\nx-mock: 1\r\n\r\n",
            reason(status),
            self.content_type_line("application/json"),
            body.len(),
            self.connection()
        );
        let mut out = Vec::with_capacity(head.len() + body.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(body);
        self.stream.write_all(&out).await
    }

    /// Starts an SSE response (chunked).
    pub async fn sse_start(&mut self) -> std::io::Result<()> {
        let head = format!(
            "HTTP/1.1 200 OK\r\n{}cache-control: no-cache\r\ntransfer-encoding: chunked\r\nconnection: {}\r\nx-mock: 1\r\n\r\n",
            self.content_type_line("text/event-stream; charset=utf-8"),
            self.connection()
        );
        self.stream.write_all(head.as_bytes()).await
    }

    /// Writes raw SSE bytes as one HTTP chunk, flushed at once.
    pub async fn sse_raw(&mut self, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut out = Vec::with_capacity(data.len() + 16);
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
        match self.write_bytes {
            None => self.stream.write_all(&out).await,
            Some(n) => {
                for piece in out.chunks(n) {
                    self.stream.write_all(piece).await?;
                    self.stream.flush().await?;
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                Ok(())
            }
        }
    }

    /// Ends the chunked body.
    pub async fn sse_end(&mut self) -> std::io::Result<()> {
        self.stream.write_all(b"0\r\n\r\n").await
    }
}
