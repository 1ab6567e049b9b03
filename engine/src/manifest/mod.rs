//! Reading a manifest file into typed stage specifications.
//!
//! A manifest has the top-level keys `pipeline` (its name; the file stem when
//! left out), `description`, `remote` (the URL of a shared cache, e.g.
//! `s3://bucket/prefix`), `executor` and `resources` (where stages run, see
//! [`crate::executor`]) and `stages` (a mapping of stage name to stage).
//! A stage's reserved keys are listed in [`RESERVED_KEYS`]; every other key is
//! a parameter that the stage's kind checks later (see [`crate::plan`]).

pub mod matrix;
pub mod resources;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::diag::{Diagnostic, ManifestError, did_you_mean};
use crate::yaml::{self, Node, NodeKind, Span};

pub use self::matrix::Matrix;
pub use self::resources::{ExecutorChoice, Resources};

/// Keys of a stage that the engine reads itself; all others are parameters.
pub const RESERVED_KEYS: &[&str] = &[
    "uses",
    "from",
    "run",
    "deps",
    "outs",
    "matrix",
    "description",
    "resources",
];

/// Top-level keys of a manifest.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "pipeline",
    "description",
    "remote",
    "executor",
    "resources",
    "stages",
];

/// A parsed manifest: its stages in file order, not yet checked against kinds.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The manifest's path as given.
    pub path: PathBuf,
    /// The folder the manifest is in: workspace paths are relative to it.
    pub dir: PathBuf,
    /// The pipeline's name.
    pub name: String,
    /// The pipeline's description, if any.
    pub description: Option<String>,
    /// `remote:`: the shared cache's URL as written, and where.
    pub remote: Option<(String, Span)>,
    /// `executor:`: where stages run unless the command line says otherwise.
    pub executor: Option<ExecutorChoice>,
    /// `resources:` at the top: the default of every stage's.
    pub resources: Resources,
    /// The manifest's text.
    pub source: String,
    /// The stages, in file order.
    pub stages: Vec<StageSpec>,
}

/// One stage as written in the manifest.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// The stage's name (its key under `stages:`).
    pub name: String,
    /// Where the name is written.
    pub span: Span,
    /// `uses:`: the kind, when the name is not a kind.
    pub uses: Option<(String, Span)>,
    /// `from:`: upstream stages.
    pub from: Vec<FromRef>,
    /// `run:`: the shell command of a `command` stage.
    pub run: Option<String>,
    /// `deps:`: workspace files or folders the stage reads.
    pub deps: Vec<PathRef>,
    /// `outs:`: workspace files or folders the stage writes.
    pub outs: Vec<PathRef>,
    /// `description:`.
    pub description: Option<String>,
    /// `matrix:`: one member per combination of values (see [`matrix`]).
    pub matrix: Option<Matrix>,
    /// `resources:`: what the stage asks of a cluster scheduler.
    pub resources: Option<Resources>,
    /// Every non-reserved key, as a JSON object.
    pub params: Value,
    /// The stage's YAML mapping, to locate parameter errors.
    pub node: Node,
}

/// One entry of `from:`.
#[derive(Debug, Clone, PartialEq)]
pub struct FromRef {
    /// The input's name as the stage sees it: the map key, or the upstream's name.
    pub input: String,
    /// The upstream stage.
    pub stage: String,
    /// One named output of the upstream (`split.train`), or all of them.
    pub output: Option<String>,
    /// Where it is written.
    pub span: Span,
}

/// A workspace path written in the manifest.
#[derive(Debug, Clone)]
pub struct PathRef {
    /// The path as written.
    pub path: String,
    /// Where it is written.
    pub span: Span,
}

/// Whether `name` is a valid pipeline name: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at
/// most 64 characters. Names become folder names in the store, so this is
/// what keeps `.`, `..` and `/` out of them.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.len() <= 64
}

/// Whether `name` is a valid stage name: a valid name without dots (a dot
/// separates a stage from one of its outputs in `from: stage.output`).
pub fn is_valid_stage_name(name: &str) -> bool {
    is_valid_name(name) && !name.contains('.')
}

