//! Property tests of the engine's safety promises:
//! - random manifests over a small file tree (random names, deps, outs,
//!   symlinks) never delete or change a file outside declared outs, at
//!   validation or at run time, and what pipe moves out of the way of an out
//!   is in the trash, byte for byte;
//! - the readers of manifests, lockfiles, stage records and tree objects
//!   never panic, whatever the input.
#![allow(clippy::disallowed_methods)] // tests arrange files with std::fs directly

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pipe_engine::lockfile::LockFile;
use pipe_engine::{
    Checked, ColorChoice, Force, Manifest, Outcome, ParamError, PlanOptions, Printer, Registry,
    RunContext, RunOptions, Stage, StageRecord, Store, plan, run,
};
use proptest::prelude::*;
use serde_json::{Value, json};

/// A shell step, as the `command` kind runs it (in its own process group).
struct Shell;

impl Stage for Shell {
    fn kind(&self) -> &'static str {
        "command"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "Runs a shell command."
    }
    fn params_schema(&self) -> Value {
        json!({"type": "object", "properties": {}})
    }
    fn takes_run(&self) -> bool {
        true
    }
    fn check(&self, _params: &Value) -> Result<Checked, ParamError> {
        Ok(Checked {
            key_params: json!({}),
            workspace_deps: Vec::new(),
        })
    }
    fn run(&self, ctx: &RunContext<'_>) -> anyhow::Result<Outcome> {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(ctx.run.unwrap_or("true"))
            .current_dir(ctx.workspace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let status = pipe_engine::process::status_in_group(&mut command)?;
        anyhow::ensure!(status.success(), "the command failed");
        Ok(Outcome::default())
    }
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register(Shell);
    registry
}

/// Files of the user's tree, each holding `user:<path>`.
const FILES: &[&str] = &[
    "a.txt",
    "b.txt",
    "d/x.txt",
    "d/y.txt",
    "d/e/z.txt",
    "f/w.txt",
];
/// Paths a stage may name in `deps` or `outs`: the tree, new paths, links,
/// and paths pipe must refuse.
const PATHS: &[&str] = &[
    "a.txt",
    "b.txt",
    "d",
    "d/x.txt",
    "d/e",
    "d/e/z.txt",
    "f",
    "f/w.txt",
    "g",
    "g/new.txt",
    "ext",
    "ext/x.txt",
    "../up.txt",
    "p.yaml",
    "p.lock",
    ".pipe",
    ".pipe/objects",
    "d/../a.txt",
    "lnk",
    "lnk/x.txt",
    "/tmp/abs.txt",
];
const NAMES: &[&str] = &[
    "s", "t", "u", "objects", "..", ".", "a.b", "ok-1", "x_y", "out",
];
const PIPELINES: &[&str] = &["", "p", "..", "v1.2", "a/b", "objects"];

#[derive(Debug, Clone)]
struct StageCase {
    name: &'static str,
    deps: Vec<&'static str>,
    outs: Vec<&'static str>,
}

fn stage_case() -> impl Strategy<Value = StageCase> {
    (
        prop::sample::select(NAMES),
        prop::sample::subsequence(PATHS, 0..=2),
        prop::sample::subsequence(PATHS, 0..=2),
    )
        .prop_map(|(name, deps, outs)| StageCase { name, deps, outs })
}

/// A command that writes exactly its outs: a file for a path with an
/// extension, else a folder holding `gen.txt`.
fn command_for(stage: &StageCase) -> String {
    let mut parts = vec!["true".to_string()];
    for out in &stage.outs {
        if out.ends_with(".txt") || out.ends_with(".yaml") || out.ends_with(".lock") {
            parts.push(format!(
                "mkdir -p \"$(dirname '{out}')\" && echo {} > '{out}'",
                stage.name
            ));
        } else {
            parts.push(format!(
                "mkdir -p '{out}' && echo {} > '{out}/gen.txt'",
                stage.name
            ));
        }
    }
    parts.join(" && ")
}

