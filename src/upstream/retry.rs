//! The one retry policy, for every exchange with an upstream: the relay's ([`super::Upstream::send`]) and
//! Pingora's proxy loop's (through the `error_while_proxy` and `fail_to_connect` hooks, with the server's
//! `max_retries` set to [`ATTEMPTS`]).
//!
//! **Retried, once, on a fresh connection:** an attempt made on a pooled keep-alive connection that failed
//! before any byte of the answer arrived, other than by a timeout. That is the keep-alive race every pooled
//! client meets: the upstream closed the idle connection just as the request went out.
//!
//! **Not retried:**
//! - timeouts: the upstream may be working on the request (a generation is paid for);
//! - failures on a fresh connection (refused, unreachable, reset): the upstream is down or refusing, and an
//!   immediate second try only doubles the client's wait;
//! - anything after the response header: part of the answer may already be on its way to the client;
//! - a request whose body the gateway can no longer send again (Pingora's loop keeps at most 64 KiB of a
//!   streamed body for a retry).
//!
//! This deliberately differs from Pingora's default `error_while_proxy`, which never retries a non-idempotent
//! method: every model call is a `POST`, and without this the stale-connection race would reach clients as
//! 502s. The price: an upstream that read a request and then dropped the connection without a byte of answer
//! gets it a second time.

use pingora::{Error, ErrorType};

/// Attempts per request, the first included.
pub const ATTEMPTS: usize = 2;

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
