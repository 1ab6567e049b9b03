//! The HTTP side of `pipe serve`: requests read and checked, routed, handed to the model and
//! answered, with one access-log line each.
//!
//! A client that closes its connection while its request waits for the model makes hyper
//! drop the request's future (HTTP/1 without half-close); that drops the receiving end of its
//! answer, which is how the worker sees that the client has left ([`Reply::departed`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::batcher::{Client, Done, Job, Outcome, Queue};
use pipe_models::bundle::BundleInfo;

/// Who waits for a job's answer: the request's task, through `answer`.
pub(super) struct Reply {
    answer: oneshot::Sender<Finished>,
    /// The client and its request line, for the log line of a client that left.
    who: String,
    started: Instant,
    texts: usize,
}

impl Client for Reply {
    fn departed(&self) -> bool {
        self.answer.is_closed()
    }
}

/// Hands an ended job to the request waiting for it, or logs that its client left.
pub(super) fn deliver(done: Done<Reply>, log: bool) {
    let Done {
        reply_to,
        outcome,
        turns,
        shared_with,
    } = done;
    let answers = match outcome {
        Outcome::Answered(answers) => Ok(answers),
        Outcome::Failed(message) => Err(message),
        Outcome::Departed { computed } => {
            if log {
                let ms = reply_to.started.elapsed().as_secs_f64() * 1e3;
                eprintln!(
                    "{} - {ms:.1}ms the client left before its answer: {} of {} texts not computed",
                    reply_to.who,
                    reply_to.texts - computed,
                    reply_to.texts
                );
            }
            return;
        }
    };
    let finished = Finished {
        answers,
        turns,
        shared_with,
    };
    // A client that left after the check has nobody to tell.
    let _ = reply_to.answer.send(finished);
}

/// A job's answers (or why the model failed), for the request waiting for them.
pub(super) struct Finished {
    answers: Result<Vec<Value>, String>,
    turns: usize,
    shared_with: usize,
}

/// The body of `POST /predict`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictBody {
    texts: Vec<String>,
}

/// What every request's task shares.
pub(super) struct Routes {
    pub queue: Queue<Reply>,
    pub metadata: Value,
    pub max_body_bytes: usize,
    pub access_log: bool,
}

/// An answer: its status, its JSON body, and a note for the access log.
struct Answer {
    status: StatusCode,
    body: Value,
    note: Option<String>,
}

impl Answer {
    fn json(status: StatusCode, body: Value) -> Answer {
        Answer {
            status,
            body,
            note: None,
        }
    }

    fn error(status: StatusCode, message: &str) -> Answer {
        Answer::json(status, error_body(message))
    }
}

