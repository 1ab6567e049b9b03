//! `tokenize`: turns the text of each split into token ids.
//!
//! ```yaml
//! tokenize:
//!   from: split
//!   tokenizer: { train: { vocab_size: 8192, min_frequency: 2 } }
//!   # or { path: models/gpt-neo-125m }   a tokenizer.json, a vocab.json (+ merges.txt), or a folder
//!   # or { hub: EleutherAI/gpt-neo-125m } the local Hugging Face cache, offline
//!   # or { embedded: all-MiniLM-L6-v2 }    an embedded model's own (scripts/fetch-model.sh)
//!   max_length: 128                       # longer texts are cut to this many tokens
//! ```
//!
//! Input: the tables `train`, `validation`, `test` of a `split`-like stage
//! (or the one `dataset` of an `ingest`), with the `dataset` schema (see
//! [`crate::table`]). Labels are numbered by the upstream `labels.json` when
//! there is one, else by the sorted labels of all tables. A trained tokenizer
//! learns from `train` only (or `dataset` when there is no split), so no test
//! text leaks into it.
//!
//! Outputs, per table, `<table>.parquet`:
//!
//! | column            | type                       | when              |
//! | ----------------- | -------------------------- | ----------------- |
//! | `input_ids`       | list<int32 not null>       | always            |
//! | `length`          | int32                      | always            |
//! | `label_id`        | int32                      | single-label data |
//! | `label_multi_hot` | list<float32 not null>     | multi-label data: one 0/1 per label of `labels.json` |
//!
//! No padding is stored: each row has its own `length` (GPT-Neo has no pad
//! token, so nothing downstream may rely on a pad id). Also `tokenizer.json`
//! (with its truncation at `max_length` and no padding, so inference cuts
//! texts the same way) and `labels.json`.
//!
//! Rows are encoded in parallel (the tokenizer's batch API over rayon) in
//! chunks of [`CHUNK_ROWS`]; the output is the same whatever the thread count.

mod source;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use arrow::array::{ArrayRef, Float32Builder, Int32Builder, ListBuilder, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use pipe_engine::{
    Checked, Input, Outcome, ParamError, PlannedInput, RunContext, Stage, parse_params,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokenizers::{Encoding, PostProcessor as _, Tokenizer, TruncationParams};

use crate::table::{DatasetTable, TableWriter, write_json};
use pipe_models::embedded;
pub use source::{TokenizerSource, TrainOptions};

/// Rows encoded per batch: bounds the memory held by encodings.
pub const CHUNK_ROWS: usize = 16 * 1024;

/// Upstream tables tokenize reads, in the order it reads them.
const TABLES: [&str; 4] = ["train", "validation", "test", "dataset"];

/// The `tokenize` stage kind.
#[derive(Debug, Default)]
pub struct Tokenize {
    hub_cache: Option<PathBuf>,
}

impl Tokenize {
    /// A `tokenize` that reads `hub:` tokenizers from the Hugging Face cache
    /// folder `cache` instead of the default (`HF_HUB_CACHE`, `HF_HOME/hub`,
    /// `~/.cache/huggingface/hub`). Tests use it with a fake cache.
    pub fn with_hub_cache(cache: PathBuf) -> Self {
        Tokenize {
            hub_cache: Some(cache),
        }
    }

    fn hub_cache(&self) -> PathBuf {
        self.hub_cache
            .clone()
            .unwrap_or_else(pipe_models::hub::default_hub_cache)
    }
}

/// Parameters of `tokenize`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Params {
    /// Where the tokenizer comes from.
    pub tokenizer: TokenizerSource,
    /// Texts are cut to this many tokens.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
}

fn default_max_length() -> usize {
    128
}

impl Params {
    fn parse(value: &serde_json::Value) -> Result<Params, ParamError> {
        let params: Params = parse_params(value)?;
        if params.max_length == 0 || params.max_length > i32::MAX as usize {
            return Err(ParamError::new(
                &["max_length"],
                "`max_length` must be a positive number of tokens",
            ));
        }
        if let TokenizerSource::Embedded(name) = &params.tokenizer {
            embedded::lookup(name)
                .map_err(|message| ParamError::new(&["tokenizer", "embedded"], message))?;
        }
        if let TokenizerSource::Hub(repo) = &params.tokenizer {
            pipe_models::hub::check_repo_id(repo)
                .map_err(|message| ParamError::new(&["tokenizer", "hub"], message))?;
        }
        if let TokenizerSource::Train(train) = &params.tokenizer
            && train.vocab_size <= 257
        {
            return Err(ParamError::new(
                &["tokenizer", "train", "vocab_size"],
                "`vocab_size` must exceed 257",
            )
            .with_help(
                "a byte-level BPE starts from 256 byte tokens and `<|endoftext|>`; try 8192",
            ));
        }
        Ok(params)
    }
}

impl Stage for Tokenize {
    fn kind(&self) -> &'static str {
        "tokenize"
    }

