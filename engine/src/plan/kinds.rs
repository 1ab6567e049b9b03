//! A stage's kind and what it accepts: the kind a manifest entry names ([`resolve_kind`]),
//! the keys only some kinds take (`run:`, `outs:`), the parameters the kind's schema lists
//! and its own check, and what a stage reads from its `from:` stages (output names, and
//! what the kind makes of them before anything runs).

use serde_json::Value;

use super::PlannedStage;
use crate::diag::{Diagnostic, did_you_mean};
use crate::manifest::StageSpec;
use crate::stage::{Checked, ParamError, PlannedInput, Registry, Stage};

pub(super) fn resolve_kind<'r>(
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

pub(super) fn check_reserved_for_kind(
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
pub(super) fn param_names(kind: &dyn Stage) -> Vec<String> {
    kind.params_schema()
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

pub(super) fn check_params(
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

pub(super) fn param_diagnostic(
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

/// Refuses `from: stage.output` naming an output the upstream's kind does not write.
pub(super) fn check_output_names(
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
pub(super) fn check_planned_inputs(
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
