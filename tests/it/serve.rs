//! `pipe serve`: the built binary serves the bundle of the predict tests' pipeline; a real
//! HTTP client (ureq) asks it what `pipe predict --json` answers, in parallel, with bad
//! requests, past a full queue (503), past the connection cap (503), with a large request
//! beside a small one (the small one first), with a client that leaves (its texts not
//! computed), and SIGTERM stops it, answering the requests in flight.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::predict::{LABELS, json_of, matrix_project, project, text};
use crate::util::Project;

/// A running `pipe serve` and everything it wrote on stderr so far.
struct Served {
    child: Child,
    base: String,
    stderr: Arc<Mutex<String>>,
    /// The thread copying stderr; it ends at the end of the stream, once the server exited.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    /// Starts `pipe serve --manifest demo.yaml export-onnx --port 0 EXTRA…` and waits until it
    /// listens.
    fn start(p: &Project, extra: &[&str]) -> Served {
        Served::start_stage(p, "demo.yaml", "export-onnx", extra)
    }

    /// Starts `pipe serve --manifest MANIFEST STAGE --port 0 EXTRA…` and waits until it
    /// listens.
    fn start_stage(p: &Project, manifest: &str, stage: &str, extra: &[&str]) -> Served {
        Served::start_with(p, manifest, stage, extra, None)
    }

    /// [`Served::start_stage`], with at most `descriptors` open files when given (its soft
    /// and hard `RLIMIT_NOFILE`).
    fn start_with(
        p: &Project,
        manifest: &str,
        stage: &str,
        extra: &[&str],
        descriptors: Option<u64>,
    ) -> Served {
        let mut args = vec!["serve", "--manifest", manifest, stage, "--port", "0"];
        args.extend_from_slice(extra);
        let mut command = p.command(&args);
        if let Some(n) = descriptors {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pipe serve starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (address, found) = std::sync::mpsc::channel();
        // The address is the answer, on stdout.
        let answer = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in answer.lines().map_while(Result::ok) {
                if let Some(rest) = line.split("on http://").nth(1) {
                    let _ = address.send(rest.split_whitespace().next().unwrap().to_string());
                }
            }
        });
        let reader = BufReader::new(child.stderr.take().unwrap());
        let log = Arc::clone(&stderr);
        let stderr_reader = std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = found
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no address in:\n{}", stderr.lock().unwrap()));
        Served {
            child,
            base: format!("http://{addr}"),
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent()
    }

    /// `POST /predict` with `body`; the status and the JSON answer.
    fn post(&self, body: &str) -> (u16, Value) {
        let answer = self.try_post(body).expect("the server answers");
        (answer.status, answer.body)
    }

    /// `POST /predict` with `body`; the whole answer, or the transport error.
    fn try_post(&self, body: &str) -> Result<Answer, ureq::Error> {
        let mut response = Self::agent()
            .post(format!("{}/predict", self.base))
            .header("Content-Type", "application/json")
            .send(body)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let text = response.body_mut().read_to_string()?;
        Ok(Answer {
            status,
            retry_after,
            content_type,
            body: serde_json::from_str(&text).unwrap_or(json!(text)),
        })
    }

    /// `GET path`; the status and the JSON answer.
    fn get(&self, path: &str) -> (u16, Value) {
        let mut response = Self::agent()
            .get(format!("{}{path}", self.base))
            .call()
            .expect("the server answers");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(json!(text)))
    }

    /// Sends SIGTERM and waits for the exit; the exit code and stderr.
    fn terminate(self) -> (Option<i32>, String) {
        self.signal_term();
        self.terminate_sent()
    }

    /// Sends SIGTERM.
    fn signal_term(&self) {
        let pid = self.child.id().to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(killed.success());
    }

    /// Waits for the exit after SIGTERM was sent; the exit code and stderr.
    fn terminate_sent(mut self) -> (Option<i32>, String) {
        let began = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "pipe serve did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // Everything the server wrote is read once its stderr is closed.
        if let Some(reader) = self.stderr_reader.take() {
            reader.join().unwrap();
        }
        (status.code(), self.stderr.lock().unwrap().clone())
    }
}

/// One HTTP answer of `POST /predict`.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    content_type: Option<String>,
    body: Value,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The probabilities of one answer, in label order.
fn probabilities(answer: &Value) -> Vec<f64> {
    LABELS
        .iter()
        .map(|l| answer["probabilities"][l].as_f64().unwrap())
        .collect()
}

