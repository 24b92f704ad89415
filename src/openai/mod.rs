//! OpenAI wire knowledge: which routes exist and what they carry. Pure data; no sockets, no Pingora.

pub mod json;
mod route;
pub mod sse;
pub mod usage;

pub use route::Route;