    fn version(&self) -> u32 {
        // 2: BPE training cuts pre-tokens at 256 bytes (`source::MAX_TRAINING_PRE_TOKEN`);
        // the same tokenizer as 1 unless a text has a longer run without a split.
        2
    }

    fn summary(&self) -> &'static str {
        "Turn the text of each split into token ids with a given, cached or trained tokenizer"
    }

    fn params_schema(&self) -> serde_json::Value {
        pipe_engine::schema_of::<Params>()
    }

    /// A table per upstream table it reads, the tokenizer and the labels.
    fn planned_output_names(
        &self,
        _key_params: &serde_json::Value,
        inputs: &[PlannedInput<'_>],
    ) -> Option<Vec<String>> {
        let [input] = inputs else {
            return None;
        };
        let upstream = input.outputs.as_ref()?;
        let mut names: Vec<String> = tables_to_read(|n| upstream.iter().any(|u| u == n))
            .into_iter()
            .map(String::from)
            .collect();
        names.extend(["tokenizer".to_string(), "labels".to_string()]);
        Some(names)
    }

    fn check(&self, params: &serde_json::Value) -> Result<Checked, ParamError> {
        let params = Params::parse(params)?;
        let mut key_params = pipe_engine::key_params_of(&params)?;
        let workspace_deps = match &params.tokenizer {
            TokenizerSource::Path(path) => vec![path.clone()],
            TokenizerSource::Hub(repo) => {
                // The cache lies outside the workspace, so the engine cannot hash
                // it: the cached commit stands in for its content.
                if let (Some(map), Some(commit)) = (
                    key_params.as_object_mut(),
                    pipe_models::hub::key_commit(&self.hub_cache(), repo),
                ) {
                    map.insert("hub_commit".into(), json!(commit));
                }
                Vec::new()
            }
            TokenizerSource::Embedded(name) => {
                // Pinned by its hashes, which a run checks the files against.
                if let (Some(map), Ok(model)) = (key_params.as_object_mut(), embedded::lookup(name))
                {
                    map.insert("embedded_sha256".into(), json!(model.key()));
                }
                Vec::new()
            }
            TokenizerSource::Train(_) => Vec::new(),
        };
        Ok(Checked {
            key_params,
            workspace_deps,
        })
    }

    fn run(&self, ctx: &RunContext<'_>) -> anyhow::Result<Outcome> {
        let params = Params::parse(ctx.params)?;
        let input = ctx.only_input()?;
        let tables = read_tables(input)?;
        let labels = labels(input, &tables)?;

        let mut tokenizer = match &params.tokenizer {
            TokenizerSource::Path(path) => source::load_path(&ctx.workspace.join(path), path)?,
            TokenizerSource::Hub(repo) => {
                let hub = pipe_models::hub::Hub::from_env(self.hub_cache());
                pipe_models::hub::ensure(
                    &hub,
                    repo,
                    pipe_models::hub::Want::Tokenizer,
                    ctx.reporter,
                )?;
                source::load_hub(hub.cache(), repo)?
            }
            TokenizerSource::Embedded(name) => {
                let model = embedded::lookup(name).map_err(anyhow::Error::msg)?;
                let dir = model.verified()?;
                source::load_path(&dir.join(embedded::TOKENIZER_FILE), name)?
            }
            TokenizerSource::Train(options) => {
                let (name, table) = &tables[0];
                ctx.reporter.note(&format!(
                    "training a {}-token byte-level BPE on `{name}` ({} rows)",
                    options.vocab_size,
                    table.len()
                ));
                let bar = ctx
                    .reporter
                    .progress(table.len() as u64, "rows read for BPE");
                let texts = (0..table.len()).map(|i| table.text(i));
                let trained = source::train(options, texts, &|| bar.inc(1))?;
                bar.finish_and_clear();
                trained
            }
        };
        // Truncation keeps the special tokens (`[CLS] … [SEP]`, a BOS) and cuts the text, so
        // a cap at or below their count would leave no text and still exceed the cap.
        let special = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        if params.max_length <= special {
            return Err(ParamError::new(
                &["max_length"],
                format!(
                    "`max_length: {}` leaves no room for text: this tokenizer adds {special} \
                     special token{} to every row",
                    params.max_length,
                    if special == 1 { "" } else { "s" }
                ),
            )
            .with_help(format!("use `max_length: {}` or more", special + 1))
            .into());
        }
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: params.max_length,
                ..Default::default()
            }))
            .map_err(|e| anyhow::anyhow!("cannot set truncation: {e}"))?
            .with_padding(None);

        // The tokenizer stops at `max_length` without always recording what it
        // cut, so rows that come out at the cap are encoded again in full.
        let mut untruncated = tokenizer.clone();
        untruncated
            .with_truncation(None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let tokenizers = Tokenizers {
            truncating: &tokenizer,
            full: &untruncated,
            max_length: params.max_length,
        };

        let mut metrics = serde_json::Map::new();
        let mut truncated_total = 0;
        let mut rows_total = 0;
        for (name, table) in &tables {
            let stats = encode_table(ctx, &tokenizers, name, table, &labels)?;
            truncated_total += stats.truncated;
            rows_total += table.len();
            metrics.insert(
                name.to_string(),
                json!({ "rows": table.len(), "truncated": stats.truncated, "mean_length": stats.mean_length() }),
            );
        }
        tokenizer
            .save(ctx.out_dir.join("tokenizer.json"), true)
            .map_err(|e| anyhow::anyhow!("cannot write tokenizer.json: {e}"))?;
        write_json(&ctx.out_dir.join("labels.json"), &labels)?;

        ctx.reporter.note(&format!(
            "{truncated_total} of {rows_total} rows were longer than {} tokens and were truncated",
            params.max_length
        ));
        let vocab_size = tokenizer.get_vocab_size(true);
        metrics.insert("vocab_size".into(), json!(vocab_size));
        metrics.insert("truncated".into(), json!(truncated_total));
        Ok(Outcome {
            metrics,
            headline: Some(format!(
                "{rows_total} rows · vocab {vocab_size} · {truncated_total} truncated"
            )),
        })
    }
}

