//! Handing an HTTP/1.1 client connection's stream to a CONNECT tunnel. The listener serves
//! HTTP/1.1 without hyper's upgrade machinery (so that it can take idle connections back,
//! see `listener::h1`): a CONNECT leaves its tunnel here as a job, and once the 200 is
//! written the listener runs the job on the raw stream, bytes read ahead included.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncWrite};

/// A client stream of any kind (TCP, TLS inside an intercepted tunnel, hyper's upgrade).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub type BoxIo = Box<dyn Io>;
pub type Job = Box<dyn FnOnce(BoxIo) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The tunnel a CONNECT on this connection is waiting to run, if any.
#[derive(Default)]
pub struct Handoff(Mutex<Option<Job>>);

impl Handoff {
    pub fn set(&self, job: Job) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(job);
    }

    pub fn take(&self) -> Option<Job> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl fmt::Debug for Handoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let waiting = self
            .0
            .lock()
            .map(|j| j.is_some())
            .unwrap_or_else(|e| e.into_inner().is_some());
        f.debug_struct("Handoff")
            .field("waiting", &waiting)
            .finish()
    }
}
