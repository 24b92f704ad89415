//! OpenAI wire knowledge: which routes exist and what they carry, the JSON and SSE framing the gateway reads,
//! token usage, and the error format the gateway answers in. Pure data; no sockets, no Pingora.

pub mod error;
pub mod json;
pub mod multipart;
mod route;
pub mod sse;
pub mod usage;

pub use error::{ErrorResponse, Rejection};
pub use route::Route;

/// Whether a client-supplied id (a request id, a session id) is short and made of safe characters, so it can
/// go into headers, logs and events as it is.
pub fn is_safe_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Whether a client-supplied name (a model: `gpt-4o-mini`, `meta-llama/Llama-3-8B`, `claude@2024`) is short and
/// made of the characters such names use, so it can go into an event as it is.
pub fn is_safe_name(v: &str) -> bool {
    (1..=128).contains(&v.len())
        && v.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'@' | b'+')
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn safe_names() {
        assert!(super::is_safe_name("meta-llama/Llama-3.1-8B-Instruct"));
        assert!(super::is_safe_name("claude-3-5-sonnet@20240620"));
        assert!(!super::is_safe_name("gpt 4"));
        assert!(!super::is_safe_name("a\"b"));
        assert!(!super::is_safe_name(""));
    }

    #[test]
    fn safe_ids() {
        assert!(super::is_safe_id(b"abc-123_X.y:z"));
        assert!(!super::is_safe_id(b""));
        assert!(!super::is_safe_id(b"has space"));
        assert!(!super::is_safe_id(b"new\nline"));
        assert!(!super::is_safe_id(&[b'a'; 129]));
    }
}
