//! `pipe dag`: the stage graph as text, dot or Mermaid.

use std::io::Write;

use pipe_engine::Pipeline;

use crate::Verdict;
use crate::cli::{DagArgs, DagFormat};
use crate::workspace;

/// Prints the DAG.
pub fn exec(args: DagArgs) -> anyhow::Result<Verdict> {
    let registry = pipe_stages::registry();
    let file = match args.file {
        Some(f) => f,
        None => workspace::default_manifest()?,
    };
    let pipeline = workspace::load(&file, &registry, args.manifest.allow_outside)?;
    let text = match args.format {
        DagFormat::Text => text(&pipeline),
        DagFormat::Dot => dot(&pipeline),
        DagFormat::Mermaid => mermaid(&pipeline),
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(Verdict::Success)
}

/// Edges as (upstream name, downstream name), in topological order.
fn edges<'a>(pipeline: &'a Pipeline<'_>) -> Vec<(&'a str, &'a str)> {
    pipeline
        .edges()
        .into_iter()
        .map(|(up, down)| {
            (
                pipeline.stages[up].name.as_str(),
                pipeline.stages[down].name.as_str(),
            )
        })
        .collect()
}

fn text(pipeline: &Pipeline<'_>) -> String {
    let labels: Vec<String> = pipeline
        .order()
        .iter()
        .map(|&id| {
            let stage = &pipeline.stages[id];
            let written = stage.member.as_ref().map_or(&stage.name, |m| &m.stage);
            if written == stage.kind.kind() {
                stage.name.clone()
            } else {
                format!("{} ({})", stage.name, stage.kind.kind())
            }
        })
        .collect();
    let width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for (&id, label) in pipeline.order().iter().zip(&labels) {
        let ups: Vec<&str> = pipeline
            .dag
            .upstream(id)
            .iter()
            .map(|&u| pipeline.stages[u].name.as_str())
            .collect();
        if ups.is_empty() {
            out.push_str(&format!("{label}\n"));
        } else {
            out.push_str(&format!("{label:<width$} ← {}\n", ups.join(", ")));
        }
    }
    out
}

fn dot(pipeline: &Pipeline<'_>) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, style=rounded];\n",
        pipeline.manifest.name
    );
    for &id in pipeline.order() {
        let stage = &pipeline.stages[id];
        out.push_str(&format!(
            "  \"{}\" [label=\"{}\\n({})\"];\n",
            stage.name,
            stage.name,
            stage.kind.kind()
        ));
    }
    for (from, to) in edges(pipeline) {
        out.push_str(&format!("  \"{from}\" -> \"{to}\";\n"));
    }
    out.push_str("}\n");
    out
}

fn mermaid(pipeline: &Pipeline<'_>) -> String {
    // Mermaid ids may not contain '-': use the stage index.
    let id_of = |name: &str| {
        pipeline
            .id(name)
            .map(|i| format!("s{i}"))
            .unwrap_or_default()
    };
    let mut out = String::from("flowchart LR\n");
    for &id in pipeline.order() {
        let stage = &pipeline.stages[id];
        out.push_str(&format!(
            "  s{id}[\"{}<br/><small>{}</small>\"]\n",
            stage.name,
            stage.kind.kind()
        ));
    }
    for (from, to) in edges(pipeline) {
        out.push_str(&format!("  {} --> {}\n", id_of(from), id_of(to)));
    }
    out
}
