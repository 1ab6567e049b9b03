//! Stage metrics as `pipe metrics` shows them: flattened, compared between two
//! lockfiles, and numbers written compactly.
//!
//! A stage records its metrics as a JSON object, nested or not:
//! `{"test": {"accuracy": 0.91, "confusion": [[5, 1], [0, 6]]}, "steps": 300}`.
//! Flattened, nested objects become dotted names (`test.accuracy`); anything
//! else (a number, a string, an array such as a confusion matrix) is a leaf.

use serde::Serialize;
use serde_json::{Map, Number, Value};

use pipe_engine::lockfile::LockFile;

/// One stage's metrics, flattened: dotted name → leaf value, in recorded order.
pub type Flat = Map<String, Value>;

/// The flattened metrics of a pipeline's stages, in stage order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    stages: Vec<(String, Flat)>,
}

impl Metrics {
    /// The metrics in `lock`: the stages named in `order` (the pipeline's
    /// order) first, then any others the lockfile holds, by name. Stages
    /// that recorded no metrics are left out.
    pub fn of_lock(lock: &LockFile, order: &[&str]) -> Metrics {
        let mut stages: Vec<(String, Flat)> = lock
            .stages
            .iter()
            .filter(|(_, entry)| !entry.metrics.is_empty())
            .map(|(name, entry)| (name.clone(), flatten(&entry.metrics)))
            .collect();
        stages.sort_by(|(a, _), (b, _)| rank(order, a).cmp(&rank(order, b)));
        Metrics { stages }
    }

    /// Only the numeric metrics: what a table can show.
    pub fn numeric(&self) -> Metrics {
        let stages = self
            .stages
            .iter()
            .map(|(name, flat)| {
                let numbers = flat
                    .iter()
                    .filter(|(_, value)| value.is_number())
                    .map(|(metric, value)| (metric.clone(), value.clone()))
                    .collect();
                (name.clone(), numbers)
            })
            .filter(|(_, flat): &(String, Flat)| !flat.is_empty())
            .collect();
        Metrics { stages }
    }

    /// Each stage's name and flattened metrics, in stage order.
    pub fn stages(&self) -> impl Iterator<Item = (&str, &Flat)> {
        self.stages.iter().map(|(name, flat)| (name.as_str(), flat))
    }

    /// True when no stage has a metric.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// `{stage: {metric: value}}`, stages in order: the `pipe metrics --json` document.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.stages
                .iter()
                .map(|(name, flat)| (name.clone(), Value::Object(flat.clone())))
                .collect(),
        )
    }

    fn stage(&self, name: &str) -> Option<&Flat> {
        self.stages.iter().find(|(n, _)| n == name).map(|(_, f)| f)
    }
}

/// A stage's position: its index in `order`, or after all of them (then by name).
fn rank<'a>(order: &[&str], name: &'a str) -> (usize, &'a str) {
    let position = order.iter().position(|o| *o == name);
    (position.unwrap_or(order.len()), name)
}

/// `metrics` with nested objects flattened to dotted names.
pub fn flatten(metrics: &Map<String, Value>) -> Flat {
    fn walk(prefix: &str, metrics: &Map<String, Value>, into: &mut Flat) {
        for (key, value) in metrics {
            let name = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                Value::Object(inner) => walk(&name, inner, into),
                leaf => {
                    into.insert(name, leaf.clone());
                }
            }
        }
    }
    let mut flat = Flat::new();
    walk("", metrics, &mut flat);
    flat
}

/// One metric of one stage in two runs.
///
/// `pipe metrics --diff --json` prints a list of these as
/// `{"stage", "metric", "old", "new", "delta"}`: `old` or `new` is null when
/// the metric is missing on that side; `delta` is `new - old` when both are
/// numbers (an integer when both are), else null.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// The stage.
    pub stage: String,
    /// The flattened metric name.
    pub metric: String,
    /// Its value in the older lockfile.
    pub old: Option<Value>,
    /// Its value in the newer lockfile.
    pub new: Option<Value>,
    /// `new - old`, for numbers.
    pub delta: Option<Number>,
}

