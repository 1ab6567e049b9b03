//! Reading each member's results out of the inputs `compare` gathers.

use std::path::Path;

use anyhow::{Context, Result, bail};
use arrow::array::{AsArray, ListArray, StringArray};
use arrow::datatypes::Float32Type;
use serde_json::Value;

use crate::evaluate::loss_curve;
use crate::scoring::{RocCurve, roc_curves};
use crate::table::read_table;
use pipe_engine::Input;
use pipe_models::bundle::TRAIN_LOG_FILE;

/// What one member did: its evaluation and its training.
pub struct MemberResult {
    /// The member's name: its matrix slug (`lr-0.0003`), or the stage's name.
    pub name: String,
    /// The inputs it was read from (`evaluate@lr-0.0003`, ...).
    pub inputs: Vec<String>,
    /// Split name → the split's entry of `metrics.json`, in evaluation order.
    pub splits: Vec<(String, Value)>,
    /// Split name → the micro-averaged one-vs-rest ROC curve, labelled with the member.
    pub roc: Vec<(String, RocCurve)>,
    /// (step, training loss).
    pub loss: Vec<(u64, f64)>,
    /// Seconds spent in training steps, from the training log.
    pub train_seconds: Option<f64>,
    /// Tokens per second over all training steps.
    pub tokens_per_s: Option<f64>,
}

impl MemberResult {
    /// The value of a table column (see [`super::Comparison::columns`]).
    pub fn value(&self, column: &str) -> Option<f64> {
        match column {
            "train_seconds" => return self.train_seconds,
            "tokens_per_s" => return self.tokens_per_s,
            _ => {}
        }
        let (split, metric) = column.split_once('.')?;
        let entry = &self.splits.iter().find(|(s, _)| s == split)?.1;
        let value = entry.get(metric).or_else(|| match metric {
            // Multi-label evaluations call their exact-match accuracy `subset_accuracy`.
            "accuracy" => entry.get("subset_accuracy"),
            _ => None,
        })?;
        value.as_f64()
    }
}

/// The member an input belongs to: what follows `@` in its name, or the name.
fn member_of(input: &Input) -> &str {
    input
        .name
        .split_once('@')
        .map_or(input.name.as_str(), |(_, slug)| slug)
}

/// Groups the inputs by member, in the order members first appear, and reads them.
pub fn gather(inputs: &[Input]) -> Result<Vec<MemberResult>> {
    let mut groups: Vec<(&str, Vec<&Input>)> = Vec::new();
    for input in inputs {
        let member = member_of(input);
        match groups.iter_mut().find(|(m, _)| *m == member) {
            Some((_, group)) => group.push(input),
            None => groups.push((member, vec![input])),
        }
    }
    let members: Vec<MemberResult> = groups
        .into_iter()
        .map(|(name, group)| read_member(name, &group))
        .collect::<Result<_>>()?;
    if members
        .iter()
        .all(|m| m.splits.is_empty() && m.train_seconds.is_none())
    {
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        bail!(
            "none of the inputs ({}) has a metrics.json or a {TRAIN_LOG_FILE}: take `from:` an evaluate stage (and an export-onnx or finetune stage for training numbers)",
            names.join(", ")
        );
    }
    Ok(members)
}

fn read_member(name: &str, group: &[&Input]) -> Result<MemberResult> {
    let mut member = MemberResult {
        name: name.to_string(),
        inputs: group.iter().map(|i| i.name.clone()).collect(),
        splits: Vec::new(),
        roc: Vec::new(),
        loss: Vec::new(),
        train_seconds: None,
        tokens_per_s: None,
    };
    for input in group {
        if let Some(path) = input.outputs.get("metrics") {
            let labels = read_metrics(path, &mut member.splits)?;
            if let Some(predictions) = input.outputs.get("predictions") {
                member.roc = micro_roc(predictions, &labels, name)?;
            }
        }
        if let Some(path) = input.outputs.get("train_log") {
            member.loss = loss_curve(path)?.train;
            (member.train_seconds, member.tokens_per_s) = throughput(path)?;
        }
    }
    Ok(member)
}

