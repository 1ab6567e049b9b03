//! Downloads into the Hugging Face cache from a hub served on 127.0.0.1: a tiny_http server
//! that answers the hub's file API (`HEAD`/`GET /{repo}/resolve/{revision}/{file}`) with the
//! hub's headers, large files redirected to a CDN on another port that honours `Range`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Cursor, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use pipe_models::hub::{Hub, Want, ensure, hub_commit, snapshot_with};
use sha1::Digest as _;
use tiny_http::{Header, Method, Response, Server};

use crate::util::{TestReporter, message};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// What the fake hub does to the next large download.
#[derive(Default, Clone)]
struct Faults {
    /// Send only this many bytes of the next CDN body, then close the connection.
    cut_after: Option<usize>,
    /// Wait this long between a CDN answer's headers and its body.
    delay: Option<Duration>,
    /// Flip a byte of every CDN body.
    corrupt: bool,
    /// Answer with this X-Repo-Commit instead of [`COMMIT`].
    commit: Option<String>,
}

struct FakeHub {
    endpoint: String,
    /// "METHOD path [range]" of every request, in order.
    requests: Arc<Mutex<Vec<String>>>,
    faults: Arc<Mutex<Faults>>,
    files: BTreeMap<&'static str, Vec<u8>>,
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

fn git_sha1(bytes: &[u8]) -> String {
    let mut hasher = sha1::Sha1::new();
    hasher.update(format!("blob {}\0", bytes.len()).as_bytes());
    hasher.update(bytes);
    hex(&hasher.finalize())
}

/// The CDN that large files are redirected to: a raw HTTP/1.1 server on its own port that
/// honours `Range` and closes each connection after its answer, so that a cut body reaches
/// the client as a connection closed early. Returns its base URL.
fn start_cdn(
    files: BTreeMap<&'static str, Vec<u8>>,
    faults: Arc<Mutex<Faults>>,
    requests: Arc<Mutex<Vec<String>>>,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("range")
                {
                    range = Some(value.trim().to_string());
                }
            }
            requests.lock().unwrap().push(format!(
                "GET {path}{}",
                range
                    .as_deref()
                    .map(|r| format!(" {r}"))
                    .unwrap_or_default()
            ));
            let sha = path.trim_start_matches("/cdn/");
            let Some(bytes) = files.values().find(|b| sha256(b) == sha) else {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            };
            let mut bytes = bytes.clone();
            let mut faults = faults.lock().unwrap();
            if faults.corrupt {
                bytes[100] ^= 0xff;
            }
            let start: usize = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let total = bytes.len();
            let body = &bytes[start..];
            let head = if start > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{total}\r\n",
                    total - 1
                )
            } else {
                "HTTP/1.1 200 OK\r\n".to_string()
            };
            let sent = match faults.cut_after.take() {
                Some(cut) => &body[..cut],
                None => body,
            };
            let _ = stream.write_all(
                format!(
                    "{head}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            if let Some(delay) = faults.delay {
                std::thread::sleep(delay);
            }
            let _ = stream.write_all(sent);
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    });
    base
}

/// `model.safetensors` is the large (LFS) file; the others are small git files.
fn is_lfs(file: &str) -> bool {
    file.ends_with(".safetensors")
}

