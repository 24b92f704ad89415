//! promptgate: a governing reverse proxy for OpenAI-format LLM traffic, built on Pingora.
//!
//! Module map (the path of a request can be found by file names alone):
//! - `config`: the TOML format and the validated config;
//! - `proxy`: the only module that knows Pingora's proxy — hooks are glue;
//! - `openai`: wire knowledge (routes, shapes), pure;
//! - `live`: one live-reloaded set (load → validate → swap) for the rules and the keys;
//! - `admin`, `metrics`: the operator's side;
//! - `server`: assembly and shutdown;
//! - `mock`: the mock OpenAI upstream used by the demo, the tests and the benchmarks;
//! - `cli`: subcommands.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod inspect;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod mock;
pub mod openai;
pub mod proxy;
pub mod rules;
pub mod server;
