//! `matrix:`: one stage written once, run once per combination of values.
//!
//! ```yaml
//! finetune:
//!   from: tokenize
//!   epochs: 3
//!   matrix:                      # a mapping: every combination (2 × 2 = 4 members)
//!     learning_rate: [3.0e-4, 1.0e-3]
//!     batch_size: [8, 16]
//! ```
//!
//! A list of mappings names the combinations one by one instead
//! (`matrix: [{model: {config: tiny}}, {model: {config: small}, epochs: 2}]`);
//! a `member: <name>` entry in one of them names its member instead of its
//! values (`finetune@reference`).
//!
//! Each combination is a *member*, a stage of its own named `<stage>@<slug>`
//! (`finetune@lr-0.0003-bs-8`): its own key, cache entry, outputs, lockfile
//! entry and log. The slug is built from the values only, so it does not
//! depend on their order in the list, and neither does a member's key (a key
//! holds parameters and inputs, never the stage's name).
//!
//! Stages downstream of a matrix stage *fan out* with it: an `export-onnx`
//! with `from: finetune` gets one member per finetune member, reading that
//! member only. A stage's *dimensions* are the matrix stages it varies with:
//! its own matrix and its upstreams' dimensions. Two matrix stages in a chain
//! multiply; two inputs that share a dimension stay paired (member `a` of
//! one with member `a` of the other). A kind that *gathers*
//! ([`crate::Stage::gathers_members`], e.g. `compare`) does not fan out: it
//! gets every member of its inputs, one [`crate::Input`] per member named by
//! the member.
//!
//! `${member}` in a fanned-out stage's `run`, `deps` and `outs` becomes the
//! member's slug, so the members of a command stage write distinct files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use super::{RESERVED_KEYS, StageSpec};
use crate::diag::Diagnostic;
use crate::key::canonical_json;
use crate::yaml::{Node, NodeKind, Span};

/// What `${member}` in `run`, `deps` and `outs` is replaced with.
pub const MEMBER_PLACEHOLDER: &str = "${member}";

/// The key of a list-form combination that names its member instead of its values.
const MEMBER_KEY: &str = "member";

/// A stage's `matrix:`, parsed.
#[derive(Debug, Clone)]
pub struct Matrix {
    /// Where `matrix` is written.
    pub span: Span,
    /// The combinations, in the order written (product order for the mapping form).
    pub combinations: Vec<Combination>,
}

/// One combination of matrix values.
#[derive(Debug, Clone)]
pub struct Combination {
    /// Its part of the member name, e.g. `lr-0.0003-bs-16`.
    pub slug: String,
    /// Parameter values, in the order written.
    pub values: Vec<MatrixValue>,
}

/// One parameter's value in a combination.
#[derive(Debug, Clone)]
pub struct MatrixValue {
    /// The parameter's name.
    pub param: String,
    /// The parameter's key node inside `matrix:`.
    pub key: Node,
    /// The value's node inside `matrix:`.
    pub value: Node,
}

/// Which matrix combinations one member stands for, and its name.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The stage's name as written (`finetune`).
    pub stage: String,
    /// The member's slug (`lr-0.0003-bs-16`); the member is `<stage>@<slug>`.
    pub slug: String,
    /// For each matrix stage this member varies with (by stage index in the
    /// manifest), the index of the combination it takes.
    pub choice: BTreeMap<usize, usize>,
}

impl Member {
    /// The member's stage name, `<stage>@<slug>`.
    pub fn name(&self) -> String {
        format!("{}@{}", self.stage, self.slug)
    }
}

