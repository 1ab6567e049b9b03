//! What `pipe push`, `pipe pull` and `pipe run --push` share: the remote a
//! manifest uses, the stages of its lockfile, and the transfer's progress
//! bar.

use std::sync::Arc;

use pipe_engine::lockfile::{self, lock_path};
use pipe_engine::remote_cache::RemoteCache;
use pipe_engine::{Digest, Pipeline, Printer, Reporter, Store, UsageError};
use pipe_remote::Remote;

use crate::cli::TransferArgs;
use crate::workspace;

/// The remote of `pipeline` for a run or status (`None` with `--no-remote`
/// or when none is named).
pub fn for_run(pipeline: &Pipeline<'_>, no_remote: bool) -> anyhow::Result<Option<Arc<Remote>>> {
    if no_remote {
        return Ok(None);
    }
    Ok(Remote::for_manifest(&pipeline.manifest)?.map(Arc::new))
}

/// The same remote as the engine sees it.
pub fn as_cache(remote: &Option<Arc<Remote>>) -> Option<Arc<dyn RemoteCache>> {
    remote.clone().map(|r| r as Arc<dyn RemoteCache>)
}

/// The remote of `pipeline`; naming none is a usage error.
fn require(pipeline: &Pipeline<'_>) -> anyhow::Result<Remote> {
    Remote::for_manifest(&pipeline.manifest)?.ok_or_else(|| {
        UsageError(format!(
            "{} names no remote cache; add `remote: s3://bucket/prefix` to it or set {}",
            pipeline.manifest.path.display(),
            pipe_remote::REMOTE_ENV
        ))
        .into()
    })
}

/// (stage, key) of `stages` (default: every stage) in the manifest's lockfile.
fn locked_keys(
    pipeline: &Pipeline<'_>,
    stages: &[String],
) -> anyhow::Result<Vec<(String, Digest)>> {
    let path = lock_path(&pipeline.manifest.path);
    let lock = lockfile::load_for(&pipeline.manifest.path, &pipeline.manifest.name)?;
    if lock.stages.is_empty() {
        return Err(UsageError(format!(
            "`{}` lists no results yet; run `pipe run` first (or pull with the lockfile of a clone that ran it)",
            path.display()
        ))
        .into());
    }
    if stages.is_empty() {
        return Ok(lock
            .stages
            .iter()
            .map(|(n, e)| (n.clone(), e.key))
            .collect());
    }
    stages
        .iter()
        .map(|name| -> anyhow::Result<(String, Digest)> {
            if pipeline.id(name).is_none() {
                let known: Vec<&str> = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
                return Err(UsageError(format!(
                    "no stage named '{name}' in {}; its stages are: {}",
                    pipeline.manifest.path.display(),
                    known.join(", ")
                ))
                .into());
            }
            match lock.stages.get(name) {
                Some(entry) => Ok((name.clone(), entry.key)),
                None => Err(UsageError(format!(
                    "stage {name} has no result in `{}` yet; run it first",
                    path.display()
                ))
                .into()),
            }
        })
        .collect()
}

/// What `pipe push` and `pipe pull` share: the manifest's remote, the selected stages'
/// keys from the lockfile, the store under its lock, and a byte progress bar labelled
/// `label` around `transfer`. Returns the remote (for messages) and the transfer's result;
/// an error before the transfer starts is the outer one.
pub fn transfer<R>(
    args: &TransferArgs,
    printer: &Printer,
    label: &str,
    transfer: impl FnOnce(
        &Remote,
        &Store,
        &[(String, Digest)],
        &indicatif::ProgressBar,
    ) -> anyhow::Result<R>,
) -> anyhow::Result<(Remote, anyhow::Result<R>)> {
    let registry = pipe_stages::registry();
    let (file, stages) = workspace::split_file_and_stages(&args.args)?;
    let pipeline = workspace::load(&file, &registry, args.manifest.allow_outside)?;
    let remote = require(&pipeline)?;
    let store = workspace::open_store(&pipeline)?;
    let keys = locked_keys(&pipeline, &stages)?;
    let _lock = workspace::lock_store(&store, !args.no_wait, printer)?;
    let bar = transfer_bar(printer, label);
    let result = transfer(&remote, &store, &keys, &bar);
    bar.finish_and_clear();
    Ok((remote, result))
}

/// A progress bar of bytes labelled `label` (hidden when output is not a terminal).
pub fn transfer_bar(printer: &Printer, label: &str) -> indicatif::ProgressBar {
    let bar = printer.reporter(label).progress(0, "B");
    bar.set_style(pipe_remote::bytes_style());
    bar
}
