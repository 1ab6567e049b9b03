//! Downloading a repository's files into the Hugging Face cache, as `hf download` does.
//!
//! For each file, a `HEAD` of `{endpoint}/{repo}/resolve/{revision}/{file}` (redirects not
//! followed) gives the commit (`X-Repo-Commit`), the content hash (`X-Linked-Etag` for large
//! files kept in LFS, else `ETag`) and the size (`X-Linked-Size`, else `Content-Length`).
//! The body is fetched into `blobs/<etag>.incomplete`, resuming with a `Range` request where
//! an earlier download stopped, checked against the size and the hash (SHA-256 for LFS
//! files, git's blob SHA-1 for the others), renamed to `blobs/<etag>`, and linked from
//! `snapshots/<commit>/<file>`; `refs/main` is written last. A crash leaves either nothing
//! visible or a complete file. While one process downloads a blob it holds the blob's lock
//! (`huggingface_hub`'s, under `<cache>/.locks/`); a second one waits, then finds the blob.
//!
//! `HF_ENDPOINT` (default `https://huggingface.co`), `HF_TOKEN` (sent as a bearer token)
//! and `HF_HUB_OFFLINE` (no network at all) are read as `huggingface_hub` reads them.

use fs_err::{File, OpenOptions};
use std::fs::TryLockError;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pipe_engine::Reporter;
use sha1::Digest as _;

/// The files of a model (`hub:` in finetune): its config and its weights.
pub const MODEL_FILES: [&str; 2] = ["config.json", "model.safetensors"];

/// The ways a repository holds its tokenizer, the first present wins.
pub const TOKENIZER_FILES: [&[&str]; 2] = [&["tokenizer.json"], &["vocab.json", "merges.txt"]];

/// What [`Hub::pull`] fetches for a model: each need is a list of alternative file groups;
/// a sharded checkpoint's index brings its shards ([`Hub::pull_model`]).
const MODEL_NEEDS: [&[&[&str]]; 2] = [
    &[&["config.json"]],
    &[&["model.safetensors"], &[crate::checkpoint::INDEX_FILE]],
];

/// Where and how to reach the hub.
#[derive(Debug, Clone)]
pub struct Hub {
    cache: PathBuf,
    endpoint: String,
    token: Option<String>,
    offline: bool,
}

/// What a `HEAD` said about one file.
#[derive(Debug, Clone)]
struct Remote {
    commit: String,
    etag: String,
    size: Option<u64>,
}

/// What [`Hub::pull`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The commit downloaded (now `refs/main`).
    pub commit: String,
    /// The snapshot folder.
    pub snapshot: PathBuf,
    /// Bytes downloaded (0 when everything was cached).
    pub downloaded_bytes: u64,
    /// The files of the snapshot, in the order asked.
    pub files: Vec<String>,
}

impl Hub {
    /// A hub at `endpoint` (such as `https://huggingface.co`) caching into `cache`, sending
    /// `token` as a bearer token; `offline` forbids the network.
    pub fn new(cache: PathBuf, endpoint: &str, token: Option<String>, offline: bool) -> Hub {
        Hub {
            cache,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
            offline,
        }
    }

