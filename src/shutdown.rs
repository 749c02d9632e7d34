//! Stopping the loop from outside: the [`Handle`] (for tests and embedders) and the signals
//! (for the binary) both end up as "stop requests" counted by the loop. The first request starts
//! a graceful drain; the second stops at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mio::Waker;

/// A cloneable, thread-safe way to stop a running server.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

struct Inner {
    waker: Waker,
    requests: AtomicUsize,
}

impl Handle {
    pub(crate) fn new(waker: Waker) -> Handle {
        Handle {
            inner: Arc::new(Inner {
                waker,
                requests: AtomicUsize::new(0),
            }),
        }
    }

    /// Ask the server to stop: the first call starts a graceful shutdown (stop accepting,
    /// finish every connection, at most `drain_timeout`); a second call stops at once.
    pub fn shutdown(&self) {
        self.inner.requests.fetch_add(1, Ordering::SeqCst);
        // If the wake fails the loop is gone already; nothing left to stop.
        let _ = self.inner.waker.wake();
    }

    /// How many stop requests were made through handles.
    pub(crate) fn requests(&self) -> usize {
        self.inner.requests.load(Ordering::SeqCst)
    }
}
