//! DistilBERT for sequence classification against Hugging Face `transformers`: the golden
//! fixture in `tests/fixtures/distilbert/` (made by `make_fixtures.py` there) holds a tiny
//! random model, the batch of `tests/fixtures/bert/`, and transformers' logits, loss, hidden
//! states, every gradient (single- and multi-label), the parameters after two clipped AdamW
//! steps and the position table of `sinusoidal_pos_embds`. The checks are
//! `encoder_fixture.rs`'s.

use pipe_models::classifier::{ProblemType, SequenceClassifier};
use pipe_models::distilbert::{DistilBertConfig, DistilBertForSequenceClassification};
use pipe_models::dropout::Dropout;
use pipe_models::{Architecture, Init, ModelConfig, ParamSpec, init_param};
use pipe_onnx::Graph;
use serde_json::{Value, json};

use crate::encoder_fixture::{
    check_export, check_gradients, check_two_adamw_steps, close, close_hidden, declare_input,
    fixture, logits_and_loss, run, session,
};

fn config(config: &ModelConfig) -> DistilBertConfig {
    match config {
        ModelConfig::DistilBert(c) => c.clone(),
        other => panic!("not a DistilBERT config: {other:?}"),
    }
}

#[test]
fn distilbert_config_parses_and_keeps_its_keys() {
    let fx = fixture("distilbert");
    let c = config(&fx.config);
    assert_eq!((c.dim, c.n_layers, c.head_dim()), (32, 2, 8));
    assert_eq!(Architecture::num_labels(&c), 4);
    assert!(!c.takes_token_types());
    assert!(c.other.contains_key("qa_dropout"));
    let labels = ["a", "b", "c"].map(String::from);
    let written = c
        .hf_config(&labels, ProblemType::MultiLabelClassification)
        .unwrap();
    assert_eq!(written["qa_dropout"], json!(0.1));
    assert_eq!(written["model_type"], json!("distilbert"));
    assert_eq!(
        written["architectures"],
        json!(["DistilBertForSequenceClassification"])
    );
    assert_eq!(written["num_labels"], json!(3));
    assert_eq!(written["pad_token_id"], json!(0));
    // What does not fit is refused, naming the keys.
    let mut v: Value = serde_json::to_value(&c).unwrap();
    v["n_heads"] = json!(5);
    let e = ModelConfig::from_json(v).unwrap_err().to_string();
    assert!(e.contains("n_heads 5"), "{e}");
}

#[test]
fn distilbert_forward_matches_transformers() {
    let fx = fixture("distilbert");
    let c = config(&fx.config);
    let problem = ProblemType::SingleLabelClassification;
    let mut g = Graph::new("distilbert");
    let input = declare_input(&mut g);
    let model = DistilBertForSequenceClassification::new(&c, &mut g, None).unwrap();
    let (logits, loss) = logits_and_loss(&mut g, &model, &input, problem);
    let hidden = model
        .model
        .forward(&mut g, &input, false, &Dropout::none())
        .unwrap();
    g.output(logits, "logits").unwrap();
    g.output(loss, "loss").unwrap();
    g.output(hidden, "hidden").unwrap();
    let out = run(&mut session(&g), &fx.feeds(model.specs(), problem));
    close("logits", &out["logits"], fx.expected("logits"));
    close("loss", &out["loss"], fx.expected("loss"));
    close_hidden(&fx, &out["hidden"], "hidden_states");
}

/// Every gradient, single- and multi-label, with pipe's CPU kernels and standard ONNX.
#[test]
fn distilbert_gradients_match_transformers() {
    let fx = fixture("distilbert");
    let single = ProblemType::SingleLabelClassification;
    check_gradients(&fx, &fx.config, single, "");
    let multi = ProblemType::MultiLabelClassification;
    check_gradients(&fx, &fx.config, multi, "ml_");
}

/// Two clipped AdamW steps on the fixture batch through the flat trainer finetune uses.
#[test]
fn distilbert_two_adamw_steps_match_transformers() {
    check_two_adamw_steps(&fixture("distilbert"));
}

/// A fresh model with `sinusoidal_pos_embds` starts its position table as transformers does.
#[test]
fn distilbert_sinusoidal_positions_match_transformers() {
    let fx = fixture("distilbert");
    let want = fx.expected("sinusoidal_positions").clone();
    let spec = ParamSpec {
        name: "distilbert.embeddings.position_embeddings.weight".into(),
        shape: want.shape().to_vec(),
        init: Init::Sinusoidal,
    };
    close("sinusoidal", &init_param(&spec, 7), &want);
    let mut c = config(&fx.config);
    c.sinusoidal_pos_embds = true;
    let mut g = Graph::new("specs");
    let model = DistilBertForSequenceClassification::new(&c, &mut g, None).unwrap();
    let positions = model.specs().iter().find(|s| s.name == spec.name).unwrap();
    assert_eq!(positions.init, Init::Sinusoidal);
}

/// The exported bundle's `model.onnx` (no `token_type_ids`) gives transformers' logits.
#[test]
fn distilbert_exported_model_matches_transformers() {
    check_export(&fixture("distilbert"));
}