impl Routes {
    /// Answers `request` from `peer`, and logs it.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let started = Instant::now();
        let line = format!(
            "{} \"{} {}\"",
            peer.ip(),
            request.method(),
            request.uri().path()
        );
        let answer = self.route(request, &line, started).await;
        if self.access_log {
            let ms = started.elapsed().as_secs_f64() * 1e3;
            let status = answer.status.as_u16();
            match &answer.note {
                Some(note) => eprintln!("{line} {status} {ms:.1}ms {note}"),
                None => eprintln!("{line} {status} {ms:.1}ms"),
            }
        }
        Ok(response(&answer))
    }

    async fn route(&self, request: Request<Incoming>, line: &str, started: Instant) -> Answer {
        let path = request.uri().path().to_string();
        let method = request.method().clone();
        match (&method, path.as_str()) {
            (&Method::GET, "/health") => Answer::json(StatusCode::OK, json!({ "status": "ok" })),
            (&Method::GET, "/metadata") => Answer::json(StatusCode::OK, self.metadata.clone()),
            (&Method::POST, "/predict") => match self.read_texts(request).await {
                Ok(texts) => self.predict(texts, line, started).await,
                Err(refused) => refused,
            },
            (_, "/health" | "/metadata" | "/predict") => Answer::error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{path} does not take {method}"),
            ),
            _ => Answer::error(
                StatusCode::NOT_FOUND,
                &format!(
                    "no route {path}; the routes are POST /predict, GET /health, GET /metadata"
                ),
            ),
        }
    }

    /// Hands `texts` to the model and waits for their answers.
    async fn predict(&self, texts: Vec<String>, line: &str, started: Instant) -> Answer {
        let (answer, answered) = oneshot::channel();
        let job = Job {
            reply_to: Reply {
                answer,
                who: line.to_string(),
                started,
                texts: texts.len(),
            },
            texts,
        };
        if self.queue.try_push(job).is_err() {
            return Answer::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is busy: too many requests are waiting; retry later",
            );
        }
        let Ok(done) = answered.await else {
            // The worker ends only once every job it took has ended.
            return Answer::error(StatusCode::INTERNAL_SERVER_ERROR, "the model stopped");
        };
        let runs = format!(
            "{} turns of the model, up to {} requests in one",
            done.turns, done.shared_with
        );
        let (mut answer, note) = match done.answers {
            Ok(answers) => {
                let note = format!("{} texts, {runs}", answers.len());
                let body = json!({ "predictions": answers });
                (Answer::json(StatusCode::OK, body), note)
            }
            Err(message) => (
                Answer::error(StatusCode::INTERNAL_SERVER_ERROR, &message),
                runs,
            ),
        };
        answer.note = Some(note);
        answer
    }

    /// The texts of a `POST /predict` body, or the answer refusing it.
    async fn read_texts(&self, request: Request<Incoming>) -> Result<Vec<String>, Answer> {
        let limit = self.max_body_bytes;
        let too_large = || {
            Answer::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is larger than {limit} bytes; send fewer texts per request"),
            )
        };
        let declared = (request.headers().get(CONTENT_LENGTH))
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let mut incoming = request.into_body();
        let mut body = Vec::new();
        let mut received = 0usize;
        // A body past the limit is still read (up to 64 times the limit, then the
        // connection closes) so that the client, still sending, gets to read the 413.
        while received <= limit.saturating_mul(64) {
            let Some(frame) = incoming.frame().await else {
                break;
            };
            let frame = frame.map_err(|e| {
                Answer::error(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read the body: {e}"),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                received += data.len();
                if received <= limit && declared.is_none_or(|n| n <= limit) {
                    body.extend_from_slice(&data);
                }
            }
        }
        if received > limit || declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let parsed: PredictBody = serde_json::from_slice(&body).map_err(|e| {
            Answer::error(
                StatusCode::BAD_REQUEST,
                &format!("the body is not {{\"texts\": [\"…\", …]}}: {e}"),
            )
        })?;
        if parsed.texts.is_empty() {
            return Err(Answer::error(
                StatusCode::BAD_REQUEST,
                "`texts` is empty; send at least one text",
            ));
        }
        if let Some(i) = parsed.texts.iter().position(|t| t.is_empty()) {
            return Err(Answer::error(
                StatusCode::BAD_REQUEST,
                &format!("text {} is empty", i + 1),
            ));
        }
        Ok(parsed.texts)
    }
}

/// What a 503 tells the client in `Retry-After`, in seconds.
pub(super) const RETRY_AFTER_SECONDS: &str = "1";

/// `GET /metadata`'s answer.
pub(super) fn metadata(info: &BundleInfo, max_batch: usize) -> Value {
    json!({
        "pipe_version": env!("CARGO_PKG_VERSION"),
        "max_batch": max_batch,
        "bundle": info,
    })
}

/// An error's JSON body.
pub(super) fn error_body(message: &str) -> Value {
    json!({ "error": message })
}

/// `answer` as JSON, with `Retry-After` on a 503 (a full line drains within a batch or two:
/// well-behaved clients come back soon).
fn response(answer: &Answer) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(answer.body.to_string())));
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if answer.status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    }
    response
}
