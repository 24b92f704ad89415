//! Inspection: pure functions from text and a rule set to verdicts, and the state of an inspection in progress.
//! No sockets, no Pingora; `proxy` feeds them bytes and acts on what they decide.
//!
//! - `body`: a request body the gateway consumed, held and judged (what goes upstream, if anything);
//! - `request`: the walk of a JSON body (every string, keys and nested JSON too) and the one rule by which
//!   rule hits add up to a decision ([`judge`]);
//! - `answer`: which answers a route inspects and how (held, filtered, passed), and the verdict on a held one;
//! - `stream` and `holdback`: a streamed answer filtered event by event, holding back only what could still
//!   become part of a match;
//! - `outcome`: the decision on each direction, as headers, events and metrics report it;
//! - `decode`: request and answer bodies in gzip, deflate, br or zstd.

pub mod answer;
pub mod body;
mod decode;
pub mod holdback;
pub mod outcome;
pub mod realtime;
mod request;
pub mod stream;

pub use decode::{decode_body, ContentEncoding, DecodeError};
pub use outcome::{Outcome, Side};
pub use request::{
    inspect_json, inspect_text, judge, Decision, Facts, InspectOptions, Judged, OpaquePolicy,
    RuleHit, Verdict,
};