fn manifest_text(pipeline: &str, stages: &[StageCase]) -> String {
    let mut text = String::new();
    if !pipeline.is_empty() {
        text.push_str(&format!("pipeline: '{pipeline}'\n"));
    }
    text.push_str("stages:\n");
    for stage in stages {
        let list = |paths: &[&str]| {
            paths
                .iter()
                .map(|p| format!("'{p}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        text.push_str(&format!(
            "  '{}':\n    run: \"{}\"\n    deps: [{}]\n    outs: [{}]\n",
            stage.name,
            command_for(stage)
                .replace('\\', "\\\\")
                .replace('"', "\\\""),
            list(&stage.deps),
            list(&stage.outs)
        ));
    }
    text
}

/// A file or link found on disk.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    File(Vec<u8>),
    Link(PathBuf),
}

/// Every file and link under `root` (relative paths), skipping `skip`, never following links.
fn snapshot(root: &Path, skip: &[&str]) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, dir: &Path, skip: &[&str], into: &mut BTreeMap<String, Entry>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if skip.contains(&rel.as_str()) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_symlink() {
                into.insert(rel, Entry::Link(std::fs::read_link(&path).unwrap()));
            } else if meta.is_dir() {
                walk(root, &path, skip, into);
            } else {
                into.insert(rel, Entry::File(std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut found = BTreeMap::new();
    walk(root, root, skip, &mut found);
    found
}

/// What the store's trash holds: workspace path → entries kept for it.
fn trash_contents(store: &Path) -> BTreeMap<String, Vec<Entry>> {
    let mut kept: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    let Ok(batches) = std::fs::read_dir(store.join("trash")) else {
        return kept;
    };
    for batch in batches {
        let files = batch.unwrap().path().join("files");
        if files.exists() {
            for (rel, entry) in snapshot(&files, &[]) {
                kept.entry(rel).or_default().push(entry);
            }
        }
    }
    kept
}

fn within(path: &str, outer: &str) -> bool {
    path == outer || path.strip_prefix(outer).is_some_and(|r| r.starts_with('/'))
}

/// Builds the user's tree, validates and (when valid) runs the manifest
/// three times, dropping files into folder outs between runs, and checks
/// that every user file is where it was or, for one inside a declared out,
/// in the trash with the same bytes.
fn check_case(pipeline: &str, stages: &[StageCase]) -> Result<(), TestCaseError> {
    let root = tempfile::tempdir().unwrap();
    let ws = root.path().join("ws");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("x.txt"), "outside").unwrap();
    std::fs::write(root.path().join("up.txt"), "above").unwrap();
    for file in FILES {
        let path = ws.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("user:{file}")).unwrap();
    }
    std::os::unix::fs::symlink(&outside, ws.join("ext")).unwrap();
    std::os::unix::fs::symlink("d", ws.join("lnk")).unwrap();
    let manifest_path = ws.join("p.yaml");
    std::fs::write(&manifest_path, manifest_text(pipeline, stages)).unwrap();
    let mut before = snapshot(&ws, &[]);
    let around_before = snapshot(root.path(), &["ws"]);

    let registry = registry();
    let planned = Manifest::load(&manifest_path)
        .map_err(anyhow::Error::from)
        .and_then(|m| plan(m, &registry, PlanOptions::default()).map_err(anyhow::Error::from));
    let Ok(pipeline) = planned else {
        prop_assert_eq!(
            snapshot(&ws, &[]),
            before,
            "validation changed the workspace"
        );
        prop_assert_eq!(snapshot(root.path(), &["ws"]), around_before);
        return Ok(());
    };
    let outs: Vec<String> = pipeline
        .stages
        .iter()
        .flat_map(|s| s.outs.clone())
        .collect();
    let store_dir = ws.join(".pipe");
    let store = Store::open(&store_dir).unwrap();
    let _lock = store.lock(true, |_| {}).unwrap();
    let printer = Printer::new(ColorChoice::Never, true, true);
    let mut options = RunOptions {
        targets: vec![],
        force: Force::None,
        dry_run: false,
        jobs: 2,
        print_stages: false,
        remote: None,
        executor: None,
    };
    for round in 0..3 {
        if round > 0 {
            for out in &outs {
                let dir = ws.join(out);
                if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                    let rel = format!("{out}/dropped-{round}.txt");
                    std::fs::write(ws.join(&rel), format!("user:{rel}")).unwrap();
                    before.insert(rel.clone(), Entry::File(format!("user:{rel}").into_bytes()));
                }
            }
        }
        options.force = if round == 1 { Force::All } else { Force::None };
        run(&pipeline, &store, &options, &printer).unwrap();
    }

    let after = snapshot(&ws, &[".pipe", "p.lock"]);
    let trash = trash_contents(&store_dir);
    for (rel, entry) in &before {
        if rel == "p.lock" {
            continue;
        }
        if !outs.iter().any(|o| within(rel, o)) {
            prop_assert_eq!(
                after.get(rel),
                Some(entry),
                "`{}` outside the outs changed",
                rel
            );
        } else if after.get(rel) != Some(entry) {
            prop_assert!(
                trash.get(rel).is_some_and(|kept| kept.contains(entry)),
                "`{}` in an out was neither left alone nor kept in the trash",
                rel
            );
        }
    }
    prop_assert_eq!(
        snapshot(root.path(), &["ws"]),
        around_before,
        "files outside the workspace changed"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn no_manifest_loses_a_file_outside_its_outs(
        pipeline in prop::sample::select(PIPELINES),
        stages in prop::collection::vec(stage_case(), 1..=3),
    ) {
        check_case(pipeline, &stages)?;
    }
}

