//! Where a stage may read and write: workspace paths normalised and confined to the
//! manifest's folder, outs kept off their own stage's deps and off the paths pipe keeps for
//! itself (the manifest, its lockfile, the store), and deps kept out of the store.

use serde_json::Value;

use crate::diag::Diagnostic;
use crate::lockfile::lock_path;
use crate::manifest::Manifest;
use crate::paths;
use crate::yaml::Span;

/// Workspace paths no out may be, contain or lie in: the manifest, its
/// lockfile and the store (when they are inside the manifest's folder), each
/// as written and where it really is on disk (a manifest reached through a
/// symlink, a `.pipe` that links to another folder of the workspace).
pub(super) fn protected_paths(manifest: &Manifest) -> Vec<(String, &'static str)> {
    let dir = std::path::absolute(&manifest.dir).unwrap_or_else(|_| manifest.dir.clone());
    let real_dir = manifest.dir.canonicalize().ok();
    let inside = |path: &std::path::Path, dir: &std::path::Path| -> Option<String> {
        let rel = path.strip_prefix(dir).ok()?.to_str()?.to_string();
        paths::Resolver::new(&manifest.dir, false)
            .normalize(&rel)
            .ok()
    };
    let mut protected = Vec::new();
    for (path, what) in [
        (manifest.path.clone(), "the manifest"),
        (lock_path(&manifest.path), "the lockfile"),
        (crate::store_dir(&manifest.dir), "the store"),
    ] {
        let lexical = std::path::absolute(&path)
            .ok()
            .and_then(|p| inside(&p, &dir));
        let real = match (&real_dir, path.canonicalize()) {
            (Some(real_dir), Ok(real)) => inside(&real, real_dir),
            _ => None,
        };
        for rel in [lexical, real].into_iter().flatten() {
            if !protected.iter().any(|(p, _)| *p == rel) {
                protected.push((rel, what));
            }
        }
    }
    protected
}

/// An out being checked, and where the manifest writes it.
#[derive(Clone, Copy)]
pub(super) struct OutPlace<'a> {
    pub(super) out: &'a str,
    pub(super) span: Span,
    pub(super) file: &'a std::path::Path,
}

/// Refuses an out that overlaps one of its own stage's deps (the run would
/// delete its input) or a path pipe keeps for itself, as written or through
/// the symlinks on disk (`resolver`).
pub(super) fn check_out(
    place: OutPlace<'_>,
    deps: &[String],
    protected: &[(String, &'static str)],
    resolver: &paths::Resolver<'_>,
    errors: &mut Vec<Diagnostic>,
) {
    let OutPlace { out, span, file } = place;
    let overlaps = |a: &str, b: &str| paths::is_within(a, b) || paths::is_within(b, a);
    let real_out = resolver.real(out, false);
    let clash = deps.iter().find_map(|dep| {
        if overlaps(out, dep) {
            return Some((dep, None));
        }
        let real_dep = resolver.real(dep, true);
        overlaps(&real_out, &real_dep).then_some((dep, Some(real_dep)))
    });
    if let Some((dep, through_link)) = clash {
        let how = match through_link {
            Some(real_dep) => format!(
                "and `{dep}`, a dep of this stage, overlap through a symlink (`{real_out}` and `{real_dep}` on disk)"
            ),
            None if dep == out => "is also a dep of this stage".to_string(),
            None if paths::is_within(dep, out) => {
                format!("contains `{dep}`, a dep of this stage")
            }
            None => format!("lies inside `{dep}`, a dep of this stage"),
        };
        errors.push(
            Diagnostic::at(file, span, format!("out `{out}` {how}"))
                .help("pipe empties an out before the stage runs, which would delete the input: write the result to another path"),
        );
    }
    if let Some((path, what)) = protected
        .iter()
        .find(|(p, _)| overlaps(out, p) || overlaps(&real_out, p))
    {
        errors.push(
            Diagnostic::at(file, span, format!("out `{out}` overlaps {what} `{path}`"))
                .help("pipe keeps this path for itself: write the stage's output somewhere else"),
        );
    }
}

pub(super) fn path_error(file: &std::path::Path, span: Span, message: String) -> Diagnostic {
    Diagnostic::at(file, span, message).help(
        "keep data inside the manifest's folder, or pass `--allow-outside` if this is intended",
    )
}

/// Whether a workspace path lies in the store folder `.pipe/`.
pub(super) fn is_in_store(path: &str) -> bool {
    path == ".pipe" || path.starts_with(".pipe/")
}

/// A `deps:` entry inside `.pipe/`: the store is pipe's own, and what a
/// stage wrote there is reached through `from:` (which orders the stages and
/// puts the upstream's output hashes in the key), not through a path.
pub(super) fn store_dep_error(file: &std::path::Path, span: Span, path: &str) -> Diagnostic {
    let stage = path
        .split('/')
        .nth(3)
        .map(|s| s.split('@').next().unwrap_or(s));
    let help = match stage {
        Some(stage) => format!(
            "write `from: {stage}` instead: the stage then runs after {stage}, and the command finds its output folder in $PIPE_FROM (or $PIPE_FROM_<STAGE>)"
        ),
        None => "read another stage's outputs with `from: <stage>` and $PIPE_FROM".to_string(),
    };
    Diagnostic::at(
        file,
        span,
        format!("`deps` entry `{path}` points into pipe's store"),
    )
    .help(help)
}

/// The JSON path of the first string equal to `needle` inside `value`.
pub(super) fn find_string(value: &Value, needle: &str) -> Option<Vec<String>> {
    match value {
        Value::String(s) if s == needle => Some(Vec::new()),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            find_string(v, needle).map(|mut p| {
                p.insert(0, k.clone());
                p
            })
        }),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
            find_string(v, needle).map(|mut p| {
                p.insert(0, i.to_string());
                p
            })
        }),
        _ => None,
    }
}
