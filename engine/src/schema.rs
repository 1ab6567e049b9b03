//! The JSON Schema of a manifest, assembled from the kinds' parameter schemas.
//!
//! `schemas/pipeline.schema.json` is this function's output for the kinds
//! `pipe` ships (`pipe schema` prints it; a test keeps the file current).
//! A stage named after a kind gets that kind's parameters; any other stage
//! must say `uses: <kind>` or have a `run:` command. `matrix:` lists values
//! of the same parameters.

use serde_json::{Map, Value, json};

use crate::stage::Registry;

/// The manifest schema (JSON Schema 2020-12) for the kinds in `registry`.
pub fn pipeline_schema(registry: &Registry) -> Value {
    let mut defs = Map::new();
    let mut named = Map::new();
    let mut by_uses = Vec::new();
    for kind in registry.iter() {
        let name = kind.kind();
        let params = kind.params_schema();
        let stage_def = format!("stage.{name}");
        defs.insert(
            stage_def.clone(),
            stage_schema(name, kind.summary(), kind.takes_run(), &params),
        );
        // Hoist the kind's own $defs under a prefix, and point its $refs there.
        if let Some(own) = params.get("$defs").and_then(Value::as_object) {
            for (def, schema) in own {
                defs.insert(format!("{name}.{def}"), rewrite_refs(schema, name));
            }
        }
        named.insert(
            name.to_string(),
            json!({ "$ref": format!("#/$defs/{stage_def}") }),
        );
        by_uses.push(json!({
            "if": { "properties": { "uses": { "const": name } }, "required": ["uses"] },
            "then": { "$ref": format!("#/$defs/{stage_def}") }
        }));
        if kind.takes_run() {
            by_uses.push(json!({
                "if": { "not": { "required": ["uses"] }, "required": ["run"] },
                "then": { "$ref": format!("#/$defs/{stage_def}") }
            }));
        }
    }
    let kinds: Vec<&str> = registry.names();
    defs.insert(
        "stage.by-uses".into(),
        json!({
            "type": "object",
            "anyOf": [ { "required": ["uses"] }, { "required": ["run"] } ],
            "properties": { "uses": { "enum": kinds } },
            "allOf": by_uses
        }),
    );
    defs.insert(
        "stage-ref".into(),
        json!({ "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]*(\\.[A-Za-z0-9_-]+)?$" }),
    );
    defs.insert(
        "path-list".into(),
        json!({
            "oneOf": [
                { "type": "string", "minLength": 1 },
                { "type": "array", "items": { "type": "string", "minLength": 1 } }
            ]
        }),
    );
    defs.insert("resources".into(), crate::manifest::resources::schema());
    let mut stage_names = Map::new();
    stage_names.insert("pattern".into(), json!("^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"));
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/pipe-ml/pipe/schemas/pipeline.schema.json",
        "title": "pipe manifest",
        "description": "A pipeline of content-hashed stages. See README.md.",
        "type": "object",
        "additionalProperties": false,
        "required": ["stages"],
        "properties": {
            "pipeline": { "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", "description": "The pipeline's name (default: the file's stem)." },
            "description": { "type": "string" },
            "remote": { "type": "string", "description": "A cache shared between clones: `s3://bucket/prefix` (also gs://, az://, file://). The PIPE_REMOTE environment variable wins." },
            "executor": { "enum": crate::manifest::ExecutorChoice::NAMES, "description": "Where stages that must run execute: `local` (the default) or `slurm` (one job each). `pipe run --executor` wins." },
            "resources": { "$ref": "#/$defs/resources", "description": "The default `resources` of every stage." },
            "stages": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": Value::Object(stage_names),
                "properties": Value::Object(named),
                "additionalProperties": { "$ref": "#/$defs/stage.by-uses" }
            }
        },
        "$defs": Value::Object(defs)
    })
}

/// One kind's stage: the reserved keys plus the kind's parameters, nothing else.
fn stage_schema(name: &str, summary: &str, takes_run: bool, params: &Value) -> Value {
    let mut properties = Map::new();
    properties.insert("uses".into(), json!({ "const": name }));
    properties.insert("description".into(), json!({ "type": "string" }));
    properties.insert("from".into(), json!({
        "description": "Upstream stages: a name, `stage.output`, a list of those, or a map of input name to stage.",
        "oneOf": [
            { "$ref": "#/$defs/stage-ref" },
            { "type": "array", "items": { "$ref": "#/$defs/stage-ref" } },
            { "type": "object", "additionalProperties": { "$ref": "#/$defs/stage-ref" } }
        ]
    }));
    properties.insert("deps".into(), json!({ "$ref": "#/$defs/path-list", "description": "Workspace files or folders this stage reads." }));
    properties.insert("resources".into(), json!({ "$ref": "#/$defs/resources" }));
    if takes_run {
        properties.insert("run".into(), json!({ "type": "string", "minLength": 1, "description": "Shell command, run with `sh -c` in the manifest's folder." }));
        properties.insert("outs".into(), json!({ "$ref": "#/$defs/path-list", "description": "Workspace files or folders the command writes." }));
    }
    let mut own = Map::new();
    if let Some(props) = params.get("properties").and_then(Value::as_object) {
        for (key, schema) in props {
            own.insert(key.clone(), rewrite_refs(schema, name));
        }
    }
    properties.insert("matrix".into(), matrix_schema(&own));
    properties.extend(own);
    let mut schema = json!({
        "type": "object",
        "description": summary,
        "properties": Value::Object(properties),
        "additionalProperties": false
    });
    let required: Vec<Value> = params
        .get("required")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // A required parameter may be given by every combination of `matrix:` instead.
    let all_of: Vec<Value> = required
        .iter()
        .map(|p| json!({ "anyOf": [ { "required": [p] }, { "required": ["matrix"] } ] }))
        .collect();
    if takes_run {
        schema["required"] = json!(["run"]);
    }
    if !all_of.is_empty() {
        schema["allOf"] = Value::Array(all_of);
    }
    schema
}

/// `matrix:` of a kind with parameters `params`: a mapping of parameter to a non-empty
/// list of its values, or a non-empty list of combinations (see `matrix.rs`).
fn matrix_schema(params: &Map<String, Value>) -> Value {
    let lists: Map<String, Value> = params
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                json!({ "type": "array", "minItems": 1, "items": v }),
            )
        })
        .collect();
    let mut combination = params.clone();
    combination.insert(
        "member".into(),
        json!({ "type": "string", "minLength": 1, "description": "Names this combination's member (`<stage>@<member>`) instead of its values." }),
    );
    json!({
        "description": "One member per combination of values, each a stage named `<stage>@<slug>`: a mapping of parameter to its values, or a list of combinations.",
        "oneOf": [
            { "type": "object", "minProperties": 1, "properties": Value::Object(lists), "additionalProperties": false },
            {
                "type": "array",
                "minItems": 1,
                "items": { "type": "object", "minProperties": 1, "properties": Value::Object(combination), "additionalProperties": false }
            }
        ]
    })
}

/// Rewrites `#/$defs/X` to `#/$defs/<kind>.X` inside a kind's schema.
fn rewrite_refs(schema: &Value, kind: &str) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => match r.strip_prefix("#/$defs/") {
                        Some(def) => (k.clone(), Value::String(format!("#/$defs/{kind}.{def}"))),
                        None => (k.clone(), v.clone()),
                    },
                    _ => (k.clone(), rewrite_refs(v, kind)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| rewrite_refs(v, kind)).collect()),
        other => other.clone(),
    }
}
