//! Fuzz target `realtime_events`: the property checks of `promptgate::harness::realtime_events`, which the corpus
//! replay (`tests/it/fuzz_corpus.rs`) runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| promptgate::harness::realtime_events(data));
