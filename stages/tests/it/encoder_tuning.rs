//! LoRA, `freeze:` and dropout of the encoders (BERT, RoBERTa, DistilBERT; ModernBERT's
//! dropout) against PEFT, transformers' `Trainer` and transformers' dropout modules: the
//! fixtures in `tests/fixtures/encoder_tuning/` (see `make_fixtures.py` there), on the tiny
//! models and batches of `tests/fixtures/{bert,roberta,distilbert,modernbert}/`. Everything
//! here runs pipe's own step graph, flat trainer, adapter writer and merge.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pipe_models::bert::BertConfig;
use pipe_models::classifier::{ClassifierInput, ProblemType};
use pipe_models::dropout::{DropoutPlan, DropoutSites, SiteShape};
use pipe_models::layers::Tokens;
use pipe_models::lora::{self, LoraParams, LoraTarget};
use pipe_models::loss::CrossEntropy;
use pipe_models::{Architecture, ModelConfig, hf_folder, weights};
use pipe_onnx::{AdamW, DType, Dim, FlatTrainer, Graph, HostTensor, Session, StepTrainer};
use pipe_stages::finetune::{FreezeEntry, StepGraph, StepOptions, Trained};
use serde_json::Value;

use crate::peft::{assert_close, feeds, one_thread_trainer, train_and_check};

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

