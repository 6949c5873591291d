//! What a node serves: in-process handlers and local TCP backends, and the splicing that
//! turns an accepted stream into a byte pipe to either of them or to another node.

mod handler;
mod splice;
mod stream;

pub use handler::{request_handler, BoxFuture, Echo, Handler, RequestContext, RequestFn};
pub(crate) use splice::{splice_quic, splice_tcp};
pub use stream::ServiceStream;