impl Manifest {
    /// Reads and parses the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        if crate::lockfile::lock_path(path) == path {
            // It would be its own lockfile: the first run would overwrite it.
            let stem = path.file_stem().unwrap_or_default().to_string_lossy();
            return Err(ManifestError::single(
                Diagnostic {
                    file: path.to_path_buf(),
                    span: None,
                    message: "a manifest cannot end in `.lock`: pipe keeps each manifest's \
                              lockfile at `<stem>.lock` beside it, which would be this file"
                        .into(),
                    help: Some(format!("rename it to `{stem}.yaml`")),
                },
                None,
            ));
        }
        let source = fs_err::read_to_string(path).map_err(|e| {
            let help = if e.kind() == std::io::ErrorKind::NotFound {
                "check the path, or run `pipe init` to write a manifest"
            } else {
                "check that the file is readable UTF-8 text"
            };
            ManifestError::single(
                Diagnostic {
                    file: path.to_path_buf(),
                    span: None,
                    message: format!("cannot read the manifest: {e}"),
                    help: Some(help.into()),
                },
                None,
            )
        })?;
        Self::parse(path, source)
    }

    /// Parses manifest text; `path` names it in errors and sets the workspace folder.
    /// A UTF-8 byte order mark at the start (written by some Windows editors)
    /// is dropped; lines and columns count from the first character after it.
    pub fn parse(path: &Path, source: String) -> Result<Manifest, ManifestError> {
        let source = match source.strip_prefix('\u{feff}') {
            Some(rest) => rest.to_string(),
            None => source,
        };
        let mut errors = Vec::new();
        let diag = |span: Span, msg: String| Diagnostic::at(path, span, msg);
        let root = match yaml::parse(&source) {
            Ok(root) => root,
            Err(e) => {
                let d = diag(e.span, e.message).help("fix the YAML syntax at this place");
                return Err(ManifestError::single(d, Some(source)));
            }
        };
        let Some(entries) = root.as_map() else {
            let d = diag(
                root.span,
                format!("a manifest is a mapping, but this is {}", root.type_name()),
            )
            .help("start with `pipeline: <name>` and `stages:`");
            return Err(ManifestError::single(d, Some(source)));
        };
        for (key, key_node, _) in entries {
            if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
                errors.push(
                    diag(
                        key_node.span,
                        format!(
                            "unknown top-level key '{key}'{}",
                            did_you_mean(key, TOP_LEVEL_KEYS.iter().copied())
                        ),
                    )
                    .help(format!(
                        "a manifest's top-level keys are: {}",
                        TOP_LEVEL_KEYS.join(", ")
                    )),
                );
            }
        }
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pipeline".into());
        let name = match root.get("pipeline") {
            None if is_valid_name(&stem) => stem,
            None => {
                errors.push(
                    diag(
                        Span { line: 1, col: 1 },
                        format!(
                            "the pipeline name `{stem}` taken from the file name is not a valid name"
                        ),
                    )
                    .help("add `pipeline: <name>` (letters, digits, `-`, `_`, `.`, starting with a letter or digit), or rename the file"),
                );
                stem
            }
            Some((_, node)) => match node.as_str() {
                Some(n) if is_valid_name(n) => n.to_string(),
                _ => {
                    errors.push(
                        diag(node.span, "`pipeline` must be a name".into()).help(
                            "use letters, digits, `-`, `_` and `.`, starting with a letter or digit, e.g. `pipeline: student`",
                        ),
                    );
                    stem
                }
            },
        };
        let description = string_field(&root, "description", path, &mut errors);
        let remote = string_field(&root, "remote", path, &mut errors)
            .zip(root.get("remote").map(|(_, node)| node.span));
        let executor = root
            .get("executor")
            .and_then(|(_, node)| ExecutorChoice::parse(path, node, &mut errors));
        let resources = root
            .get("resources")
            .and_then(|(_, node)| resources::parse(path, node, &mut errors))
            .unwrap_or_default();
        let mut stages = Vec::new();
        match root.get("stages") {
            None => errors.push(
                diag(root.span, "the manifest has no `stages:`".into())
                    .help("add `stages:` with at least one stage"),
            ),
            Some((_, node)) => match node.as_map() {
                Some([]) | None if !matches!(node.kind, NodeKind::Map(_)) => errors.push(
                    diag(
                        node.span,
                        format!(
                            "`stages` must be a mapping of stage names to stages, not {}",
                            node.type_name()
                        ),
                    )
                    .help("write each stage as `name:` followed by its keys, indented"),
                ),
                Some([]) => errors.push(
                    diag(node.span, "`stages` is empty".into()).help("add at least one stage"),
                ),
                Some(entries) => {
                    for (name, key, body) in entries {
                        if let Some(stage) = parse_stage(path, name, key.span, body, &mut errors) {
                            stages.push(stage);
                        }
                    }
                }
                None => {}
            },
        }
        if errors.is_empty() {
            Ok(Manifest {
                path: path.to_path_buf(),
                dir: path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from(".")),
                name,
                description,
                remote,
                executor,
                resources,
                source,
                stages,
            })
        } else {
            Err(ManifestError {
                diagnostics: errors,
                source_text: Some(source),
            })
        }
    }
}

