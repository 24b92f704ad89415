//! The integration suite: one binary, real processes on ephemeral ports. The gateway runs as the real
//! `promptgate` executable; the upstream is the project's mock (a real HTTP server task) or, for TLS, a Python
//! HTTPS server; clients are `reqwest`, raw TCP and the official `openai` packages for Python and
//! Node.

mod dns_server;
mod support;

mod answers;
mod audit;
mod audit_chain;
mod detection_context;
mod dns;
mod fleet;
mod forwarding;
mod fuzz_corpus;
mod hostile;
mod keys_limits;
mod lifecycle;
mod limits_redis;
mod paths;
mod policies;
mod pool_health;
mod pools;
mod realtime;
mod realtime_mock;
mod requests;
mod rules_engine;
mod rules_reload;
mod sdk;
mod sdk_node;
mod secrets;
mod streams;
mod tls;
mod tracing;
mod upgrade;
mod usage;
