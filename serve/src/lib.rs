//! `pipe serve`: an HTTP server that labels texts with an exported bundle.
//!
//! | route           | answer                                                           |
//! | --------------- | ---------------------------------------------------------------- |
//! | `POST /predict` | `{"texts": ["…", …]}` → `{"predictions": [...]}`, each element as `pipe predict --json` prints it |
//! | `GET /health`   | `{"status": "ok"}`                                               |
//! | `GET /metadata` | the bundle's `bundle.json` (labels, model shape, provenance), the server's `pipe_version` and `max_batch` |
//!
//! Three kinds of threads share the work. A few *readers* take requests off the socket,
//! check them (size, JSON, texts) and put them on a bounded queue (503 when it is full).
//! One *worker* owns the model: it drains the queue, running one model batch for all
//! requests waiting (up to `max_batch` texts), so concurrent clients share model runs.
//! A few *writers* send the answers and log one line per request on stderr.
//! [`Server::stop`] stops taking requests, answers every queued one, and returns.
//! A failed `accept` (no descriptor free) does not stop the listening (see `listen`).

mod batcher;
mod http;
mod listen;
pub mod signal;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use pipe_models::bundle::Bundle;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen (`127.0.0.1:8080`; port 0 picks a free one).
    pub addr: SocketAddr,
    /// The most texts one model run takes.
    pub max_batch: usize,
    /// The most requests waiting for the model; more are refused with 503.
    pub queue: usize,
    /// The largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Threads that read requests, and threads that write answers.
    pub io_threads: usize,
    /// Whether to log one line per request on stderr.
    pub access_log: bool,
}

/// A running server.
pub struct Server {
    stopping: Arc<AtomicBool>,
    addr: SocketAddr,
    readers: Vec<JoinHandle<()>>,
    watchdog: JoinHandle<()>,
    worker: JoinHandle<()>,
    writers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds `options.addr` and starts serving `bundle`.
    pub fn start(bundle: Bundle, options: &ServeOptions) -> anyhow::Result<Server> {
        let gate = Arc::new(listen::Gate::bind(options.addr)?);
        let addr = gate.addr()?;
        let metadata = http::metadata(bundle.info(), options.max_batch);
        let (answered, to_write) = std::sync::mpsc::channel::<batcher::Done<http::Pending>>();
        let (queue, worker) = batcher::start(
            bundle,
            options.queue.max(1),
            options.max_batch.max(1),
            move |done| {
                // The writers only leave once the worker has.
                let _ = answered.send(done);
            },
        );
        let stopping = Arc::new(AtomicBool::new(false));
        let to_write = Arc::new(std::sync::Mutex::new(to_write));
        let writers = (0..options.io_threads.max(1))
            .map(|i| {
                let to_write = Arc::clone(&to_write);
                let log = options.access_log;
                std::thread::Builder::new()
                    .name(format!("serve-write-{i}"))
                    .spawn(move || {
                        loop {
                            let next = to_write.lock().map(|r| r.recv());
                            match next {
                                Ok(Ok(done)) => http::answer(done, log),
                                _ => break,
                            }
                        }
                    })
                    .expect("a writer thread starts")
            })
            .collect();
        let readers = (0..options.io_threads.max(1))
            .map(|i| {
                let reader = http::Reader {
                    gate: Arc::clone(&gate),
                    stopping: Arc::clone(&stopping),
                    queue: queue.clone(),
                    metadata: metadata.clone(),
                    max_body_bytes: options.max_body_bytes,
                    access_log: options.access_log,
                };
                std::thread::Builder::new()
                    .name(format!("serve-read-{i}"))
                    .spawn(move || reader.run())
                    .expect("a reader thread starts")
            })
            .collect();
        let watchdog = {
            let (gate, stopping) = (Arc::clone(&gate), Arc::clone(&stopping));
            std::thread::Builder::new()
                .name("serve-watch".into())
                .spawn(move || gate.watch(&stopping))
                .expect("the watchdog thread starts")
        };
        Ok(Server {
            watchdog,
            stopping,
            addr,
            readers,
            worker,
            writers,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking requests, answers those already queued, and returns once every thread
    /// has finished.
    pub fn stop(self) {
        // Readers look at `stopping` at least every poll interval.
        self.stopping.store(true, Ordering::SeqCst);
        for reader in self.readers {
            let _ = reader.join();
        }
        let _ = self.watchdog.join();
        // The readers held the last queue handles: the worker drains what is left and ends,
        // which closes the writers' channel.
        let _ = self.worker.join();
        for writer in self.writers {
            let _ = writer.join();
        }
    }
}
