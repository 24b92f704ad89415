//! Fuzz target `normalize_spans`: the property checks of `promptgate::harness::normalize_spans`, which the corpus replay
//! (`tests/it/fuzz_corpus.rs`) runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| promptgate::harness::normalize_spans(data));
