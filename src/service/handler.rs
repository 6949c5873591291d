//! In-process service handlers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use super::ServiceStream;
use crate::identity::Identity;

/// A boxed, sendable future, as handlers return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Who is calling, and what for.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The original caller (a relaying node passes the caller's identity along).
    pub caller: Identity,
    /// The service name asked for.
    pub service: String,
    /// The name of the node running the handler.
    pub node: String,
    /// The request's routing key, if any.
    pub key: Option<Vec<u8>>,
}

/// A service implemented in-process.
///
/// The stream has already been accepted when `serve` runs. Returning `Err` (or dropping the
/// stream unfinished) resets the stream, so the caller sees a failure, never a truncated reply.
pub trait Handler: Send + Sync + 'static {
    /// Serves one stream.
    fn serve(&self, stream: ServiceStream, ctx: RequestContext) -> BoxFuture<io::Result<()>>;
}

/// Echoes every byte back, streaming (no buffering of the whole request).
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Handler for Echo {
    fn serve(&self, mut stream: ServiceStream, _ctx: RequestContext) -> BoxFuture<io::Result<()>> {
        Box::pin(async move {
            while let Some(chunk) = stream.read_chunk(usize::MAX).await? {
                stream.write_chunk(chunk).await?;
            }
            stream.finish()
        })
    }
}

/// A request/response handler built from an async function; see [`request_handler`].
pub struct RequestFn<F> {
    max_request: usize,
    f: Arc<F>,
}

/// Makes a handler that reads the whole request (at most `max_request` bytes), calls `f`,
/// and writes its reply. An `Err(message)` from `f` resets the stream.
pub fn request_handler<F, Fut>(max_request: usize, f: F) -> RequestFn<F>
where
    F: Fn(Bytes, RequestContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, String>> + Send + 'static,
{
    RequestFn {
        max_request,
        f: Arc::new(f),
    }
}

impl<F, Fut> Handler for RequestFn<F>
where
    F: Fn(Bytes, RequestContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, String>> + Send + 'static,
{
    fn serve(&self, mut stream: ServiceStream, ctx: RequestContext) -> BoxFuture<io::Result<()>> {
        let f = self.f.clone();
        let max = self.max_request;
        Box::pin(async move {
            let req = stream.read_to_end(max).await?;
            let reply = f(Bytes::from(req), ctx).await.map_err(io::Error::other)?;
            stream.write_chunk(reply).await?;
            stream.finish()
        })
    }
}
