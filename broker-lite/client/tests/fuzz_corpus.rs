//! Replays the fuzz corpus (`broker-lite/fuzz/corpus`, issue 16) with the fuzz targets' checks,
//! so that every input the fuzzer kept, crashes it found included, stays a regression test on
//! stable Rust without libFuzzer.

use std::path::PathBuf;

use broker_lite_client::protocol::{ErrorReply, Frame, Request, Response};
use bytes::{Bytes, BytesMut};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "the corpus {} is empty", dir.display());
    inputs
}

#[test]
fn the_frame_corpus_decodes_without_panicking() {
    let mut frames = 0;
    for input in corpus("frame") {
        let mut buf = BytesMut::from(&input[..]);
        while let Ok(Some(frame)) = Frame::parse(&mut buf, 1 << 20) {
            frames += 1;
            let _ = Request::decode(frame.code, frame.body.clone());
            let _ = Response::decode(frame.code, frame.body.clone());
            let _ = ErrorReply::decode(frame.body);
        }
    }
    assert!(frames > 0, "the seeds hold valid frames");
}

#[test]
fn the_bodies_corpus_round_trips() {
    for input in corpus("bodies") {
        let Some((code, body)) = input.split_first_chunk::<2>() else {
            continue;
        };
        let code = u16::from_be_bytes(*code);
        let body = Bytes::copy_from_slice(body);
        if let Ok(request) = Request::decode(code, body.clone()) {
            assert_eq!(
                Request::decode(code, request.encode_body()).unwrap(),
                request
            );
        }
        if let Ok(response) = Response::decode(code, body) {
            assert_eq!(
                Response::decode(code, response.encode_body()).unwrap(),
                response
            );
        }
    }
}
