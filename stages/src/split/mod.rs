//! `split`: cuts a `dataset` table into train, test and (optionally)
//! validation tables.
//!
//! ```yaml
//! split:
//!   from: ingest
//!   test: 0.2          # fraction of rows for test (above 0)
//!   validation: 0.1    # fraction for validation; 0 (the default) makes none
//!   shuffle: false     # deal rows in a seeded random order instead of file order
//!   seed: 0            # only used with shuffle
//!   stratify: true     # keep each label's share in every split (default: true for single-label data)
//! ```
//!
//! Without `shuffle`, each split keeps the rows in file order and a label's
//! first rows go to train, the next to validation, its last rows to test
//! (see [`plan`]). With `shuffle`, rows are dealt in the order of a
//! Fisher–Yates shuffle driven by [`rng::SplitMix64`] seeded with `seed`, and
//! each split keeps that order. Either way the outputs are byte-identical for
//! the same input and parameters, on every run and machine.
//!
//! With `stratify`, each label's rows are dealt separately; multi-label rows
//! are grouped by their exact set of labels. The whole `dataset` table is
//! read into memory (the hard part of the pipeline's memory comes later).
//!
//! Outputs: `train.parquet`, `test.parquet` and, with `validation` above 0,
//! `validation.parquet`, all with the `dataset` schema; `labels.json`, the
//! sorted labels of the whole dataset (so downstream stages number labels the
//! same way whatever the split); and `split.json`:
//!
//! ```json
//! { "rows": { "train": 80, "test": 20 },
//!   "labels": { "train": { "math": 40, "physics": 40 }, "test": { "math": 10, "physics": 10 } },
//!   "stratified": true, "shuffled": false }
//! ```

mod plan;
mod rng;

use std::collections::{BTreeMap, BTreeSet};

use crate::wiring::Needs;
use anyhow::{Context, bail};
use arrow::array::UInt32Array;
use arrow::compute::take_record_batch;
use pipe_engine::{Checked, Outcome, ParamError, PlannedInput, RunContext, Stage, parse_params};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::table::{DatasetTable, write_json, write_table};
use plan::{SPLITS, deal};
use rng::SplitMix64;

/// The `split` stage kind.
pub struct Split;

/// Parameters of `split`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Params {
    /// Fraction of rows for the test split (above 0, below 1).
    #[serde(default = "default_test")]
    pub test: f64,
    /// Fraction of rows for the validation split; 0 makes none.
    #[serde(default)]
    pub validation: f64,
    /// Whether to deal rows in a seeded random order instead of file order.
    #[serde(default)]
    pub shuffle: bool,
    /// The seed of the shuffle.
    #[serde(default)]
    pub seed: u64,
    /// Whether every split keeps each label's share; by default true for
    /// single-label data and false for multi-label data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stratify: Option<bool>,
}

fn default_test() -> f64 {
    0.2
}

impl Params {
    fn parse(value: &serde_json::Value) -> Result<Params, ParamError> {
        let params: Params = parse_params(value)?;
        if !(params.test > 0.0 && params.test < 1.0) {
            return Err(ParamError::new(
                &["test"],
                "`test` must be a fraction above 0 and below 1",
            )
            .with_help("e.g. `test: 0.2` keeps a fifth of the rows for testing"));
        }
        if !(params.validation >= 0.0 && params.validation < 1.0) {
            return Err(ParamError::new(
                &["validation"],
                "`validation` must be a fraction from 0 to below 1",
            ));
        }
        if params.test + params.validation >= 1.0 {
            return Err(ParamError::new(
                &["validation"],
                "`test` and `validation` leave no rows for training",
            )
            .with_help("their sum must be below 1, e.g. `test: 0.2` and `validation: 0.1`"));
        }
        Ok(params)
    }
}

/// What split reads from its input.
const READS: Needs<'static> = Needs {
    kind: "split",
    outputs: &["dataset"],
    from_kind: "ingest",
};