/// The upstream tables tokenize reads among those `has` says exist, in reading order:
/// train, validation, test; `dataset` only when none of those (a stage that does not split).
fn tables_to_read(has: impl Fn(&str) -> bool) -> Vec<&'static str> {
    let unsplit = "dataset";
    let mut names: Vec<&'static str> = (TABLES.iter().copied())
        .filter(|n| *n != unsplit && has(n))
        .collect();
    if names.is_empty() && has(unsplit) {
        names.push(unsplit);
    }
    names
}

/// Reads the upstream tables that exist, train first.
fn read_tables(input: &Input) -> anyhow::Result<Vec<(&'static str, DatasetTable)>> {
    let mut tables = Vec::new();
    for name in tables_to_read(|n| input.outputs.contains_key(n)) {
        let shown = format!("table `{name}` of stage `{}`", input.stage);
        tables.push((name, DatasetTable::read(&input.outputs[name], &shown)?));
    }
    if tables.is_empty() {
        bail!(
            "stage `{}` has none of the tables tokenize reads (train, validation, test, or dataset); \
             take `from:` a split or ingest stage",
            input.stage
        );
    }
    Ok(tables)
}

/// The label list: upstream `labels.json` when there is one, else the sorted
/// labels of all tables.
fn labels(input: &Input, tables: &[(&str, DatasetTable)]) -> anyhow::Result<Vec<String>> {
    if let Some(path) = input.outputs.get("labels") {
        let text = fs_err::read_to_string(path)
            .with_context(|| format!("cannot read labels.json of stage `{}`", input.stage))?;
        return serde_json::from_str(&text).with_context(|| {
            format!(
                "labels.json of stage `{}` is not a list of strings",
                input.stage
            )
        });
    }
    let mut all: Vec<String> = tables
        .iter()
        .flat_map(|(_, t)| t.label_set())
        .map(str::to_string)
        .collect();
    all.sort_unstable();
    all.dedup();
    Ok(all)
}

/// What encoding one table found.
struct TableStats {
    truncated: usize,
    tokens: usize,
    rows: usize,
}

impl TableStats {
    fn mean_length(&self) -> f64 {
        if self.rows == 0 {
            0.0
        } else {
            (self.tokens as f64 / self.rows as f64 * 10.0).round() / 10.0
        }
    }
}

/// The tokenizer that encodes, and the same without truncation, to count truncated rows.
struct Tokenizers<'a> {
    truncating: &'a Tokenizer,
    full: &'a Tokenizer,
    max_length: usize,
}

