//! `pipe show STAGE`: where a stage's outputs are, and its metrics.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pipe_engine::lockfile;
use pipe_engine::{UsageError, output_paths};
use serde::Serialize;

use crate::Verdict;
use crate::cli::ShowArgs;
use crate::workspace;

/// `pipe show --json` output: `{"stage", "key", "outputs": {name: path}, "metrics": {...}}`.
#[derive(Serialize)]
struct Shown {
    stage: String,
    key: String,
    outputs: BTreeMap<String, PathBuf>,
    metrics: serde_json::Map<String, serde_json::Value>,
}

/// Shows the outputs and metrics of a stage's last run.
pub fn exec(args: ShowArgs) -> anyhow::Result<Verdict> {
    let registry = pipe_stages::registry();
    let (file, stages) = workspace::split_file_and_stages(&args.args)?;
    let [stage_name] = stages.as_slice() else {
        return Err(UsageError("name one stage: `pipe show [FILE] STAGE`".into()).into());
    };
    let pipeline = workspace::load(&file, &registry, args.manifest.allow_outside)?;
    let id = pipeline.id(stage_name).ok_or_else(|| {
        let members: Vec<&str> = pipeline
            .select(stage_name)
            .into_iter()
            .map(|i| pipeline.stages[i].name.as_str())
            .collect();
        if !members.is_empty() {
            return UsageError(format!(
                "stage '{stage_name}' has matrix members; name one: {}",
                members.join(", ")
            ));
        }
        let names: Vec<&str> = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
        UsageError(format!(
            "no stage named '{stage_name}'{}; the stages are: {}",
            pipe_engine::diag::did_you_mean(stage_name, names.iter().copied()),
            names.join(", ")
        ))
    })?;
    let store = workspace::open_store(&pipeline)?;
    let lock = lockfile::load_for(&pipeline.manifest.path, &pipeline.manifest.name)?;
    let not_run = || {
        UsageError(format!(
            "stage '{stage_name}' has not run yet; run `pipe run {} {stage_name}`",
            file.display()
        ))
    };
    let entry = lock.stages.get(stage_name).ok_or_else(not_run)?;
    let record = store.record(&entry.key).ok_or_else(not_run)?;
    let shown = Shown {
        stage: stage_name.clone(),
        key: entry.key.to_string(),
        outputs: output_paths(&store, &pipeline, id, &record.outputs)
            .into_iter()
            .map(|(name, path)| (name, std::path::absolute(&path).unwrap_or(path)))
            .collect(),
        metrics: record.metrics,
    };
    if args.json {
        crate::output::answer_json(&shown)?;
        return Ok(Verdict::Success);
    }
    let stage = &pipeline.stages[id];
    let mut lines = vec![
        format!("stage    {} ({})", shown.stage, stage.kind.kind()),
        format!("key      {}", shown.key),
    ];
    if let Some(headline) = &record.headline {
        lines.push(format!("result   {headline}"));
    }
    lines.push("outputs".into());
    let width = shown.outputs.keys().map(String::len).max().unwrap_or(0);
    for (name, path) in &shown.outputs {
        lines.push(format!("  {name:<width$}  {}", path.display()));
    }
    if !shown.metrics.is_empty() {
        lines.push("metrics".into());
        for line in serde_json::to_string_pretty(&shown.metrics)?.lines() {
            lines.push(format!("  {line}"));
        }
    }
    crate::output::answer(&lines.join("\n"))?;
    Ok(Verdict::Success)
}