impl Change {
    fn new(stage: &str, metric: &str, old: Option<&Value>, new: Option<&Value>) -> Change {
        let delta = match (old, new) {
            (Some(Value::Number(old)), Some(Value::Number(new))) => difference(old, new),
            _ => None,
        };
        Change {
            stage: stage.to_string(),
            metric: metric.to_string(),
            old: old.cloned(),
            new: new.cloned(),
            delta,
        }
    }

    /// Whether the value changed. Numbers compare by value, so `1` equals `1.0`.
    pub fn changed(&self) -> bool {
        match (&self.old, &self.new) {
            (Some(Value::Number(old)), Some(Value::Number(new))) => old.as_f64() != new.as_f64(),
            (old, new) => old != new,
        }
    }
}

/// `new - old`: exact for integers, else in floating point.
fn difference(old: &Number, new: &Number) -> Option<Number> {
    if let (Some(old), Some(new)) = (old.as_i64(), new.as_i64())
        && let Some(delta) = new.checked_sub(old)
    {
        return Some(delta.into());
    }
    Number::from_f64(new.as_f64()? - old.as_f64()?)
}

/// Every metric of `old` and `new`, paired, changed or not. Stages follow
/// `order` as in [`Metrics::of_lock`]; within a stage, `new`'s metrics come
/// first, then those only `old` has.
pub fn compare(old: &Metrics, new: &Metrics, order: &[&str]) -> Vec<Change> {
    let mut names: Vec<&str> = new.stages().map(|(name, _)| name).collect();
    for (name, _) in old.stages() {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.sort_by(|a, b| rank(order, a).cmp(&rank(order, b)));
    let empty = Flat::new();
    let mut changes = Vec::new();
    for stage in names {
        let old = old.stage(stage).unwrap_or(&empty);
        let new = new.stage(stage).unwrap_or(&empty);
        let only_old = old.keys().filter(|metric| !new.contains_key(*metric));
        for metric in new.keys().chain(only_old) {
            changes.push(Change::new(stage, metric, old.get(metric), new.get(metric)));
        }
    }
    changes
}

/// A metric value for a table: integers whole, other numbers with 4
/// significant digits like C's `%.4g`, without trailing zeros and with a
/// short exponent: `0.9123`, `123.5`, `4812`, `1.235e4`, `1.2e-5`.
pub fn format_number(number: &Number) -> String {
    if number.is_i64() || number.is_u64() {
        return number.to_string();
    }
    let Some(x) = number.as_f64() else {
        // Only with serde_json's arbitrary precision, which we do not enable.
        return number.to_string();
    };
    if x == 0.0 {
        return "0".into();
    }
    // `{:.3e}` rounds to 4 significant digits and gives the exponent after
    // rounding (9.99996 → 1.000e1), which decides the notation as in `%g`.
    let scientific = format!("{x:.3e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` always writes an exponent");
    let exponent: i32 = exponent
        .parse()
        .expect("`{:e}` writes the exponent as an integer");
    if (-4..4).contains(&exponent) {
        let decimals = (3 - exponent) as usize;
        trim_zeros(&format!("{x:.decimals$}")).to_string()
    } else {
        format!("{}e{exponent}", trim_zeros(mantissa))
    }
}

/// `0.9100` → `0.91`, `2.000` → `2`; numbers without a point are left alone.
fn trim_zeros(number: &str) -> &str {
    if number.contains('.') {
        number.trim_end_matches('0').trim_end_matches('.')
    } else {
        number
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipe_engine::Digest;
    use pipe_engine::key::KeyRecord;
    use pipe_engine::lockfile::LockEntry;
    use serde_json::json;

    fn lock(stages: &[(&str, Value)]) -> LockFile {
        let record = KeyRecord {
            kind: "command".into(),
            kind_version: 1,
            params: json!({}),
            run: None,
            outs: vec![],
            inputs: Default::default(),
        };
        LockFile {
            manifest: None,
            pipeline: "p".into(),
            stages: stages
                .iter()
                .map(|(name, metrics)| {
                    let entry = LockEntry {
                        key: Digest::of(name.as_bytes()),
                        record: record.clone(),
                        outputs: Default::default(),
                        metrics: metrics.as_object().expect("an object").clone(),
                    };
                    (name.to_string(), entry)
                })
                .collect(),
        }
    }

    #[test]
    fn nested_objects_flatten_to_dotted_names_and_arrays_stay_leaves() {
        let metrics = json!({"steps": 300, "test": {"accuracy": 0.9, "per_class": {"a": 1}, "confusion": [[1, 0], [0, 1]]}});
        let flat = flatten(metrics.as_object().unwrap());
        assert_eq!(
            Value::Object(flat),
            json!({"steps": 300, "test.accuracy": 0.9, "test.per_class.a": 1, "test.confusion": [[1, 0], [0, 1]]})
        );
    }

    #[test]
    fn stages_follow_the_pipeline_order_then_their_names() {
        let lock = lock(&[
            ("zeta", json!({"x": 1})),
            ("evaluate", json!({"x": 1})),
            ("alpha", json!({"x": 1})),
            ("ingest", json!({"x": 1})),
            ("command", json!({})),
        ]);
        let metrics = Metrics::of_lock(&lock, &["ingest", "command", "evaluate"]);
        let names: Vec<&str> = metrics.stages().map(|(n, _)| n).collect();
        assert_eq!(names, ["ingest", "evaluate", "alpha", "zeta"]);
    }

    #[test]
    fn numeric_keeps_numbers_only_and_drops_stages_left_empty() {
        let lock = lock(&[
            ("a", json!({"n": 2, "s": "text", "m": [[1]], "b": true})),
            ("b", json!({"s": "only text"})),
        ]);
        let numeric = Metrics::of_lock(&lock, &[]).numeric();
        assert_eq!(numeric.to_json(), json!({"a": {"n": 2}}));
    }

    #[test]
    fn compare_pairs_metrics_with_deltas_and_missing_sides() {
        let old = lock(&[("s", json!({"acc": 0.5, "rows": 10, "gone": 1, "same": 2.0}))]);
        let new = lock(&[
            (
                "s",
                json!({"acc": 0.75, "rows": 7, "same": 2, "label": "x"}),
            ),
            ("t", json!({"n": 1})),
        ]);
        let order = ["t", "s"];
        let changes = compare(
            &Metrics::of_lock(&old, &order),
            &Metrics::of_lock(&new, &order),
            &order,
        );
        let rows: Vec<(String, String, bool, Value)> = changes
            .iter()
            .map(|c| {
                let delta = serde_json::to_value(&c.delta).unwrap();
                (c.stage.clone(), c.metric.clone(), c.changed(), delta)
            })
            .collect();
        let row = |s: &str, m: &str, changed, delta| (s.into(), m.into(), changed, delta);
        assert_eq!(
            rows,
            vec![
                row("t", "n", true, Value::Null),
                row("s", "acc", true, json!(0.25)),
                row("s", "rows", true, json!(-3)),
                row("s", "same", false, json!(0.0)),
                row("s", "label", true, Value::Null),
                row("s", "gone", true, Value::Null),
            ]
        );
        let gone = changes.last().unwrap();
        assert_eq!((&gone.old, &gone.new), (&Some(json!(1)), &None));
    }

    #[test]
    fn numbers_have_four_significant_digits_and_integers_stay_whole() {
        let cases = [
            (json!(0.912345), "0.9123"),
            (json!(123.456), "123.5"),
            (json!(4812.37), "4812"),
            (json!(9999.7), "1e4"),
            (json!(12345.6), "1.235e4"),
            (json!(0.00012346), "0.0001235"),
            (json!(0.000012), "1.2e-5"),
            (json!(-0.5), "-0.5"),
            (json!(2.0), "2"),
            (json!(0.0), "0"),
            (json!(123456789), "123456789"),
            (json!(-3), "-3"),
        ];
        for (value, expected) in cases {
            let Value::Number(number) = &value else {
                unreachable!()
            };
            assert_eq!(format_number(number), expected, "{value}");
        }
    }
}
