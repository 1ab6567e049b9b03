//! The layout rules of docs/ARCHITECTURE.md, checked on the sources: no crate depends on a
//! crate above it, and no file of a crate imports, directly or through others, a file that
//! imports it back.
//!
//! The module graph is read from the `use` lines and `crate::`/`super::`/`self::` paths of
//! each file's code (comments and doc comments are skipped), each path resolved to the
//! deepest module file it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each crate of the workspace, its folder, and the workspace crates it may depend on: the
/// floors, bottom first. A crate may use those on floors below it, never above.
const CRATES: &[(&str, &str, &[&str])] = &[
    ("pipe-engine", "engine", &[]),
    ("pipe-onnx", "onnx", &[]),
    ("pipe-remote", "remote", &["pipe-engine"]),
    ("pipe-models", "models", &["pipe-engine", "pipe-onnx"]),
    (
        "pipe-stages",
        "stages",
        &["pipe-engine", "pipe-onnx", "pipe-models"],
    ),
    ("pipe-serve", "serve", &["pipe-models"]),
    (
        "pipe",
        ".",
        &[
            "pipe-engine",
            "pipe-onnx",
            "pipe-models",
            "pipe-stages",
            "pipe-serve",
            "pipe-remote",
        ],
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `pipe-*` crates named in the `[dependencies]` table of `manifest`.
fn workspace_dependencies(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).expect("a crate manifest");
    let mut in_dependencies = false;
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        if in_dependencies && line.starts_with("pipe-") {
            let name = line.split(['=', '.', ' ']).next().unwrap_or_default();
            found.insert(name.to_string());
        }
    }
    found
}

#[test]
fn no_crate_depends_on_a_crate_above_it() {
    for (name, dir, allowed) in CRATES {
        let deps = workspace_dependencies(&root().join(dir).join("Cargo.toml"));
        let above: Vec<&String> = deps
            .iter()
            .filter(|d| !allowed.contains(&d.as_str()))
            .collect();
        assert!(
            above.is_empty(),
            "{name} depends on {above:?}, which is not below it (allowed: {allowed:?})"
        );
    }
}

/// Every `.rs` file under `dir`, with its module path (`["runtime", "flat_trainer"]`).
fn module_files(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut found = BTreeMap::new();
    let mut pending = vec![src.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("a source folder") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            found.insert(parts, path);
        }
    }
    found
}

/// The code of `text` without comments, with each `use` statement on one line.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The module paths `code` (of the module at `here`) names, each as written, made absolute:
/// `crate::a::b::C`, `super::x` and `self::y`, with `use` groups (`crate::{a, b::c}`) spread.
fn named_paths(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        let start = ["crate::", "super::", "self::"]
            .iter()
            .find(|p| rest.starts_with(**p))
            .filter(|_| i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_'));
        let Some(_) = start else {
            i += 1;
            continue;
        };
        // Read one path, spreading one level of braces.
        let mut j = i;
        while j < bytes.len() && (bytes[j].is_alphanumeric() || bytes[j] == '_' || bytes[j] == ':')
        {
            j += 1;
        }
        let prefix: String = bytes[i..j].iter().collect();
        let mut written = Vec::new();
        if j < bytes.len() && bytes[j] == '{' && prefix.ends_with("::") {
            let close = (j..bytes.len())
                .find(|&k| bytes[k] == '}')
                .unwrap_or(bytes.len());
            let inner: String = bytes[j + 1..close].iter().collect();
            for item in inner.split(',') {
                let item = item.split_whitespace().next().unwrap_or_default();
                written.push(format!("{prefix}{item}"));
            }
            j = close;
        } else {
            written.push(prefix);
        }
        for path in written {
            let mut absolute: Vec<String> = Vec::new();
            for (n, segment) in path.split("::").filter(|s| !s.is_empty()).enumerate() {
                match (n, segment) {
                    (0, "crate") => {}
                    (0, "self") => absolute.extend(here.iter().cloned()),
                    (_, "super") => {
                        if n == 0 {
                            absolute.extend(here.iter().cloned());
                        }
                        absolute.pop();
                    }
                    _ => absolute.push(segment.to_string()),
                }
            }
            paths.push(absolute);
        }
        i = j.max(i + 1);
    }
    paths
}

/// The import graph of a crate's module files: file → files it names.
fn import_graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files = module_files(src);
    let mut graph = BTreeMap::new();
    for (module, path) in &files {
        let text = std::fs::read_to_string(path).expect("a source file");
        // A file's own unit tests (`#[cfg(test)] mod tests`) may use anything.
        let code = match text.find("#[cfg(test)]\nmod tests") {
            Some(i) => code_of(&text[..i]),
            None => code_of(&text),
        };
        let mut targets = BTreeSet::new();
        for named in named_paths(&code, module) {
            // The deepest module file the path names.
            let target = (0..=named.len())
                .rev()
                .map(|n| named[..n].to_vec())
                .find(|prefix| files.contains_key(prefix));
            if let Some(target) = target {
                // A module naming its own submodule, or a submodule its parent, is one unit.
                let related = target.starts_with(module) || module.starts_with(&target);
                if !related {
                    targets.insert(target);
                }
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

/// A cycle of `graph`, if it has one.
fn find_cycle(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        marks: &mut BTreeMap<Vec<String>, Mark>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle: Vec<String> = stack[from..].iter().map(|m| m.join("::")).collect();
                cycle.push(node.join("::"));
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    for (name, dir, _) in CRATES {
        let graph = import_graph(&root().join(dir).join("src"));
        assert!(graph.len() > 1, "{name}: no module files found");
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{name}: import cycle {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let code = "use crate::{a::X, b};\nfn f() { super::c::g(); }";
    let named = named_paths(&code_of(code), &["m".to_string(), "n".to_string()]);
    assert_eq!(
        named,
        vec![
            vec!["a".to_string(), "X".to_string()],
            vec!["b".to_string()],
            vec!["m".to_string(), "c".to_string(), "g".to_string()],
        ]
    );
    let edge = |from: &str, to: &str| {
        (
            vec![from.to_string()],
            BTreeSet::from([vec![to.to_string()]]),
        )
    };
    let graph = BTreeMap::from([edge("a", "b"), edge("b", "c"), edge("c", "a")]);
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let acyclic = BTreeMap::from([edge("a", "b"), edge("b", "c")]);
    assert_eq!(find_cycle(&acyclic), None);
}
