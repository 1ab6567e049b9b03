//! Checking a manifest against the known stage kinds and building its DAG.
//!
//! [`plan`] resolves each stage's kind, checks its parameters (unknown keys
//! get the closest known one as a suggestion), resolves `from:` references,
//! normalises and confines workspace paths, adds an edge wherever one stage
//! reads a path another declares in `outs`, and rejects cycles by printing
//! their path. Every problem found is reported, not just the first.

mod dag;
mod kinds;
mod members;
mod safety;

use std::collections::BTreeSet;

pub use dag::Dag;

use crate::diag::{Diagnostic, ManifestError};
use crate::manifest::matrix::Member;
use crate::manifest::{Manifest, StageSpec};
use crate::paths;
use crate::stage::{Checked, ParamError, Registry, Stage};

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
    /// Which stages need which.
    pub dag: Dag,
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

    /// Stage ids in a topological order (file order among independent stages).
    pub fn order(&self) -> &[usize] {
        self.dag.order()
    }

    /// Every edge as (upstream id, downstream id), grouped by downstream stage in topological order.
    pub fn edges(&self) -> Vec<(usize, usize)> {
        self.dag.edges()
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
        self.dag.closure(targets)
    }
}

/// Checks `manifest` against `registry` and builds its DAG.
pub fn plan<'r>(
    manifest: Manifest,
    registry: &'r Registry,
    options: PlanOptions,
) -> Result<Pipeline<'r>, ManifestError> {
    let mut errors: Vec<Diagnostic> = Vec::new();
    // One resolver for the whole plan: it caches where each path prefix really is.
    let resolver = paths::Resolver::new(&manifest.dir, options.allow_outside);
    let stages = members::expand(&manifest, registry, &resolver, &mut errors);
    if !errors.is_empty() {
        return Err(manifest_error(errors, manifest));
    }
    let file = manifest.path.clone();
    kinds::check_output_names(&stages, &file, &mut errors);
    let upstream = dag::upstream_sets(&stages, &resolver, &file, &mut errors);
    let dag = Dag::new(upstream)
        .map_err(|cycle| errors.push(dag::cycle_error(&stages, &cycle, &file)))
        .ok();
    if let Some(dag) = &dag
        && errors.is_empty()
    {
        kinds::check_planned_inputs(&stages, dag.order(), &file, &mut errors);
    }
    match dag {
        Some(dag) if errors.is_empty() => Ok(Pipeline {
            manifest,
            stages,
            dag,
        }),
        _ => Err(manifest_error(errors, manifest)),
    }
}

/// The error of a manifest with `errors`, each shown once.
fn manifest_error(errors: Vec<Diagnostic>, manifest: Manifest) -> ManifestError {
    ManifestError {
        diagnostics: dedup(errors),
        source_text: Some(manifest.source),
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
                Some(kinds::param_diagnostic(&s.spec, s.kind, file, e))
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
    /// when it is a [`ParamError`] (see [`Stage::run`]), then a [`crate::BadInput`]: a
    /// setting found unusable only as the stage ran (a `freeze` entry past the model's last
    /// layer) is a bad manifest, as one refused before the run; any other error as it is.
    pub fn locate_run_error(
        &self,
        stage: &PlannedStage<'_>,
        error: anyhow::Error,
    ) -> anyhow::Error {
        match error.downcast::<ParamError>() {
            Ok(e) => {
                let d = kinds::param_diagnostic(&stage.spec, stage.kind, &self.manifest.path, e);
                crate::BadInput(anyhow::anyhow!(d.render(None))).into()
            }
            Err(other) => other,
        }
    }
}

/// Drops repeated diagnostics: the members of one stage share most mistakes.
fn dedup(errors: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut seen = BTreeSet::new();
    errors
        .into_iter()
        .filter(|d| seen.insert((d.location(), d.message.clone())))
        .collect()
}
