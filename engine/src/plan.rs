//! Checking a manifest against the known stage kinds and building its DAG.
//!
//! [`plan`] resolves each stage's kind, checks its parameters (unknown keys
//! get the closest known one as a suggestion), resolves `from:` references,
//! normalises and confines workspace paths, adds an edge wherever one stage
//! reads a path another declares in `outs`, and rejects cycles by printing
//! their path. Every problem found is reported, not just the first.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::Value;

use crate::diag::{Diagnostic, ManifestError, did_you_mean};
use crate::lockfile::lock_path;
use crate::manifest::{Manifest, StageSpec};
use crate::matrix::{self, Member};
use crate::paths;
use crate::stage::{Checked, ParamError, PlannedInput, Registry, Stage};
use crate::yaml::Span;

/// Options that change what a manifest may do.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// Allow workspace paths outside the manifest's folder.
    pub allow_outside: bool,
}

/// A checked manifest: stages with their kinds, checked parameters and edges.
pub struct Pipeline<'r> {
    /// The manifest it came from.
    pub manifest: Manifest,
    /// Stages in file order; a stage's index is its id.
    pub stages: Vec<PlannedStage<'r>>,
    /// Stage ids in a topological order (file order among independent stages).
    pub order: Vec<usize>,
    /// The DAG: one node per stage (node index = stage id), edges upstream → downstream.
    pub graph: DiGraph<usize, ()>,
}

/// One stage, checked.
pub struct PlannedStage<'r> {
    /// The stage's name.
    pub name: String,
    /// Its kind.
    pub kind: &'r dyn Stage,
    /// The manifest entry.
    pub spec: StageSpec,
    /// What the kind made of the parameters.
    pub checked: Checked,
    /// Resolved `from:` entries.
    pub inputs: Vec<ResolvedInput>,
    /// Workspace paths read (normalised): `deps:` and the kind's own.
    pub deps: Vec<String>,
    /// Workspace paths written (normalised): `outs:`.
    pub outs: Vec<String>,
    /// Ids of the stages this one needs (from `from:` and from paths).
    pub upstream: BTreeSet<usize>,
    /// Which matrix member this is, for a stage that fans out.
    pub member: Option<Member>,
}

/// A `from:` entry resolved to a stage id.
#[derive(Debug, Clone)]
pub struct ResolvedInput {
    /// The input's name.
    pub name: String,
    /// The upstream stage's id.
    pub stage: usize,
    /// One of its outputs, or all.
    pub output: Option<String>,
    /// Which entry of the stage's `from:` it comes from (a stage gathering a matrix
    /// input has one input per member for a single entry).
    pub written: usize,
}

impl Pipeline<'_> {
    /// The id of the stage called `name`.
    pub fn id(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }

    /// Every edge as (upstream id, downstream id), grouped by downstream stage in topological order.
    pub fn edges(&self) -> Vec<(usize, usize)> {
        let mut edges: Vec<(usize, usize)> = self
            .graph
            .edge_indices()
            .filter_map(|e| self.graph.edge_endpoints(e))
            .map(|(a, b)| (a.index(), b.index()))
            .collect();
        let rank: Vec<usize> = {
            let mut rank = vec![0; self.stages.len()];
            for (position, &id) in self.order.iter().enumerate() {
                rank[id] = position;
            }
            rank
        };
        edges.sort_by_key(|&(a, b)| (rank[b], rank[a]));
        edges
    }

    /// The ids of the stages a name selects: the stage called `name`, or
    /// every member of a matrix stage written as `name`.
    pub fn select(&self, name: &str) -> Vec<usize> {
        (0..self.stages.len())
            .filter(|&i| {
                let stage = &self.stages[i];
                stage.name == name || stage.member.as_ref().is_some_and(|m| m.stage == name)
            })
            .collect()
    }

    /// The ids of `targets` and everything they need, in topological order.
    pub fn closure(&self, targets: &[usize]) -> Vec<usize> {
        let mut wanted: BTreeSet<usize> = BTreeSet::new();
        let mut stack: Vec<usize> = targets.to_vec();
        while let Some(id) = stack.pop() {
            if wanted.insert(id) {
                stack.extend(self.stages[id].upstream.iter().copied());
            }
        }
        self.order
            .iter()
            .copied()
            .filter(|id| wanted.contains(id))
            .collect()
    }
}