/// Parses `matrix:` (the mapping or list form) of stage `stage`. `params`
/// are the stage's plain parameters, which a matrix parameter may not repeat.
pub fn parse(
    file: &Path,
    key: &Node,
    node: &Node,
    params: &serde_json::Map<String, Value>,
    errors: &mut Vec<Diagnostic>,
) -> Option<Matrix> {
    let before = errors.len();
    // Names given with `member:` in the list form, by combination.
    let mut names: BTreeMap<usize, String> = BTreeMap::new();
    let combinations: Vec<Vec<MatrixValue>> = match &node.kind {
        NodeKind::Map(entries) if !entries.is_empty() => {
            let mut lists = Vec::new();
            for (param, key, values) in entries {
                match &values.kind {
                    NodeKind::Seq(items) if !items.is_empty() => lists.push(
                        items
                            .iter()
                            .map(|v| MatrixValue {
                                param: param.clone(),
                                key: key.clone(),
                                value: v.clone(),
                            })
                            .collect::<Vec<_>>(),
                    ),
                    NodeKind::Seq(_) => errors.push(
                        Diagnostic::at(file, values.span, format!("`matrix.{param}` is an empty list"))
                            .help("list at least one value, or remove the parameter from `matrix`"),
                    ),
                    _ => errors.push(
                        Diagnostic::at(
                            file,
                            values.span,
                            format!("`matrix.{param}` must be a list of values, not {}", values.type_name()),
                        )
                        .help(format!("write `{param}: [a, b]`; a single value belongs outside `matrix`")),
                    ),
                }
            }
            product(&lists)
        }
        NodeKind::Seq(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .filter_map(|(index, item)| match &item.kind {
                NodeKind::Map(entries) if !entries.is_empty() => Some(
                    entries
                        .iter()
                        .filter(|(param, _, value)| {
                            if param != MEMBER_KEY {
                                return true;
                            }
                            match value.as_str() {
                                Some(name) if !name.trim().is_empty() => {
                                    names.insert(index, sanitize(name));
                                }
                                _ => errors.push(
                                    Diagnostic::at(file, value.span, "`member` names the combination's member: it must be a word")
                                        .help("write e.g. `member: reference`; the member is then `<stage>@reference`"),
                                ),
                            }
                            false
                        })
                        .map(|(param, key, value)| MatrixValue {
                            param: param.clone(),
                            key: key.clone(),
                            value: value.clone(),
                        })
                        .collect(),
                ),
                _ => {
                    errors.push(
                        Diagnostic::at(
                            file,
                            item.span,
                            format!("a `matrix` list entry must be a non-empty mapping of parameters, not {}", item.type_name()),
                        )
                        .help("write each combination as `- { parameter: value, ... }`"),
                    );
                    None
                }
            })
            .collect(),
        _ => {
            let what = match &node.kind {
                NodeKind::Scalar { .. } => node.type_name(),
                _ => "empty",
            };
            errors.push(
                Diagnostic::at(file, node.span, format!("`matrix` must map parameters to lists of values, but it is {what}"))
                    .help("write `matrix: { learning_rate: [3.0e-4, 1.0e-3] }`, or a list of combinations"),
            );
            Vec::new()
        }
    };
    let mut reported = BTreeSet::new();
    for value in combinations.iter().flatten() {
        if !reported.insert(value.param.clone()) {
            continue;
        }
        if RESERVED_KEYS.contains(&value.param.as_str()) {
            errors.push(
                Diagnostic::at(file, value.key.span, format!("`{}` cannot vary in a matrix", value.param))
                    .help("a matrix varies parameters of the stage's kind; write one stage per variant of the reserved keys"),
            );
        } else if params.contains_key(&value.param) {
            errors.push(
                Diagnostic::at(
                    file,
                    value.key.span,
                    format!(
                        "parameter '{}' is set both in `matrix` and as a plain parameter",
                        value.param
                    ),
                )
                .help(
                    "keep it in one place: remove the plain parameter, or take it out of `matrix`",
                ),
            );
        }
    }
    if errors.len() > before {
        return None;
    }
    let mut slugs = slugs(&combinations);
    for (index, name) in names {
        slugs[index] = name;
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, slug) in slugs.iter().enumerate() {
        if let Some(first) = seen.insert(slug, i) {
            let span = combinations[i].first().map_or(node.span, |v| v.value.span);
            errors.push(
                Diagnostic::at(
                    file,
                    span,
                    format!(
                        "matrix combinations {} and {} both get the name `@{slug}`",
                        first + 1,
                        i + 1
                    ),
                )
                .help("each combination needs different values; remove the duplicate"),
            );
        }
    }
    if errors.len() > before {
        return None;
    }
    Some(Matrix {
        span: key.span,
        combinations: combinations
            .into_iter()
            .zip(slugs)
            .map(|(values, slug)| Combination { slug, values })
            .collect(),
    })
}

/// Every combination of one value per list, the first list varying slowest.
fn product(lists: &[Vec<MatrixValue>]) -> Vec<Vec<MatrixValue>> {
    lists.iter().fold(vec![Vec::new()], |acc, list| {
        acc.iter()
            .flat_map(|prefix| {
                list.iter().map(move |value| {
                    let mut next = prefix.clone();
                    next.push(value.clone());
                    next
                })
            })
            .collect()
    })
}

/// The slug of each combination: `<param>-<value>` parts joined by `-`.
/// Parameters are shortened to their initials when they have several words
/// (`learning_rate` → `lr`), unless two of them would then read the same.
fn slugs(combinations: &[Vec<MatrixValue>]) -> Vec<String> {
    let mut params: Vec<&str> = Vec::new();
    let mut values: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for value in combinations.iter().flatten() {
        if !params.contains(&value.param.as_str()) {
            params.push(&value.param);
        }
        values
            .entry(value.param.as_str())
            .or_default()
            .push(value.value.to_json());
    }
    let short: Vec<String> = params.iter().map(|p| initials(p)).collect();
    let label = |param: &str| {
        let i = params.iter().position(|p| *p == param).unwrap_or(0);
        if short.iter().filter(|s| **s == short[i]).count() > 1 {
            param.to_string()
        } else {
            short[i].clone()
        }
    };
    combinations
        .iter()
        .map(|combination| {
            let parts: Vec<String> = combination
                .iter()
                .map(|v| {
                    let text = value_text(&v.value.to_json(), &values[v.param.as_str()]);
                    format!("{}-{text}", label(&v.param))
                })
                .collect();
            sanitize(&parts.join("-"))
        })
        .collect()
}

/// `learning_rate` → `lr`; a one-word name stays whole.
fn initials(param: &str) -> String {
    let words: Vec<&str> = param.split(['_', '-']).filter(|w| !w.is_empty()).collect();
    if words.len() < 2 {
        return param.to_string();
    }
    words.iter().filter_map(|w| w.chars().next()).collect()
}

/// How a value reads in a slug. A mapping reads as its most telling
/// scalars: those that differ between the parameter's values (`siblings`),
/// or its first string when none differ.
fn value_text(value: &Value, siblings: &[Value]) -> String {
    match value {
        Value::Object(_) => {
            let mut leaves = Vec::new();
            flatten(value, String::new(), &mut leaves);
            let differing: Vec<String> = leaves
                .iter()
                .filter(|(path, leaf)| {
                    siblings
                        .iter()
                        .any(|s| leaf_at(s, path) != Some(leaf.clone()))
                })
                .map(|(_, leaf)| scalar_text(leaf))
                .collect();
            if !differing.is_empty() {
                return differing.join("-");
            }
            leaves
                .iter()
                .find(|(_, leaf)| leaf.is_string())
                .or(leaves.first())
                .map_or_else(|| "empty".into(), |(_, leaf)| scalar_text(leaf))
        }
        Value::Array(items) => items
            .iter()
            .map(|item| value_text(item, &[]))
            .collect::<Vec<_>>()
            .join("_"),
        scalar => scalar_text(scalar),
    }
}

/// A scalar's text; a path or hub id (`EleutherAI/gpt-neo-125m`) reads as its last part.
fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or(s)
            .to_string(),
        Value::Null => "none".into(),
        other => canonical_json(other),
    }
}

