//! The HTTP side of `pipe serve`: reading and checking requests, routing them, and writing
//! answers with one access-log line each.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Deserialize;
use serde_json::{Value, json};
use tiny_http::{Header, Method, Request, Response};

use super::batcher::{Done, Job, Queue};
use pipe_models::bundle::BundleInfo;

/// A request waiting for the model.
pub(super) struct Pending {
    request: Request,
    started: Instant,
}

/// The body of `POST /predict`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictBody {
    texts: Vec<String>,
}

/// A thread that takes requests off the socket and answers or queues them.
pub(super) struct Reader {
    pub gate: Arc<super::listen::Gate>,
    pub stopping: Arc<AtomicBool>,
    pub queue: Queue<Pending>,
    pub metadata: Arc<Value>,
    pub max_body_bytes: usize,
    pub access_log: bool,
}

impl Reader {
    /// Serves until the server is stopped.
    pub fn run(self) {
        while !self.stopping.load(Ordering::SeqCst) {
            if let super::listen::Next::Request(request) = self.gate.next() {
                self.handle(request);
            }
        }
    }

    fn handle(&self, mut request: Request) {
        let started = Instant::now();
        let probe = (request.headers().iter()).any(|h| h.field.equiv(super::listen::PROBE_HEADER));
        if probe {
            let _ = request.respond(Response::from_string("ok"));
            return;
        }
        let path = request.url().split('?').next().unwrap_or("").to_string();
        let method = request.method().clone();
        let reply = match (&method, path.as_str()) {
            (Method::Get, "/health") => (200, json!({ "status": "ok" })),
            (Method::Get, "/metadata") => (200, (*self.metadata).clone()),
            (Method::Post, "/predict") => match self.read_texts(&mut request) {
                Ok(texts) => {
                    let job = Job {
                        texts,
                        reply_to: Pending { request, started },
                    };
                    let Err(job) = self.queue.try_push(job) else {
                        return;
                    };
                    let busy = error_body(
                        "the server is busy: too many requests are waiting; retry later",
                    );
                    respond(job.reply_to, 503, &busy, None, self.access_log);
                    return;
                }
                Err((status, message)) => (status, error_body(&message)),
            },
            (_, "/health" | "/metadata" | "/predict") => {
                (405, error_body(&format!("{path} does not take {method}")))
            }
            _ => (
                404,
                error_body(&format!(
                    "no route {path}; the routes are POST /predict, GET /health, GET /metadata"
                )),
            ),
        };
        let (status, body) = reply;
        respond(
            Pending { request, started },
            status,
            &body,
            None,
            self.access_log,
        );
    }

    /// The texts of a `POST /predict` body, or the status and message refusing it.
    fn read_texts(&self, request: &mut Request) -> Result<Vec<String>, (u16, String)> {
        let limit = self.max_body_bytes;
        let too_large = || {
            (
                413,
                format!("the body is larger than {limit} bytes; send fewer texts per request"),
            )
        };
        if request.body_length().is_some_and(|n| n > limit) {
            // Read (and drop) what the client sends so that it gets to read the answer.
            let _ = std::io::copy(
                &mut request.as_reader().take(64 * limit as u64),
                &mut std::io::sink(),
            );
            return Err(too_large());
        }
        let mut body = Vec::new();
        request
            .as_reader()
            .take(limit as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| (400, format!("cannot read the body: {e}")))?;
        if body.len() > limit {
            return Err(too_large());
        }
        let parsed: PredictBody = serde_json::from_slice(&body).map_err(|e| {
            (
                400,
                format!("the body is not {{\"texts\": [\"…\", …]}}: {e}"),
            )
        })?;
        if parsed.texts.is_empty() {
            return Err((400, "`texts` is empty; send at least one text".to_string()));
        }
        if let Some(i) = parsed.texts.iter().position(|t| t.is_empty()) {
            return Err((400, format!("text {} is empty", i + 1)));
        }
        Ok(parsed.texts)
    }
}

/// `GET /metadata`'s answer.
pub(super) fn metadata(info: &BundleInfo, max_batch: usize) -> Arc<Value> {
    Arc::new(json!({
        "pipe_version": env!("CARGO_PKG_VERSION"),
        "max_batch": max_batch,
        "bundle": info,
    }))
}

/// Writes the answer of a job the worker finished.
pub(super) fn answer(done: Done<Pending>, log: bool) {
    let texts = done
        .answers
        .as_ref()
        .ok()
        .and_then(|a| a.as_array())
        .map(Vec::len);
    let (status, body) = match done.answers {
        Ok(answers) => (200, json!({ "predictions": answers })),
        Err(message) => (500, error_body(&message)),
    };
    let note = texts.map(|n| format!("{n} texts, batch of {} requests", done.batched_with));
    respond(done.reply_to, status, &body, note, log);
}

/// What a 503 (a full queue) tells the client in `Retry-After`, in seconds.
const RETRY_AFTER_SECONDS: &str = "1";

fn error_body(message: &str) -> Value {
    json!({ "error": message })
}

/// Sends `body` as JSON with `status`, then logs the request.
fn respond(pending: Pending, status: u16, body: &Value, note: Option<String>, log: bool) {
    let Pending { request, started } = pending;
    let line = log.then(|| {
        let from = request
            .remote_addr()
            .map_or_else(|| "-".to_string(), |a| a.ip().to_string());
        format!("{from} \"{} {}\" {status}", request.method(), request.url())
    });
    let json_type =
        Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).expect("a valid header");
    let mut response = Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(json_type);
    if status == 503 {
        // A full queue drains within a batch or two: well-behaved clients come back soon.
        response.add_header(
            Header::from_bytes(&b"Retry-After"[..], RETRY_AFTER_SECONDS.as_bytes())
                .expect("a valid header"),
        );
    }
    // A client that left before its answer is not the server's problem.
    let _ = request.respond(response);
    if let Some(line) = line {
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match note {
            Some(note) => eprintln!("{line} {ms:.1}ms {note}"),
            None => eprintln!("{line} {ms:.1}ms"),
        }
    }
}
