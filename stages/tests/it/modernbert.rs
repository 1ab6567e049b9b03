//! ModernBERT for sequence classification against Hugging Face `transformers`: the golden
//! fixture in `tests/fixtures/modernbert/` (made by `make_fixtures.py` there) holds a tiny
//! random model with a global, a sliding-window (window shorter than the rows) and a global
//! layer, the batch of `tests/fixtures/bert/`, and transformers' logits, loss and every
//! gradient for `classifier_pooling` `cls` and `mean`, the hidden state, a multi-label variant
//! and the parameters after two clipped AdamW steps. The checks are `encoder_fixture.rs`'s.

use pipe_models::classifier::{ProblemType, SequenceClassifier};
use pipe_models::dropout::Dropout;
use pipe_models::modernbert::{
    ClassifierPooling, ModernBertConfig, ModernBertForSequenceClassification,
};
use pipe_models::{Architecture, ModelConfig};
use pipe_onnx::Graph;
use serde_json::{Value, json};

use crate::encoder_fixture::{
    check_export, check_gradients, check_two_adamw_steps, close, close_hidden, declare_input,
    fixture, logits_and_loss, run, session,
};

fn config(config: &ModelConfig) -> ModernBertConfig {
    match config {
        ModelConfig::ModernBert(c) => c.clone(),
        other => panic!("not a ModernBERT config: {other:?}"),
    }
}

#[test]
fn modernbert_config_parses_and_keeps_its_keys() {
    let fx = fixture("modernbert");
    let c = config(&fx.config);
    assert_eq!(
        (c.hidden_size, c.num_hidden_layers, c.head_dim()),
        (32, 3, 8)
    );
    assert_eq!(
        (0..3).map(|i| c.is_global(i)).collect::<Vec<_>>(),
        [true, false, true]
    );
    assert_eq!((c.rope_theta(true), c.rope_theta(false)), (1000.0, 50.0));
    assert!(!c.takes_token_types());
    let labels = ["a", "b", "c"].map(String::from);
    let written = c
        .hf_config(&labels, ProblemType::MultiLabelClassification)
        .unwrap();
    assert_eq!(written["sparse_pred_ignore_index"], json!(-100));
    assert_eq!(
        written["rope_parameters"]["sliding_attention"]["rope_theta"],
        json!(50.0)
    );
    assert_eq!(
        written["architectures"],
        json!(["ModernBertForSequenceClassification"])
    );
    // The older form (global_attn_every_n_layers and the two thetas) reads the same.
    let mut v: Value = serde_json::to_value(&c).unwrap();
    let map = v.as_object_mut().unwrap();
    map.remove("layer_types");
    map.remove("rope_parameters");
    map.insert("global_rope_theta".into(), json!(1000.0));
    map.insert("local_rope_theta".into(), json!(50.0));
    let old = config(&ModelConfig::from_json(v.clone()).unwrap());
    assert_eq!(
        (0..3).map(|i| old.is_global(i)).collect::<Vec<_>>(),
        [true, false, true]
    );
    assert_eq!(
        (old.rope_theta(true), old.rope_theta(false)),
        (1000.0, 50.0)
    );
    v["num_attention_heads"] = json!(32);
    let e = ModelConfig::from_json(v).unwrap_err().to_string();
    assert!(e.contains("must be even"), "{e}");
}

#[test]
fn modernbert_forward_matches_transformers() {
    let fx = fixture("modernbert");
    let c = config(&fx.config);
    let problem = ProblemType::SingleLabelClassification;
    let mut g = Graph::new("modernbert");
    let input = declare_input(&mut g);
    let model = ModernBertForSequenceClassification::new(&c, &mut g, None).unwrap();
    let (logits, loss) = logits_and_loss(&mut g, &model, &input, problem);
    let hidden = model
        .model
        .forward(&mut g, &input, &Dropout::none())
        .unwrap();
    g.output(logits, "logits").unwrap();
    g.output(loss, "loss").unwrap();
    g.output(hidden, "hidden").unwrap();
    let out = run(&mut session(&g), &fx.feeds(model.specs(), problem));
    close("logits", &out["logits"], fx.expected("logits"));
    close("loss", &out["loss"], fx.expected("loss"));
    close_hidden(&fx, &out["hidden"], "hidden_states");
}

/// Every gradient: `cls` single- and multi-label, and `mean` pooling.
#[test]
fn modernbert_gradients_match_transformers() {
    let fx = fixture("modernbert");
    let single = ProblemType::SingleLabelClassification;
    check_gradients(&fx, &fx.config, single, "");
    check_gradients(
        &fx,
        &fx.config,
        ProblemType::MultiLabelClassification,
        "ml_",
    );
    let mut mean = config(&fx.config);
    mean.classifier_pooling = ClassifierPooling::Mean;
    check_gradients(&fx, &ModelConfig::ModernBert(mean), single, "mean_");
}

/// Two clipped AdamW steps on the fixture batch through the flat trainer finetune uses.
#[test]
fn modernbert_two_adamw_steps_match_transformers() {
    check_two_adamw_steps(&fixture("modernbert"));
}

/// The exported bundle's `model.onnx` gives transformers' logits.
#[test]
fn modernbert_exported_model_matches_transformers() {
    check_export(&fixture("modernbert"));
}