impl Stage for Split {
    fn kind(&self) -> &'static str {
        "split"
    }

    fn version(&self) -> u32 {
        1
    }

    fn summary(&self) -> &'static str {
        "Cut a dataset into train, test and validation tables, deterministically, stratified by label"
    }

    fn params_schema(&self) -> serde_json::Value {
        pipe_engine::schema_of::<Params>()
    }

    fn output_names(&self, key_params: &serde_json::Value) -> Option<Vec<String>> {
        let validation = key_params["validation"].as_f64().unwrap_or(0.0) > 0.0;
        let mut names: Vec<String> = SPLITS
            .iter()
            .filter(|s| validation || **s != "validation")
            .map(|s| s.to_string())
            .collect();
        names.extend(["labels".to_string(), "split".to_string()]);
        Some(names)
    }

    /// Reads the `dataset` table of an ingest stage.
    fn check_inputs(
        &self,
        _: &serde_json::Value,
        inputs: &[PlannedInput<'_>],
    ) -> Result<(), ParamError> {
        READS.check_only(inputs)
    }

    fn check(&self, params: &serde_json::Value) -> Result<Checked, ParamError> {
        let params = Params::parse(params)?;
        let mut key_params = pipe_engine::key_params_of(&params)?;
        if !params.shuffle
            && let Some(map) = key_params.as_object_mut()
        {
            // Without a shuffle the seed changes nothing, so it stays out of the key.
            map.remove("seed");
        }
        Ok(Checked {
            key_params,
            workspace_deps: Vec::new(),
        })
    }

    fn run(&self, ctx: &RunContext<'_>) -> anyhow::Result<Outcome> {
        let params = Params::parse(ctx.params)?;
        let input = ctx.only_input()?;
        let name = format!("the `dataset` of stage `{}`", input.stage);
        let table = DatasetTable::read(input.output("dataset")?, &name)?;
        let n = table.len();
        let stratify = params.stratify.unwrap_or(!table.multi_label());

        let mut order: Vec<usize> = (0..n).collect();
        if params.shuffle {
            SplitMix64::new(params.seed).shuffle(&mut order);
        }
        let groups: Vec<Vec<usize>> = if stratify {
            let mut groups: BTreeMap<Vec<&str>, Vec<usize>> = BTreeMap::new();
            for &i in &order {
                groups.entry(table.labels(i)).or_default().push(i);
            }
            groups.into_values().collect()
        } else {
            vec![order.clone()]
        };
        let fractions = [
            1.0 - params.test - params.validation,
            params.validation,
            params.test,
        ];
        let mut splits = deal(&groups, fractions);

        // Each split keeps the dealing order.
        let mut position = vec![0usize; n];
        for (p, &i) in order.iter().enumerate() {
            position[i] = p;
        }
        for split in &mut splits {
            split.sort_unstable_by_key(|&i| position[i]);
        }
        check_splits(&table, &splits, &params, stratify)?;

        let mut rows = serde_json::Map::new();
        let mut labels = serde_json::Map::new();
        for (s, split) in splits.iter().enumerate() {
            if s == 1 && params.validation == 0.0 {
                continue;
            }
            let indices = UInt32Array::from_iter_values(
                split
                    .iter()
                    .map(|&i| u32::try_from(i))
                    .collect::<Result<Vec<_>, _>>()?,
            );
            let subset = take_record_batch(&table.batch, &indices)?;
            let path = ctx.out_dir.join(format!("{}.parquet", SPLITS[s]));
            write_table(&path, &subset)
                .with_context(|| format!("cannot write the {} split", SPLITS[s]))?;
            let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
            for &i in split {
                for label in table.labels(i) {
                    *counts.entry(label).or_default() += 1;
                }
            }
            rows.insert(SPLITS[s].to_string(), json!(split.len()));
            labels.insert(SPLITS[s].to_string(), json!(counts));
        }
        let all_labels: Vec<&str> = table.label_set().into_iter().collect();
        write_json(&ctx.out_dir.join("labels.json"), &all_labels)?;
        write_json(
            &ctx.out_dir.join("split.json"),
            &json!({ "rows": rows.clone(), "labels": labels, "stratified": stratify, "shuffled": params.shuffle }),
        )?;
        let headline = rows
            .iter()
            .map(|(split, n)| format!("{split} {n}"))
            .collect::<Vec<_>>()
            .join(" · ");
        let mut metrics = rows;
        metrics.insert("stratified".into(), json!(stratify));
        Ok(Outcome {
            metrics,
            headline: Some(headline),
        })
    }
}

/// Fails when a split asked for is empty, or a label has no training row.
fn check_splits(
    table: &DatasetTable,
    splits: &[Vec<usize>; 3],
    params: &Params,
    stratify: bool,
) -> anyhow::Result<()> {
    let n = table.len();
    for (s, fraction) in [
        (0, 1.0 - params.test - params.validation),
        (1, params.validation),
        (2, params.test),
    ] {
        if fraction > 0.0 && splits[s].is_empty() {
            bail!(
                "the {} split would be empty: {n} rows × {fraction} is less than one row; \
                 raise `{}` or add rows",
                SPLITS[s],
                if s == 0 {
                    "the training share (lower `test`/`validation`)"
                } else {
                    SPLITS[s]
                }
            );
        }
    }
    let in_train: BTreeSet<&str> = splits[0].iter().flat_map(|&i| table.labels(i)).collect();
    let missing: Vec<&str> = table
        .label_set()
        .into_iter()
        .filter(|l| !in_train.contains(l))
        .collect();
    if !missing.is_empty() {
        let help = if stratify {
            "add rows with these labels"
        } else {
            "set `stratify: true`, or add rows with these labels"
        };
        bail!(
            "label `{}` would have no training rows; {help}",
            missing.join("`, `")
        );
    }
    Ok(())
}