impl Tokenizers<'_> {
    /// Encodes `texts`; returns the encodings and how many were truncated.
    fn encode(&self, texts: &[&str], name: &str) -> anyhow::Result<(Vec<Encoding>, usize)> {
        let fail = |e| anyhow::anyhow!("cannot tokenize table `{name}`: {e}");
        let encodings = self
            .truncating
            .encode_batch_fast(texts.to_vec(), true)
            .map_err(fail)?;
        let at_cap: Vec<&str> = texts
            .iter()
            .zip(&encodings)
            .filter(|(_, e)| e.len() >= self.max_length)
            .map(|(text, _)| *text)
            .collect();
        let full = self.full.encode_batch_fast(at_cap, true).map_err(fail)?;
        let truncated = full.iter().filter(|e| e.len() > self.max_length).count();
        Ok((encodings, truncated))
    }
}

/// Encodes `table` and writes `<name>.parquet`.
fn encode_table(
    ctx: &RunContext<'_>,
    tokenizers: &Tokenizers<'_>,
    name: &str,
    table: &DatasetTable,
    labels: &[String],
) -> anyhow::Result<TableStats> {
    let multi_label = table.multi_label();
    let schema = tokens_schema(multi_label);
    let mut writer =
        TableWriter::create(&ctx.out_dir.join(format!("{name}.parquet")), schema.clone())?;
    let bar = ctx.reporter.progress(table.len() as u64, "rows");
    let mut stats = TableStats {
        truncated: 0,
        tokens: 0,
        rows: table.len(),
    };
    for start in (0..table.len()).step_by(CHUNK_ROWS) {
        let end = (start + CHUNK_ROWS).min(table.len());
        let texts: Vec<&str> = (start..end).map(|i| table.text(i)).collect();
        let (encodings, truncated) = tokenizers.encode(&texts, name)?;
        stats.truncated += truncated;
        let mut ids = ListBuilder::new(Int32Builder::new()).with_field(Field::new(
            "item",
            DataType::Int32,
            false,
        ));
        let mut lengths = Int32Builder::with_capacity(end - start);
        for encoding in &encodings {
            for &id in encoding.get_ids() {
                ids.values().append_value(i32::try_from(id)?);
            }
            ids.append(true);
            lengths.append_value(i32::try_from(encoding.len())?);
            stats.tokens += encoding.len();
        }
        let label_column = label_column(table, start..end, labels, name)?;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(ids.finish()),
                Arc::new(lengths.finish()),
                label_column,
            ],
        )?;
        writer.write(&batch)?;
        bar.set_position(end as u64);
    }
    writer.finish()?;
    bar.finish_and_clear();
    Ok(stats)
}

/// The schema of a tokenized table.
fn tokens_schema(multi_label: bool) -> SchemaRef {
    let ids = DataType::List(Arc::new(Field::new("item", DataType::Int32, false)));
    let label = if multi_label {
        Field::new(
            "label_multi_hot",
            DataType::List(Arc::new(Field::new("item", DataType::Float32, false))),
            false,
        )
    } else {
        Field::new("label_id", DataType::Int32, false)
    };
    Arc::new(Schema::new(vec![
        Field::new("input_ids", ids, false),
        Field::new("length", DataType::Int32, false),
        label,
    ]))
}

/// `label_id` or `label_multi_hot` for rows `rows` of `table`.
fn label_column(
    table: &DatasetTable,
    rows: std::ops::Range<usize>,
    labels: &[String],
    name: &str,
) -> anyhow::Result<ArrayRef> {
    let index: HashMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let id = |label: &str| -> anyhow::Result<usize> {
        index.get(label).copied().ok_or_else(|| {
            anyhow::anyhow!("table `{name}` has label `{label}`, which is not in labels.json")
        })
    };
    if table.multi_label() {
        let mut hot = ListBuilder::new(Float32Builder::new()).with_field(Field::new(
            "item",
            DataType::Float32,
            false,
        ));
        for i in rows {
            let mut row = vec![0.0f32; labels.len()];
            for label in table.labels(i) {
                row[id(label)?] = 1.0;
            }
            hot.values().append_slice(&row);
            hot.append(true);
        }
        Ok(Arc::new(hot.finish()))
    } else {
        let mut ids = Int32Builder::with_capacity(rows.len());
        for i in rows {
            let Some(label) = table.labels(i).first().copied() else {
                bail!("table `{name}` has a row without a label (row {})", i + 1);
            };
            ids.append_value(i32::try_from(id(label)?)?);
        }
        Ok(Arc::new(ids.finish()))
    }
}
