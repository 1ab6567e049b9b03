//! `pipe init` (library half), driven by a scripted prompter.

use std::collections::VecDeque;
use std::path::Path;

use pipe_models::lora::{LoraParams, LoraTarget};
use pipe_models::{Architecture, ModelConfig};
use pipe_stages::init::{InitOptions, ModelChoice, Prompter, TerminalPrompter, init};
use serde_json::json;

use crate::util::{Workspace, labelled_csv, message};

/// Answers questions from a script, and records what it was shown and asked.
#[derive(Default)]
struct Scripted {
    answers: VecDeque<&'static str>,
    asked: Vec<String>,
    shown: String,
}

impl Scripted {
    fn new(answers: &[&'static str]) -> Self {
        Scripted {
            answers: answers.iter().copied().collect(),
            ..Default::default()
        }
    }

    fn next(&mut self, question: &str) -> anyhow::Result<&'static str> {
        self.asked.push(question.to_string());
        self.answers
            .pop_front()
            .ok_or_else(|| anyhow::anyhow!("unexpected question: {question}"))
    }
}

impl Prompter for Scripted {
    fn show(&mut self, text: &str) -> anyhow::Result<()> {
        self.shown.push_str(text);
        Ok(())
    }

    fn select(
        &mut self,
        question: &str,
        choices: &[String],
        default: usize,
    ) -> anyhow::Result<usize> {
        match self.next(question)? {
            "" => Ok(default),
            name => Ok(choices
                .iter()
                .position(|c| c == name)
                .expect("a listed choice")),
        }
    }

    fn confirm(&mut self, question: &str, default: bool) -> anyhow::Result<bool> {
        Ok(match self.next(question)? {
            "" => default,
            answer => answer == "y",
        })
    }

    fn input(&mut self, question: &str, default: &str) -> anyhow::Result<String> {
        Ok(match self.next(question)? {
            "" => default.to_string(),
            answer => answer.to_string(),
        })
    }
}

/// Parses a manifest and returns the params of stage `name` as JSON.
fn stage_params(manifest: &Path, name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(manifest).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
    let stage = &docs[0]["stages"][name];
    assert!(!stage.is_badvalue(), "no stage {name} in:\n{text}");
    fn to_json(y: &yaml_rust2::Yaml) -> serde_json::Value {
        use yaml_rust2::Yaml;
        match y {
            Yaml::String(s) => json!(s),
            Yaml::Integer(i) => json!(i),
            Yaml::Real(r) => json!(r.parse::<f64>().unwrap()),
            Yaml::Boolean(b) => json!(b),
            Yaml::Hash(h) => serde_json::Value::Object(
                h.iter()
                    .map(|(k, v)| (k.as_str().unwrap().to_string(), to_json(v)))
                    .collect(),
            ),
            Yaml::Array(a) => json!(a.iter().map(to_json).collect::<Vec<_>>()),
            _ => serde_json::Value::Null,
        }
    }
    let mut params = to_json(stage);
    params.as_object_mut().unwrap().remove("from");
    params
}

fn questions_csv(ws: &Workspace) {
    let mut csv = String::from("id,question,topic\n");
    for i in 0..30 {
        let topic = ["math", "physics"][i % 2];
        csv.push_str(&format!(
            "{i},what is the meaning of item {i} in {topic}?,{topic}\n"
        ));
    }
    ws.file("data/questions.csv", csv);
}

