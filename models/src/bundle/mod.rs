//! An exported model bundle: the output folder of an `export-onnx` stage, which runs wherever
//! ONNX Runtime runs.
//!
//! | file              | what                                                              |
//! | ----------------- | ----------------------------------------------------------------- |
//! | `model.onnx`      | the forward graph with its weights as initializers                 |
//! | `model.onnx.data` | the weights as ONNX external data, when they pass 100 MB           |
//! | `tokenizer.json`  | the Hugging Face tokenizer the model was trained with (truncation included) |
//! | `labels.json`     | label names in class-index order                                   |
//! | `bundle.json`     | model shape, labels, problem type, opset, provenance ([`BundleInfo`]) |
//! | `train_log.jsonl` | the training log, when the model came with one                     |
//!
//! `model.onnx` takes `input_ids` and `attention_mask` (int64 `[batch, seq]`, both dims free;
//! encoders also `token_type_ids`, the tokenizer's segment ids) and gives `logits` and `probabilities` (float `[batch, num_labels]`; softmax over labels for
//! single-label models, a sigmoid per label for multi-label ones). Padding must be on the
//! right: the model reads each row's length as the sum of its `attention_mask` and pools the
//! token at `length - 1`, so every row needs at least one real token.
//!
//! [`Bundle`] opens such a folder and predicts labels for texts.

mod answer;
mod info;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use pipe_onnx::{HostTensor, Session, SessionOptions};
use tokenizers::{Tokenizer, TruncationParams};

pub use answer::{Answer, THRESHOLD};
pub use info::{BundleInfo, ModelShape, Provenance};

use crate::classifier::ProblemType;

/// The ONNX model of a bundle.
pub const MODEL_FILE: &str = "model.onnx";
/// Its external data, when it has any (the output named `model.onnx`).
pub const DATA_FILE: &str = "model.onnx.data";
/// The tokenizer of a bundle.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The label list of a bundle.
pub const LABELS_FILE: &str = "labels.json";
/// The description of a bundle ([`BundleInfo`]).
pub const INFO_FILE: &str = "bundle.json";
/// The training log a bundle carries along, when there is one.
pub const TRAIN_LOG_FILE: &str = "train_log.jsonl";
/// The graph inputs every bundle has, in order.
pub const INPUTS: [&str; 2] = ["input_ids", "attention_mask"];
/// The third input of models with token types (BERT, RoBERTa).
pub const TOKEN_TYPE_IDS: &str = "token_type_ids";
/// The graph outputs, in order.
pub const OUTPUTS: [&str; 2] = ["logits", "probabilities"];
/// Padded tokens per model run unless [`Bundle::with_batch_tokens`] says otherwise: 32 rows
/// of 128 tokens. A run's activations grow with its tokens (and its attention with the
/// square of its longest row), so a budget in tokens, not rows, bounds its memory.
pub const BATCH_TOKENS: usize = 4096;

/// An opened bundle: its description, tokenizer and an ONNX Runtime session.
pub struct Bundle {
    dir: PathBuf,
    info: BundleInfo,
    tokenizer: Tokenizer,
    session: Session,
    batch_tokens: usize,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("dir", &self.dir)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// What [`Bundle::predict`] returns: per text, one score per label, in the texts' order.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// Labels per row.
    pub num_labels: usize,
    /// Row-major rows × labels.
    pub logits: Vec<f32>,
    /// Row-major rows × labels: softmax over labels, or a sigmoid per label for multi-label.
    pub probabilities: Vec<f32>,
}

impl Predictions {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.probabilities.len() / self.num_labels.max(1)
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.probabilities.is_empty()
    }

    /// The probabilities of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.probabilities[i * self.num_labels..(i + 1) * self.num_labels]
    }

    /// Rows `range` on their own.
    pub fn rows(&self, range: std::ops::Range<usize>) -> Predictions {
        let cut = range.start * self.num_labels..range.end * self.num_labels;
        Predictions {
            num_labels: self.num_labels,
            logits: self.logits[cut.clone()].to_vec(),
            probabilities: self.probabilities[cut].to_vec(),
        }
    }

    /// The most probable label of row `i` (the first of ties).
    pub fn top(&self, i: usize) -> usize {
        let mut best = 0;
        for (j, p) in self.row(i).iter().enumerate() {
            if *p > self.row(i)[best] {
                best = j;
            }
        }
        best
    }
}

