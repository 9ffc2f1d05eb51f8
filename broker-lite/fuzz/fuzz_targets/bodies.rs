//! Every command body decoder: two bytes of command code, then the body. What decodes must
//! encode to something that decodes to the same value.
#![no_main]

use broker_lite_client::protocol::{Request, Response};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let code = u16::from_be_bytes([data[0], data[1]]);
    let body = Bytes::copy_from_slice(&data[2..]);
    if let Ok(request) = Request::decode(code, body.clone()) {
        assert_eq!(Request::decode(code, request.encode_body()).unwrap(), request);
    }
    if let Ok(response) = Response::decode(code, body) {
        assert_eq!(Response::decode(code, response.encode_body()).unwrap(), response);
    }
});