    /// The hub as the environment describes it (`HF_ENDPOINT`, `HF_TOKEN`,
    /// `HF_HUB_OFFLINE`), caching into `cache`.
    pub fn from_env(cache: PathBuf) -> Hub {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".to_string());
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "on" | "yes" | "true"
            )
        });
        Hub::new(cache, &endpoint, var("HF_TOKEN"), offline)
    }

    /// The cache folder.
    pub fn cache(&self) -> &Path {
        &self.cache
    }

    /// Whether `HF_HUB_OFFLINE` forbids the network.
    pub fn is_offline(&self) -> bool {
        self.offline
    }

    /// The commit `main` of `repo` points to on the hub now.
    pub fn remote_commit(&self, repo: &str) -> Result<String> {
        self.check_before_network(repo)?;
        let first = [MODEL_FILES[0], TOKENIZER_FILES[0][0]];
        for file in first {
            if let Some(remote) = self.head(repo, "main", file)? {
                return Ok(remote.commit);
            }
        }
        bail!(
            "{}/{repo} has neither config.json nor tokenizer.json",
            self.endpoint
        )
    }

    /// Downloads the model files of `repo` and its tokenizer when it has one.
    /// A sharded checkpoint brings every shard its index names, from the same commit, each
    /// verified as a single file is.
    pub fn pull_model(&self, repo: &str, reporter: &dyn Reporter) -> Result<Pulled> {
        let mut pulled = self.pull(repo, &MODEL_NEEDS, reporter)?;
        if pulled
            .files
            .iter()
            .any(|f| f == crate::checkpoint::INDEX_FILE)
        {
            let shards = crate::checkpoint::shard_files(
                &pulled.snapshot.join(crate::checkpoint::INDEX_FILE),
            )?;
            let groups: Vec<[&str; 1]> = shards.iter().map(|s| [s.as_str()]).collect();
            let needs: Vec<[&[&str]; 1]> = groups.iter().map(|g| [&g[..]]).collect();
            let needs: Vec<&[&[&str]]> = needs.iter().map(|n| &n[..]).collect();
            let commit = pulled.commit.clone();
            let more = self.pull_at(repo, &needs, Some(commit), reporter)?;
            pulled.downloaded_bytes += more.downloaded_bytes;
            pulled.files.extend(more.files);
        }
        match self.pull_tokenizer(repo, reporter) {
            Ok(tokenizer) => {
                pulled.downloaded_bytes += tokenizer.downloaded_bytes;
                pulled.files.extend(tokenizer.files);
            }
            Err(e) => reporter.note(&format!("{repo} has no tokenizer to download: {e:#}")),
        }
        Ok(pulled)
    }

    /// Downloads the tokenizer files of `repo`.
    pub fn pull_tokenizer(&self, repo: &str, reporter: &dyn Reporter) -> Result<Pulled> {
        self.pull(repo, &[&TOKENIZER_FILES[..]], reporter)
    }

    /// Downloads what `needs` lists of `repo`'s `main`: per need, the first group of files
    /// the repository has in full. Files already in the cache are not fetched again.
    pub fn pull(
        &self,
        repo: &str,
        needs: &[&[&[&str]]],
        reporter: &dyn Reporter,
    ) -> Result<Pulled> {
        self.pull_at(repo, needs, None, reporter)
    }

    /// [`Self::pull`] from `commit` (`main` when `None`).
    fn pull_at(
        &self,
        repo: &str,
        needs: &[&[&[&str]]],
        mut commit: Option<String>,
        reporter: &dyn Reporter,
    ) -> Result<Pulled> {
        self.check_before_network(repo)?;
        let mut chosen: Vec<(String, Remote)> = Vec::new();
        for need in needs {
            let mut found = None;
            'groups: for group in need.iter() {
                let mut remotes = Vec::new();
                for file in group.iter() {
                    // Once the commit is known, every file comes from that same commit.
                    let revision = commit.as_deref().unwrap_or("main");
                    match self.head(repo, revision, file)? {
                        Some(remote) => {
                            commit.get_or_insert_with(|| remote.commit.clone());
                            remotes.push((file.to_string(), remote));
                        }
                        None => continue 'groups,
                    }
                }
                found = Some(remotes);
                break;
            }
            let Some(remotes) = found else {
                let wanted: Vec<String> = need.iter().map(|g| g.join(" + ")).collect();
                bail!(
                    "{}/{repo} has none of {}; is it the right repository?",
                    self.endpoint,
                    wanted.join(", or ")
                );
            };
            chosen.extend(remotes);
        }
        let commit = commit.context("nothing to download")?;
        let repo_dir = super::repo_dir(&self.cache, repo);
        let snapshot = repo_dir.join("snapshots").join(&commit);
        let mut downloaded_bytes = 0;
        for (file, remote) in &chosen {
            downloaded_bytes += self.fetch(repo, &commit, file, remote, reporter)?;
            link(&snapshot, file, &remote.etag)?;
        }
        let refs = repo_dir.join("refs");
        fs_err::create_dir_all(&refs)?;
        pipe_engine::atomic::write(&refs.join("main"), commit.as_bytes(), false)?;
        Ok(Pulled {
            commit,
            snapshot,
            downloaded_bytes,
            files: chosen.into_iter().map(|(f, _)| f).collect(),
        })
    }

    /// Refuses a malformed `repo` and, under `HF_HUB_OFFLINE`, any request at all.
    fn check_before_network(&self, repo: &str) -> Result<()> {
        super::check_repo_id(repo).map_err(anyhow::Error::msg)?;
        if self.offline {
            bail!(
                "`{repo}` is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE forbids \
                 downloading it; unset HF_HUB_OFFLINE, or download it where the network is allowed",
                self.cache.display()
            );
        }
        Ok(())
    }

    fn url(&self, repo: &str, revision: &str, file: &str) -> String {
        format!("{}/{repo}/resolve/{revision}/{file}", self.endpoint)
    }

    fn agent(&self, redirects: u32) -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(redirects)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .user_agent(concat!("pipe/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent()
    }

    fn authorised<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    /// `HEAD` of one file; `None` when the repository does not have it.
    fn head(&self, repo: &str, revision: &str, file: &str) -> Result<Option<Remote>> {
        let url = self.url(repo, revision, file);
        let response = self
            .authorised(self.agent(0).head(&url))
            .header("Accept-Encoding", "identity")
            .call()
            .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        match status {
            200..=399 => {}
            404 => return Ok(None),
            401 | 403 => bail!(
                "{url} answered {status}: `{repo}` is private or gated; set HF_TOKEN to a token \
                 that may read it"
            ),
            _ => bail!("{url} answered {status}"),
        }
        let commit = header("x-repo-commit").with_context(|| {
            format!("{url} sent no X-Repo-Commit; is HF_ENDPOINT a Hugging Face hub?")
        })?;
        // The commit names a folder of the cache (`snapshots/<commit>/`): only a git hash may.
        if commit.len() != 40 || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
            bail!(
                "{url} sent X-Repo-Commit `{commit}`, which is not a git commit hash; is HF_ENDPOINT a Hugging Face hub?"
            );
        }
        let etag = header("x-linked-etag")
            .or_else(|| header("etag"))
            .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
            .filter(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            .with_context(|| format!("{url} sent no usable ETag"))?;
        let size = header("x-linked-size")
            .or_else(|| header("content-length"))
            .and_then(|s| s.parse().ok());
        Ok(Some(Remote { commit, etag, size }))
    }

    /// Makes sure `blobs/<etag>` holds `file`; returns the bytes downloaded.
    fn fetch(
        &self,
        repo: &str,
        commit: &str,
        file: &str,
        remote: &Remote,
        reporter: &dyn Reporter,
    ) -> Result<u64> {
        let blobs = super::repo_dir(&self.cache, repo).join("blobs");
        let blob = blobs.join(&remote.etag);
        if blob.is_file() {
            return Ok(0);
        }
        let _lock = lock_blob(&self.cache, repo, &remote.etag, file, reporter)?;
        // Another process may have finished this blob while this one waited.
        if blob.is_file() {
            return Ok(0);
        }
        fs_err::create_dir_all(&blobs)
            .with_context(|| format!("cannot create {}", blobs.display()))?;
        let partial = blobs.join(format!("{}.incomplete", remote.etag));
        let mut offset = fs_err::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if remote.size.is_some_and(|size| offset > size) {
            offset = 0;
        }
        let url = self.url(repo, commit, file);
        let mut request = self.authorised(self.agent(10).get(&url));
        if offset > 0 {
            request = request.header("Range", format!("bytes={offset}-"));
        }
        let mut response = request
            .call()
            .with_context(|| format!("cannot download {url}"))?;
        let status = response.status().as_u16();
        let append = match status {
            206 => true,
            200 => false,
            416 if offset > 0 => true,
            _ => bail!("{url} answered {status}"),
        };
        let mut out = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&partial)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        let start = if append { offset } else { 0 };
        let bar = reporter.progress(remote.size.unwrap_or(0), "bytes");
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>9.cyan.bold} {bar:30.cyan/blue} {bytes}/{total_bytes} {msg} {bytes_per_sec} [{eta}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("━╸─"),
        );
        bar.set_message(format!("{repo}/{file}"));
        bar.set_position(start);
        let mut downloaded = 0u64;
        if status != 416 {
            let mut body = response.body_mut().as_reader();
            let mut buffer = vec![0u8; 1 << 16];
            loop {
                let n = body.read(&mut buffer).with_context(|| {
                    format!("the download of {url} broke off; run again to resume it")
                })?;
                if n == 0 {
                    break;
                }
                out.write_all(&buffer[..n])
                    .with_context(|| format!("cannot write {}", partial.display()))?;
                downloaded += n as u64;
                bar.inc(n as u64);
            }
        }
        out.sync_all()?;
        drop(out);
        bar.finish_and_clear();
        if let Err(e) = verify(&partial, remote) {
            // The partial file is ours: a corrupt one would only be resumed into another.
            let _ = fs_err::remove_file(&partial);
            return Err(e.context(format!("{repo}/{file} from {url} is corrupt; it was removed, run again to download it afresh")));
        }
        fs_err::rename(&partial, &blob)
            .with_context(|| format!("cannot move {} into place", partial.display()))?;
        Ok(downloaded)
    }
}

