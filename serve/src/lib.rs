//! `pipe serve`: an HTTP server that labels texts with an exported bundle.
//!
//! | route           | answer                                                           |
//! | --------------- | ---------------------------------------------------------------- |
//! | `POST /predict` | `{"texts": ["…", …]}` → `{"predictions": [...]}`, each element as `pipe predict --json` prints it |
//! | `GET /health`   | `{"status": "ok"}`                                               |
//! | `GET /metadata` | the bundle's `bundle.json` (labels, model shape, provenance), the server's `pipe_version` and `max_batch` |
//!
//! One *worker* thread owns the model. A few I/O threads (a tokio runtime, HTTP/1 by hyper)
//! take connections, read and check requests (size, JSON, texts) and hand them to the worker
//! (503 when [`ServeOptions::queue`] requests are already in its hands). The worker runs the
//! texts of all requests waiting in model batches of at most `max_batch`, taking turns
//! between requests so that one large request does not hold back the others, and skipping
//! requests whose client has left (see `batcher`). Each request's log line goes to stderr.
//!
//! At most [`Budget::connections`] connections are served at once, fewer than the process's
//! descriptor limit allows; more are answered 503 at once, and a failed `accept` never stops
//! the listening (see `listen`). [`Server::stop`] stops taking connections, answers every
//! request already taken, and returns.

mod batcher;
mod http;
mod limits;
mod listen;
pub mod signal;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use pipe_models::bundle::Bundle;
use tokio::sync::oneshot;

pub use limits::Budget;

/// How long [`Server::stop`] waits for the requests already taken to be answered; a
/// connection still open after that (a client that never finishes sending) is closed.
pub const STOP_GRACE: Duration = Duration::from_secs(60);

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen (`127.0.0.1:8080`; port 0 picks a free one).
    pub addr: SocketAddr,
    /// The most texts one model run takes.
    pub max_batch: usize,
    /// The most requests in the worker's hands (waiting or running); more are refused
    /// with 503.
    pub queue: usize,
    /// The largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Threads that take connections and read and answer requests.
    pub io_threads: usize,
    /// Whether to log one line per request on stderr.
    pub access_log: bool,
    /// The most connections served at once (default, and at most: what the descriptor
    /// limit allows, see [`Budget`]); more are answered 503.
    pub max_connections: Option<usize>,
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    budget: Budget,
    runtime: tokio::runtime::Runtime,
    stop: oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<()>,
    worker: JoinHandle<()>,
}

impl Server {
    /// Binds `options.addr` and starts serving `bundle`.
    pub fn start(bundle: Bundle, options: &ServeOptions) -> anyhow::Result<Server> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.io_threads.max(1))
            .thread_name("serve-io")
            .enable_all()
            .build()
            .context("cannot start the server's threads")?;
        let addr = options.addr;
        let listener = {
            let _inside = runtime.enter();
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
                .with_context(|| format!("cannot listen on {addr}"))?
        };
        let addr = listener
            .local_addr()
            .context("the server has no local address")?;
        // Counted once the bundle, the runtime and the socket are open.
        let budget = Budget::of_this_process(options.max_connections);
        let log = options.access_log;
        let metadata = http::metadata(bundle.info(), options.max_batch);
        let (queue, worker) =
            batcher::start(bundle, options.queue, options.max_batch, move |done| {
                http::deliver(done, log)
            });
        let routes = Arc::new(http::Routes {
            queue,
            metadata,
            max_body_bytes: options.max_body_bytes,
            access_log: log,
        });
        let gate = listen::Gate::new(&budget, log);
        let (stop, stopped) = oneshot::channel();
        let serving = runtime.spawn(serve(listener, gate, routes, stopped));
        Ok(Server {
            addr,
            budget,
            runtime,
            stop,
            serving,
            worker,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections it serves at once, and why.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Stops taking connections, answers the requests already taken (waiting at most
    /// [`STOP_GRACE`]), and returns once every thread has finished.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.runtime.block_on(self.serving);
        // Ends the connections that outlived the grace; their jobs' clients are then gone,
        // so the worker skips them, and it ends with the last handle on its queue.
        drop(self.runtime);
        let _ = self.worker.join();
    }
}

/// Serves connections from `listener` through `gate` until `stop`, then lets the requests
/// taken finish.
async fn serve(
    listener: tokio::net::TcpListener,
    gate: listen::Gate,
    routes: Arc<http::Routes>,
    stop: oneshot::Receiver<()>,
) {
    let graceful = GracefulShutdown::new();
    let accepting = gate.accept(&listener, |stream, peer, place| {
        let routes = Arc::clone(&routes);
        let service = service_fn(move |request| Arc::clone(&routes).handle(request, peer));
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            // An error here is the client's connection failing: nothing to answer.
            let _ = watched.await;
            drop(place);
        });
    });
    tokio::select! {
        () = accepting => {}
        _ = stop => {}
    }
    drop(listener);
    drop(routes);
    if tokio::time::timeout(STOP_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!(
            "pipe serve: connections still open {} s after the stop; closing them",
            STOP_GRACE.as_secs()
        );
    }
}