impl FakeHub {
    /// A hub with one repository, `org/tiny`, at [`COMMIT`].
    fn start() -> FakeHub {
        let mut files = BTreeMap::new();
        files.insert("config.json", br#"{"model_type": "gpt_neo"}"#.to_vec());
        files.insert("tokenizer.json", br#"{"version": "1.0"}"#.to_vec());
        files.insert(
            "model.safetensors",
            (0..50_000u32).flat_map(|i| (i * 7).to_le_bytes()).collect(),
        );
        Self::start_with(files)
    }

    /// A hub whose `org/tiny` holds `files`.
    fn start_with(files: BTreeMap<&'static str, Vec<u8>>) -> FakeHub {
        let server = Server::http("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", server.server_addr().to_ip().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let faults = Arc::new(Mutex::new(Faults::default()));
        let cdn = start_cdn(files.clone(), Arc::clone(&faults), Arc::clone(&requests));
        let commit_fault = Arc::clone(&faults);
        let hub = FakeHub {
            endpoint,
            requests: Arc::clone(&requests),
            faults: Arc::clone(&faults),
            files: files.clone(),
        };
        std::thread::spawn(move || {
            for request in server.incoming_requests() {
                let url = request.url().to_string();
                requests
                    .lock()
                    .unwrap()
                    .push(format!("{} {url}", request.method()));
                let commit = commit_fault.lock().unwrap().commit.clone();
                let commit = commit.as_deref().unwrap_or(COMMIT);
                let response = answer(&files, &cdn, request.method(), &url, commit);
                let _ = request.respond(response);
            }
        });
        hub
    }

    fn hub(&self, cache: &Path, offline: bool) -> Hub {
        Hub::new(cache.to_path_buf(), &self.endpoint, None, offline)
    }

    fn gets(&self) -> Vec<String> {
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .filter(|r| r.starts_with("GET"))
            .cloned()
            .collect()
    }
}

type Answer = Response<Cursor<Vec<u8>>>;

fn answer(
    files: &BTreeMap<&'static str, Vec<u8>>,
    cdn: &str,
    method: &Method,
    url: &str,
    commit: &str,
) -> Answer {
    let not_found = || Response::from_data(b"not found".to_vec()).with_status_code(404);
    let Some(rest) = url.strip_prefix("/org/tiny/resolve/") else {
        return not_found();
    };
    // The revision is `main` or the commit this hub answers with (which may hold slashes).
    let Some(file) = ["main", commit]
        .iter()
        .find_map(|revision| rest.strip_prefix(revision)?.strip_prefix('/'))
    else {
        return not_found();
    };
    let Some(bytes) = files.get(file) else {
        return not_found();
    };
    let commit = header("X-Repo-Commit", commit);
    if is_lfs(file) {
        let sha = sha256(bytes);
        return Response::from_data(Vec::new())
            .with_status_code(302)
            .with_header(commit)
            .with_header(header("Location", &format!("{cdn}/cdn/{sha}")))
            .with_header(header("X-Linked-Etag", &format!("\"{sha}\"")))
            .with_header(header("X-Linked-Size", &bytes.len().to_string()));
    }
    let body = if *method == Method::Head {
        Vec::new()
    } else {
        bytes.clone()
    };
    let length = bytes.len();
    Response::new(
        200.into(),
        vec![commit, header("ETag", &format!("\"{}\"", git_sha1(bytes)))],
        Cursor::new(body),
        Some(length),
        None,
    )
}

#[test]
fn a_model_is_downloaded_into_the_cache_layout_once() {
    let fake = FakeHub::start();
    let cache = tempfile::tempdir().unwrap();
    let hub = fake.hub(cache.path(), false);
    let pulled = hub
        .pull_model("org/tiny", &TestReporter::default())
        .unwrap();
    assert_eq!(pulled.commit, COMMIT);
    assert_eq!(
        pulled.files,
        ["config.json", "model.safetensors", "tokenizer.json"]
    );
    let total: usize = fake.files.values().map(Vec::len).sum();
    assert_eq!(pulled.downloaded_bytes, total as u64);

    let repo = cache.path().join("models--org--tiny");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    for (file, bytes) in &fake.files {
        let link = repo.join("snapshots").join(COMMIT).join(file);
        let etag = if is_lfs(file) {
            sha256(bytes)
        } else {
            git_sha1(bytes)
        };
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("../../blobs").join(&etag)
        );
        assert_eq!(&std::fs::read(&link).unwrap(), bytes);
        assert!(repo.join("blobs").join(&etag).is_file());
    }
    // The readers of the cache find it.
    assert_eq!(
        hub_commit(cache.path(), "org/tiny").as_deref(),
        Some(COMMIT)
    );
    assert!(snapshot_with(cache.path(), "org/tiny", "model.safetensors").is_some());

    // Again: only HEADs, nothing fetched.
    let gets = fake.gets().len();
    let again = hub
        .pull_model("org/tiny", &TestReporter::default())
        .unwrap();
    assert_eq!(again.downloaded_bytes, 0);
    assert_eq!(
        fake.gets().len(),
        gets,
        "{:?}",
        fake.requests.lock().unwrap()
    );
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let fake = FakeHub::start();
    let cache = tempfile::tempdir().unwrap();
    let hub = fake.hub(cache.path(), false);
    fake.faults.lock().unwrap().cut_after = Some(30_000);
    let err = message(
        hub.pull_model("org/tiny", &TestReporter::default())
            .unwrap_err(),
    );
    assert!(err.contains("broke off; run again to resume"), "{err}");
    let weights = &fake.files["model.safetensors"];
    let sha = sha256(weights);
    let repo = cache.path().join("models--org--tiny");
    let partial = repo.join("blobs").join(format!("{sha}.incomplete"));
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), 30_000);
    assert!(
        !repo.join("refs/main").exists(),
        "no ref before the files are whole"
    );

