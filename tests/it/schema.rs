//! schemas/pipeline.schema.json: current, accepting our manifests, rejecting bad ones.

use std::path::Path;

use serde_json::Value;

use crate::malformed::BAD_MANIFESTS;
use crate::util::Project;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn committed_schema() -> Value {
    let text = std::fs::read_to_string(repo().join("schemas/pipeline.schema.json"))
        .expect("the schema file exists");
    serde_json::from_str(&text).expect("the schema is JSON")
}

fn yaml_to_json(text: &str) -> Option<Value> {
    pipe_engine::yaml::parse(text).ok().map(|n| n.to_json())
}

#[test]
fn the_committed_schema_is_what_pipe_generates() {
    let out = Project::new().pipe(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let generated: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        generated == committed_schema(),
        "schemas/pipeline.schema.json is stale: run `cargo run -q -- schema > schemas/pipeline.schema.json`"
    );
}

#[test]
fn every_manifest_under_pipelines_is_valid_for_the_schema_and_the_engine() {
    let validator = jsonschema::validator_for(&committed_schema()).expect("the schema compiles");
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        seen += 1;
        let instance = yaml_to_json(&std::fs::read_to_string(&path).unwrap()).expect("valid YAML");
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        let out = Project::new().pipe(&["validate", path.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            crate::util::stderr(&out)
        );
    }
    assert!(seen > 0, "pipelines/ holds manifests");
}

/// Bad manifests whose problem a schema can see (not cycles, paths or references).
const SCHEMA_DETECTABLE: &[&str] = &[
    "top level is a list",
    "top level is a scalar",
    "no stages",
    "stages is a list",
    "stages is empty",
    "unknown top-level key",
    "bad pipeline name",
    "stage is a scalar",
    "unknown kind",
    "no kind at all",
    "run is a list",
    "deps is a mapping",
    "unknown parameter",
    "wrong parameter type",
    "from is a number",
    "outs on a non-command kind",
    "run on a non-command kind",
    "invalid stage name",
    "matrix values are not a list",
    "command without run",
    "unknown executor",
    "unknown resource",
];

#[test]
fn bad_manifests_are_rejected_by_the_schema_too() {
    let validator = jsonschema::validator_for(&committed_schema()).expect("the schema compiles");
    for name in SCHEMA_DETECTABLE {
        let (_, text, _, _) = BAD_MANIFESTS
            .iter()
            .find(|(what, ..)| what == name)
            .expect("a known case");
        let instance = yaml_to_json(text).unwrap_or_else(|| panic!("{name}: parses as YAML"));
        assert!(
            !validator.is_valid(&instance),
            "{name}: the schema accepts it"
        );
    }
}