/// Reads evaluate's `metrics.json` into `splits`; returns its labels.
fn read_metrics(path: &Path, splits: &mut Vec<(String, Value)>) -> Result<Vec<String>> {
    let text =
        fs_err::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let json: serde_json::Map<String, Value> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not evaluate's metrics.json", path.display()))?;
    let labels: Vec<String> = json
        .get("labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .with_context(|| format!("{} has no `labels` list", path.display()))?;
    for (split, metrics) in json {
        if split != "labels" && metrics.is_object() {
            splits.push((split, metrics));
        }
    }
    Ok(labels)
}

/// Total training seconds and tokens per second over the step lines of a training log.
fn throughput(path: &Path) -> Result<(Option<f64>, Option<f64>)> {
    let text =
        fs_err::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (mut seconds, mut tokens, mut steps) = (0.0, 0.0, 0usize);
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let value: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))?;
        if let (Some(s), Some(t)) = (
            value.get("seconds").and_then(Value::as_f64),
            value.get("tokens").and_then(Value::as_f64),
        ) {
            seconds += s;
            tokens += t;
            steps += 1;
        }
    }
    if steps == 0 {
        return Ok((None, None));
    }
    Ok((Some(seconds), (seconds > 0.0).then(|| tokens / seconds)))
}

/// Per split, the member's micro-averaged one-vs-rest ROC curve: every (row, class) pair
/// of `predictions.parquet` is one binary decision, so one curve sums a member up.
fn micro_roc(path: &Path, labels: &[String], member: &str) -> Result<Vec<(String, RocCurve)>> {
    let batch = read_table(path)?;
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .with_context(|| format!("{} has no `{name}` column", path.display()))
    };
    let split: &StringArray = column("split")?
        .as_string_opt::<i32>()
        .with_context(|| format!("{}: `split` is not text", path.display()))?;
    let probabilities: &ListArray = column("probabilities")?
        .as_list_opt::<i32>()
        .with_context(|| format!("{}: `probabilities` is not a list", path.display()))?;
    let truth: Vec<Vec<String>> = match batch.column_by_name("label") {
        Some(single) => single
            .as_string_opt::<i32>()
            .with_context(|| format!("{}: `label` is not text", path.display()))?
            .iter()
            .map(|l| l.map(str::to_string).into_iter().collect())
            .collect(),
        None => column("labels")?
            .as_list_opt::<i32>()
            .with_context(|| format!("{}: `labels` is not a list", path.display()))?
            .iter()
            .map(|row| {
                row.map(|r| {
                    r.as_string::<i32>()
                        .iter()
                        .flatten()
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
            })
            .collect(),
    };
    let k = labels.len();
    let mut per_split: Vec<(String, Vec<f32>, Vec<f32>)> = Vec::new();
    for (row, row_truth) in truth.iter().enumerate().take(batch.num_rows()) {
        let name = split.value(row);
        let index = match per_split.iter().position(|(s, ..)| s == name) {
            Some(i) => i,
            None => {
                per_split.push((name.to_string(), Vec::new(), Vec::new()));
                per_split.len() - 1
            }
        };
        let probs = probabilities.value(row);
        let probs = probs.as_primitive::<Float32Type>();
        if probs.len() != k {
            bail!(
                "{}: row {} has {} probabilities for {k} labels",
                path.display(),
                row + 1,
                probs.len()
            );
        }
        let (_, hot, scores) = &mut per_split[index];
        hot.extend(labels.iter().map(|l| f32::from(row_truth.contains(l))));
        scores.extend(probs.values().iter().copied());
    }
    let name = [member.to_string()];
    Ok(per_split
        .into_iter()
        .filter_map(|(split, hot, scores)| {
            roc_curves(&name, &hot, &scores)
                .into_iter()
                .next()
                .map(|curve| (split, curve))
        })
        .collect())
}