#[test]
fn asks_every_question_and_writes_a_manifest_that_runs() {
    let ws = Workspace::new();
    questions_csv(&ws);
    let output = ws.path().join("pipeline.yaml");
    let options = InitOptions {
        from: Some(ws.path().join("data/questions.csv")),
        output: Some(output.clone()),
        ..Default::default()
    };
    // text (default), label, multi-label?, split?, validation?, fraction, shuffle?, test
    // fraction, model (tiny: the default is the embedded model when it is fetched), epochs,
    // device (default).
    let mut prompter = Scripted::new(&[
        "", "topic", "n", "y", "y", "0.1", "y", "0.25", "tiny", "1", "",
    ]);
    let written = init(options, &mut prompter).unwrap();
    assert_eq!(written.manifest, output);
    assert!(written.trains);
    assert!(
        prompter.answers.is_empty(),
        "unanswered: {:?}",
        prompter.answers
    );
    assert!(prompter.shown.contains("question"), "{}", prompter.shown);
    assert!(
        prompter.shown.contains("values of `topic`"),
        "{}",
        prompter.shown
    );

    assert_eq!(
        prompter.asked[8..],
        [
            "Which model? all-MiniLM-L6-v2 (pretrained BERT, embedded), tiny (from scratch, minutes on a CPU), small, or a Hugging Face id such as EleutherAI/gpt-neo-125m",
            "How many epochs (passes over the train split)?",
            "Train on which device? cpu, cuda or cuda:N",
        ]
    );
    let ingest = stage_params(&output, "ingest");
    assert_eq!(ingest["source"], "data/questions.csv");
    assert_eq!(ingest["text"], "question");
    assert_eq!(ingest["label"], "topic");
    let split = stage_params(&output, "split");
    assert_eq!(split["test"], 0.25);
    assert_eq!(split["validation"], 0.1);
    assert_eq!(split["shuffle"], true);

    // The manifest's stages run as written.
    let ran = ws.run("ingest", ingest, &[]).unwrap();
    let split = ws.run("split", split, &[ran.input("ingest")]).unwrap();
    let mut tokenize = stage_params(&output, "tokenize");
    tokenize["tokenizer"]["train"]["vocab_size"] = json!(300);
    ws.run("tokenize", tokenize, &[split.input("split")])
        .unwrap();
    let finetune = stage_params(&output, "finetune");
    assert_eq!(finetune["model"], json!({ "config": "tiny", "seed": 0 }));
    assert_eq!(finetune["epochs"], 1);
    assert_eq!(finetune["device"], pipe_stages::init::default_device());
    assert!(finetune.get("lora").is_none());
    let registry = pipe_stages::registry();
    for stage in ["finetune", "export-onnx", "evaluate"] {
        let kind = registry.get(stage).unwrap();
        kind.check(&stage_params(&output, stage))
            .unwrap_or_else(|e| panic!("{stage}: {e}"));
    }
}

/// A fake Hugging Face cache holding `org/tiny`'s config.
fn fake_cache() -> tempfile::TempDir {
    fake_cache_of(&[("tiny", "{}")])
}

/// A fake Hugging Face cache holding `org/<name>` with `config.json` `config` for each pair.
fn fake_cache_of(repos: &[(&str, &str)]) -> tempfile::TempDir {
    let cache = tempfile::tempdir().unwrap();
    for (name, config) in repos {
        let repo = cache.path().join(format!("models--org--{name}"));
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123").unwrap();
        std::fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
        std::fs::write(repo.join("snapshots/abc123/config.json"), config).unwrap();
    }
    cache
}