/// The scalar leaves of a mapping, with their dotted paths.
fn flatten(value: &Value, path: String, leaves: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                flatten(v, sub, leaves);
            }
        }
        other => leaves.push((path, other.clone())),
    }
}

fn leaf_at(value: &Value, path: &str) -> Option<Value> {
    path.split('.')
        .try_fold(value, |v, k| v.get(k))
        .filter(|v| !v.is_object())
        .cloned()
}

/// Characters outside `[A-Za-z0-9_.-]` become `-`.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// How each stage of a manifest fans out.
pub struct FanOut {
    /// Per stage (manifest index): its members, or one `None` for a stage
    /// that does not vary.
    pub members: Vec<Vec<Option<Member>>>,
}

/// Works out the members of every stage. `upstream[i]` are the stages that
/// stage `i` names in `from:`; `gathers[i]` says whether its kind takes all
/// members of its inputs instead of fanning out. A `from:` cycle is left for
/// the planner to report; its stages simply do not fan out through it.
pub fn fan_out(specs: &[StageSpec], upstream: &[Vec<usize>], gathers: &[bool]) -> FanOut {
    let mut dimensions: Vec<Option<BTreeSet<usize>>> = vec![None; specs.len()];
    let mut visiting = vec![false; specs.len()];
    fn visit(
        i: usize,
        specs: &[StageSpec],
        upstream: &[Vec<usize>],
        gathers: &[bool],
        dimensions: &mut [Option<BTreeSet<usize>>],
        visiting: &mut [bool],
    ) -> BTreeSet<usize> {
        if let Some(known) = &dimensions[i] {
            return known.clone();
        }
        if visiting[i] {
            return BTreeSet::new();
        }
        visiting[i] = true;
        let mut own = BTreeSet::new();
        if specs[i].matrix.is_some() {
            own.insert(i);
        }
        for &up in &upstream[i] {
            let theirs = visit(up, specs, upstream, gathers, dimensions, visiting);
            if !gathers[i] {
                own.extend(theirs);
            }
        }
        visiting[i] = false;
        dimensions[i] = Some(own.clone());
        own
    }
    for i in 0..specs.len() {
        visit(i, specs, upstream, gathers, &mut dimensions, &mut visiting);
    }
    let dimensions: Vec<BTreeSet<usize>> = dimensions
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    let members = specs
        .iter()
        .zip(&dimensions)
        .map(|(spec, dims)| {
            if dims.is_empty() {
                return vec![None];
            }
            let mut choices: Vec<BTreeMap<usize, usize>> = vec![BTreeMap::new()];
            for &d in dims {
                let count = specs[d].matrix.as_ref().map_or(1, |m| m.combinations.len());
                choices = choices
                    .into_iter()
                    .flat_map(|c| {
                        (0..count).map(move |k| {
                            let mut next = c.clone();
                            next.insert(d, k);
                            next
                        })
                    })
                    .collect();
            }
            choices
                .into_iter()
                .map(|choice| {
                    let slug = choice
                        .iter()
                        .filter_map(|(&d, &k)| {
                            specs[d]
                                .matrix
                                .as_ref()
                                .map(|m| m.combinations[k].slug.as_str())
                        })
                        .collect::<Vec<_>>()
                        .join("-");
                    Some(Member {
                        stage: spec.name.clone(),
                        slug,
                        choice,
                    })
                })
                .collect()
        })
        .collect();
    FanOut { members }
}

