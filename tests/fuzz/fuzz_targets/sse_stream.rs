//! Fuzz target `sse_stream`: the property checks of `promptgate::harness::sse_stream`, which the corpus replay
//! (`tests/it/fuzz_corpus.rs`) runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| promptgate::harness::sse_stream(data));
