//! A named boxed response future, for middleware whose work is easiest written as `async` code.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::BoxError;

/// The response future of the producer layers that run `async` code (failure fallback, one-way).
pub struct BoxResponseFuture<T> {
    inner: BoxFuture<'static, Result<T, BoxError>>,
}

impl<T> BoxResponseFuture<T> {
    pub(crate) fn new(inner: BoxFuture<'static, Result<T, BoxError>>) -> Self {
        Self { inner }
    }
}

impl<T> fmt::Debug for BoxResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxResponseFuture").finish_non_exhaustive()
    }
}

impl<T> Future for BoxResponseFuture<T> {
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
