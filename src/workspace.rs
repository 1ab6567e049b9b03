//! Finding the manifest, checking it, and opening its store: what most
//! subcommands do first.

use std::path::{Path, PathBuf};

use pipe_engine::store::StoreLock;
use pipe_engine::{
    Manifest, Pipeline, PlanOptions, Printer, Registry, Store, Tone, UsageError, plan,
};

/// Splits `[FILE] [STAGE…]` positionals: the first is the manifest when it
/// names a YAML file (or an existing file); otherwise the manifest is the
/// one in the current folder.
pub fn split_file_and_stages(args: &[String]) -> anyhow::Result<(PathBuf, Vec<String>)> {
    match args.split_first() {
        Some((first, rest)) if looks_like_manifest(first) => {
            Ok((PathBuf::from(first), rest.to_vec()))
        }
        _ => Ok((default_manifest()?, args.to_vec())),
    }
}

fn looks_like_manifest(arg: &str) -> bool {
    arg.ends_with(".yaml") || arg.ends_with(".yml") || Path::new(arg).is_file()
}

/// The manifest when none is named: the one `*.yaml`/`*.yml` file in the current folder.
pub fn default_manifest() -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = fs_err::read_dir(".")?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    found.sort();
    match found.len() {
        1 => {
            let only = found.remove(0);
            Ok(only.strip_prefix("./").map(Path::to_path_buf).unwrap_or(only))
        }
        0 => Err(UsageError(
            "no manifest given and none in the current folder; name one (`pipe run pipelines/student.yaml`) or write one with `pipe init`".into(),
        )
        .into()),
        _ => {
            let names: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
            Err(UsageError(format!("several manifests in the current folder ({}); name the one to use", names.join(", "))).into())
        }
    }
}

/// Loads and checks a manifest.
pub fn load<'r>(
    path: &Path,
    registry: &'r Registry,
    allow_outside: bool,
) -> anyhow::Result<Pipeline<'r>> {
    let manifest = Manifest::load(path)?;
    Ok(plan(manifest, registry, PlanOptions { allow_outside })?)
}

/// Opens the store of a pipeline, claiming its pipeline name there
/// ([`Store::claim_pipeline_name`]: two manifests of one name would share their results).
pub fn open_store(pipeline: &Pipeline<'_>) -> anyhow::Result<Store> {
    let store = Store::open(&pipe_engine::store_dir(&pipeline.manifest.dir))?;
    store.claim_pipeline_name(&pipeline.manifest.name, &pipeline.manifest.path)?;
    Ok(store)
}

/// Takes the store's lock for a command that writes the store (run, gc) or must not read
/// it while a run writes it (push, pull). While another process holds it: with `wait`, says
/// whose it is and waits; otherwise fails with [`pipe_engine::StoreBusy`] naming the holder.
pub fn lock_store(store: &Store, wait: bool, printer: &Printer) -> anyhow::Result<StoreLock> {
    store.lock(wait, |holder| {
        let who = holder.map(|p| format!(" (pid {p})")).unwrap_or_default();
        printer.status(
            "Waiting",
            Tone::Warn,
            &format!(
                "for another pipe run{who} to release {}",
                store.root().display()
            ),
        );
    })
}
