//! Listening that survives a failed `accept`.
//!
//! tiny_http's accept thread ends at the first error: with every file descriptor in use
//! (EMFILE), one `accept` fails (or the duplicate it makes of the accepted socket panics)
//! and the server never takes another connection. So pipe binds the socket itself and
//! keeps it: tiny_http gets a duplicate, and when its accept thread dies (it reported an
//! error, or a watchdog's `GET /health` with the [`PROBE_HEADER`] gets no answer within
//! [`PROBE_TIMEOUT`]), a [`Gate`] waits (backing off from [`FIRST_BACKOFF`] to [`LAST_BACKOFF`]
//! while descriptors stay scarce) and starts a new tiny_http server on another duplicate
//! of the same socket. Requests of connections the old server had already accepted are
//! still answered: readers drain the retired servers too.
//!
//! At start the soft descriptor limit is raised to the hard one, as servers commonly do,
//! so that the limit is rarely reached at all.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use tiny_http::Request;

/// The first wait after a failed accept.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between two tries to listen again.
pub const LAST_BACKOFF: Duration = Duration::from_secs(1);

/// The header marking the watchdog's own requests (answered, never logged).
pub const PROBE_HEADER: &str = "X-Pipe-Probe";

/// How long the watchdog waits for the answer to its probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the watchdog probes.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How long a reader waits for a request before it looks at the retired servers and at
/// whether the server is stopping.
const POLL: Duration = Duration::from_millis(100);

/// The listening socket and the tiny_http server currently accepting on it.
pub(super) struct Gate {
    listener: TcpListener,
    current: RwLock<Arc<tiny_http::Server>>,
    retired: Mutex<Vec<Arc<tiny_http::Server>>>,
    /// Held while a new server is being started, so that only one reader starts it.
    reopening: Mutex<()>,
}

/// What [`Gate::next`] found.
pub(super) enum Next {
    /// A request to answer.
    Request(Request),
    /// Nothing within the poll interval (or the server was restarted).
    Nothing,
}

impl Gate {
    /// Binds `addr` and starts accepting on it.
    pub fn bind(addr: SocketAddr) -> anyhow::Result<Gate> {
        raise_descriptor_limit();
        let listener =
            TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        let server = start(&listener).with_context(|| format!("cannot listen on {addr}"))?;
        Ok(Gate {
            listener,
            current: RwLock::new(Arc::new(server)),
            retired: Mutex::new(Vec::new()),
            reopening: Mutex::new(()),
        })
    }

    /// The address listened on.
    pub fn addr(&self) -> anyhow::Result<SocketAddr> {
        self.listener
            .local_addr()
            .context("the server has no local address")
    }

    /// The next request, waiting at most a poll interval. A failed accept (its accept
    /// thread has ended) starts a new server on the same socket first.
    pub fn next(&self) -> Next {
        for old in self.retired.lock().map(|r| r.clone()).unwrap_or_default() {
            if let Ok(Some(request)) = old.try_recv() {
                return Next::Request(request);
            }
        }
        let server = match self.current.read() {
            Ok(current) => Arc::clone(&current),
            Err(_) => return Next::Nothing,
        };
        match server.recv_timeout(POLL) {
            Ok(Some(request)) => Next::Request(request),
            Ok(None) => Next::Nothing,
            Err(error) => {
                self.reopen(&server, &error);
                Next::Nothing
            }
        }
    }

    /// Probes the server every second until `stopping`, and starts a new one when a probe
    /// goes unanswered (its accept thread died without a word). A probe that cannot even
    /// connect (no descriptor free here either) is skipped.
    pub fn watch(&self, stopping: &std::sync::atomic::AtomicBool) {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let Ok(addr) = self.addr() else {
            return;
        };
        while !stopping.load(Ordering::SeqCst) {
            std::thread::sleep(PROBE_EVERY);
            let server = match self.current.read() {
                Ok(current) => Arc::clone(&current),
                Err(_) => return,
            };
            let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) else {
                continue;
            };
            let probe = format!("GET /health HTTP/1.0\r\n{PROBE_HEADER}: 1\r\n\r\n");
            let _ = stream.set_read_timeout(Some(PROBE_TIMEOUT));
            let mut first = [0u8; 1];
            let answered = stream.write_all(probe.as_bytes()).is_ok()
                && stream.read(&mut first).is_ok_and(|n| n > 0);
            if !answered && !stopping.load(Ordering::SeqCst) {
                let error = std::io::Error::other("a probe of the server got no answer");
                self.reopen(&server, &error);
            }
        }
    }

    /// Replaces `failed` (whose accept thread ended with `error`) by a new server on the
    /// same socket, waiting while that is impossible (no descriptor free).
    fn reopen(&self, failed: &Arc<tiny_http::Server>, error: &std::io::Error) {
        let Ok(_one_at_a_time) = self.reopening.lock() else {
            return;
        };
        if self
            .current
            .read()
            .map_or(true, |current| !Arc::ptr_eq(&current, failed))
        {
            return;
        }
        eprintln!("pipe serve: cannot accept a connection ({error}); listening again");
        let mut wait = FIRST_BACKOFF;
        let server = loop {
            std::thread::sleep(wait);
            match start(&self.listener) {
                Ok(server) => break server,
                Err(e) => {
                    wait = (wait * 2).min(LAST_BACKOFF);
                    eprintln!(
                        "pipe serve: cannot listen again yet ({e:#}); next try in {} ms",
                        wait.as_millis()
                    );
                }
            }
        };
        if let Ok(mut current) = self.current.write() {
            let old = std::mem::replace(&mut *current, Arc::new(server));
            if let Ok(mut retired) = self.retired.lock() {
                retired.push(old);
            }
        }
    }
}

/// A tiny_http server accepting on a duplicate of `listener`.
fn start(listener: &TcpListener) -> anyhow::Result<tiny_http::Server> {
    let copy = listener
        .try_clone()
        .context("cannot duplicate the listening socket")?;
    tiny_http::Server::from_listener(copy, None).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Raises the soft limit on open descriptors to the hard limit.
fn raise_descriptor_limit() {
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
