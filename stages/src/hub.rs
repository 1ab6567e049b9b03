//! The local Hugging Face cache, shared by the stages that read from it (tokenize, finetune).
//! Nothing is downloaded here: a repository must already be in the cache.

use std::path::{Path, PathBuf};

/// The Hugging Face cache folder: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (the order `huggingface_hub` uses).
pub fn default_hub_cache() -> PathBuf {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(path) => PathBuf::from(path),
        None => hf_hub::Cache::from_env().path().clone(),
    }
}

/// The commit the cache's `main` ref points to for `repo`, if it is cached.
pub fn hub_commit(cache: &Path, repo: &str) -> Option<String> {
    let folder = hf_hub::Repo::model(repo.to_string()).folder_name();
    let commit = std::fs::read_to_string(cache.join(folder).join("refs").join("main")).ok()?;
    Some(commit.trim().to_string())
}

/// The cached snapshot folder of `repo` that holds `file`, if it is cached.
pub fn snapshot_with(cache: &Path, repo: &str, file: &str) -> Option<PathBuf> {
    let cached = hf_hub::Cache::new(cache.to_path_buf()).model(repo.to_string());
    Some(cached.get(file)?.parent()?.to_path_buf())
}
