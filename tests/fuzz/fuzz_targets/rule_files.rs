//! Fuzz target `rule_files`: the property checks of `promptgate::harness::rule_files`, which the corpus replay
//! (`tests/it/fuzz_corpus.rs`) runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| promptgate::harness::rule_files(data));