/// YAML-ish text built from the tokens the readers care about.
fn yamlish() -> impl Strategy<Value = String> {
    const TOKENS: &[&str] = &[
        "a:",
        "b: ",
        " ",
        "  ",
        "\n",
        "- ",
        "[",
        "]",
        "{",
        "}",
        ",",
        "&x ",
        "*x",
        "'",
        "\"",
        "stages:\n",
        "pipeline: ",
        "run: echo",
        "outs: [",
        "deps: [",
        "from: ",
        "uses: ",
        "..",
        ".",
        "#",
        "---\n",
        "!!str ",
        "|\n",
        ">\n",
        "key: 3f",
        "kind: command",
        "kind_version: 1",
        "params: {}",
        "inputs: {}",
        "outputs: {}",
        "1e999",
        "-0",
        "~",
        "\t",
        "\u{feff}",
        "é",
        "\\",
    ];
    prop::collection::vec(prop::sample::select(TOKENS), 0..80).prop_map(|t| t.concat())
}

/// JSON-ish text shaped like a stage record or a tree object.
fn jsonish() -> impl Strategy<Value = String> {
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"key\"",
        "\"outputs\"",
        "\"path\"",
        "\"kind\"",
        "\"file\"",
        "\"dir\"",
        "\"symlink\"",
        "\"hash\"",
        "\"size\"",
        "\"workspace\"",
        "true",
        "\"..\"",
        "\"/etc\"",
        "\"a/../b\"",
        "\"entries\"",
        "\"name\"",
        "0",
        "-1",
        "18446744073709551616",
        "\"af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\"",
        "null",
        "\"record\"",
        "\"outs\"",
        "\"\"",
    ];
    prop::collection::vec(prop::sample::select(TOKENS), 0..60).prop_map(|t| t.concat())
}

fn read_everything(text: &str) {
    let registry = registry();
    let dir = tempfile::tempdir().unwrap();
    if let Ok(manifest) = Manifest::parse(&dir.path().join("p.yaml"), text.to_string()) {
        let _ = plan(manifest, &registry, PlanOptions::default());
    }
    let _ = LockFile::parse(text, "p.lock");
    let _ = StageRecord::parse(text.as_bytes());
    let store = Store::open(&dir.path().join(".pipe")).unwrap();
    let digest = pipe_engine::Digest::of(text.as_bytes());
    let object = store.object_path(&digest);
    std::fs::create_dir_all(object.parent().unwrap()).unwrap();
    std::fs::write(&object, text).unwrap();
    let _ = store.read_tree(&digest);
    let _ = store.output_complete(pipe_engine::hash::EntryKind::Dir, &digest);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn readers_never_panic_on_yamlish_text(text in yamlish()) {
        read_everything(&text);
    }

    #[test]
    fn readers_never_panic_on_jsonish_text(text in jsonish()) {
        read_everything(&text);
    }

    #[test]
    fn readers_never_panic_on_any_text(text in any::<String>()) {
        read_everything(&text);
    }
}
