//! Replays the `record` fuzz corpus (`broker-lite/fuzz/corpus/record`, issue 16) with the fuzz
//! target's own checks, so that every input the fuzzer kept, crashes it found included, stays a
//! regression test on stable Rust without libFuzzer. The frame and bodies corpora are replayed
//! by `client/tests/fuzz_corpus.rs`.

#[path = "../fuzz/checks/record.rs"]
mod checks;

use std::path::PathBuf;

use broker_lite::storage::fuzzing::decode_record;

#[test]
fn the_record_corpus_passes_the_fuzz_checks() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/record");
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "the corpus {} is empty", dir.display());
    let mut valid = 0;
    for (path, input) in &inputs {
        let outcome = std::panic::catch_unwind(|| checks::check(input));
        assert!(outcome.is_ok(), "{} fails the fuzz checks", path.display());
        valid += usize::from(decode_record(input.clone().into()).is_ok());
    }
    assert!(valid > 0, "the seeds hold valid records as written");
}
