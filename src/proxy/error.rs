//! Where failures meet Pingora: a [`Rejection`] carried inside a `pingora::Error` (and found again), any other
//! Pingora error mapped to the rejection the client should see, and the one writer of gateway-made answers.
//! What a rejection looks like on the wire — status, body, retry headers — is decided in `openai::error`.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};

use super::headers;
use super::RequestCtx;
use crate::openai::{ErrorResponse, Rejection};

impl Rejection {
    /// Wraps the rejection in a Pingora error whose root cause can be found again in `fail_to_proxy`.
    pub fn into_error(self) -> Box<Error> {
        let status = self.status();
        Error::because(ErrorType::HTTPStatus(status), "promptgate rejection", self)
    }

    /// Maps any error that ended a request to the rejection the client should see, or `None` when the client
    /// is gone (nothing can be written).
    pub fn from_error(e: &Error) -> Option<Rejection> {
        if let Some(r) = e.root_cause().downcast_ref::<Rejection>() {
            return Some(r.clone());
        }
        use ErrorType::*;
        match e.esource() {
            ErrorSource::Upstream => Some(match e.etype() {
                ConnectTimedout | ReadTimedout | WriteTimedout => Rejection::UpstreamTimeout,
                ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure
                | TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert => {
                    Rejection::UpstreamUnreachable
                }
                _ => Rejection::UpstreamFailed,
            }),
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => None,
                _ => Some(Rejection::BadRequest),
            },
            ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
                // Pingora's session leaves its own write failures unlabelled; the upstream layer labels every
                // error of its own, so an unlabelled failed write is the client's connection: it left.
                WriteError | ConnectionClosed => None,
                HTTPStatus(404) => Some(Rejection::NotFound {
                    method: String::new(),
                    path: String::new(),
                }),
                ConnectTimedout | ReadTimedout | WriteTimedout => Some(Rejection::UpstreamTimeout),
                _ => Some(Rejection::Internal),
            },
        }
    }
}

/// Writes a gateway-made answer: the rendered error with its retry headers, decorated like every answer.
pub async fn write(
    session: &mut Session,
    ctx: &mut RequestCtx,
    resp: &ErrorResponse,
) -> Result<()> {
    ctx.error_code = Some(resp.code);
    let header = header(resp, ctx)?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::clone(&resp.body)), true)
        .await
}

/// The header of a gateway-made answer: its status, type and length, its retry headers, decorated.
pub fn header(resp: &ErrorResponse, ctx: &RequestCtx) -> Result<ResponseHeader> {
    let mut header = ResponseHeader::build(resp.status, Some(4))?;
    header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    header.insert_header(http::header::CONTENT_LENGTH, resp.body.len().to_string())?;
    if let Some(retry) = resp.should_retry {
        header.insert_header("x-should-retry", if retry { "true" } else { "false" })?;
    }
    if let Some(after) = resp.retry_after {
        let ms = after.as_millis().max(1);
        header.insert_header(http::header::RETRY_AFTER, ms.div_ceil(1000).to_string())?;
        header.insert_header("retry-after-ms", ms.to_string())?;
    }
    headers::decorate(&mut header, ctx)?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_cause_survives_the_pingora_error() {
        let e = Rejection::UpstreamTimeout.into_error();
        assert!(matches!(
            Rejection::from_error(&e),
            Some(Rejection::UpstreamTimeout)
        ));
    }

    #[test]
    fn upstream_errors_map_by_kind() {
        let mut e = Error::new(ErrorType::ConnectRefused);
        e.esource = ErrorSource::Upstream;
        assert!(matches!(
            Rejection::from_error(&e),
            Some(Rejection::UpstreamUnreachable)
        ));
        let mut e = Error::new(ErrorType::ReadTimedout);
        e.esource = ErrorSource::Upstream;
        assert!(matches!(
            Rejection::from_error(&e),
            Some(Rejection::UpstreamTimeout)
        ));
        let mut e = Error::new(ErrorType::ReadError);
        e.esource = ErrorSource::Downstream;
        assert!(Rejection::from_error(&e).is_none());
        // A write to a client that left, as Pingora's session reports it (unlabelled).
        let e = Error::explain(ErrorType::WriteError, "flushing body");
        assert!(Rejection::from_error(&e).is_none());
    }
}
