//! The real all-MiniLM-L6-v2, pipe's embedded pretrained model (fetched by
//! `scripts/fetch-model.sh`, which `scripts/test.sh` runs), against transformers: the ids of its
//! tokenizer as `AutoTokenizer(text, truncation=True, max_length=N)` gives them, and the
//! `[CLS]` hidden state and pooled output of four sentences. The fixture
//! (`tests/fixtures/minilm/`) was made by `make_fixture.py` there. The classifier on top is
//! fresh, so these compare what comes before it.

use std::path::PathBuf;

use pipe_models::bert::BertForSequenceClassification;
use pipe_models::classifier::{ClassifierInput, SequenceClassifier};
use pipe_models::dropout::Dropout;
use pipe_models::embedded;
use pipe_models::layers::Tokens;
use pipe_models::{Architecture, ModelConfig, hf_folder, weights};
use pipe_onnx::{DType, Dim, Graph, HostTensor, Session, SessionOptions};
use serde_json::Value;
use tokenizers::{Tokenizer, TruncationParams};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/minilm")
        .join(name)
}

/// The fetched model folder, its files checked against their pinned hashes.
fn model_dir() -> PathBuf {
    embedded::lookup("all-MiniLM-L6-v2")
        .unwrap()
        .verified()
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn tokens() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("tokens.json")).unwrap()).unwrap()
}

#[test]
fn minilm_tokenizer_ids_equal_autotokenizers() {
    let doc = tokens();
    for case in doc["cases"].as_array().unwrap() {
        let max_length = case["max_length"].as_u64().unwrap() as usize;
        // As the tokenize stage configures it: truncation at max_length, no padding.
        let mut tokenizer = Tokenizer::from_file(model_dir().join("tokenizer.json")).unwrap();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .unwrap()
            .with_padding(None);
        let texts: Vec<&str> = case["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let want: Vec<Vec<u32>> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let got: Vec<Vec<u32>> = tokenizer
            .encode_batch(texts, true)
            .unwrap()
            .iter()
            .map(|e| e.get_ids().to_vec())
            .collect();
        assert_eq!(got, want, "max_length {max_length}");
        // Cut rows keep their [SEP] (102).
        assert!(got.iter().all(|ids| ids.last() == Some(&102)));
    }
}

#[test]
fn minilm_cls_state_and_pooled_output_match_transformers() {
    let dir = model_dir();
    let mut config = hf_folder::read_config(&dir).unwrap();
    config.set_labels(4);
    let ModelConfig::Bert(bert) = &config else {
        panic!("all-MiniLM-L6-v2 is a BERT");
    };
    assert_eq!((bert.hidden_size, bert.num_hidden_layers), (384, 6));

    let mut g = Graph::new("minilm");
    let dims = [Dim::from("batch"), Dim::from("seq")];
    let ids = g.input("input_ids", DType::I64, &dims).unwrap();
    let lengths = g
        .input("lengths", DType::I64, &[Dim::from("batch")])
        .unwrap();
    let model = BertForSequenceClassification::new(bert, &mut g, None).unwrap();
    let input = ClassifierInput {
        tokens: Tokens::Ids(ids),
        lengths,
        token_type_ids: None,
    };
    let cls = model
        .model
        .forward(&mut g, &input, true, &Dropout::none())
        .unwrap();
    let pooled = model.pooled(&mut g, &input).unwrap().unwrap();
    g.output(cls, "cls_hidden").unwrap();
    g.output(pooled, "pooled").unwrap();

    // The checkpoint is bare (`embeddings.…`, no `bert.`), has the pooler and an int64
    // `embeddings.position_ids` buffer; the classifier is what it lacks.
    let head = config.head_params();
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    let mut feeds = hf_folder::read_weights(&dir, model.specs(), &head, 0).unwrap();
    let rows: Vec<Vec<i64>> = serde_json::from_value(tokens()["sentence_ids"].clone()).unwrap();
    let width = rows.iter().map(Vec::len).max().unwrap();
    let padded: Vec<i64> = rows
        .iter()
        .flat_map(|r| r.iter().copied().chain(std::iter::repeat(0)).take(width))
        .collect();
    let b = rows.len() as i64;
    feeds.insert(
        "input_ids".into(),
        HostTensor::i64(&[b, width as i64], padded).unwrap(),
    );
    let lens = rows.iter().map(|r| r.len() as i64).collect();
    feeds.insert("lengths".into(), HostTensor::i64(&[b], lens).unwrap());
    let f: Vec<(&str, &HostTensor)> = feeds.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut s = Session::from_model(&g.build().unwrap(), &SessionOptions::default()).unwrap();
    let out = s.run(&f).unwrap();
    let expected = weights::load_all(&fixture("outputs.safetensors")).unwrap();
    for name in ["cls_hidden", "pooled"] {
        let (ours, hf) = (&out[name], &expected[name]);
        assert_eq!(ours.shape(), hf.shape(), "{name}");
        let max = ours
            .as_f32()
            .unwrap()
            .iter()
            .zip(hf.as_f32().unwrap())
            .map(|(a, e)| (a - e).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{name}: max |diff| {max:.2e}");
        assert!(max < 2e-5, "{name}: max |diff| {max:e}");
    }
}