impl Bundle {
    /// Opens the bundle folder `dir`, loading `model.onnx` with `options` (its external data,
    /// when it has some, mapped by ONNX Runtime: the weights are held once). Errors name the
    /// file that is missing or invalid.
    pub fn open(dir: &Path, options: &SessionOptions) -> Result<Bundle> {
        if !dir.is_dir() {
            bail!(
                "{} is not a folder; a bundle is the output folder of an export-onnx stage",
                dir.display()
            );
        }
        let info = BundleInfo::read(&dir.join(INFO_FILE))?;
        let tokenizer = open_tokenizer(&dir.join(TOKENIZER_FILE), &info)?;
        let model = dir.join(MODEL_FILE);
        if !model.is_file() {
            bail!("{} is missing from the bundle", model.display());
        }
        let session = Session::from_file(&model, options)
            .with_context(|| format!("cannot load {}", model.display()))?;
        let inputs = session.input_names();
        let with_types = [INPUTS[0], INPUTS[1], TOKEN_TYPE_IDS];
        if inputs != INPUTS && inputs != with_types {
            bail!(
                "{} takes inputs {inputs:?}, not {INPUTS:?} (or {with_types:?}); it was not \
                 written by export-onnx",
                model.display()
            );
        }
        Ok(Bundle {
            dir: dir.to_path_buf(),
            info,
            tokenizer,
            session,
            batch_tokens: BATCH_TOKENS,
        })
    }

    /// The same bundle running at most `tokens` padded tokens per model run (rows × the
    /// longest row's tokens) rather than [`BATCH_TOKENS`]; a row longer than that runs alone.
    pub fn with_batch_tokens(mut self, tokens: usize) -> Bundle {
        self.batch_tokens = tokens.max(1);
        self
    }

    /// The bundle folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bundle's description.
    pub fn info(&self) -> &BundleInfo {
        &self.info
    }

    /// Label names in class-index order.
    pub fn labels(&self) -> &[String] {
        &self.info.labels
    }

    /// Single- or multi-label.
    pub fn problem_type(&self) -> ProblemType {
        self.info.problem_type
    }

    /// Scores `texts`, `batch_size` at a time; see [`Bundle::predict_with_progress`].
    pub fn predict(&mut self, texts: &[&str], batch_size: usize) -> Result<Predictions> {
        self.predict_with_progress(texts, batch_size, |_| {})
    }

    /// Scores `texts`: tokenizes them with the bundle's tokenizer (and its truncation), sorts
    /// them by length so each batch pads little, cuts batches of at most `batch_size` rows and
    /// the bundle's token budget ([`Bundle::with_batch_tokens`]), pads each on the right to its
    /// longest row, runs the model, and returns the rows in the order of `texts`. `done` is
    /// told how many rows each batch finished.
    pub fn predict_with_progress(
        &mut self,
        texts: &[&str],
        batch_size: usize,
        mut done: impl FnMut(usize),
    ) -> Result<Predictions> {
        if batch_size == 0 {
            bail!("the batch size must be at least 1");
        }
        let n = self.info.num_labels;
        let encodings = self
            .tokenizer
            .encode_batch_fast(texts.to_vec(), true)
            .map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?;
        let ids: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
        let types: Vec<&[u32]> = encodings.iter().map(|e| e.get_type_ids()).collect();
        let takes_types = self.session.input_names().len() == 3;
        if let Some(i) = ids.iter().position(|ids| ids.is_empty()) {
            bail!(
                "text {} is empty after tokenizing; the model needs at least one token",
                i + 1
            );
        }
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut predictions = Predictions {
            num_labels: n,
            logits: vec![0.0; texts.len() * n],
            probabilities: vec![0.0; texts.len() * n],
        };
        let lengths: Vec<usize> = order.iter().map(|&i| ids[i].len()).collect();
        for cut in batches(&lengths, batch_size, self.batch_tokens) {
            let rows = &order[cut];
            let batch: Vec<&[u32]> = rows.iter().map(|&i| ids[i]).collect();
            let (input_ids, mask) = pad(&batch)?;
            let mut feeds = vec![(INPUTS[0], &input_ids), (INPUTS[1], &mask)];
            let token_types;
            if takes_types {
                let batch: Vec<&[u32]> = rows.iter().map(|&i| types[i]).collect();
                token_types = pad(&batch)?.0;
                feeds.push((TOKEN_TYPE_IDS, &token_types));
            }
            let outputs = self
                .session
                .run(&feeds)
                .with_context(|| format!("cannot run {}", self.dir.join(MODEL_FILE).display()))?;
            for (name, target) in [
                (OUTPUTS[0], &mut predictions.logits),
                (OUTPUTS[1], &mut predictions.probabilities),
            ] {
                let values = batch_output(&outputs, name, rows.len(), n)?;
                for (k, &row) in rows.iter().enumerate() {
                    target[row * n..(row + 1) * n].copy_from_slice(&values[k * n..(k + 1) * n]);
                }
            }
            done(rows.len());
        }
        Ok(predictions)
    }
}