/// Checks `manifest` against `registry` and builds its DAG.
pub fn plan<'r>(
    manifest: Manifest,
    registry: &'r Registry,
    options: PlanOptions,
) -> Result<Pipeline<'r>, ManifestError> {
    let mut errors: Vec<Diagnostic> = Vec::new();
    let file = manifest.path.clone();
    let names: Vec<&str> = manifest.stages.iter().map(|s| s.name.as_str()).collect();
    let kinds: Vec<Option<&dyn Stage>> = manifest
        .stages
        .iter()
        .map(|spec| resolve_kind(spec, registry, &file, &mut errors))
        .collect();
    let from_ids: Vec<Vec<Option<usize>>> = manifest
        .stages
        .iter()
        .map(|spec| resolve_from(spec, &names, &file, &mut errors))
        .collect();
    let upstream: Vec<Vec<usize>> = from_ids
        .iter()
        .map(|ids| ids.iter().flatten().copied().collect())
        .collect();
    let gathers: Vec<bool> = kinds
        .iter()
        .map(|k| k.is_some_and(|k| k.gathers_members()))
        .collect();
    let fan = matrix::fan_out(&manifest.stages, &upstream, &gathers);
    let first_id: Vec<usize> = fan
        .members
        .iter()
        .scan(0, |next, members| {
            let first = *next;
            *next += members.len();
            Some(first)
        })
        .collect();
    let protected = protected_paths(&manifest);
    let resolver = paths::Resolver::new(&manifest.dir, options.allow_outside);
    let mut known_params: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut stages = Vec::new();
    for (index, as_written) in manifest.stages.iter().enumerate() {
        let Some(kind) = kinds[index] else {
            continue;
        };
        let fans_out = fan.members[index][0].is_some();
        check_member_placeholder(as_written, fans_out, &file, &mut errors);
        let known = known_params
            .entry(kind.kind())
            .or_insert_with(|| param_names(kind));
        for member in &fan.members[index] {
            let before = errors.len();
            let spec = match member {
                Some(m) => matrix::member_spec(as_written, index, m),
                None => as_written.clone(),
            };
            check_reserved_for_kind(&spec, kind, &file, &mut errors);
            let checked = check_params(&spec, kind, known, &file, &mut errors);
            let mut inputs = Vec::new();
            for (written, (from, up)) in spec.from.iter().zip(&from_ids[index]).enumerate() {
                let Some(up) = *up else { continue };
                let upstream_members = fan.members[up].iter().enumerate();
                if gathers[index] {
                    inputs.extend(upstream_members.map(|(k, m)| ResolvedInput {
                        name: m.as_ref().map_or_else(
                            || from.input.clone(),
                            |m| format!("{}@{}", from.input, m.slug),
                        ),
                        stage: first_id[up] + k,
                        output: from.output.clone(),
                        written,
                    }));
                } else {
                    let k = fan.paired(up, member.as_ref().map(|m| &m.choice));
                    inputs.push(ResolvedInput {
                        name: from.input.clone(),
                        stage: first_id[up] + k,
                        output: from.output.clone(),
                        written,
                    });
                }
            }
            let mut deps = Vec::new();
            for dep in &spec.deps {
                match resolver.normalize(&dep.path) {
                    Ok(p) if is_in_store(&p) => errors.push(store_dep_error(&file, dep.span, &p)),
                    Ok(p) => deps.push(p),
                    Err(e) => errors.push(path_error(&file, dep.span, e)),
                }
            }
            for written in checked
                .as_ref()
                .map(|c| c.workspace_deps.as_slice())
                .unwrap_or_default()
            {
                match resolver.normalize(written) {
                    Ok(p) => deps.push(p),
                    Err(e) => {
                        let path = find_string(&spec.params, written).unwrap_or_default();
                        errors.push(path_error(&file, spec.node.locate(&path), e));
                    }
                }
            }
            let mut outs = Vec::new();
            for out in &spec.outs {
                match resolver.normalize(&out.path) {
                    Ok(p) => {
                        let place = OutPlace {
                            out: &p,
                            span: out.span,
                            file: &file,
                        };
                        check_out(place, &deps, &protected, &resolver, &mut errors);
                        outs.push(p);
                    }
                    Err(e) => errors.push(path_error(&file, out.span, e)),
                }
            }
            if errors.len() > before {
                continue;
            }
            stages.push(PlannedStage {
                name: member
                    .as_ref()
                    .map_or_else(|| spec.name.clone(), Member::name),
                kind,
                spec,
                checked: checked.unwrap_or_default(),
                inputs,
                deps,
                outs,
                upstream: BTreeSet::new(),
                member: member.clone(),
            });
        }
    }
    if !errors.is_empty() {
        return Err(ManifestError {
            diagnostics: dedup(errors),
            source_text: Some(manifest.source),
        });
    }
    check_output_names(&stages, &file, &mut errors);
    add_edges(&mut stages, &resolver, &file, &mut errors);
    let graph = build_graph(&stages);
    let order = match topological_order(&stages) {
        Ok(order) => order,
        Err(cycle) => {
            let first = &stages[cycle[0]];
            let path: Vec<&str> = cycle
                .iter()
                .chain(std::iter::once(&cycle[0]))
                .map(|&i| stages[i].name.as_str())
                .collect();
            errors.push(
                Diagnostic::at(&file, first.spec.span, format!("cycle: {}", path.join(" → ")))
                    .help("a stage cannot depend on itself, directly or through others: remove one of these `from:` entries or paths"),
            );
            Vec::new()
        }
    };
    if errors.is_empty() {
        check_planned_inputs(&stages, &order, &file, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ManifestError {
            diagnostics: dedup(errors),
            source_text: Some(manifest.source),
        });
    }
    Ok(Pipeline {
        manifest,
        stages,
        order,
        graph,
    })
}

