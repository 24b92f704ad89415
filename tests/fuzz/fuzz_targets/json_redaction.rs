//! Fuzz target `json_redaction`: the property checks of `promptgate::harness::json_redaction`, which the corpus replay
//! (`tests/it/fuzz_corpus.rs`) runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| promptgate::harness::json_redaction(data));