/// Consecutive batches over rows of `lengths` (sorted, shortest first): each of at most
/// `rows` rows and at most `tokens` padded tokens (its row count × its last, longest row), but
/// never empty, so a row longer than `tokens` runs alone. Where the budget never binds, these
/// are `rows`-sized chunks.
fn batches(lengths: &[usize], rows: usize, tokens: usize) -> Vec<std::ops::Range<usize>> {
    let mut cuts = Vec::new();
    let mut start = 0;
    while start < lengths.len() {
        let mut end = start + 1;
        while end < lengths.len()
            && end - start < rows
            && (end - start + 1) * lengths[end] <= tokens
        {
            end += 1;
        }
        cuts.push(start..end);
        start = end;
    }
    cuts
}

/// BLAKE3 (hex) over the files of the bundle folder `dir` that decide its answers:
/// `model.onnx`, `model.onnx.data` when present, `tokenizer.json` and `labels.json`, each
/// preceded by its name and length. Each file is hashed as it is read, never held whole.
pub fn content_key(dir: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    for name in [MODEL_FILE, DATA_FILE, TOKENIZER_FILE, LABELS_FILE] {
        let path = dir.join(name);
        if name == DATA_FILE && !path.exists() {
            continue;
        }
        let cannot_read = || format!("cannot read {}", path.display());
        let mut file = fs_err::File::open(&path).with_context(cannot_read)?;
        let length = file.metadata().with_context(cannot_read)?.len();
        hasher.update(name.as_bytes());
        hasher.update(&length.to_le_bytes());
        let read = std::io::copy(&mut file, &mut hasher).with_context(cannot_read)?;
        if read != length {
            bail!("{} changed while it was read", path.display());
        }
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Loads the tokenizer, capping its truncation at the model's positions so that no text can
/// index past the position table.
fn open_tokenizer(path: &Path, info: &BundleInfo) -> Result<Tokenizer> {
    if !path.is_file() {
        bail!("{} is missing from the bundle", path.display());
    }
    let mut tokenizer = Tokenizer::from_file(path)
        .map_err(|e| anyhow::anyhow!("{} is not a valid tokenizer: {e}", path.display()))?;
    let max = info.model.max_position_embeddings;
    let fits = tokenizer
        .get_truncation()
        .is_some_and(|t| t.max_length <= max);
    if !fits {
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max,
                ..Default::default()
            }))
            .map_err(|e| anyhow::anyhow!("cannot set truncation: {e}"))?;
    }
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

/// `input_ids` and `attention_mask` for `rows`, padded on the right to the longest.
fn pad(rows: &[&[u32]]) -> Result<(HostTensor, HostTensor)> {
    let b = rows.len();
    let seq = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut ids = vec![0i64; b * seq];
    let mut mask = vec![0i64; b * seq];
    for (r, row) in rows.iter().enumerate() {
        for (c, &id) in row.iter().enumerate() {
            ids[r * seq + c] = i64::from(id);
            mask[r * seq + c] = 1;
        }
    }
    let shape = [b as i64, seq as i64];
    Ok((
        HostTensor::i64(&shape, ids)?,
        HostTensor::i64(&shape, mask)?,
    ))
}

/// Output `name` of one batch, checked to be `rows` × `labels` floats.
fn batch_output<'a>(
    outputs: &'a std::collections::BTreeMap<String, HostTensor>,
    name: &str,
    rows: usize,
    labels: usize,
) -> Result<&'a [f32]> {
    let tensor = outputs
        .get(name)
        .with_context(|| format!("the model has no output `{name}`"))?;
    let values = tensor
        .as_f32()
        .with_context(|| format!("output `{name}` is not float"))?;
    if tensor.shape() != [rows as i64, labels as i64] {
        bail!(
            "output `{name}` has shape {:?}, expected [{rows}, {labels}] (bundle.json lists {labels} labels)",
            tensor.shape()
        );
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::batches;

    #[test]
    fn batches_are_row_chunks_while_the_token_budget_does_not_bind() {
        let lengths = [1, 2, 3, 4, 5];
        assert_eq!(batches(&lengths, 2, 100), [0..2, 2..4, 4..5]);
        assert_eq!(batches(&lengths, 5, 25), vec![0..5]);
        assert!(batches(&[], 4, 10).is_empty());
    }

    #[test]
    fn a_batch_stops_at_the_token_budget_and_a_longer_row_runs_alone() {
        // 3 rows of up to 3 tokens (9), then 2 × 10 = 20 would pass 19; 50 alone.
        let lengths = [2, 2, 3, 10, 10, 50];
        assert_eq!(batches(&lengths, 4, 19), [0..3, 3..4, 4..5, 5..6]);
        assert_eq!(batches(&lengths, 4, 20), [0..3, 3..5, 5..6]);
    }
}
