//! Test helpers: a workspace folder with fixture files, a reporter that
//! records notes, and a runner that drives a stage through `check` and `run`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use arrow::array::{Array, AsArray, RecordBatch, RecordBatchReader};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pipe_engine::{Input, Outcome, Reporter, RunContext, Stage};
use serde_json::Value;
use tempfile::TempDir;

/// Records notes; progress bars are hidden.
#[derive(Default)]
pub struct TestReporter {
    notes: Mutex<Vec<String>>,
}

impl TestReporter {
    /// The notes so far.
    pub fn notes(&self) -> Vec<String> {
        self.notes.lock().expect("reporter lock").clone()
    }
}

impl Reporter for TestReporter {
    fn note(&self, message: &str) {
        self.notes
            .lock()
            .expect("reporter lock")
            .push(message.to_string());
    }

    fn progress(&self, _total: u64, _unit: &str) -> indicatif::ProgressBar {
        indicatif::ProgressBar::hidden()
    }
}

/// A temporary manifest folder holding fixture files.
pub struct Workspace {
    dir: TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        Workspace {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a fixture file (folders created as needed).
    pub fn file(&self, rel: &str, content: impl AsRef<[u8]>) -> &Self {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write fixture");
        self
    }

    /// Runs the registered kind `kind`.
    pub fn run(&self, kind: &str, params: Value, inputs: &[Input]) -> anyhow::Result<Ran> {
        let registry = pipe_stages::registry();
        let stage = registry.get(kind).expect("registered kind");
        self.run_stage(stage, params, inputs)
    }

    /// Runs `stage` through `check` then `run`, into a fresh output folder.
    pub fn run_stage(
        &self,
        stage: &dyn Stage,
        params: Value,
        inputs: &[Input],
    ) -> anyhow::Result<Ran> {
        let scratch = tempfile::tempdir()?;
        self.run_stage_in(stage, params, inputs, scratch.path())
    }

    /// Runs the registered kind `kind` with `scratch` as its scratch folder, which a test
    /// keeps across runs to see what a stage leaves there (checkpoints).
    pub fn run_with_scratch(
        &self,
        kind: &str,
        params: Value,
        inputs: &[Input],
        scratch: &Path,
    ) -> anyhow::Result<Ran> {
        let registry = pipe_stages::registry();
        let stage = registry.get(kind).expect("registered kind");
        self.run_stage_in(stage, params, inputs, scratch)
    }

    fn run_stage_in(
        &self,
        stage: &dyn Stage,
        params: Value,
        inputs: &[Input],
        scratch: &Path,
    ) -> anyhow::Result<Ran> {
        let checked = stage
            .check(&params)
            .map_err(|e| anyhow::anyhow!("{e} at {:?}", e.path))?;
        let out = tempfile::tempdir()?;
        let log = scratch.join("stage.log");
        let reporter = TestReporter::default();
        let ctx = RunContext {
            stage: stage.kind(),
            key: "0000",
            params: &params,
            workspace: self.path(),
            out_dir: out.path(),
            scratch_dir: scratch,
            inputs,
            run: None,
            outs: &[],
            log_path: &log,
            reporter: &reporter,
        };
        let outcome = stage.run(&ctx)?;
        let notes = reporter.notes.into_inner().expect("reporter lock");
        Ok(Ran {
            out,
            outcome,
            notes,
            key_params: checked.key_params,
            deps: checked.workspace_deps,
        })
    }
}

/// A finished run.
#[derive(Debug)]
pub struct Ran {
    pub out: TempDir,
    pub outcome: Outcome,
    pub notes: Vec<String>,
    pub key_params: Value,
    pub deps: Vec<String>,
}

impl Ran {
    /// The outputs as the input of a downstream stage.
    pub fn input(&self, stage: &str) -> Input {
        let mut outputs = BTreeMap::new();
        for entry in std::fs::read_dir(self.out.path()).expect("read out dir") {
            let path = entry.expect("entry").path();
            let name = path
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .into_owned();
            outputs.insert(name, path);
        }
        Input {
            name: stage.to_string(),
            stage: stage.to_string(),
            outputs,
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.out.path().join(file)
    }

    pub fn json(&self, file: &str) -> Value {
        let text = std::fs::read_to_string(self.path(file)).expect("read json output");
        serde_json::from_str(&text).expect("valid json")
    }

    /// Output file names, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.out.path())
            .expect("read out dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    pub fn notes_contain(&self, needle: &str) -> bool {
        self.notes.iter().any(|n| n.contains(needle))
    }
}

/// All rows of a Parquet file in one batch.
pub fn read_parquet(path: &Path) -> RecordBatch {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).expect("open parquet"))
        .expect("parquet")
        .build()
        .expect("reader");
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.map(|b| b.expect("batch")).collect();
    arrow::compute::concat_batches(&schema, &batches).expect("concat")
}

/// A utf8 column as strings.
pub fn strings(batch: &RecordBatch, column: &str) -> Vec<String> {
    let array = batch
        .column_by_name(column)
        .unwrap_or_else(|| panic!("no column {column}"));
    array
        .as_string::<i32>()
        .iter()
        .map(|v| v.expect("non-null").to_string())
        .collect()
}

/// A list<utf8> column as vectors of strings.
pub fn string_lists(batch: &RecordBatch, column: &str) -> Vec<Vec<String>> {
    let array = batch
        .column_by_name(column)
        .unwrap_or_else(|| panic!("no column {column}"));
    let list = array.as_list::<i32>();
    (0..list.len())
        .map(|i| {
            list.value(i)
                .as_string::<i32>()
                .iter()
                .map(|v| v.expect("item").to_string())
                .collect()
        })
        .collect()
}

/// A list<int32> column as vectors.
pub fn int_lists(batch: &RecordBatch, column: &str) -> Vec<Vec<i32>> {
    let array = batch
        .column_by_name(column)
        .unwrap_or_else(|| panic!("no column {column}"));
    let list = array.as_list::<i32>();
    (0..list.len())
        .map(|i| {
            let values = list.value(i);
            values
                .as_primitive::<arrow::datatypes::Int32Type>()
                .values()
                .to_vec()
        })
        .collect()
}

/// An int32 column.
pub fn ints(batch: &RecordBatch, column: &str) -> Vec<i32> {
    let array = batch
        .column_by_name(column)
        .unwrap_or_else(|| panic!("no column {column}"));
    array
        .as_primitive::<arrow::datatypes::Int32Type>()
        .values()
        .to_vec()
}

/// The message of an error with its causes, as the CLI would print them.
pub fn message(err: anyhow::Error) -> String {
    format!("{err:#}")
}

/// A CSV of `n` rows over `labels` with distinct texts, cycling through the labels.
pub fn labelled_csv(n: usize, labels: &[&str]) -> String {
    let mut csv = String::from("text,label\n");
    for i in 0..n {
        let label = labels[i % labels.len()];
        csv.push_str(&format!(
            "question number {i} about {label} and more words,{label}\n"
        ));
    }
    csv
}

/// The error message of a run that must fail.
pub fn failure(run: anyhow::Result<Ran>) -> String {
    message(run.expect_err("the stage fails"))
}
