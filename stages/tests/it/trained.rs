//! A fine-tuned model as the `finetune` stage hands it on, built without training: data
//! ingested, split and tokenized by the real stages, then a small GPT-Neo with random weights
//! written as a Hugging Face folder (`model/` with `config.json`, `model.safetensors`,
//! `tokenizer.json`, `labels.json`) beside a `train_log.jsonl`.

use std::collections::BTreeMap;

use pipe_engine::Input;
use pipe_models::gpt_neo::{GptNeoConfig, GptNeoForSequenceClassification, Pooling, ProblemType};
use pipe_models::{hf_folder, init_params};
use pipe_onnx::{Graph, HostTensor};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokenizers::Tokenizer;

use crate::util::{Ran, Workspace};

/// The training log the fake finetune writes.
pub const TRAIN_LOG: &str = "{\"step\": 1, \"loss\": 1.2, \"lr\": 0.001, \"epoch\": 0.5, \"tokens_per_s\": 100.0}\n\
{\"step\": 2, \"loss\": 0.9, \"lr\": 0.001, \"epoch\": 1.0, \"tokens_per_s\": 100.0}\n\
{\"epoch\": 1.0, \"eval_loss\": 1.0}\n";

pub struct Trained {
    pub ws: Workspace,
    /// The split stage's run (its tables are the evaluation data).
    pub split: Ran,
    /// The fake finetune's output folder.
    pub finetune: TempDir,
    pub cfg: GptNeoConfig,
    /// The model's weights by Hugging Face name.
    pub params: BTreeMap<String, HostTensor>,
}

/// Rows of a multi-label CSV over `labels`: each row has one or two labels.
pub fn multi_label_csv(n: usize, labels: &[&str]) -> String {
    let mut csv = String::from("text,labels\n");
    for i in 0..n {
        let a = labels[i % labels.len()];
        let b = labels[(i / 2 + 1) % labels.len()];
        let cell = if i % 3 == 0 || a == b {
            a.to_string()
        } else {
            format!("{a};{b}")
        };
        csv.push_str(&format!("note {i} on {a} with several words,{cell}\n"));
    }
    csv
}

impl Trained {
    /// Ingests `csv` (multi-label when `multi_label`), splits it (half train, a quarter
    /// each validation and test), tokenizes it with a trained 300-token BPE cut at 12
    /// tokens, and writes a random model over its labels.
    pub fn new(csv: &str, multi_label: bool) -> Trained {
        Trained::with_pooling(csv, multi_label, Pooling::Last)
    }

    /// [`Trained::new`] with a model that pools the way `pooling` says.
    pub fn with_pooling(csv: &str, multi_label: bool, pooling: Pooling) -> Trained {
        let ws = Workspace::new();
        ws.file("data.csv", csv);
        let ingest = ws
            .run(
                "ingest",
                json!({
                    "source": "data.csv",
                    "text": "text",
                    "label": if multi_label { "labels" } else { "label" },
                    "multi_label": multi_label,
                }),
                &[],
            )
            .unwrap();
        let split = ws
            .run(
                "split",
                json!({ "test": 0.25, "validation": 0.25, "shuffle": true, "seed": 1 }),
                &[ingest.input("ingest")],
            )
            .unwrap();
        let tokenize = ws
            .run(
                "tokenize",
                json!({ "tokenizer": { "train": { "vocab_size": 300 } }, "max_length": 12 }),
                &[split.input("split")],
            )
            .unwrap();
        let labels: Vec<String> = serde_json::from_value(tokenize.json("labels.json")).unwrap();
        let tokenizer = Tokenizer::from_file(tokenize.path("tokenizer.json")).unwrap();
        let problem = if multi_label {
            ProblemType::MultiLabelClassification
        } else {
            ProblemType::SingleLabelClassification
        };
        let mut cfg = GptNeoConfig::test(tokenizer.get_vocab_size(true), labels.len());
        // Wider weights than a real init, so predictions differ visibly between rows.
        cfg.initializer_range = 0.3;
        cfg.pooling = pooling;
        let mut g = Graph::new("fixture");
        let model = GptNeoForSequenceClassification::new(&cfg, &mut g).unwrap();
        let params = init_params(model.params(), 7);
        let finetune = tempfile::tempdir().unwrap();
        let dir = finetune.path().join("model");
        hf_folder::write(&dir, &cfg, &labels, problem, model.params(), &params).unwrap();
        for file in ["tokenizer.json", "labels.json"] {
            std::fs::copy(tokenize.path(file), dir.join(file)).unwrap();
        }
        std::fs::write(finetune.path().join("train_log.jsonl"), TRAIN_LOG).unwrap();
        Trained {
            ws,
            split,
            finetune,
            cfg,
            params,
        }
    }

    /// The fake finetune's outputs as an input.
    pub fn input(&self) -> Input {
        let outputs = [
            ("model", self.finetune.path().join("model")),
            ("train_log", self.finetune.path().join("train_log.jsonl")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Input {
            name: "finetune".into(),
            stage: "finetune".into(),
            outputs,
        }
    }

    /// Runs `export-onnx` with `params`.
    pub fn export(&self, params: Value) -> anyhow::Result<Ran> {
        self.ws.run("export-onnx", params, &[self.input()])
    }

    /// Runs `evaluate` on `bundle` (an export's run) and `data` (a split's run).
    pub fn evaluate(&self, bundle: &Ran, data: &Ran, params: Value) -> anyhow::Result<Ran> {
        let mut model = bundle.input("export-onnx");
        model.name = "model".into();
        let mut data = data.input("split");
        data.name = "data".into();
        self.ws.run("evaluate", params, &[model, data])
    }
}