fn json(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A family's base model of `tests/fixtures/<family>/`: its config, weights and batch.
struct Base {
    config: ModelConfig,
    weights: BTreeMap<String, HostTensor>,
    batch: Value,
}

fn base(family: &str) -> Base {
    let dir = fixture(family);
    Base {
        config: hf_folder::read_config(&dir).unwrap(),
        weights: weights::load_all(&dir.join("weights.safetensors")).unwrap(),
        batch: json(dir.join("batch.json")),
    }
}

fn bert_config(config: &ModelConfig) -> BertConfig {
    match config {
        ModelConfig::Bert(c) => c.clone(),
        other => panic!("not a BERT config: {other:?}"),
    }
}

/// The fixtures' optimizer: weight decay where the step graph's `Trainer` rule puts it.
fn adamw() -> AdamW {
    let v = json(fixture("encoder_tuning/versions.json"));
    let hp = &v["adamw"];
    let f = |k: &str| hp[k].as_f64().unwrap();
    AdamW {
        beta1: hp["betas"][0].as_f64().unwrap(),
        beta2: hp["betas"][1].as_f64().unwrap(),
        eps: f("eps"),
        weight_decay: f("weight_decay"),
        max_grad_norm: f("max_grad_norm"),
    }
}

fn lr() -> f32 {
    json(fixture("encoder_tuning/versions.json"))["adamw"]["lr"]
        .as_f64()
        .unwrap() as f32
}

/// The tensors of `expected` under `prefix` (`after.`), by the rest of their name.
fn under(expected: &BTreeMap<String, HostTensor>, prefix: &str) -> BTreeMap<String, HostTensor> {
    expected
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
        .collect()
}

/// One step graph run on `params` + `frozen` + the batch: the gradients of the trained
/// tensors against `want` (name → gradient).
fn check_gradients(
    step: &StepGraph,
    inputs: &BTreeMap<String, HostTensor>,
    batch: &[(&'static str, HostTensor)],
    want: &BTreeMap<String, HostTensor>,
    what: &str,
) {
    let mut feeds: Vec<(&str, &HostTensor)> = inputs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    feeds.extend(batch.iter().map(|(k, v)| (*k, v)));
    let mut session = Session::from_model(&step.model, &one_thread()).unwrap();
    let out = session.run(&feeds).unwrap();
    assert_eq!(step.signature.layout.entries.len(), want.len(), "{what}");
    for e in &step.signature.layout.entries {
        let theirs = want
            .get(&e.name)
            .unwrap_or_else(|| panic!("{what}: no reference gradient of {}", e.name));
        let ours = &out[&e.grad];
        assert_eq!(ours.shape(), theirs.shape(), "{what} {}", e.name);
        assert_close(
            &format!("{what} grad {}", e.name),
            ours.as_f32().unwrap(),
            theirs.as_f32().unwrap(),
        );
    }
}

fn one_thread() -> pipe_onnx::SessionOptions {
    pipe_onnx::SessionOptions {
        intra_threads: Some(1),
        ..Default::default()
    }
}

/// Two clipped AdamW steps of `trained` against `expected`: losses and norms per step, every
/// trained tensor after them; the frozen ones bit for bit as they were. Returns the trainer.
fn train_case(
    b: &Base,
    step: &StepGraph,
    start: BTreeMap<String, HostTensor>,
    expected: &BTreeMap<String, HostTensor>,
    what: &str,
) -> FlatTrainer {
    let names: Vec<String> = step
        .signature
        .layout
        .entries
        .iter()
        .map(|e| e.name.clone())
        .collect();
    let after = under(expected, "after.");
    let mut got = names.clone();
    got.sort();
    assert_eq!(got, after.keys().cloned().collect::<Vec<_>>(), "{what}");
    let batch = feeds(&b.batch);
    check_gradients(step, &start, &batch, &under(expected, "grad_1."), what);
    let (params, frozen): (BTreeMap<_, _>, BTreeMap<_, _>) =
        start.into_iter().partition(|(n, _)| names.contains(n));
    let mut trainer = one_thread_trainer(step, adamw(), params, frozen);
    train_and_check(&mut trainer, &batch, lr(), 2, expected);
    // Where the first gradient is within rounding of 0 (a key bias's, exactly 0 in exact
    // arithmetic), Adam's normalised step can take either sign: allow those two steps of lr.
    let now = trainer.params().unwrap();
    let grads = under(expected, "grad_1.");
    let lr = f64::from(lr());
    for (name, t) in &after {
        let grad = grads[name].as_f32().unwrap();
        let (ours, theirs) = (now[name].as_f32().unwrap(), t.as_f32().unwrap());
        let (mut loose, mut strict) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for (i, g) in grad.iter().enumerate() {
            let pair = if g.abs() <= 1e-6 {
                &mut loose
            } else {
                &mut strict
            };
            pair.0.push(ours[i]);
            pair.1.push(theirs[i]);
        }
        assert_close(&format!("{what} after {name}"), &strict.0, &strict.1);
        for (a, b) in loose.0.iter().zip(&loose.1) {
            let d = f64::from((a - b).abs());
            assert!(d <= 2.0 * lr, "{what} after {name}: {a} vs {b}");
        }
    }
    for (name, t) in trainer.frozen() {
        assert_eq!(t, &b.weights[name], "{what}: {name} moved");
    }
    trainer
}

/// The logits of `config`'s classifier with `weights` on the batch of `b`.
fn logits(config: &ModelConfig, weights: &BTreeMap<String, HostTensor>, b: &Base) -> HostTensor {
    let mut g = Graph::new("logits");
    let dims = [Dim::from("batch"), Dim::from("seq")];
    let ids = g.input("input_ids", DType::I64, &dims).unwrap();
    let lengths = g
        .input("lengths", DType::I64, &[Dim::from("batch")])
        .unwrap();
    let model = config.classifier(&mut g, None).unwrap();
    let input = ClassifierInput {
        tokens: Tokens::Ids(ids),
        lengths,
        token_type_ids: None,
    };
    let logits = model.logits(&mut g, &input).unwrap();
    g.output(logits, "logits").unwrap();
    let mut s = Session::from_model(&g.build().unwrap(), &one_thread()).unwrap();
    let rows: Vec<Vec<i64>> = serde_json::from_value(b.batch["input_ids"].clone()).unwrap();
    let lens: Vec<i64> = serde_json::from_value(b.batch["lengths"].clone()).unwrap();
    let (n, len) = (rows.len() as i64, rows[0].len() as i64);
    let ids = HostTensor::i64(&[n, len], rows.concat()).unwrap();
    let lens = HostTensor::i64(&[n], lens).unwrap();
    let mut run: Vec<(&str, &HostTensor)> = vec![("input_ids", &ids), ("lengths", &lens)];
    for spec in model.specs() {
        run.push((spec.name.as_str(), &weights[&spec.name]));
    }
    s.run(&run).unwrap().remove("logits").unwrap()
}

/// LoRA r 4 on `query value` (BERT, RoBERTa), on `dense` (BERT: the attention output, the
/// feed-forward and the pooler; RoBERTa: not its head's `classifier.dense`, which trains in
/// full) and on `q_lin v_lin` (DistilBERT, whose `pre_classifier` trains in full), two steps
/// against PEFT: the initial matrices, the gradients
/// at step 1, losses, norms, the adapter after two steps, the adapter folder as PEFT writes
/// it, and the merged model's logits.
#[test]
fn encoder_lora_matches_peft() {
    for (case, family, targets) in [
        ("bert_qv", "bert", vec![target("query"), target("value")]),
        (
            "roberta_qv",
            "roberta",
            vec![target("query"), target("value")],
        ),
        ("bert_dense", "bert", vec![target("dense")]),
        ("roberta_dense", "roberta", vec![target("dense")]),
        (
            "distilbert_qv",
            "distilbert",
            vec![target("q_lin"), target("v_lin")],
        ),
    ] {
        let b = base(family);
        let lora = LoraParams {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets,
        };
        let step = StepGraph::compile(
            &b.config,
            ProblemType::SingleLabelClassification,
            Trained::Lora(&lora),
        )
        .unwrap();
        let dir = fixture(&format!("encoder_tuning/{case}"));
        let expected = weights::load_all(&dir.join("expected.safetensors")).unwrap();
        let mut start = b.weights.clone();
        let initial = under(&expected, "initial.");
        assert!(!initial.is_empty());
        start.extend(initial);
        let trainer = train_case(&b, &step, start, &expected, case);

        // pipe's adapter folder: PEFT's tensor names and config values.
        let out = tempfile::tempdir().unwrap();
        let mut all = trainer.params().unwrap();
        all.extend(trainer.frozen().iter().cloned());
        let head = b.config.head_params();
        let head: Vec<&str> = head.iter().map(String::as_str).collect();
        lora::write_adapter(out.path(), &lora, &head, "", &all, false).unwrap();
        let written = weights::load_all(&out.path().join(lora::ADAPTER_WEIGHTS_FILE)).unwrap();
        let peft =
            weights::load_all(&dir.join("adapter").join(lora::ADAPTER_WEIGHTS_FILE)).unwrap();
        assert_eq!(
            written.keys().collect::<Vec<_>>(),
            peft.keys().collect::<Vec<_>>(),
            "{case}"
        );
        // The values are the trained ones (checked against PEFT's above), as trained.
        let trained = trainer.params().unwrap();
        for (name, t) in &written {
            let ours = &trained[name.strip_prefix("base_model.model.").unwrap()];
            assert_eq!(t, ours, "{case}: {name} written as trained");
        }
        let ours = json(out.path().join(lora::ADAPTER_CONFIG_FILE));
        let theirs = json(dir.join("adapter").join(lora::ADAPTER_CONFIG_FILE));
        for key in ["peft_type", "task_type", "r", "bias", "fan_in_fan_out"] {
            assert_eq!(
                ours[key], theirs[key],
                "{case}: adapter_config.json `{key}`"
            );
        }
        assert_eq!(ours["lora_alpha"].as_f64(), theirs["lora_alpha"].as_f64());
        assert_eq!(ours["target_modules"], theirs["target_modules"], "{case}");
        let saved: Vec<String> = serde_json::from_value(theirs["modules_to_save"].clone()).unwrap();
        let ours_saved: Vec<String> =
            serde_json::from_value(ours["modules_to_save"].clone()).unwrap();
        // Whole top-level modules, as PEFT names them; PEFT matches by suffix: `classifier`
        // covers `pre_classifier`.
        assert!(
            ours_saved.iter().all(|m| !m.contains('.')),
            "{case}: {ours_saved:?}"
        );
        for m in &ours_saved {
            let module = m.split('.').next().unwrap();
            let covered = saved.iter().any(|s| module.ends_with(s.as_str()));
            assert!(covered, "{case}: {m} not in {saved:?}");
        }

        // The merged model gives PEFT's merged logits.
        let base_specs: Vec<_> = step
            .specs
            .iter()
            .filter(|s| !lora::is_lora(&s.name))
            .cloned()
            .collect();
        let merged = lora::merge(&lora, &base_specs, all.clone(), false).unwrap();
        assert_close(
            &format!("{case} merged_logits"),
            logits(&b.config, &merged, &b).as_f32().unwrap(),
            expected["merged_logits"].as_f32().unwrap(),
        );
    }
}

/// `freeze: [embeddings, layers.0]` on BERT names what transformers' `Trainer` leaves alone
/// with `requires_grad = False` on `bert.embeddings.*` and `bert.encoder.layer.0.*`, and two
/// steps give its numbers.
#[test]
fn bert_freeze_matches_transformers_trainer() {
    let b = base("bert");
    let freeze = [FreezeEntry::Embeddings, FreezeEntry::Layers(0, 0)];
    let step = StepGraph::compile(
        &b.config,
        ProblemType::SingleLabelClassification,
        Trained::Unfrozen(&freeze),
    )
    .unwrap();
    let expected =
        weights::load_all(&fixture("encoder_tuning/bert_freeze/expected.safetensors")).unwrap();
    let trainer = train_case(&b, &step, b.weights.clone(), &expected, "bert_freeze");
    let frozen: Vec<&str> = trainer.frozen().iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        frozen
            .iter()
            .all(|n| n.starts_with("bert.embeddings.") || n.starts_with("bert.encoder.layer.0.")),
        "{frozen:?}"
    );
    assert_eq!(
        frozen.len() + trainer.params().unwrap().len(),
        b.weights.len()
    );
}

/// BERT's and RoBERTa's dropout sites are transformers' `nn.Dropout` modules, by name and
/// rate (`hidden_dropout_prob`, `attention_probs_dropout_prob`, `classifier_dropout`), in
/// forward order; RoBERTa's head applies its one module twice (`classifier.dropout`,
/// `classifier.dropout#2`). The last layer runs on `[CLS]` alone, so its masks cover that row.
#[test]
fn encoder_dropout_sites_are_transformers_modules() {
    let reference = json(fixture("encoder_tuning/dropout_sites.json"));
    let rates = &reference["rates"];
    for family in ["bert", "roberta"] {
        let mut cfg = bert_config(&base(family).config);
        cfg.hidden_dropout_prob = rates["hidden_dropout_prob"].as_f64().unwrap();
        cfg.attention_probs_dropout_prob = rates["attention_probs_dropout_prob"].as_f64().unwrap();
        cfg.classifier_dropout = rates["classifier_dropout"].as_f64();
        let sites = cfg.dropout_sites(cfg.dropout_rates());
        let ours: Vec<(String, f64)> = sites
            .iter()
            .filter(|s| !s.module.ends_with("#2"))
            .map(|s| (s.module.clone(), s.p))
            .collect();
        let theirs: Vec<(String, f64)> = reference["sites"][family]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["module"].as_str().unwrap().into(),
                    s["p"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(ours, theirs, "{family}");
        let h = cfg.hidden_size;
        let last = format!("{family}.encoder.layer.{}.", cfg.num_hidden_layers - 1);
        for s in &sites {
            let want = match s.module.as_str() {
                m if m.ends_with("attention.self.dropout") && m.starts_with(&last) => {
                    SiteShape::FirstRowAttention
                }
                m if m.ends_with("attention.self.dropout") => SiteShape::Attention,
                m if m.starts_with(&last) => SiteShape::FirstRow(h),
                m if m.starts_with(family) => SiteShape::Rows(h),
                _ => SiteShape::Pooled(h),
            };
            assert_eq!(s.shape, want, "{family} {}", s.module);
        }
        if family == "roberta" {
            assert_eq!(sites.last().unwrap().module, "classifier.dropout#2");
        }
    }
}

/// With dropout on, under transformers' recorded masks, the step graph gives transformers'
/// loss and every gradient (RoBERTa's head drops twice, with two masks); with the fixture
/// config's dropout (all 0) the plan is empty and the step gives the dropout-free numbers of
/// `tests/fixtures/{bert,roberta,distilbert,modernbert}/`.
#[test]
fn bert_dropout_with_fixed_masks_matches_transformers() {
    dropout_with_fixed_masks_matches_transformers("bert");
}

#[test]
fn roberta_dropout_with_fixed_masks_matches_transformers() {
    dropout_with_fixed_masks_matches_transformers("roberta");
}

#[test]
fn distilbert_dropout_with_fixed_masks_matches_transformers() {
    dropout_with_fixed_masks_matches_transformers("distilbert");
}

#[test]
fn modernbert_dropout_with_fixed_masks_matches_transformers() {
    dropout_with_fixed_masks_matches_transformers("modernbert");
}

/// `config` with the dropout rates of the fixtures: `dropout_sites.json`'s (BERT's keys), or
/// `<family>_dropout/rates.json` (DistilBERT's, ModernBERT's).
fn with_fixture_dropout(config: &ModelConfig) -> ModelConfig {
    match config.clone() {
        ModelConfig::Bert(mut c) => {
            let rates = &json(fixture("encoder_tuning/dropout_sites.json"))["rates"];
            c.hidden_dropout_prob = rates["hidden_dropout_prob"].as_f64().unwrap();
            c.attention_probs_dropout_prob =
                rates["attention_probs_dropout_prob"].as_f64().unwrap();
            c.classifier_dropout = rates["classifier_dropout"].as_f64();
            ModelConfig::Bert(c)
        }
        ModelConfig::DistilBert(mut c) => {
            let rates = json(fixture("encoder_tuning/distilbert_dropout/rates.json"));
            c.dropout = rates["dropout"].as_f64().unwrap();
            c.attention_dropout = rates["attention_dropout"].as_f64().unwrap();
            c.seq_classif_dropout = rates["seq_classif_dropout"].as_f64().unwrap();
            ModelConfig::DistilBert(c)
        }
        ModelConfig::ModernBert(mut c) => {
            let rates = json(fixture("encoder_tuning/modernbert_dropout/rates.json"));
            c.embedding_dropout = rates["embedding_dropout"].as_f64().unwrap();
            c.attention_dropout = rates["attention_dropout"].as_f64().unwrap();
            c.mlp_dropout = rates["mlp_dropout"].as_f64().unwrap();
            c.classifier_dropout = rates["classifier_dropout"].as_f64().unwrap();
            ModelConfig::ModernBert(c)
        }
        other => panic!("no dropout fixture for {}", other.model_type()),
    }
}

fn dropout_with_fixed_masks_matches_transformers(family: &str) {
    let b = base(family);
    let problem = ProblemType::SingleLabelClassification;

    // Dropout off: no site, the fixture's numbers.
    assert!(DropoutPlan::new(&b.config, b.config.dropout_rates()).is_empty());
    let plain = StepGraph::compile(&b.config, problem, Trained::All).unwrap();
    let plain_expected =
        weights::load_all(&fixture(&format!("{family}/expected.safetensors"))).unwrap();
    check_gradients(
        &plain,
        &b.weights,
        &feeds(&b.batch),
        &under(&plain_expected, "grad."),
        &format!("{family} without dropout"),
    );

    let config = with_fixture_dropout(&b.config);
    let options = StepOptions {
        loss: CrossEntropy::default(),
        dropout: DropoutPlan::new(&config, config.dropout_rates()),
        ..StepOptions::plain(&config)
    };
    let step = StepGraph::compile_with(&config, problem, &options, Trained::All).unwrap();
    let expected = weights::load_all(&fixture(&format!(
        "encoder_tuning/{family}_dropout/expected.safetensors"
    )))
    .unwrap();
    let mut inputs = b.weights.clone();
    for site in config.dropout_sites(config.dropout_rates()) {
        let mask = &expected[&format!("mask:{}", site.module)];
        let keep: Vec<bool> = mask.to_f64_vec().iter().map(|&k| k != 0.0).collect();
        let shape = mask.shape().to_vec();
        // The last layer's masks: row 0 (the `[CLS]` query) of transformers' full mask.
        let (keep, shape) = match site.shape {
            SiteShape::FirstRow(h) => {
                let s = shape[1] as usize;
                let rows: Vec<bool> = keep
                    .chunks(s * h)
                    .flat_map(|row| row[..h].to_vec())
                    .collect();
                (rows, vec![shape[0], 1, shape[2]])
            }
            SiteShape::FirstRowAttention => {
                let s = shape[3] as usize;
                let rows: Vec<bool> = keep
                    .chunks(s * s)
                    .flat_map(|head| head[..s].to_vec())
                    .collect();
                (rows, vec![shape[0], shape[1], 1, shape[3]])
            }
            _ => (keep, shape),
        };
        inputs.insert(
            format!("dropout:{}", site.module),
            HostTensor::bool(&shape, keep).unwrap(),
        );
    }
    let mut feeds_all: Vec<(&str, &HostTensor)> =
        inputs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let batch = feeds(&b.batch);
    feeds_all.extend(batch.iter().map(|(k, v)| (*k, v)));
    let mut session = Session::from_model(&step.model, &one_thread()).unwrap();
    let out = session.run(&feeds_all).unwrap();
    assert_close(
        &format!("{family} loss"),
        out["loss"].as_f32().unwrap(),
        expected["loss"].as_f32().unwrap(),
    );
    for e in &step.signature.layout.entries {
        let want = &expected[&format!("grad.{}", e.name)];
        assert_close(
            &format!("{family} dropout grad {}", e.name),
            out[&e.grad].as_f32().unwrap(),
            want.as_f32().unwrap(),
        );
    }
    let plain_loss = plain_expected["loss"].as_f32().unwrap()[0];
    assert!((out["loss"].as_f32().unwrap()[0] - plain_loss).abs() > 1e-3);
}

/// `problem_type: multi_label_classification` for an encoder: multi-label data trains a BERT
/// (and a DistilBERT, a ModernBERT) from an inline config with BCE-with-logits (its loss
/// falls), `model/config.json` says so for transformers, and the exported bundle scores one
/// sigmoid per label. The loss itself is checked against transformers' `BCEWithLogitsLoss` in
/// each family's fixture test (`ml_loss`, `ml_grad.*`).
#[test]
fn encoders_train_multi_label_data_with_bce() {
    let labels = ["algebra", "biology", "chemistry"];
    for config in [
        serde_json::json!({ "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 48, "max_position_embeddings": 32,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0 }),
        serde_json::json!({ "model_type": "distilbert", "dim": 32, "n_layers": 2, "n_heads": 4,
            "hidden_dim": 48, "max_position_embeddings": 32, "dropout": 0.0,
            "attention_dropout": 0.0, "seq_classif_dropout": 0.0 }),
        serde_json::json!({ "model_type": "modernbert", "hidden_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 48,
            "max_position_embeddings": 32, "local_attention": 4 }),
    ] {
        let family = config["model_type"].as_str().unwrap().to_string();
        let t = crate::trained::Trained::new(&crate::trained::multi_label_csv(48, &labels), true);
        let tokens =
            t.ws.run(
                "tokenize",
                serde_json::json!({ "tokenizer": { "train": { "vocab_size": 300 } },
                    "max_length": 12 }),
                &[t.split.input("split")],
            )
            .unwrap();
        let params = serde_json::json!({
            "model": { "config": config, "seed": 3 }, "epochs": 6, "batch_size": 8,
            "learning_rate": 3e-3, "threads": 1
        });
        let run =
            t.ws.run("finetune", params, &[tokens.input("tokenize")])
                .unwrap_or_else(|e| panic!("{family}: {e:#}"));
        let written = run.json("model/config.json");
        assert_eq!(written["model_type"], family);
        assert_eq!(
            written["problem_type"], "multi_label_classification",
            "{family}"
        );
        assert_eq!(written["num_labels"], labels.len(), "{family}");
        let log = std::fs::read_to_string(run.path("train_log.jsonl")).unwrap();
        let losses: Vec<f64> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["loss"].as_f64())
            .collect();
        let (first, last) = (losses[0], *losses.last().unwrap());
        assert!(
            last < first,
            "{family}: the BCE loss went from {first} to {last}"
        );
        let input = pipe_engine::Input {
            name: "finetune".into(),
            stage: "finetune".into(),
            outputs: [("model".to_string(), run.path("model"))]
                .into_iter()
                .collect(),
        };
        let bundle =
            t.ws.run("export-onnx", serde_json::json!({}), &[input])
                .unwrap();
        let info = bundle.json("bundle.json");
        assert_eq!(
            info["problem_type"], "multi_label_classification",
            "{family}: {info}"
        );
    }
}

/// AdamW's weight decay falls where transformers' `Trainer` puts it, for every encoder
/// family: not on biases, not on any LayerNorm (BERT's `LayerNorm`, DistilBERT's
/// `sa_layer_norm`, ModernBERT's `norm`s).
#[test]
fn encoder_weight_decay_is_the_trainers() {
    let reference = json(fixture("encoder_tuning/trainer_decay.json"));
    for family in ["bert", "roberta", "distilbert", "modernbert"] {
        let config = hf_folder::read_config(&fixture(family)).unwrap();
        let mut g = Graph::new("specs");
        let model = config.classifier(&mut g, None).unwrap();
        let ours: Vec<&str> = model
            .specs()
            .iter()
            .filter(|s| pipe_models::classifier::hf_trainer_decay(s))
            .map(|s| s.name.as_str())
            .collect();
        let mut ours = ours;
        ours.sort_unstable();
        let theirs: Vec<String> = serde_json::from_value(reference[family].clone()).unwrap();
        assert_eq!(ours, theirs, "{family}");
    }
}

fn target(name: &str) -> LoraTarget {
    LoraTarget::new(name).expect("a module name")
}
