//! The response future of [`LocalRetry`](super::LocalRetry).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::BoxError;

/// Runs the calls and the waits between them.
pub struct ResponseFuture<T> {
    inner: BoxFuture<'static, Result<T, BoxError>>,
}

impl<T> ResponseFuture<T> {
    pub(crate) fn new(inner: BoxFuture<'static, Result<T, BoxError>>) -> Self {
        Self { inner }
    }
}

impl<T> fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
