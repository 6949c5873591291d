//! Control-stream messages (gossip, pings) and stream responses from a peer: decoding
//! arbitrary bytes never panics, and the frame reader refuses oversized frames up front.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quicmesh::gossip::GossipMsg;
use quicmesh::protocol::{read_frame_bytes, ControlMsg, Response};

fuzz_target!(|data: &[u8]| {
    let _ = postcard::from_bytes::<ControlMsg>(data);
    let _ = postcard::from_bytes::<GossipMsg>(data);
    let _ = postcard::from_bytes::<Response>(data);
    let rt = tokio_free_block_on(read_frame_bytes(&mut &data[..], 4096));
    if let Ok(body) = rt {
        assert!(body.len() <= 4096);
    }
});

/// The frame reader is async over an in-memory slice, which never pends: poll it once.
fn tokio_free_block_on<F: std::future::Future>(f: F) -> F::Output {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => unreachable!("reading from a slice never pends"),
    }
}
