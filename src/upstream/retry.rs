//! The one retry policy, for every exchange with an upstream: the relay's ([`super::Upstream::send`]) and
//! Pingora's proxy loop's (through the `error_while_proxy` and `fail_to_connect` hooks, with the server's
//! `max_retries` set to [`ATTEMPTS`]).
//!
//! **Retried, once, on a fresh connection:** an attempt made on a pooled keep-alive connection that failed
//! before any byte of the answer arrived, other than by a timeout. That is the keep-alive race every pooled
//! client meets: the upstream closed the idle connection just as the request went out.
//!
//! **Moved to another endpoint of the pool** ([`failure`] is `Connect`): a connection that could not be made
//! (refused, unreachable, TLS failure, connect timeout). Nothing was sent, so this is always safe; the endpoint
//! is ejected for a while (`upstream/pool.rs`). At most [`ENDPOINT_ATTEMPTS`] endpoints per pool.
//!
//! **Moved to the fallback pool**: a 429 or 5xx answer of a pool that names a `fallback`, on the relay path,
//! before any byte of it went to the client (`proxy/relay.rs`); each pool at most once.
//!
//! **Not retried:**
//! - timeouts after the request went out: the upstream may be working on it (a generation is paid for); the
//!   endpoint is ejected, the client gets 504;
//! - a connection reset or closed after the request went out, on a fresh connection: the upstream may have
//!   read it;
//! - anything after the response header: part of the answer may already be on its way to the client;
//! - a request whose body the gateway can no longer send again (Pingora's loop keeps at most 64 KiB of a
//!   streamed body for a retry).
//!
//! This deliberately differs from Pingora's default `error_while_proxy`, which never retries a non-idempotent
//! method: every model call is a `POST`, and without this the stale-connection race would reach clients as
//! 502s. The price: an upstream that read a request and then dropped the connection without a byte of answer
//! gets it a second time.

use pingora::{Error, ErrorType};

/// Attempts on one connection slot, the first included (the keep-alive race allows one more).
pub const ATTEMPTS: usize = 2;

/// Endpoints of one pool tried for one request when connections cannot be made.
pub const ENDPOINT_ATTEMPTS: usize = 3;

/// Pools one request may go to (its own, then fallbacks).
pub const POOL_ATTEMPTS: usize = 3;

/// Attempts Pingora's proxy loop may make for one request: every endpoint, each with its keep-alive retry.
pub const PROXY_ATTEMPTS: usize = ENDPOINT_ATTEMPTS * ATTEMPTS;

/// What a failed attempt says about its endpoint: `Connect` (no connection: nothing was sent), `Timeout`
/// (no answer in time), or nothing (the endpoint answered, or the failure is not the endpoint's).
pub fn failure(e: &Error) -> Option<super::pool::Failure> {
    use super::pool::Failure;
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure
        | TLSHandshakeTimedout | InvalidCert | SocketError | BindError => Some(Failure::Connect),
        ReadTimedout | WriteTimedout => Some(Failure::Timeout),
        _ => None,
    }
}

/// Whether attempt number `attempt` (from 1), which failed with `e` before any answer byte, is tried again.
/// `reused`: it ran on a pooled connection; `replayable`: the whole request body can be sent again.
pub fn again(e: &Error, reused: bool, attempt: usize, replayable: bool) -> bool {
    use ErrorType::*;
    attempt < ATTEMPTS
        && reused
        && replayable
        && !matches!(e.etype(), ConnectTimedout | ReadTimedout | WriteTimedout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dead_pooled_connection_is_retried_once() {
        use ErrorType::*;
        let e = |t: ErrorType| Error::new(t);
        // (error, reused, attempt, replayable, retried)
        let cases = [
            (ConnectionClosed, true, 1, true, true),
            (WriteError, true, 1, true, true),
            (ReadError, true, 1, true, true),
            (ConnectionClosed, true, 2, true, false),
            (ConnectionClosed, false, 1, true, false),
            (ConnectRefused, false, 1, true, false),
            (ConnectionClosed, true, 1, false, false),
            (ReadTimedout, true, 1, true, false),
            (WriteTimedout, true, 1, true, false),
            (ConnectTimedout, true, 1, true, false),
        ];
        for (t, reused, attempt, replayable, want) in cases {
            let err = e(t.clone());
            assert_eq!(
                again(&err, reused, attempt, replayable),
                want,
                "{t:?} reused={reused} attempt={attempt} replayable={replayable}"
            );
        }
    }
}