fn string_field(
    node: &Node,
    key: &str,
    file: &Path,
    errors: &mut Vec<Diagnostic>,
) -> Option<String> {
    let (_, value) = node.get(key)?;
    match value.as_str() {
        Some(s) => Some(s.to_string()),
        None => {
            errors.push(Diagnostic::at(
                file,
                value.span,
                format!("`{key}` must be a string, not {}", value.type_name()),
            ));
            None
        }
    }
}

fn parse_stage(
    file: &Path,
    name: &str,
    span: Span,
    body: &Node,
    errors: &mut Vec<Diagnostic>,
) -> Option<StageSpec> {
    let before = errors.len();
    if !is_valid_stage_name(name) {
        errors.push(
            Diagnostic::at(file, span, format!("invalid stage name '{name}'"))
                .help("stage names use letters, digits, `-` and `_` (no dots or spaces), at most 64 characters"),
        );
    }
    let empty = Node::empty_map(body.span);
    let body = match &body.kind {
        NodeKind::Map(_) => body,
        NodeKind::Scalar { text, .. } if text.is_empty() => &empty,
        _ => {
            errors.push(
                Diagnostic::at(
                    file,
                    body.span,
                    format!(
                        "stage '{name}' must be a mapping of keys, not {}",
                        body.type_name()
                    ),
                )
                .help("write the stage's keys indented under its name"),
            );
            return None;
        }
    };
    let uses = body.get("uses").and_then(|(_, v)| match v.as_str() {
        Some(s) => Some((s.to_string(), v.span)),
        None => {
            errors.push(Diagnostic::at(
                file,
                v.span,
                format!("`uses` must be a stage kind name, not {}", v.type_name()),
            ));
            None
        }
    });
    let from = body
        .get("from")
        .map(|(_, v)| parse_from(file, v, errors))
        .unwrap_or_default();
    let run = string_field(body, "run", file, errors);
    let deps = body
        .get("deps")
        .map(|(_, v)| parse_paths(file, "deps", v, errors))
        .unwrap_or_default();
    let outs = body
        .get("outs")
        .map(|(_, v)| parse_paths(file, "outs", v, errors))
        .unwrap_or_default();
    let description = string_field(body, "description", file, errors);
    let params: serde_json::Map<String, Value> = body
        .as_map()
        .unwrap_or_default()
        .iter()
        .filter(|(k, _, _)| !RESERVED_KEYS.contains(&k.as_str()))
        .map(|(k, _, v)| (k.clone(), v.to_json()))
        .collect();
    let matrix = body
        .get("matrix")
        .and_then(|(key, value)| matrix::parse(file, key, value, &params, errors));
    let resources = body
        .get("resources")
        .and_then(|(_, v)| resources::parse(file, v, errors));
    if errors.len() > before {
        return None;
    }
    Some(StageSpec {
        name: name.to_string(),
        span,
        uses,
        from,
        run,
        deps,
        outs,
        description,
        matrix,
        resources,
        params: Value::Object(params),
        node: body.clone(),
    })
}