/// `served` and `predicted` give the same labels and texts, and probabilities within 1e-5
/// (a batch of other lengths may round differently).
fn assert_same_answer(served: &Value, predicted: &Value) {
    assert_eq!(served["text"], predicted["text"]);
    assert_eq!(
        served["label"], predicted["label"],
        "{served} vs {predicted}"
    );
    for (a, b) in probabilities(served).iter().zip(probabilities(predicted)) {
        assert!((a - b).abs() < 1e-5, "{served} vs {predicted}");
    }
}

#[test]
fn serve_answers_as_predict_does_also_under_100_parallel_requests() {
    let p = project();
    p.run_json("demo.yaml", 0);
    let predicted = json_of(&p.pipe(&["predict", "export-onnx", "--file", "data.csv", "--json"]));
    let predicted = predicted.as_array().unwrap().clone();
    assert_eq!(predicted.len(), 40);

    let served = Served::start(&p, &["--threads", "1"]);
    assert_eq!(served.get("/health"), (200, json!({ "status": "ok" })));
    let (status, metadata) = served.get("/metadata");
    assert_eq!(status, 200);
    assert_eq!(metadata["bundle"]["labels"], json!(LABELS));
    assert_eq!(metadata["bundle"]["source"]["stage"], "export-onnx");
    assert_eq!(
        metadata["bundle"]["source"]["key"].as_str().unwrap().len(),
        64
    );
    assert_eq!(metadata["pipe_version"], env!("CARGO_PKG_VERSION"));
    assert!(metadata["bundle"]["model"]["hidden_size"].as_u64().unwrap() > 0);

    // Every text in one request.
    let texts: Vec<String> = (0..40).map(text).collect();
    let (status, answer) = served.post(&json!({ "texts": texts }).to_string());
    assert_eq!(status, 200, "{answer}");
    let answers = answer["predictions"].as_array().unwrap();
    assert_eq!(answers.len(), 40);
    for (a, b) in answers.iter().zip(&predicted) {
        assert_same_answer(a, b);
    }

    // 100 clients at once, one text each.
    let served = Arc::new(served);
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let served = Arc::clone(&served);
            std::thread::spawn(move || {
                let (status, answer) = served.post(&json!({ "texts": [text(i % 40)] }).to_string());
                (i, status, answer)
            })
        })
        .collect();
    for client in clients {
        let (i, status, answer) = client.join().unwrap();
        assert_eq!(status, 200, "{answer}");
        let answers = answer["predictions"].as_array().unwrap();
        assert_eq!(answers.len(), 1);
        assert_same_answer(&answers[0], &predicted[i % 40]);
    }
    let Ok(served) = Arc::try_unwrap(served) else {
        panic!("a client still holds the server");
    };
    let (code, stderr) = served.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    let logged = stderr
        .lines()
        .filter(|l| l.contains("\"POST /predict\" 200"))
        .count();
    assert_eq!(logged, 101, "{stderr}");
    assert!(stderr.contains("\"GET /health\" 200"), "{stderr}");
}

#[test]
fn serve_refuses_bad_requests_and_stays_up() {
    let p = project();
    p.run_json("demo.yaml", 0);
    // `localhost` is taken for the loopback address.
    let served = Served::start(
        &p,
        &[
            "--max-body-bytes",
            "2000",
            "--threads",
            "1",
            "--host",
            "localhost",
        ],
    );

    let (status, answer) = served.post("{\"texts\": [\"unclosed");
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("is not {\"texts\""),
        "{answer}"
    );
    let (status, answer) = served.post("{\"text\": [\"a\"]}");
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = served.post("{\"texts\": []}");
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("empty"),
        "{answer}"
    );
    let (status, answer) = served.post("{\"texts\": [\"question\", \"\"]}");
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("text 2 is empty"),
        "{answer}"
    );

    let big = json!({ "texts": vec!["question about math"; 500] }).to_string();
    assert!(big.len() > 2000);
    let (status, answer) = served.post(&big);
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("2000 bytes"),
        "{answer}"
    );

    let (status, _) = served.get("/predict");
    assert_eq!(status, 405);
    let (status, answer) = served.get("/nothing");
    assert_eq!(status, 404);
    assert!(
        answer["error"].as_str().unwrap().contains("POST /predict"),
        "{answer}"
    );

    // Still up, and still right.
    let (status, answer) = served.post(&json!({ "texts": [text(3)] }).to_string());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["predictions"][0]["text"], json!(text(3)));
    let (code, stderr) = served.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("Stopped"), "{stderr}");
    assert!(stderr.contains("\"POST /predict\" 413"), "{stderr}");
}

