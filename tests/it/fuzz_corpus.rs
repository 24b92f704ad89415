//! The fuzz corpora (`tests/fuzz/corpus/<target>/`) replayed on stable: every file of every target through the
//! same property check the fuzz target runs (`promptgate::harness`), so an input the fuzzer once found — a
//! crash kept in the corpus included — stays a test of the ordinary suite.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use promptgate::harness;

use crate::support::repo_root;

/// Runs `check` on every file of `tests/fuzz/corpus/<target>/`, naming each file whose check panics.
fn replay(target: &str, check: fn(&[u8])) {
    let dir: PathBuf = repo_root().join("tests/fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus file", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            catch_unwind(AssertUnwindSafe(|| check(&data))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} {target} corpus files break a property (the panic messages are above): {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn sse_stream_corpus_keeps_its_properties() {
    replay("sse_stream", harness::sse_stream);
}

#[test]
fn json_redaction_corpus_keeps_its_properties() {
    replay("json_redaction", harness::json_redaction);
}

#[test]
fn rule_files_corpus_keeps_its_properties() {
    replay("rule_files", harness::rule_files);
}

#[test]
fn normalize_spans_corpus_keeps_its_properties() {
    replay("normalize_spans", harness::normalize_spans);
}

#[test]
fn realtime_events_corpus_keeps_its_properties() {
    replay("realtime_events", harness::realtime_events);
}