/// `from: a`, `from: a.out`, `from: [a, b]`, `from: { name: a, other: b.out }`.
fn parse_from(file: &Path, node: &Node, errors: &mut Vec<Diagnostic>) -> Vec<FromRef> {
    let mut refs = Vec::new();
    let mut one = |input: Option<&str>, value: &Node, errors: &mut Vec<Diagnostic>| {
        match value.as_str() {
        Some(text) => {
            let (stage, output) = match text.split_once('.') {
                Some((s, o)) => (s, Some(o.to_string())),
                None => (text, None),
            };
            refs.push(FromRef {
                input: input.unwrap_or(stage).to_string(),
                stage: stage.to_string(),
                output,
                span: value.span,
            });
        }
        None => errors.push(
            Diagnostic::at(file, value.span, format!("`from` entries name stages, but this is {}", value.type_name()))
                .help("write `from: <stage>`, `from: <stage>.<output>`, a list of those, or a mapping `input: <stage>`"),
        ),
    }
    };
    match &node.kind {
        NodeKind::Scalar { .. } => one(None, node, errors),
        NodeKind::Seq(items) => items.iter().for_each(|item| one(None, item, errors)),
        NodeKind::Map(entries) => entries.iter().for_each(|(k, _, v)| one(Some(k), v, errors)),
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in &refs {
        if !seen.insert(r.input.clone()) {
            errors.push(
                Diagnostic::at(
                    file,
                    r.span,
                    format!("input '{}' is named twice in `from`", r.input),
                )
                .help("give each input its own name with the mapping form: `from: { a: x, b: y }`"),
            );
        }
    }
    refs
}

fn parse_paths(file: &Path, key: &str, node: &Node, errors: &mut Vec<Diagnostic>) -> Vec<PathRef> {
    let items: Vec<&Node> = match &node.kind {
        NodeKind::Seq(items) => items.iter().collect(),
        NodeKind::Scalar { .. } => vec![node],
        NodeKind::Map(_) => {
            errors.push(
                Diagnostic::at(
                    file,
                    node.span,
                    format!("`{key}` must be a list of paths, not a mapping"),
                )
                .help(format!("write `{key}: [path/one, path/two]`")),
            );
            return Vec::new();
        }
    };
    items
        .into_iter()
        .filter_map(|item| match item.as_str() {
            Some(p) if !p.trim().is_empty() => Some(PathRef {
                path: p.to_string(),
                span: item.span,
            }),
            _ => {
                errors.push(Diagnostic::at(
                    file,
                    item.span,
                    format!(
                        "`{key}` entries must be non-empty paths, not {}",
                        item.type_name()
                    ),
                ));
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_key() {
        let text = "\u{feff}pipeline: bom\nstages:\n  a:\n    run: echo hi\n";
        let manifest = Manifest::parse(Path::new("p.yaml"), text.to_string()).unwrap();
        assert_eq!(manifest.name, "bom");
        assert_eq!(manifest.stages.len(), 1);
    }

    #[test]
    fn after_a_byte_order_mark_lines_and_columns_are_as_an_editor_shows_them() {
        let text = "\u{feff}stagse:\n  a:\n    run: echo hi\n";
        let err = Manifest::parse(Path::new("p.yaml"), text.to_string()).unwrap_err();
        let first = &err.diagnostics[0];
        assert!(
            first.message.contains("unknown top-level key 'stagse'"),
            "{}",
            first.message
        );
        assert_eq!(first.span, Some(Span { line: 1, col: 1 }));
        let bad = "\u{feff}stages:\n  a:\n    run: [echo\n";
        let err = Manifest::parse(Path::new("p.yaml"), bad.to_string()).unwrap_err();
        assert_eq!(err.diagnostics[0].span.map(|s| s.line), Some(4));
    }
}