/// Takes the lock of the blob `etag` of `repo`, waiting (with a note) while another download
/// of it holds it. The lock is `huggingface_hub`'s, `<cache>/.locks/<repo folder>/<etag>.lock`
/// taken with `flock`, so pipe and `hf download` never write the same `.incomplete` file at
/// once. The OS releases it when its holder exits, however it exits: a killed download leaves
/// no lock behind, only a lock file (as `huggingface_hub` does), which is reused.
fn lock_blob(
    cache: &Path,
    repo: &str,
    etag: &str,
    file: &str,
    reporter: &dyn Reporter,
) -> Result<File> {
    let folder = super::repo_dir(cache, repo);
    let name = folder
        .file_name()
        .context("a repository folder has a name")?;
    let dir = cache.join(".locks").join(name);
    fs_err::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{etag}.lock"));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open the download lock {}", path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            reporter.note(&format!(
                "waiting for another download of {repo}/{file} to finish (it holds {})",
                path.display()
            ));
            lock.lock()
                .with_context(|| format!("cannot lock {}", path.display()))?;
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    Ok(lock)
}

/// Checks the size and the hash of a downloaded file against the hub's.
fn verify(path: &Path, remote: &Remote) -> Result<()> {
    let size = fs_err::metadata(path)?.len();
    if let Some(expected) = remote.size
        && size != expected
    {
        bail!("it has {size} bytes, the hub says {expected}");
    }
    let etag = remote.etag.to_ascii_lowercase();
    let is_hex = |n: usize| etag.len() == n && etag.chars().all(|c| c.is_ascii_hexdigit());
    let actual = if is_hex(64) {
        let mut hasher = sha2::Sha256::new();
        hash_file(path, |chunk| hasher.update(chunk))?;
        hex(&hasher.finalize())
    } else if is_hex(40) {
        // git's blob id: SHA-1 over "blob <size>\0" and the content.
        let mut hasher = sha1::Sha1::new();
        hasher.update(format!("blob {size}\0").as_bytes());
        hash_file(path, |chunk| hasher.update(chunk))?;
        hex(&hasher.finalize())
    } else {
        return Ok(());
    };
    if actual != etag {
        bail!("its hash is {actual}, the hub says {etag}");
    }
    Ok(())
}

fn hash_file(path: &Path, mut update: impl FnMut(&[u8])) -> Result<()> {
    let mut file = File::open(path)?;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(());
        }
        update(&buffer[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `snapshots/<commit>/<file>` → `../../blobs/<etag>`, replaced atomically.
fn link(snapshot: &Path, file: &str, etag: &str) -> Result<()> {
    let target = snapshot.join(file);
    let parent = target.parent().unwrap_or(snapshot);
    fs_err::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let depth = file.matches('/').count() + 2;
    let blob: PathBuf = std::iter::repeat_n("..", depth)
        .collect::<PathBuf>()
        .join("blobs")
        .join(etag);
    // Unique per process and call: two threads may link the same file at once.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let temp = parent.join(format!(".{}-{n}.link", std::process::id()));
    let _ = fs_err::remove_file(&temp);
    fs_err::os::unix::fs::symlink(&blob, &temp)
        .with_context(|| format!("cannot link {}", target.display()))?;
    fs_err::rename(&temp, &target).with_context(|| format!("cannot link {}", target.display()))?;
    Ok(())
}
