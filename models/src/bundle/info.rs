//! `bundle.json`: what an exported bundle holds and where it came from.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::Architecture;
use crate::classifier::ProblemType;
use crate::gpt_neo::Pooling;

/// The description of a bundle, written by `export-onnx` as `bundle.json`:
///
/// ```json
/// {
///   "format": 1,
///   "model": { "model_type": "gpt_neo", "hidden_size": 256, "num_layers": 4, "num_heads": 8,
///              "vocab_size": 8192, "max_position_embeddings": 128 },
///   "num_labels": 3,
///   "labels": ["biology", "math", "physics"],
///   "problem_type": "single_label_classification",
///   "opset": 20,
///   "inputs": ["input_ids", "attention_mask"],
///   "outputs": ["logits", "probabilities"],
///   "source": { "stage": "export-onnx", "key": "<blake3 of the model, tokenizer, labels>", "model_stage": "finetune" },
///   "pipe_version": "0.1.0"
/// }
/// ```
///
/// A model that pools the mean of its tokens also has `"pooling": "mean"` in `model`; an
/// encoder (`bert`, `roberta`) has `"pooling": "first"` and the input `token_type_ids`.
/// Fields are only ever added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct BundleInfo {
    /// Version of this layout (1).
    pub format: u32,
    /// The shape of the model.
    pub model: ModelShape,
    /// Number of labels (columns of `logits` and `probabilities`).
    pub num_labels: usize,
    /// Label names in class-index order (the same list as `labels.json`).
    pub labels: Vec<String>,
    /// Single-label (softmax probabilities) or multi-label (sigmoid).
    pub problem_type: ProblemType,
    /// The ONNX opset `model.onnx` declares.
    pub opset: i64,
    /// Graph input names, in order.
    pub inputs: Vec<String>,
    /// Graph output names, in order.
    pub outputs: Vec<String>,
    /// The pipeline stage that wrote the bundle.
    pub source: Provenance,
    /// The version of `pipe` that wrote it.
    pub pipe_version: String,
}

/// The numbers that fix a model's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct ModelShape {
    /// The family: `gpt_neo`, `bert`, `roberta`.
    pub model_type: String,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Number of blocks.
    pub num_layers: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// The longest sequence the model takes (for RoBERTa, its position table less the
    /// `padding_idx + 1` rows its positions skip).
    pub max_position_embeddings: usize,
    /// How the classifier pools a row (the ONNX graph does it); written only when it is not
    /// Hugging Face's `last`, so bundles of last-token models keep their bytes.
    #[serde(default, skip_serializing_if = "Pooling::is_last")]
    pub pooling: Pooling,
}

impl ModelShape {
    /// The shape of `cfg`.
    pub fn of(cfg: &dyn Architecture) -> Self {
        ModelShape {
            model_type: cfg.model_type().into(),
            hidden_size: cfg.hidden_size(),
            num_layers: cfg.num_layers(),
            num_heads: cfg.num_heads(),
            vocab_size: cfg.vocab_size(),
            max_position_embeddings: cfg.max_length(),
            pooling: cfg.pooling(),
        }
    }
}

/// Where a bundle came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct Provenance {
    /// The export stage's name in its manifest.
    pub stage: String,
    /// BLAKE3 (hex) of what the bundle computes with: `model.onnx` (and its external data),
    /// `tokenizer.json` and `labels.json` ([`super::content_key`]). It names content, not the
    /// run that wrote it, so a re-export that writes the same model leaves `bundle.json`, and
    /// the stages reading the bundle, unchanged.
    pub key: String,
    /// The stage whose model was exported.
    pub model_stage: String,
}

impl BundleInfo {
    /// The version of the layout this build writes.
    pub const FORMAT: u32 = 1;

    /// Reads and checks `path` (a bundle's `bundle.json`).
    pub fn read(path: &Path) -> Result<BundleInfo> {
        let text = fs_err::read_to_string(path).with_context(|| {
            format!(
                "cannot read {}; a bundle is the output folder of an export-onnx stage",
                path.display()
            )
        })?;
        let info: BundleInfo = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid bundle.json", path.display()))?;
        if info.format > Self::FORMAT {
            bail!(
                "{} has format {}, newer than this pipe reads ({}); upgrade pipe",
                path.display(),
                info.format,
                Self::FORMAT
            );
        }
        if info.labels.len() != info.num_labels {
            bail!(
                "{} lists {} labels but says num_labels is {}",
                path.display(),
                info.labels.len(),
                info.num_labels
            );
        }
        Ok(info)
    }
}
