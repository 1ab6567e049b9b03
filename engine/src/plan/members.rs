//! From manifest entries to planned stages: each entry's `from:` resolved to the stages it
//! names, then one planned stage per matrix member (or one for an entry that does not fan
//! out), each with its checked parameters, its inputs paired with the right upstream
//! members, and its workspace paths.

use std::collections::BTreeMap;

use super::kinds::{check_params, check_reserved_for_kind, param_names, resolve_kind};
use super::safety::{
    OutPlace, check_out, find_string, is_in_store, path_error, protected_paths, store_dep_error,
};
use super::{PlannedStage, ResolvedInput};
use crate::diag::{Diagnostic, did_you_mean};
use crate::manifest::matrix::{self, Member};
use crate::manifest::{Manifest, StageSpec};
use crate::paths;
use crate::stage::{Registry, Stage};
use crate::yaml::Span;

/// The planned stages of `manifest`: one per entry, or one per matrix member of an entry
/// that fans out, in file order. Every problem found goes to `errors`; an entry with any
/// is left out.
pub(super) fn expand<'r>(
    manifest: &Manifest,
    registry: &'r Registry,
    resolver: &paths::Resolver<'_>,
    errors: &mut Vec<Diagnostic>,
) -> Vec<PlannedStage<'r>> {
    let file = manifest.path.clone();
    let names: Vec<&str> = manifest.stages.iter().map(|s| s.name.as_str()).collect();
    let kinds: Vec<Option<&dyn Stage>> = manifest
        .stages
        .iter()
        .map(|spec| resolve_kind(spec, registry, &file, errors))
        .collect();
    let from_ids: Vec<Vec<Option<usize>>> = manifest
        .stages
        .iter()
        .map(|spec| resolve_from(spec, &names, &file, errors))
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
    let protected = protected_paths(manifest);
    let mut known_params: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut stages = Vec::new();
    for (index, as_written) in manifest.stages.iter().enumerate() {
        let Some(kind) = kinds[index] else {
            continue;
        };
        let fans_out = fan.members[index][0].is_some();
        check_member_placeholder(as_written, fans_out, &file, errors);
        let known = known_params
            .entry(kind.kind())
            .or_insert_with(|| param_names(kind));
        for member in &fan.members[index] {
            let before = errors.len();
            let spec = match member {
                Some(m) => matrix::member_spec(as_written, index, m),
                None => as_written.clone(),
            };
            check_reserved_for_kind(&spec, kind, &file, errors);
            let checked = check_params(&spec, kind, known, &file, errors);
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
                        check_out(place, &deps, &protected, resolver, errors);
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
                member: member.clone(),
            });
        }
    }
    stages
}

/// The manifest index of each stage named in `from:` (`None` for an unknown one, reported).
pub(super) fn resolve_from(
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
pub(super) fn check_member_placeholder(
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