#[test]
fn serve_fails_clearly_without_a_bundle() {
    let p = project();
    let out = p.pipe(&[
        "serve",
        "--manifest",
        "demo.yaml",
        "export-onnx",
        "--port",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = crate::util::stderr(&out);
    assert!(err.contains("stage `export-onnx` has not run yet"), "{err}");
}

/// Texts in one request of the queue tests: with `--max-batch 1` the model runs once per text,
/// so one such request keeps the worker busy while the other clients' requests arrive.
const LONG_REQUEST: usize = 1500;

/// `clients` clients each post [`LONG_REQUEST`] texts at the same moment; each thread gives
/// back its client's answer (or transport error) and marks its slot in `done` when it has it.
fn burst(
    served: &Arc<Served>,
    clients: usize,
    done: &Arc<Vec<AtomicBool>>,
) -> Vec<std::thread::JoinHandle<Result<Answer, ureq::Error>>> {
    let body =
        json!({ "texts": (0..LONG_REQUEST).map(|i| text(i % 40)).collect::<Vec<_>>() }).to_string();
    let start = Arc::new(Barrier::new(clients));
    (0..clients)
        .map(|i| {
            let (served, done, start, body) = (
                Arc::clone(served),
                Arc::clone(done),
                Arc::clone(&start),
                body.clone(),
            );
            std::thread::spawn(move || {
                start.wait();
                let answer = served.try_post(&body);
                done[i].store(true, Ordering::SeqCst);
                answer
            })
        })
        .collect()
}

/// A 200 holds the right answer for every text; a 503 says why in JSON and when to retry.
fn assert_answered(answer: &Answer, predicted: &[Value]) {
    assert_eq!(
        answer.content_type.as_deref(),
        Some("application/json"),
        "{answer:?}"
    );
    match answer.status {
        200 => {
            let answers = answer.body["predictions"].as_array().unwrap();
            assert_eq!(answers.len(), LONG_REQUEST);
            for (i, served) in answers.iter().enumerate() {
                assert_same_answer(served, &predicted[i % 40]);
            }
        }
        503 => {
            assert_eq!(answer.retry_after.as_deref(), Some("1"), "{answer:?}");
            let error = answer.body["error"].as_str().unwrap();
            assert!(error.contains("busy"), "{answer:?}");
        }
        other => panic!("unexpected status {other}: {answer:?}"),
    }
}

#[test]
fn a_full_queue_answers_503_with_retry_after_and_sigterm_answers_what_was_queued() {
    let p = project();
    p.run_json("demo.yaml", 0);
    let predicted = json_of(&p.pipe(&["predict", "export-onnx", "--file", "data.csv", "--json"]));
    let predicted = predicted.as_array().unwrap().clone();
    let served = Arc::new(Served::start(
        &p,
        &["--queue", "1", "--max-batch", "1", "--threads", "1"],
    ));

    // One request is in the worker's hands, the others find the queue full.
    let clients = 12;
    let done = Arc::new((0..clients).map(|_| AtomicBool::new(false)).collect());
    let first: Vec<Answer> = burst(&served, clients, &done)
        .into_iter()
        .map(|c| c.join().unwrap().expect("the server answers"))
        .collect();
    for answer in &first {
        assert_answered(answer, &predicted);
    }
    let refused = first.iter().filter(|a| a.status == 503).count();
    let statuses: Vec<u16> = first.iter().map(|a| a.status).collect();
    assert!(refused >= 1, "no request was refused: {statuses:?}");
    assert!(refused < clients, "every request was refused");
    assert_eq!(served.get("/health"), (200, json!({ "status": "ok" })));

    // SIGTERM while a request is in flight (the one in the worker's hands, once the others
    // were refused): it is answered, and the server exits 0.
    let done: Arc<Vec<AtomicBool>> =
        Arc::new((0..clients).map(|_| AtomicBool::new(false)).collect());
    let second = burst(&served, clients, &done);
    let began = Instant::now();
    while done.iter().filter(|d| d.load(Ordering::SeqCst)).count() < clients - 1 {
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "the refusals never came"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let in_flight: Vec<usize> = (0..clients)
        .filter(|&i| !done[i].load(Ordering::SeqCst))
        .collect();
    assert!(
        !in_flight.is_empty(),
        "every request was answered before SIGTERM; make LONG_REQUEST larger"
    );
    served.signal_term();
    let answers: Vec<Answer> = second
        .into_iter()
        .map(|c| c.join().unwrap().expect("every client gets an answer"))
        .collect();
    for answer in &answers {
        assert_answered(answer, &predicted);
    }
    for i in in_flight {
        assert_eq!(
            answers[i].status, 200,
            "request {i} was in flight at SIGTERM"
        );
    }
    let Ok(served) = Arc::try_unwrap(served) else {
        panic!("a client still holds the server");
    };
    let (code, stderr) = served.terminate_sent();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("Stopped"), "{stderr}");
    // One access-log line per answer.
    let all: Vec<&Answer> = first.iter().chain(&answers).collect();
    for status in [200, 503] {
        let logged = stderr
            .lines()
            .filter(|l| l.contains(&format!("\"POST /predict\" {status}")))
            .count();
        let sent = all.iter().filter(|a| a.status == status).count();
        assert_eq!(logged, sent, "{stderr}");
    }
}

#[test]
fn serve_addresses_a_matrix_member() {
    let p = matrix_project();
    let served = Served::start_stage(&p, "mx.yaml", "export-onnx@fast", &[]);
    let (status, answer) = served.post(&json!({ "texts": [text(1)] }).to_string());
    assert_eq!(status, 200, "{answer}");
    let predicted = json_of(&p.pipe(&[
        "predict",
        "--manifest",
        "mx.yaml",
        "export-onnx@fast",
        &text(1),
        "--json",
    ]));
    assert_same_answer(&answer["predictions"][0], &predicted[0]);
    let (code, log) = served.terminate();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn serve_prints_its_address_on_stdout_even_when_quiet() {
    let p = project();
    p.run_json("demo.yaml", 0);
    // `start` finds the address on stdout, so `--quiet` must not hide it.
    let served = Served::start(&p, &["--quiet"]);
    let (status, _) = served.get("/health");
    assert_eq!(status, 200);
    let (code, log) = served.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        !log.contains("Listening"),
        "the address is not a status line:\n{log}"
    );
}

/// The most connections the server said it serves at once ("at most N connections").
fn connection_cap(served: &Served) -> usize {
    let began = Instant::now();
    loop {
        let log = served.stderr.lock().unwrap().clone();
        if let Some(rest) = log.split("at most ").nth(1) {
            return rest.split_whitespace().next().unwrap().parse().unwrap();
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "no cap in:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `GET /health` on a new connection and reads the answer's head and, on a closed
/// connection, its body; the connection (kept open by the server after a 200) and the text.
fn health_on_new_connection(addr: std::net::SocketAddr) -> (std::net::TcpStream, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: pipe\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    // A 200 keeps the connection open: its whole answer ends with the body `{"status":"ok"}`;
    // a 503 closes it.
    while !answer.ends_with(b"}") || !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        match stream.read(&mut buffer).unwrap() {
            0 => break,
            n => answer.extend_from_slice(&buffer[..n]),
        }
    }
    (stream, String::from_utf8(answer).unwrap())
}

/// Past the cap (below the descriptor limit), connections are answered 503 at once, the
/// server never runs out of descriptors, and it serves again once connections close.
#[test]
fn connections_past_the_cap_get_503_and_the_server_serves_again_after() {
    let p = project();
    p.run_json("demo.yaml", 0);
    // A cap above what 64 descriptors allow is lowered, with a warning.
    let served = Served::start_with(
        &p,
        "demo.yaml",
        "export-onnx",
        &["--max-connections", "100000"],
        Some(64),
    );
    let cap = connection_cap(&served);
    assert!((1..64).contains(&cap), "{cap}");
    assert!(
        served
            .stderr
            .lock()
            .unwrap()
            .contains("descriptor limit (64)"),
        "{}",
        served.stderr.lock().unwrap()
    );
    let addr: std::net::SocketAddr = served.base.trim_start_matches("http://").parse().unwrap();
    let extra = 12;
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..cap + extra {
        let (stream, answer) = health_on_new_connection(addr);
        if answer.starts_with("HTTP/1.1 200") {
            held.push(stream);
        } else {
            refused.push(answer);
        }
    }
    // Connections are taken in order: the first `cap` are served, the others refused.
    assert_eq!((held.len(), refused.len()), (cap, extra), "{refused:?}");
    for answer in &refused {
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("Retry-After: 1\r\n"), "{answer}");
        let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(&format!("{cap} connections open")), "{body}");
    }
    drop(held);
    // The places come free as the server sees the connections close.
    let began = Instant::now();
    let answer = loop {
        let answer = served
            .try_post(&json!({ "texts": [text(1), text(2)] }).to_string())
            .expect("the server answers");
        if answer.status == 200 {
            break answer;
        }
        assert_eq!(answer.status, 503, "{answer:?}");
        assert!(began.elapsed() < Duration::from_secs(30), "{answer:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(answer.body["predictions"].as_array().unwrap().len(), 2);
    let (code, log) = served.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("cannot accept"), "{log}");
    let logged = (log.lines())
        .filter(|l| l.contains("a connection past the"))
        .count();
    assert!(logged >= extra, "{log}");
}

/// `texts` texts of the predict tests' data, in order, as a `POST /predict` body.
fn body_of(texts: usize) -> String {
    json!({ "texts": (0..texts).map(|i| text(i % 40)).collect::<Vec<_>>() }).to_string()
}

/// Texts in the large request of the turn and departure tests: a job alone in the line takes
/// 16 runs' texts a turn, so with `--max-batch 1` this keeps the worker busy for over a
/// thousand turns (seconds), and its body is below the 1 MiB default.
const TURNS_REQUEST: usize = 20_000;

/// Sends `POST /predict` with `texts` texts on a connection of its own, without reading the
/// answer.
fn send_predict(served: &Served, texts: usize) -> std::net::TcpStream {
    use std::io::Write;
    let body = body_of(texts);
    let mut stream = std::net::TcpStream::connect(served.base.trim_start_matches("http://"))
        .expect("the server takes the connection");
    let head = format!(
        "POST /predict HTTP/1.1\r\nHost: pipe\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    stream
}

/// Waits for the log line of a request whose client left; how many of its `sent` texts
/// were not computed.
fn texts_not_computed(served: &Served, sent: usize) -> usize {
    let began = Instant::now();
    let line = loop {
        let log = served.stderr.lock().unwrap().clone();
        if let Some(line) = log.lines().find(|l| l.contains("the client left")) {
            break line.to_string();
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "no client left:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(line.contains("\"POST /predict\""), "{line}");
    assert!(
        line.contains(&format!("of {sent} texts not computed")),
        "{line}"
    );
    (line.split("answer: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

/// A large request takes turns with the others: a small request sent after it (with one
/// text per model run, the large one takes 20,000 runs) is answered while the large one still
/// has texts to compute. (Which answer reaches its client first says less: the large
/// answer takes longer to send.) So its client leaves then, and the log says how many of its
/// texts were not computed: some, where one after the other would have computed them all.
/// That answers come back whole and in order across turns, the queue test checks.
#[test]
fn a_small_request_is_answered_while_a_large_one_sent_before_it_is_computed() {
    let p = project();
    p.run_json("demo.yaml", 0);
    let predicted = json_of(&p.pipe(&["predict", "export-onnx", "--file", "data.csv", "--json"]));
    let served = Served::start(&p, &["--max-batch", "1", "--threads", "1"]);
    let big = send_predict(&served, TURNS_REQUEST);
    std::thread::sleep(Duration::from_millis(100));
    let (status, small) = served.post(&json!({ "texts": [text(7)] }).to_string());
    assert_eq!(status, 200, "{small}");
    assert_same_answer(&small["predictions"][0], &predicted[7]);
    drop(big);
    assert!(texts_not_computed(&served, TURNS_REQUEST) > 0);
    let (code, log) = served.terminate();
    assert_eq!(code, Some(0), "{log}");
}

/// A client that leaves before its answer: the rest of its texts are not computed (the log
/// says how many), and the server goes on answering the others.
#[test]
fn the_texts_of_a_client_that_left_are_not_computed() {
    let p = project();
    p.run_json("demo.yaml", 0);
    let served = Served::start(&p, &["--max-batch", "1", "--threads", "1"]);
    let leaving = send_predict(&served, TURNS_REQUEST);
    std::thread::sleep(Duration::from_millis(100));
    drop(leaving);
    assert!(texts_not_computed(&served, TURNS_REQUEST) > 0);
    let (status, answer) = served.post(&json!({ "texts": [text(3)] }).to_string());
    assert_eq!(status, 200, "{answer}");
    let (code, log) = served.terminate();
    assert_eq!(code, Some(0), "{log}");
    let answered = log
        .lines()
        .filter(|l| l.contains("\"POST /predict\" 200"))
        .count();
    assert_eq!(answered, 1, "{log}");
}
