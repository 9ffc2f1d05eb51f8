//! Bytes of a segment file, as log reads and recovery see them: the storage record decoder.
//! The checks are in `../checks/record.rs`, shared with the corpus test.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/record.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check(data));