/// Workspace paths no out may be, contain or lie in: the manifest, its
/// lockfile and the store (when they are inside the manifest's folder), each
/// as written and where it really is on disk (a manifest reached through a
/// symlink, a `.pipe` that links to another folder of the workspace).
fn protected_paths(manifest: &Manifest) -> Vec<(String, &'static str)> {
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
struct OutPlace<'a> {
    out: &'a str,
    span: Span,
    file: &'a std::path::Path,
}

/// Refuses an out that overlaps one of its own stage's deps (the run would
/// delete its input) or a path pipe keeps for itself, as written or through
/// the symlinks on disk (`resolver`).
fn check_out(
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

/// Refuses `from: stage.output` naming an output the upstream's kind does not write.
fn check_output_names(
    stages: &[PlannedStage<'_>],
    file: &std::path::Path,
    errors: &mut Vec<Diagnostic>,
) {
    for stage in stages {
        for input in &stage.inputs {
            let Some(output) = &input.output else {
                continue;
            };
            let written = &stage.spec.from[input.written];
            let upstream = &stages[input.stage];
            let known = if upstream.kind.takes_run() {
                Some(upstream.outs.clone())
            } else {
                upstream.kind.output_names(&upstream.checked.key_params)
            };
            if let Some(known) = known
                && !known.contains(output)
            {
                errors.push(
                    Diagnostic::at(
                        file,
                        written.span,
                        format!(
                            "stage '{}' has no output '{output}'{}",
                            upstream.name,
                            did_you_mean(output, known.iter().map(String::as_str))
                        ),
                    )
                    .help(format!(
                        "its outputs are: {}; or write `from: {}` for all of them",
                        known.join(", "),
                        upstream.name
                    )),
                );
            }
        }
    }
}

/// Shows each stage, in run `order`, what its inputs will hold ([`Stage::check_inputs`]):
/// the output names its upstreams declare, given their own inputs
/// ([`Stage::planned_output_names`]), or the `outs` of a command.
fn check_planned_inputs(
    stages: &[PlannedStage<'_>],
    order: &[usize],
    file: &std::path::Path,
    errors: &mut Vec<Diagnostic>,
) {
    let mut known: Vec<Option<Vec<String>>> = vec![None; stages.len()];
    for &id in order {
        let stage = &stages[id];
        let inputs: Vec<PlannedInput<'_>> = stage
            .inputs
            .iter()
            .map(|input| PlannedInput {
                name: &input.name,
                stage: &stages[input.stage].name,
                outputs: match &input.output {
                    Some(one) => Some(vec![one.clone()]),
                    None => known[input.stage].clone(),
                },
            })
            .collect();
        if let Err(e) = stage.kind.check_inputs(&stage.spec.params, &inputs) {
            errors.push(param_diagnostic(&stage.spec, stage.kind, file, e));
        }
        known[id] = if stage.kind.takes_run() {
            Some(stage.outs.clone())
        } else {
            (stage.kind).planned_output_names(&stage.checked.key_params, &inputs)
        };
    }
}

fn path_error(file: &std::path::Path, span: Span, message: String) -> Diagnostic {
    Diagnostic::at(file, span, message).help(
        "keep data inside the manifest's folder, or pass `--allow-outside` if this is intended",
    )
}

fn resolve_kind<'r>(
    spec: &StageSpec,
    registry: &'r Registry,
    file: &std::path::Path,
    errors: &mut Vec<Diagnostic>,
) -> Option<&'r dyn Stage> {
    let kinds = registry.names();
    if let Some((uses, span)) = &spec.uses {
        return match registry.get(uses) {
            Some(kind) => Some(kind),
            None => {
                errors.push(
                    Diagnostic::at(
                        file,
                        *span,
                        format!(
                            "unknown stage kind '{uses}'{}",
                            did_you_mean(uses, kinds.iter().copied())
                        ),
                    )
                    .help(format!("the known kinds are: {}", kinds.join(", "))),
                );
                None
            }
        };
    }
    if let Some(kind) = registry.get(&spec.name) {
        return Some(kind);
    }
    if spec.run.is_some()
        && let Some(kind) = registry.iter().find(|k| k.takes_run())
    {
        return Some(kind);
    }
    errors.push(
        Diagnostic::at(
            file,
            spec.span,
            format!(
                "stage '{}' has no kind{}",
                spec.name,
                did_you_mean(&spec.name, kinds.iter().copied())
            ),
        )
        .help(format!(
            "name the stage after a kind ({}), add `uses: <kind>`, or give it a `run:` command",
            kinds.join(", ")
        )),
    );
    None
}

fn check_reserved_for_kind(
    spec: &StageSpec,
    kind: &dyn Stage,
    file: &std::path::Path,
    errors: &mut Vec<Diagnostic>,
) {
    let key_span = |key: &str| spec.node.get(key).map(|(k, _)| k.span).unwrap_or(spec.span);
    if kind.takes_run() {
        if spec.run.as_deref().is_none_or(|r| r.trim().is_empty()) {
            errors.push(
                Diagnostic::at(
                    file,
                    spec.span,
                    format!(
                        "stage '{}' of kind {} needs a `run:` command",
                        spec.name,
                        kind.kind()
                    ),
                )
                .help("add `run: <shell command>`"),
            );
        }
    } else {
        if spec.run.is_some() {
            errors.push(
                Diagnostic::at(file, key_span("run"), format!("`run` is only for command stages, and '{}' is of kind {}", spec.name, kind.kind()))
                    .help("remove `run:`, or rename the stage and drop `uses:` to make it a command stage"),
            );
        }
        if !spec.outs.is_empty() {
            errors.push(
                Diagnostic::at(file, key_span("outs"), format!("`outs` is only for command stages; {} writes its outputs into the store", kind.kind()))
                    .help("read this stage's outputs with `pipe show` or from a downstream stage's `from:`"),
            );
        }
    }
}

/// The parameter names a kind accepts: the `properties` of its schema.
fn param_names(kind: &dyn Stage) -> Vec<String> {
    kind.params_schema()
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

fn check_params(
    spec: &StageSpec,
    kind: &dyn Stage,
    known: &[String],
    file: &std::path::Path,
    errors: &mut Vec<Diagnostic>,
) -> Option<Checked> {
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    let mut ok = true;
    if let Some(params) = spec.params.as_object() {
        for key in params.keys() {
            if !known.contains(&key.as_str()) {
                ok = false;
                let listed = if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                };
                errors.push(
                    Diagnostic::at(
                        file,
                        spec.node.locate_key(std::slice::from_ref(key)),
                        format!(
                            "unknown parameter '{key}' for {}{}",
                            kind.kind(),
                            did_you_mean(key, known.iter().copied())
                        ),
                    )
                    .help(format!("{} takes: {listed}", kind.kind())),
                );
            }
        }
    }
    if !ok {
        return None;
    }
    match kind.check(&spec.params) {
        Ok(checked) => Some(checked),
        Err(e) => {
            errors.push(param_diagnostic(spec, kind, file, e));
            None
        }
    }
}

impl Pipeline<'_> {
    /// Asks each stage of `ids` whether this machine can run it ([`Stage::preflight`]); every
    /// refusal becomes a diagnostic at the parameter concerned.
    pub fn preflight(&self, ids: &[usize]) -> Result<(), ManifestError> {
        let file = &self.manifest.path;
        let diagnostics: Vec<Diagnostic> = ids
            .iter()
            .map(|&id| &self.stages[id])
            .filter_map(|s| {
                let e = s.kind.preflight(&s.spec.params).err()?;
                Some(param_diagnostic(&s.spec, s.kind, file, e))
            })
            .collect();
        if diagnostics.is_empty() {
            return Ok(());
        }
        Err(ManifestError {
            diagnostics,
            source_text: Some(self.manifest.source.clone()),
        })
    }

    /// `error` from running `stage`, with the manifest location of the setting it names
    /// when it is a [`ParamError`] (see [`Stage::run`]); any other error as it is.
    pub fn locate_run_error(
        &self,
        stage: &PlannedStage<'_>,
        error: anyhow::Error,
    ) -> anyhow::Error {
        match error.downcast::<ParamError>() {
            Ok(e) => {
                let d = param_diagnostic(&stage.spec, stage.kind, &self.manifest.path, e);
                anyhow::anyhow!(d.render(None))
            }
            Err(other) => other,
        }
    }
}