    let pulled = hub
        .pull_model("org/tiny", &TestReporter::default())
        .unwrap();
    assert!(
        fake.gets().iter().any(|g| g.ends_with("bytes=30000-")),
        "{:?}",
        fake.gets()
    );
    // config.json came whole the first time; the weights continue; the tokenizer is new.
    let expected = weights.len() - 30_000 + fake.files["tokenizer.json"].len();
    assert_eq!(pulled.downloaded_bytes, expected as u64);
    assert!(!partial.exists());
    let link = repo
        .join("snapshots")
        .join(COMMIT)
        .join("model.safetensors");
    assert_eq!(&std::fs::read(link).unwrap(), weights);
}

#[test]
fn a_commit_that_is_not_a_hash_cannot_lead_writes_out_of_the_cache() {
    let fake = FakeHub::start();
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    // `snapshots/<commit>/config.json` with this commit would be `root/victim/config.json`.
    let victim = root.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("config.json"), "the user's own file").unwrap();
    fake.faults.lock().unwrap().commit = Some("../../../victim".to_string());
    let err = message(
        fake.hub(&cache, false)
            .pull_model("org/tiny", &TestReporter::default())
            .unwrap_err(),
    );
    assert!(err.contains("not a git commit hash"), "{err}");
    assert_eq!(
        std::fs::read_to_string(victim.join("config.json")).unwrap(),
        "the user's own file"
    );
    assert!(!victim.join("config.json").is_symlink());
}

