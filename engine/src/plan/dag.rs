//! The stages' dependency graph, [`Dag`]: one adjacency structure (each stage's upstream
//! set), with the downstream lists and the run order derived from it once. Edges come from
//! `from:` entries and from paths: a stage that reads a path another declares in `outs`
//! runs after it ([`upstream_sets`]).
//!
//! Hand-written rather than petgraph's: the run order must take the lowest file index
//! first among ready stages (Kahn's algorithm with a heap, so `pipe dag` and the run read
//! in file order), and a cycle is reported as its path starting at the stage written
//! first, neither of which petgraph's `toposort` gives; a pipeline has hundreds of stages
//! at most.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use super::PlannedStage;
use crate::diag::Diagnostic;
use crate::paths;
use crate::yaml::Span;

/// The dependency graph of a pipeline's stages (ids are indexes into its stages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dag {
    upstream: Vec<BTreeSet<usize>>,
    downstream: Vec<Vec<usize>>,
    order: Vec<usize>,
}

impl Dag {
    /// The graph whose stage `id` needs the stages `upstream[id]`; a cycle's stage ids, in
    /// order from the one written first, when it has one.
    pub fn new(upstream: Vec<BTreeSet<usize>>) -> Result<Dag, Vec<usize>> {
        let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); upstream.len()];
        for (id, ups) in upstream.iter().enumerate() {
            for &up in ups {
                downstream[up].push(id);
            }
        }
        let order = topological_order(&upstream, &downstream)?;
        Ok(Dag {
            upstream,
            downstream,
            order,
        })
    }

    /// Stage ids in a topological order (file order among independent stages).
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// The ids of the stages stage `id` needs.
    pub fn upstream(&self, id: usize) -> &BTreeSet<usize> {
        &self.upstream[id]
    }

    /// The ids of the stages that need stage `id`.
    pub fn downstream(&self, id: usize) -> &[usize] {
        &self.downstream[id]
    }

    /// Every edge as (upstream id, downstream id), grouped by downstream stage in
    /// topological order.
    pub fn edges(&self) -> Vec<(usize, usize)> {
        let mut rank = vec![0; self.upstream.len()];
        for (position, &id) in self.order.iter().enumerate() {
            rank[id] = position;
        }
        let mut edges: Vec<(usize, usize)> = self
            .upstream
            .iter()
            .enumerate()
            .flat_map(|(id, ups)| ups.iter().map(move |&up| (up, id)))
            .collect();
        edges.sort_by_key(|&(a, b)| (rank[b], rank[a]));
        edges
    }

    /// The ids of `targets` and everything they need, in topological order.
    pub fn closure(&self, targets: &[usize]) -> Vec<usize> {
        let mut wanted: BTreeSet<usize> = BTreeSet::new();
        let mut stack: Vec<usize> = targets.to_vec();
        while let Some(id) = stack.pop() {
            if wanted.insert(id) {
                stack.extend(self.upstream[id].iter().copied());
            }
        }
        self.order
            .iter()
            .copied()
            .filter(|id| wanted.contains(id))
            .collect()
    }
}

/// The error for a `cycle` of `stages` (as [`Dag::new`] returns it).
pub(super) fn cycle_error(
    stages: &[PlannedStage<'_>],
    cycle: &[usize],
    file: &std::path::Path,
) -> Diagnostic {
    let first = &stages[cycle[0]];
    let path: Vec<&str> = cycle
        .iter()
        .chain(std::iter::once(&cycle[0]))
        .map(|&i| stages[i].name.as_str())
        .collect();
    Diagnostic::at(file, first.spec.span, format!("cycle: {}", path.join(" → ")))
        .help("a stage cannot depend on itself, directly or through others: remove one of these `from:` entries or paths")
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

/// The upstream set of each stage: the stages its `from:` entries name, and those that
/// declare in `outs` a path it reads. Two stages writing one place are reported.
pub(super) fn upstream_sets(
    stages: &[PlannedStage<'_>],
    resolver: &paths::Resolver<'_>,
    file: &std::path::Path,
    errors: &mut Vec<Diagnostic>,
) -> Vec<BTreeSet<usize>> {
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
    let mut upstream = vec![BTreeSet::new(); stages.len()];
    for (from, to) in edges {
        upstream[to].insert(from);
    }
    upstream
}

/// Kahn's algorithm, taking the lowest file index first so the order is stable.
/// On a cycle, returns the cycle's stage ids in order.
fn topological_order(
    upstream: &[BTreeSet<usize>],
    downstream: &[Vec<usize>],
) -> Result<Vec<usize>, Vec<usize>> {
    let count = upstream.len();
    let mut remaining: Vec<usize> = upstream.iter().map(BTreeSet::len).collect();
    let mut ready: BinaryHeap<Reverse<usize>> = (0..count)
        .filter(|&i| remaining[i] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(count);
    while let Some(Reverse(id)) = ready.pop() {
        order.push(id);
        for &next in &downstream[id] {
            remaining[next] -= 1;
            if remaining[next] == 0 {
                ready.push(Reverse(next));
            }
        }
    }
    if order.len() == count {
        return Ok(order);
    }
    // Walk upstream from a stage left over until a stage repeats: that loop is a cycle.
    let start = (0..count)
        .find(|&i| remaining[i] > 0)
        .expect("a stage is left when the order is short");
    let mut path = vec![start];
    let mut current = start;
    loop {
        let next = *upstream[current]
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