fn param_diagnostic(
    spec: &StageSpec,
    kind: &dyn Stage,
    file: &std::path::Path,
    error: ParamError,
) -> Diagnostic {
    let unknown_field = error
        .message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .map(str::to_string);
    let span = match &unknown_field {
        Some(field) => {
            let mut path = error.path.clone();
            path.push(field.clone());
            spec.node.locate_key(&path)
        }
        None if error.path.is_empty() => spec.span,
        None => spec.node.locate(&error.path),
    };
    let at = if error.path.is_empty() {
        String::new()
    } else {
        format!(" `{}`", error.path.join("."))
    };
    let mut d = Diagnostic::at(
        file,
        span,
        format!("{} parameter{at}: {}", kind.kind(), error.message),
    );
    d.help = error.help;
    d
}

/// The manifest index of each stage named in `from:` (`None` for an unknown one, reported).
fn resolve_from(
    spec: &StageSpec,
    names: &[&str],
    file: &std::path::Path,
    errors: &mut Vec<Diagnostic>,
) -> Vec<Option<usize>> {
    let mut found = Vec::new();
    for from in &spec.from {
        let index = names.iter().position(|n| *n == from.stage);
        found.push(index);
        if index.is_none() {
            errors.push(
                Diagnostic::at(
                    file,
                    from.span,
                    format!(
                        "unknown stage '{}' in `from`{}",
                        from.stage,
                        did_you_mean(&from.stage, names.iter().copied())
                    ),
                )
                .help(format!(
                    "the stages of this manifest are: {}",
                    names.join(", ")
                )),
            );
        }
    }
    found
}

