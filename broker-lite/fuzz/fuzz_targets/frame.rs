//! Bytes off the socket, as the server's and the clients' readers see them: frames, then each
//! frame's body as a request, a response and an error reply.
#![no_main]

use broker_lite_client::protocol::{ErrorReply, Frame, Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = bytes::BytesMut::from(data);
    while let Ok(Some(frame)) = Frame::parse(&mut buf, 1 << 20) {
        let _ = Request::decode(frame.code, frame.body.clone());
        let _ = Response::decode(frame.code, frame.body.clone());
        let _ = ErrorReply::decode(frame.body);
    }
});