#[test]
fn a_corrupt_download_is_refused_and_removed() {
    let fake = FakeHub::start();
    let cache = tempfile::tempdir().unwrap();
    fake.faults.lock().unwrap().corrupt = true;
    let err = message(
        fake.hub(cache.path(), false)
            .pull_model("org/tiny", &TestReporter::default())
            .unwrap_err(),
    );
    assert!(
        err.contains("model.safetensors") && err.contains("is corrupt"),
        "{err}"
    );
    assert!(err.contains("its hash is"), "{err}");
    let repo = cache.path().join("models--org--tiny");
    let blobs: Vec<String> = std::fs::read_dir(repo.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let sha = sha256(&fake.files["model.safetensors"]);
    assert!(!blobs.iter().any(|b| b.starts_with(&sha)), "{blobs:?}");
    assert!(snapshot_with(cache.path(), "org/tiny", "model.safetensors").is_none());
    assert!(!repo.join("refs/main").exists());
}

#[test]
fn offline_mode_and_missing_repositories_say_what_to_do() {
    let fake = FakeHub::start();
    let cache = tempfile::tempdir().unwrap();
    let err = message(
        fake.hub(cache.path(), true)
            .pull_model("org/tiny", &TestReporter::default())
            .unwrap_err(),
    );
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    assert!(fake.requests.lock().unwrap().is_empty());

    let err = message(
        fake.hub(cache.path(), false)
            .pull_model("org/absent", &TestReporter::default())
            .unwrap_err(),
    );
    assert!(err.contains("org/absent has none of config.json"), "{err}");
}

#[test]
fn a_malformed_repository_id_is_refused_before_any_request() {
    let fake = FakeHub::start();
    let cache = tempfile::tempdir().unwrap();
    let hub = fake.hub(cache.path(), false);
    for bad in [
        "org/tiny/extra",
        "../tiny",
        "org/ti ny",
        "org--x/tiny",
        "",
        "org/",
    ] {
        let err = message(hub.pull_model(bad, &TestReporter::default()).unwrap_err());
        assert!(
            err.contains("is not a Hugging Face repository id"),
            "{bad}: {err}"
        );
        assert!(err.contains("EleutherAI/gpt-neo-125m"), "{err}");
        assert!(hub.remote_commit(bad).is_err(), "{bad}");
    }
    assert!(fake.requests.lock().unwrap().is_empty());
    for good in ["gpt2", "EleutherAI/gpt-neo-125m", "org/tiny_v1.5"] {
        assert_eq!(pipe_models::hub::check_repo_id(good), Ok(()), "{good}");
    }
}

#[test]
fn ensure_downloads_only_what_the_cache_lacks() {
    let fake = FakeHub::start();
    let cache = tempfile::tempdir().unwrap();
    let hub = fake.hub(cache.path(), false);
    let reporter = TestReporter::default();
    ensure(&hub, "org/tiny", Want::Tokenizer, &reporter).unwrap();
    assert_eq!(fake.gets().len(), 1, "{:?}", fake.gets());
    assert!(fake.gets()[0].ends_with("/tokenizer.json"));
    assert!(snapshot_with(cache.path(), "org/tiny", "tokenizer.json").is_some());
    let requests = fake.requests.lock().unwrap().len();
    ensure(&hub, "org/tiny", Want::Tokenizer, &reporter).unwrap();
    assert_eq!(
        fake.requests.lock().unwrap().len(),
        requests,
        "a cached tokenizer asks nothing"
    );
    ensure(&hub, "org/tiny", Want::Model, &reporter).unwrap();
    assert!(snapshot_with(cache.path(), "org/tiny", "model.safetensors").is_some());

    let err = message(ensure(&hub, "org/absent", Want::Model, &reporter).unwrap_err());
    assert!(
        err.contains("`org/absent` is not in the Hugging Face cache"),
        "{err}"
    );
    assert!(err.contains("pipe pull-model org/absent"), "{err}");
}

/// The GET requests of `fake` per path (ranges ignored).
fn gets_per_path(fake: &FakeHub) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for get in fake.gets() {
        let path = get.split_whitespace().nth(1).unwrap().to_string();
        *counts.entry(path).or_insert(0) += 1;
    }
    counts
}

/// Every file of the fake hub is in `cache`'s snapshot, byte for byte.
fn assert_snapshot_whole(fake: &FakeHub, cache: &Path) {
    let snapshot = cache.join("models--org--tiny/snapshots").join(COMMIT);
    for (file, bytes) in &fake.files {
        assert_eq!(
            &std::fs::read(snapshot.join(file)).unwrap(),
            bytes,
            "{file}"
        );
    }
}

