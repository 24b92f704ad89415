//! Request inspection: pure functions from a body and a rule set to a verdict (allow, redact with the
//! rewritten body, block, monitor). No sockets, no Pingora; `proxy` calls in and acts on the verdict.

mod decode;
pub mod holdback;
mod request;
pub mod stream;

pub use decode::{decode_body, ContentEncoding, DecodeError};
pub use request::{
    inspect_json, inspect_text, Decision, Facts, InspectOptions, OpaquePolicy, RuleHit, Verdict,
};
