//! Whatever bytes open a stream, the header decoder returns a value or an error, never
//! panics; and whatever it accepts re-encodes to the same header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quicmesh::protocol::{decode_header, encode_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = decode_header(data) {
        let frame = encode_frame(&h).expect("an accepted header encodes");
        assert_eq!(decode_header(&frame[4..]).expect("and decodes again"), h);
    }
});