impl FanOut {
    /// The member of stage `up` that a member with `choice` reads (the one
    /// that agrees on every dimension they share), as an index into
    /// `self.members[up]`.
    pub fn paired(&self, up: usize, choice: Option<&BTreeMap<usize, usize>>) -> usize {
        self.members[up]
            .iter()
            .position(|m| match (m, choice) {
                (None, _) => true,
                (Some(m), Some(choice)) => m
                    .choice
                    .iter()
                    .all(|(d, k)| choice.get(d).is_none_or(|c| c == k)),
                (Some(_), None) => false,
            })
            .unwrap_or(0)
    }
}

/// The stage entry of one member: the matrix values merged into the
/// parameters (and into the YAML node, so parameter errors point at the
/// value inside `matrix:`), and `${member}` replaced in `run`, `deps` and `outs`.
/// `index` is the stage's position in the manifest.
pub fn member_spec(spec: &StageSpec, index: usize, member: &Member) -> StageSpec {
    let mut out = spec.clone();
    if let Some(matrix) = &spec.matrix
        && let Some(&k) = member.choice.get(&index)
    {
        let combination = &matrix.combinations[k];
        if let Value::Object(params) = &mut out.params {
            for v in &combination.values {
                params.insert(v.param.clone(), v.value.to_json());
            }
        }
        if let NodeKind::Map(entries) = &mut out.node.kind {
            for v in &combination.values {
                entries.push((v.param.clone(), v.key.clone(), v.value.clone()));
            }
        }
    }
    let fill = |text: &str| text.replace(MEMBER_PLACEHOLDER, &member.slug);
    out.run = out.run.as_deref().map(fill);
    for path in out.deps.iter_mut().chain(out.outs.iter_mut()) {
        path.path = fill(&path.path);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `matrix:` written as YAML, parsed under a stage without plain parameters.
    fn parsed_of(matrix: &str) -> (Option<Matrix>, Vec<Diagnostic>) {
        let node = crate::yaml::parse(matrix).unwrap();
        let mut errors = Vec::new();
        let parsed = parse(
            Path::new("m.yaml"),
            &node,
            &node,
            &Default::default(),
            &mut errors,
        );
        (parsed, errors)
    }

    /// The slugs of `matrix:` written as YAML.
    fn slugs_of(matrix: &str) -> Vec<String> {
        let (parsed, errors) = parsed_of(matrix);
        assert!(errors.is_empty(), "{errors:?}");
        parsed
            .unwrap()
            .combinations
            .into_iter()
            .map(|c| c.slug)
            .collect()
    }

    #[test]
    fn a_member_key_names_its_combination_and_is_no_parameter() {
        let text = "- { member: reference, pooling: last }\n- { pooling: mean }\n";
        assert_eq!(slugs_of(text), ["reference", "pooling-mean"]);
        let parsed = parsed_of(text).0.unwrap();
        let params: Vec<&str> = parsed.combinations[0]
            .values
            .iter()
            .map(|v| v.param.as_str())
            .collect();
        assert_eq!(params, ["pooling"]);
        for bad in [
            "- { member: [a], pooling: last }\n",
            "- { member: reference, pooling: last }\n- { member: reference, pooling: mean }\n",
        ] {
            let (parsed, errors) = parsed_of(bad);
            assert!(parsed.is_none() && errors.len() == 1, "{bad}: {errors:?}");
        }
    }

    #[test]
    fn a_mapping_takes_every_combination_and_shortens_long_names() {
        assert_eq!(
            slugs_of("learning_rate: [3.0e-4, 1.0e-3]\nbatch_size: [16, 32]\n"),
            [
                "lr-0.0003-bs-16",
                "lr-0.0003-bs-32",
                "lr-0.001-bs-16",
                "lr-0.001-bs-32"
            ]
        );
    }

    #[test]
    fn names_that_would_shorten_alike_stay_whole() {
        assert_eq!(
            slugs_of("batch_size: [8]\nblock_size: [4]\n"),
            ["batch_size-8-block_size-4"]
        );
    }

    #[test]
    fn mapping_values_read_as_their_telling_scalars() {
        assert_eq!(
            slugs_of(
                "model:\n  - { config: tiny, seed: 0 }\n  - { config: small, seed: 0 }\n  - { hub: EleutherAI/gpt-neo-125m, seed: 0 }\n"
            ),
            ["model-tiny", "model-small", "model-gpt-neo-125m"]
        );
        // Values that differ only in a number show that number.
        assert_eq!(
            slugs_of("model:\n  - { config: tiny, seed: 0 }\n  - { config: tiny, seed: 1 }\n"),
            ["model-0", "model-1"]
        );
        assert_eq!(slugs_of("model: [{ config: small }]\n"), ["model-small"]);
    }

    #[test]
    fn a_list_names_combinations_one_by_one() {
        assert_eq!(
            slugs_of(
                "- { model: { config: tiny }, learning_rate: 0.001 }\n- { model: { config: small } }\n"
            ),
            ["model-tiny-lr-0.001", "model-small"]
        );
    }

    #[test]
    fn slugs_keep_only_safe_characters_and_one_spelling_per_number() {
        assert_eq!(
            slugs_of("env: [[LANG, 'A B'], ['x/y:z']]\nrate: [5.0e-4, 3.0]\n"),
            [
                "env-LANG_A-B-rate-0.0005",
                "env-LANG_A-B-rate-3",
                "env-y-z-rate-0.0005",
                "env-y-z-rate-3"
            ]
        );
    }

    #[test]
    fn a_slug_does_not_depend_on_the_order_of_values() {
        let forward = slugs_of(
            "model:\n  - { config: tiny, seed: 0 }\n  - { config: small, seed: 0 }\nlr: [1, 2]\n",
        );
        let mut backward = slugs_of(
            "model:\n  - { config: small, seed: 0 }\n  - { config: tiny, seed: 0 }\nlr: [2, 1]\n",
        );
        backward.sort();
        let mut sorted = forward.clone();
        sorted.sort();
        assert_eq!(sorted, backward);
    }
}
