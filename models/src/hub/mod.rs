//! The Hugging Face cache, shared by the stages that read from it (tokenize, finetune), and
//! downloads into it ([`download`]) when a repository is missing and the network is allowed.
//!
//! The cache has `huggingface_hub`'s layout, so `hf download` and `transformers` share it:
//! `models--OWNER--NAME/refs/main` holds a commit, `snapshots/<commit>/<file>` are symlinks
//! to `blobs/<etag>`, the file contents.

pub mod download;

use std::path::{Path, PathBuf};

pub use download::{Hub, MODEL_FILES};

/// The Hugging Face cache folder: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (the order `huggingface_hub` uses).
pub fn default_hub_cache() -> PathBuf {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(path) => PathBuf::from(path),
        None => hf_hub::Cache::from_env().path().clone(),
    }
}

/// Checks that `repo` is a repository id the hub can have: `name` or `owner/name`, each
/// part made of ASCII letters, digits, `-`, `_` and `.`, neither starting nor ending with
/// `-` or `.`, and without `--` or `..` (the hub's own rules). Checked before any request,
/// so a typo is named as such rather than answered by the network. The error is a sentence
/// that ends with an example.
pub fn check_repo_id(repo: &str) -> Result<(), String> {
    let part_ok = |part: &str| {
        !part.is_empty()
            && part.len() <= 96
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !part.starts_with(['-', '.'])
            && !part.ends_with(['-', '.'])
            && !part.contains("--")
            && !part.contains("..")
    };
    let parts: Vec<&str> = repo.split('/').collect();
    if parts.len() <= 2 && parts.iter().all(|p| part_ok(p)) {
        Ok(())
    } else {
        Err(format!(
            "`{repo}` is not a Hugging Face repository id: it is `owner/name` (letters, digits, \
             `-`, `_`, `.`), e.g. `EleutherAI/gpt-neo-125m`"
        ))
    }
}

/// The folder of `repo` in `cache`.
pub fn repo_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(hf_hub::Repo::model(repo.to_string()).folder_name())
}

/// The commit the cache's `main` ref points to for `repo`, if it is cached.
pub fn hub_commit(cache: &Path, repo: &str) -> Option<String> {
    let commit = fs_err::read_to_string(repo_dir(cache, repo).join("refs").join("main")).ok()?;
    Some(commit.trim().to_string())
}

/// The commit that `hub:` stages put in their key: the cached one, else (when the network is
/// allowed) the one the hub's `main` points to now, which a run then downloads.
pub fn key_commit(cache: &Path, repo: &str) -> Option<String> {
    hub_commit(cache, repo).or_else(|| Hub::from_env(cache.to_path_buf()).remote_commit(repo).ok())
}

/// The cached copy of `file` of `repo`, if it is cached.
pub fn cached_file(cache: &Path, repo: &str, file: &str) -> Option<PathBuf> {
    hf_hub::Cache::new(cache.to_path_buf())
        .model(repo.to_string())
        .get(file)
}

/// The cached snapshot folder of `repo` that holds `file`, if it is cached.
pub fn snapshot_with(cache: &Path, repo: &str, file: &str) -> Option<PathBuf> {
    Some(cached_file(cache, repo, file)?.parent()?.to_path_buf())
}

/// What a stage needs of a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// `config.json` and `model.safetensors` (finetune's `model: { hub: }`).
    Model,
    /// `tokenizer.json`, or `vocab.json` and `merges.txt` (tokenize's `tokenizer: { hub: }`).
    Tokenizer,
}

/// Makes sure `repo` has what `want` names in `hub`'s cache: nothing to do when it is
/// cached, else a download (with a progress bar through `reporter`). The error says how to
/// get the files another way when the download is impossible or fails.
pub fn ensure(
    hub: &Hub,
    repo: &str,
    want: Want,
    reporter: &dyn pipe_engine::Reporter,
) -> anyhow::Result<()> {
    let cache = hub.cache();
    let cached = match want {
        // As finetune reads it: a snapshot with a config (its weights may be sharded).
        Want::Model => snapshot_with(cache, repo, MODEL_FILES[0]).is_some(),
        Want::Tokenizer => download::TOKENIZER_FILES.iter().any(|group| {
            group
                .iter()
                .all(|f| snapshot_with(cache, repo, f).is_some())
        }),
    };
    if cached {
        return Ok(());
    }
    if !hub.is_offline() {
        reporter.note(&format!(
            "downloading `{repo}` into the Hugging Face cache ({})",
            cache.display()
        ));
    }
    let pulled = match want {
        Want::Model => hub.pull_model(repo, reporter),
        Want::Tokenizer => hub.pull_tokenizer(repo, reporter),
    };
    let (files, what) = match want {
        Want::Model => ("config.json model.safetensors", "model: { path: ... }"),
        Want::Tokenizer => ("tokenizer.json", "tokenizer: { path: ... }"),
    };
    let hint = format!(
        "download it with `pipe pull-model {repo}` or `hf download {repo} {files}`, or point \
         `{what}` at a local copy"
    );
    pulled.map(|_| ()).map_err(|e| {
        if hub.is_offline() {
            // The offline refusal already names the repository and the cache.
            anyhow::anyhow!("{e:#}\n{hint}")
        } else {
            anyhow::anyhow!(
                "`{repo}` is not in the Hugging Face cache ({}) and could not be downloaded: \
                 {e:#}\n{hint}",
                cache.display()
            )
        }
    })
}
