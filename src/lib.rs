//! promptgate: a governing reverse proxy for OpenAI-format LLM traffic, built on Pingora.
//!
//! The way of one request, module by module:
//! `proxy` (Pingora's hooks; the path decided once: answer now, relay, or proxy) → `admission` (who is
//! calling and may they: `auth`, `limits`, CORS) → `inspect` (the body judged against `rules`) → `upstream`
//! (the pool routed to, the endpoint selected — balanced, health-checked, re-resolved — the exchange and its
//! retry policy) → `inspect` again for the answer (held whole or filtered as a
//! stream) → `audit` (the decision event) and `metrics`.
//!
//! Around it: `openai` (wire knowledge: routes, JSON and SSE framing, usage, the error format — pure),
//! `config` (the TOML format and the validated config), `live` (one live-reloaded set — load, validate, swap —
//! for the rules, the keys and the certificates), `server` (assembly: listeners plain and TLS, background
//! services, shutdown), `tls` (the TLS listeners' certificates), `otel` (OpenTelemetry
//! traces: the trace context of a request, its spans, the OTLP exporter), `admin` (health, metrics,
//! reload, usage), `usage` (requests and tokens per caller, tenant, model and hour, from per-hour rollups of the
//! audit files), `cli`
//! (subcommands), `mock` (the mock upstream of the demo, the tests and the benchmarks), `harness` (hidden, not
//! the product: the property checks behind the fuzz targets in `tests/fuzz/` and their corpus replay).

pub mod admin;
pub mod admission;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
#[doc(hidden)]
pub mod harness;
pub mod inspect;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod mock;
pub mod openai;
pub mod otel;
pub mod proxy;
pub mod rules;
pub mod server;
#[cfg(test)]
mod testkit;
pub mod tls;
pub mod upstream;
pub mod usage;