/// `${member}` means something only in a stage that fans out over a matrix.
fn check_member_placeholder(
    spec: &StageSpec,
    fans_out: bool,
    file: &std::path::Path,
    errors: &mut Vec<Diagnostic>,
) {
    if fans_out {
        return;
    }
    let mut places: Vec<Span> = spec
        .deps
        .iter()
        .chain(&spec.outs)
        .filter(|p| p.path.contains(matrix::MEMBER_PLACEHOLDER))
        .map(|p| p.span)
        .collect();
    if spec
        .run
        .as_deref()
        .is_some_and(|r| r.contains(matrix::MEMBER_PLACEHOLDER))
    {
        places.push(spec.node.locate(&["run".to_string()]));
    }
    for span in places {
        errors.push(
            Diagnostic::at(file, span, format!("`{}` in stage '{}', which has no matrix members", matrix::MEMBER_PLACEHOLDER, spec.name))
                .help("`${member}` names the member of a stage that fans out (with `matrix:`, or `from:` a matrix stage); write the path itself here"),
        );
    }
}

/// Whether a workspace path lies in the store folder `.pipe/`.
fn is_in_store(path: &str) -> bool {
    path == ".pipe" || path.starts_with(".pipe/")
}

/// A `deps:` entry inside `.pipe/`: the store is pipe's own, and what a
/// stage wrote there is reached through `from:` (which orders the stages and
/// puts the upstream's output hashes in the key), not through a path.
fn store_dep_error(file: &std::path::Path, span: Span, path: &str) -> Diagnostic {
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

/// Drops repeated diagnostics: the members of one stage share most mistakes.
fn dedup(errors: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut seen = BTreeSet::new();
    errors
        .into_iter()
        .filter(|d| seen.insert((d.location(), d.message.clone())))
        .collect()
}

/// The outs in `producers` that overlap `path`: the one it lies in (or is), and
/// those inside it. Each is one map lookup or range, so a pipeline's edges
/// cost O(paths × depth × log outs), not O(deps × outs).
fn overlapping<'m>(
    producers: &'m BTreeMap<&str, usize>,
    path: &str,
) -> impl Iterator<Item = (&'m str, usize)> + 'm {
    let ancestors: Vec<(&'m str, usize)> = std::iter::once(path)
        .chain(path.match_indices('/').map(|(i, _)| &path[..i]))
        .filter_map(|prefix| producers.get_key_value(prefix).map(|(k, v)| (*k, *v)))
        .collect();
    // Paths inside `path` start with `path/`; '0' is the character after '/'.
    let inside_from = format!("{path}/");
    let inside_to = format!("{path}0");
    let inside: Vec<(&'m str, usize)> = producers
        .range::<str, _>((
            std::ops::Bound::Included(inside_from.as_str()),
            std::ops::Bound::Excluded(inside_to.as_str()),
        ))
        .map(|(k, v)| (*k, *v))
        .collect();
    ancestors.into_iter().chain(inside)
}

/// Adds `from:` edges and path edges (a stage reading a path another declares in `outs`).
fn add_edges(
    stages: &mut [PlannedStage<'_>],
    resolver: &paths::Resolver<'_>,
    file: &std::path::Path,
    errors: &mut Vec<Diagnostic>,
) {
    // Keyed by where each out really is, so two spellings of one place
    // through a symlink are one out.
    let mut producers: BTreeMap<&str, usize> = BTreeMap::new();
    let outs: Vec<(usize, String, String, Span)> = stages
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.outs
                .iter()
                .zip(&s.spec.outs)
                .map(move |(o, r)| (i, o.clone(), resolver.real(o, false), r.span))
        })
        .collect();
    for (i, out, real, span) in &outs {
        if let Some((other_path, other)) = overlapping(&producers, real).next() {
            errors.push(
                Diagnostic::at(
                    file,
                    *span,
                    format!(
                        "`{out}` is also written by stage '{}' (`{other_path}`)",
                        stages[other].name
                    ),
                )
                .help("each path may be produced by one stage only; the members of a matrix stage can keep theirs apart with `${member}` in the path"),
            );
        } else {
            producers.insert(real, *i);
        }
    }
    let mut edges = Vec::new();
    for (id, stage) in stages.iter().enumerate() {
        for input in &stage.inputs {
            edges.push((input.stage, id));
        }
        for dep in &stage.deps {
            // A dep that is a link an upstream writes is read through that
            // link: both what it names and where it leads are upstream paths.
            let (named, real) = (resolver.real(dep, false), resolver.real(dep, true));
            let places =
                std::iter::once(named.as_str()).chain((real != named).then_some(real.as_str()));
            for place in places {
                for (_, producer) in overlapping(&producers, place) {
                    if producer != id {
                        edges.push((producer, id));
                    }
                }
            }
        }
    }
    for (from, to) in edges {
        stages[to].upstream.insert(from);
    }
}

fn build_graph(stages: &[PlannedStage<'_>]) -> DiGraph<usize, ()> {
    let mut graph = DiGraph::new();
    for id in 0..stages.len() {
        graph.add_node(id);
    }
    for (id, stage) in stages.iter().enumerate() {
        for &up in &stage.upstream {
            graph.add_edge(NodeIndex::new(up), NodeIndex::new(id), ());
        }
    }
    graph
}

/// Kahn's algorithm, taking the lowest file index first so the order is stable.
/// On a cycle, returns the cycle's stage ids in order.
fn topological_order(stages: &[PlannedStage<'_>]) -> Result<Vec<usize>, Vec<usize>> {
    let mut remaining: Vec<usize> = stages.iter().map(|s| s.upstream.len()).collect();
    let mut ready: BinaryHeap<Reverse<usize>> = (0..stages.len())
        .filter(|&i| remaining[i] == 0)
        .map(Reverse)
        .collect();
    let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); stages.len()];
    for (id, stage) in stages.iter().enumerate() {
        for &up in &stage.upstream {
            downstream[up].push(id);
        }
    }
    let mut order = Vec::with_capacity(stages.len());
    while let Some(Reverse(id)) = ready.pop() {
        order.push(id);
        for &next in &downstream[id] {
            remaining[next] -= 1;
            if remaining[next] == 0 {
                ready.push(Reverse(next));
            }
        }
    }
    if order.len() == stages.len() {
        return Ok(order);
    }
    // Walk upstream from a stage left over until a stage repeats: that loop is a cycle.
    let start = (0..stages.len())
        .find(|&i| remaining[i] > 0)
        .expect("a stage is left when the order is short");
    let mut path = vec![start];
    let mut current = start;
    loop {
        let next = *stages[current]
            .upstream
            .iter()
            .find(|&&u| remaining[u] > 0)
            .expect("a stage in a cycle has an unfinished upstream");
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut cycle: Vec<usize> = path[pos..].to_vec();
            cycle.reverse();
            // Start at the stage written first, so the message reads in file order.
            let first = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, id)| **id)
                .map_or(0, |(i, _)| i);
            cycle.rotate_left(first);
            return Err(cycle);
        }
        path.push(next);
        current = next;
    }
}

/// The JSON path of the first string equal to `needle` inside `value`.
fn find_string(value: &Value, needle: &str) -> Option<Vec<String>> {
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