#[test]
fn two_downloads_of_one_model_at_once_fetch_each_file_once() {
    let fake = FakeHub::start();
    // The weights take a while, so that the second download asks while the first is in it.
    fake.faults.lock().unwrap().delay = Some(Duration::from_secs(1));
    let cache = tempfile::tempdir().unwrap();
    let start = Arc::new(Barrier::new(2));
    let downloads: Vec<_> = (0..2)
        .map(|_| {
            // Separate clients, as two processes would have.
            let hub = fake.hub(cache.path(), false);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                let reporter = TestReporter::default();
                start.wait();
                let pulled = hub.pull_model("org/tiny", &reporter);
                (pulled.map_err(message), reporter.notes())
            })
        })
        .collect();
    let results: Vec<_> = downloads.into_iter().map(|d| d.join().unwrap()).collect();
    let mut downloaded = 0;
    for (pulled, _) in &results {
        let pulled = pulled.as_ref().unwrap();
        assert_eq!(pulled.commit, COMMIT);
        downloaded += pulled.downloaded_bytes;
    }
    let total: usize = fake.files.values().map(Vec::len).sum();
    assert_eq!(downloaded, total as u64, "{results:?}");
    for (path, count) in gets_per_path(&fake) {
        assert_eq!(count, 1, "{path} fetched {count} times: {:?}", fake.gets());
    }
    // Each file, plus the CDN that the weights are redirected to.
    assert_eq!(gets_per_path(&fake).len(), fake.files.len() + 1);
    assert!(
        results
            .iter()
            .flat_map(|(_, notes)| notes)
            .any(|n| n.contains("waiting for another download of org/tiny/model.safetensors")),
        "{results:?}"
    );
    assert_snapshot_whole(&fake, cache.path());
    let blobs = cache.path().join("models--org--tiny/blobs");
    let leftovers: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".incomplete"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_lock_held_by_a_killed_process_does_not_block_the_download() {
    let fake = FakeHub::start();
    let cache = tempfile::tempdir().unwrap();
    let sha = sha256(&fake.files["model.safetensors"]);
    let locks = cache.path().join(".locks/models--org--tiny");
    std::fs::create_dir_all(&locks).unwrap();
    let lock = locks.join(format!("{sha}.lock"));
    // Another downloader holds the weights' lock: a shell takes it with util-linux `flock` (the
    // same OS lock) on its own descriptor, then becomes `sleep`, still holding it.
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg(r#"exec 9>"$1" && flock 9 && echo held && exec sleep 600"#)
        .arg("holder")
        .arg(&lock)
        .stdout(Stdio::piped())
        .spawn()
        .map(KillOnDrop)
        .expect("flock(1) runs");
    let mut line = String::new();
    BufReader::new(holder.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held");

    let hub = fake.hub(cache.path(), false);
    let reporter = Arc::new(TestReporter::default());
    let waiting = Arc::clone(&reporter);
    let download =
        std::thread::spawn(move || hub.pull_model("org/tiny", &*waiting).map_err(message));
    let began = std::time::Instant::now();
    while !reporter
        .notes()
        .iter()
        .any(|n| n.contains("waiting for another download"))
    {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "{:?}",
            reporter.notes()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let blob = cache.path().join("models--org--tiny/blobs").join(&sha);
    assert!(!blob.exists(), "downloaded while the lock was held");
    assert!(
        !fake.gets().iter().any(|g| g.contains("/cdn/")),
        "{:?}",
        fake.gets()
    );

    // The holder dies without unlocking: the OS releases its lock, the download goes on.
    holder.0.kill().unwrap();
    holder.0.wait().unwrap();
    let pulled = download.join().unwrap().unwrap();
    assert_eq!(pulled.commit, COMMIT);
    assert_snapshot_whole(&fake, cache.path());
    assert!(
        lock.exists(),
        "the lock file stays, as huggingface_hub leaves it"
    );
}

#[test]
fn a_sharded_model_brings_every_shard_its_index_names() {
    let mut files = BTreeMap::new();
    files.insert("config.json", br#"{"model_type": "gpt_neo"}"#.to_vec());
    files.insert(
        "model.safetensors.index.json",
        br#"{"metadata": {}, "weight_map": {
            "a.weight": "model-00001-of-00002.safetensors",
            "b.weight": "model-00002-of-00002.safetensors",
            "c.weight": "model-00001-of-00002.safetensors"}}"#
            .to_vec(),
    );
    files.insert(
        "model-00001-of-00002.safetensors",
        (0..30_000u32).flat_map(|i| (i * 3).to_le_bytes()).collect(),
    );
    files.insert(
        "model-00002-of-00002.safetensors",
        (0..20_000u32).flat_map(|i| (i * 5).to_le_bytes()).collect(),
    );
    let fake = FakeHub::start_with(files);
    let cache = tempfile::tempdir().unwrap();
    let pulled = fake
        .hub(cache.path(), false)
        .pull_model("org/tiny", &TestReporter::default())
        .unwrap();
    assert_eq!(
        pulled.files,
        [
            "config.json",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"
        ]
    );
    let total: usize = fake.files.values().map(Vec::len).sum();
    assert_eq!(pulled.downloaded_bytes, total as u64);
    let snapshot = cache
        .path()
        .join("models--org--tiny/snapshots")
        .join(COMMIT);
    for (file, bytes) in &fake.files {
        assert_eq!(
            &std::fs::read(snapshot.join(file)).unwrap(),
            bytes,
            "{file}"
        );
    }
    // Each shard came from the commit the index came from.
    let requests = fake.requests.lock().unwrap();
    assert!(
        requests
            .iter()
            .filter(|r| r.contains("model-0000"))
            .all(|r| !r.starts_with("HEAD") || r.contains(COMMIT)),
        "{requests:?}"
    );
}