/// `pipe init --lora` targets the query and value projections by the family's names: read
/// from a cached hub config's `model_type` or the embedded model's; a hub model not in the
/// cache (or whose config names no type) gets q_proj, v_proj and a note saying so.
#[test]
fn lora_targets_follow_the_model_family() {
    let ws = Workspace::new();
    questions_csv(&ws);
    let cache = fake_cache_of(&[
        ("llama", r#"{"model_type": "llama"}"#),
        ("qwen", r#"{"model_type": "qwen3"}"#),
        ("bert", r#"{"model_type": "bert"}"#),
        ("roberta", r#"{"model_type": "roberta"}"#),
        ("distil", r#"{"model_type": "distilbert"}"#),
        ("modern", r#"{"model_type": "modernbert"}"#),
        ("gpt2", r#"{"model_type": "gpt2"}"#),
        ("untyped", "{}"),
    ]);
    let output = ws.path().join("lora.yaml");
    let cases: [(&str, &[&str], bool); 9] = [
        ("org/llama", &["q_proj", "v_proj"], false),
        ("org/qwen", &["q_proj", "v_proj"], false),
        ("org/bert", &["query", "value"], false),
        ("org/roberta", &["query", "value"], false),
        ("org/distil", &["q_lin", "v_lin"], false),
        ("org/modern", &["Wqkv"], false),
        ("org/gpt2", &["c_attn"], false),
        ("all-MiniLM-L6-v2", &["query", "value"], false),
        ("org/untyped", &["q_proj", "v_proj"], true),
    ];
    for (model, targets, note) in cases {
        let options = InitOptions {
            from: Some(ws.path().join("data/questions.csv")),
            output: Some(output.clone()),
            model: Some(ModelChoice::parse(model).unwrap()),
            hub_cache: Some(cache.path().to_path_buf()),
            lora: Some(true),
            epochs: Some(1),
            device: Some("cpu".into()),
            yes: true,
            force: true,
            ..Default::default()
        };
        let mut prompter = Scripted::new(&[]);
        init(options, &mut prompter).unwrap();
        let finetune = stage_params(&output, "finetune");
        assert_eq!(finetune["lora"]["targets"], json!(targets), "{model}");
        assert_eq!(
            prompter.shown.contains("the family of"),
            note,
            "{model}: {}",
            prompter.shown
        );
    }
}

#[test]
fn a_hub_model_brings_its_tokenizer_and_lora_only_when_chosen() {
    let ws = Workspace::new();
    questions_csv(&ws);
    let cache = fake_cache();
    let output = ws.path().join("hub.yaml");
    let options = InitOptions {
        from: Some(ws.path().join("data/questions.csv")),
        output: Some(output.clone()),
        model: Some(ModelChoice::parse("org/tiny").unwrap()),
        hub_cache: Some(cache.path().to_path_buf()),
        epochs: Some(2),
        device: Some("cpu".into()),
        yes: true,
        ..Default::default()
    };
    let mut prompter = Scripted::new(&[]);
    init(options.clone(), &mut prompter).unwrap();
    assert!(
        prompter
            .shown
            .contains("org/tiny is in the Hugging Face cache"),
        "{}",
        prompter.shown
    );
    assert_eq!(
        stage_params(&output, "tokenize")["tokenizer"],
        json!({ "hub": "org/tiny" })
    );
    let finetune = stage_params(&output, "finetune");
    assert_eq!(finetune["model"], json!({ "hub": "org/tiny" }));
    assert_eq!(finetune["learning_rate"], 5.0e-5);
    assert!(finetune.get("lora").is_none());
    // Valid against today's finetune parameters.
    pipe_stages::registry()
        .get("finetune")
        .unwrap()
        .check(&finetune)
        .unwrap();

    // Asked, and answered yes: the LoRA parameters are written.
    let asked = InitOptions {
        yes: false,
        force: true,
        text: Some("question".into()),
        label: Some("topic".into()),
        multi_label: Some(false),
        test: Some(0.2),
        validation: Some(0.0),
        shuffle: Some(false),
        ..options
    };
    let mut prompter = Scripted::new(&["y"]);
    init(asked, &mut prompter).unwrap();
    assert_eq!(
        prompter.asked[0],
        "Train LoRA adapters (r 8 on q_proj, v_proj) instead of every weight?"
    );
    assert_eq!(
        stage_params(&output, "finetune")["lora"],
        json!({ "r": 8, "alpha": 16, "dropout": 0.0, "targets": ["q_proj", "v_proj"] })
    );
}

/// Each family's default LoRA targets name layers of that family: finetune's check takes
/// them for the family's fixture config.
#[test]
fn every_family_has_default_lora_targets_among_its_layers() {
    for model_type in ModelConfig::MODEL_TYPES {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(model_type)
            .join("config.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let config = ModelConfig::from_json(serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(config.model_type(), model_type);
        let targets = ModelConfig::default_lora_targets(model_type).unwrap();
        let lora = LoraParams {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: targets
                .iter()
                .map(|t| LoraTarget::new(t).unwrap())
                .collect(),
        };
        lora.check_targets(&config, model_type)
            .unwrap_or_else(|e| panic!("{model_type}: {e:#}"));
    }
    assert_eq!(ModelConfig::default_lora_targets("t5"), None);
}

#[test]
fn flags_and_yes_answer_everything() {
    let ws = Workspace::new();
    ws.file("sub/data/d.csv", labelled_csv(20, &["a", "b"]));
    let output = ws.path().join("sub/p.yaml");
    let options = InitOptions {
        from: Some(ws.path().join("sub/data/d.csv")),
        output: Some(output.clone()),
        label: Some("label".into()),
        test: Some(0.3),
        shuffle: Some(true),
        yes: true,
        ..Default::default()
    };
    init(options.clone(), &mut Scripted::new(&[])).unwrap();
    assert_eq!(stage_params(&output, "ingest")["source"], "data/d.csv");
    assert_eq!(stage_params(&output, "split")["test"], 0.3);
    assert_eq!(stage_params(&output, "split")["validation"], 0);

    let err = message(init(options.clone(), &mut Scripted::new(&[])).unwrap_err());
    assert!(err.contains("already exists; pass --force"), "{err}");
    let no_split = InitOptions {
        test: Some(0.0),
        force: true,
        ..options
    };
    init(no_split, &mut Scripted::new(&[])).unwrap();
    let text = std::fs::read_to_string(&output).unwrap();
    assert!(!text.contains("  split:"), "{text}");
    assert!(text.contains("from: ingest"), "{text}");
    assert!(!text.contains("finetune:"), "{text}");
    assert!(text.contains("Training needs a train split"), "{text}");
}

#[test]
fn an_unknown_column_flag_suggests_the_closest() {
    let ws = Workspace::new();
    questions_csv(&ws);
    let options = InitOptions {
        from: Some(ws.path().join("data/questions.csv")),
        output: Some(ws.path().join("p.yaml")),
        text: Some("questoin".into()),
        yes: true,
        ..Default::default()
    };
    let err = message(init(options, &mut Scripted::new(&[])).unwrap_err());
    assert!(err.contains("did you mean `question`?"), "{err}");
}

#[test]
fn the_terminal_prompter_reads_numbers_names_and_defaults() {
    let input = b"2\n\nmaybe\nn\n0.3\n".as_slice();
    let mut output = Vec::new();
    let mut prompter = TerminalPrompter::new(input, &mut output);
    let choices = vec!["id".to_string(), "question".to_string()];
    assert_eq!(prompter.select("Which?", &choices, 0).unwrap(), 1);
    assert!(prompter.confirm("Split?", true).unwrap());
    assert!(!prompter.confirm("Shuffle?", true).unwrap());
    assert_eq!(prompter.input("Fraction?", "0.2").unwrap(), "0.3");
    let err = message(prompter.input("More?", "x").unwrap_err());
    assert!(err.contains("input closed"), "{err}");
    let shown = String::from_utf8(output).unwrap();
    assert!(shown.contains("  2) question"), "{shown}");
    assert!(shown.contains("answer y or n"), "{shown}");
}

/// A model that takes fewer than 128 tokens gets its own limit as `max_length` (else the
/// first run fails at finetune), and the tokenize stage's comment names the model's own
/// tokenizer rather than a trained BPE.
#[test]
fn a_hub_models_positions_bound_max_length() {
    let ws = Workspace::new();
    questions_csv(&ws);
    let config = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/llama/checkpoint/config.json"
    ))
    .unwrap();
    let cache = fake_cache_of(&[("short", &config)]);
    let output = ws.path().join("short.yaml");
    for (model, want) in [("org/short", 64), ("tiny", 128)] {
        let options = InitOptions {
            from: Some(ws.path().join("data/questions.csv")),
            output: Some(output.clone()),
            model: Some(ModelChoice::parse(model).unwrap()),
            hub_cache: Some(cache.path().to_path_buf()),
            epochs: Some(1),
            device: Some("cpu".into()),
            yes: true,
            force: true,
            ..Default::default()
        };
        init(options, &mut Scripted::new(&[])).unwrap();
        assert_eq!(
            stage_params(&output, "tokenize")["max_length"],
            json!(want),
            "{model}"
        );
        let text = std::fs::read_to_string(&output).unwrap();
        assert_eq!(
            text.contains("model's own tokenizer;"),
            model == "org/short",
            "{text}"
        );
    }
}
