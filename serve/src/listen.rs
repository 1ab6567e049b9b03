//! Taking connections: at most [`Budget::connections`] served at once, `503 Service
//! Unavailable` past that, and listening that survives a failed `accept`.
//!
//! A connection past the cap gets its 503 (with `Retry-After` and a JSON error) as soon as it
//! is accepted, without waiting for its request. Its writing side is then shut, and what the
//! client sends is read and dropped for at most [`REFUSAL_LINGER`] before the socket closes:
//! closing a socket with unread data resets the connection, and a reset can reach the client
//! before it has read the 503. [`Budget::refusals`] refusals linger at once; the others
//! close right after their 503.
//!
//! A failed `accept` (no descriptor free, despite the cap, or a connection aborted before it
//! was taken) never stops the listening: the loop waits, backing off from [`FIRST_BACKOFF`]
//! to [`LAST_BACKOFF`] while accepting keeps failing, and accepts again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::http::{RETRY_AFTER_SECONDS, error_body};
use super::limits::Budget;

/// The first wait after a failed accept.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between two tries to accept.
pub const LAST_BACKOFF: Duration = Duration::from_secs(1);
/// How long a refused connection is read before it is closed.
pub const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The connections served and refused.
pub(super) struct Gate {
    open: Arc<Semaphore>,
    lingering: Arc<Semaphore>,
    connections: usize,
    access_log: bool,
}

impl Gate {
    /// A gate for `budget`.
    pub fn new(budget: &Budget, access_log: bool) -> Gate {
        Gate {
            open: Arc::new(Semaphore::new(budget.connections)),
            lingering: Arc::new(Semaphore::new(budget.refusals)),
            connections: budget.connections,
            access_log,
        }
    }

    /// Accepts connections on `listener` until the task running it is dropped, handing
    /// each one within the cap to `serve` with the permit that keeps its place, and
    /// refusing the others.
    pub async fn accept(
        &self,
        listener: &TcpListener,
        serve: impl Fn(TcpStream, SocketAddr, OwnedSemaphorePermit),
    ) {
        let mut wait = FIRST_BACKOFF;
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    wait = FIRST_BACKOFF;
                    match Arc::clone(&self.open).try_acquire_owned() {
                        Ok(place) => serve(stream, peer, place),
                        Err(_) => {
                            let linger = Arc::clone(&self.lingering).try_acquire_owned().ok();
                            let (open, log) = (self.connections, self.access_log);
                            tokio::spawn(refuse(stream, peer, open, linger, log));
                        }
                    }
                }
                Err(error) => {
                    eprintln!(
                        "pipe serve: cannot accept a connection ({error}); listening again in {} ms",
                        wait.as_millis()
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(LAST_BACKOFF);
                }
            }
        }
    }
}

/// Answers 503 on a connection past the cap, reads what the client sends for at most
/// [`REFUSAL_LINGER`] when `linger` holds a place, and closes it.
async fn refuse(
    mut stream: TcpStream,
    peer: SocketAddr,
    open: usize,
    linger: Option<OwnedSemaphorePermit>,
    log: bool,
) {
    let started = Instant::now();
    let body = error_body(&format!(
        "the server has {open} connections open, the most it takes; retry later"
    ))
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Retry-After: {RETRY_AFTER_SECONDS}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let written = stream.write_all(response.as_bytes()).await.is_ok();
    if written && linger.is_some() {
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let drained = async { while let Ok(1..) = stream.read(&mut sink).await {} };
        let _ = tokio::time::timeout(REFUSAL_LINGER, drained).await;
    }
    if log {
        let ms = started.elapsed().as_secs_f64() * 1e3;
        eprintln!(
            "{} (a connection past the {open} open) 503 {ms:.1}ms",
            peer.ip()
        );
    }
}
