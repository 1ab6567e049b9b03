//! Where stages run: `executor:` ([`ExecutorChoice`]) and `resources:`, what a stage asks of a
//! cluster scheduler: on a stage, or at
//! the top of a manifest as the default of every stage. They change where and
//! how a stage runs, never what it produces, so they are not part of its key.
//!
//! ```yaml
//! resources: { partition: cpu, time: "1:00:00" }   # defaults
//! stages:
//!   finetune:
//!     resources: { cpus: 8, mem: 32G, gpus: 1, time: "12:00:00", partition: gpu, account: ml }
//! ```

use std::path::Path;

use crate::diag::{Diagnostic, did_you_mean};
use crate::yaml::{Node, NodeKind};

/// The executors a manifest's `executor:` or `--executor` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorChoice {
    /// In the `pipe run` process (the default).
    Local,
    /// One Slurm job per stage that must run.
    Slurm,
}

impl ExecutorChoice {
    /// The names, as written.
    pub const NAMES: &[&str] = &["local", "slurm"];

    /// The executor named `name`.
    pub fn from_name(name: &str) -> Option<ExecutorChoice> {
        match name {
            "local" => Some(ExecutorChoice::Local),
            "slurm" => Some(ExecutorChoice::Slurm),
            _ => None,
        }
    }

    /// Parses a manifest's `executor:` value, pushing a located error when it names none.
    pub fn parse(file: &Path, node: &Node, errors: &mut Vec<Diagnostic>) -> Option<ExecutorChoice> {
        let found = node.as_str().and_then(ExecutorChoice::from_name);
        if found.is_none() {
            let written = node.as_str().unwrap_or(node.type_name());
            errors.push(
                Diagnostic::at(file, node.span, format!("unknown executor `{written}`"))
                    .help(format!("write one of: {}", Self::NAMES.join(", "))),
            );
        }
        found
    }
}

/// The keys of `resources:`.
pub const RESOURCE_KEYS: &[&str] = &["cpus", "mem", "gpus", "time", "partition", "account"];

/// What a stage asks of the scheduler; `None` leaves a value to the scheduler's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPUs for the stage's one task.
    pub cpus: Option<u32>,
    /// Memory, as Slurm writes it: a number of megabytes, or with a unit (`512M`, `16G`).
    pub mem: Option<String>,
    /// GPUs.
    pub gpus: Option<u32>,
    /// Wall-time limit, as Slurm writes it (`30`, `0:30`, `1:00:00`, `2-00:00:00`).
    pub time: Option<String>,
    /// The partition (queue).
    pub partition: Option<String>,
    /// The account charged.
    pub account: Option<String>,
}

impl Resources {
    /// These resources, with every value left out taken from `defaults`.
    pub fn or(&self, defaults: &Resources) -> Resources {
        Resources {
            cpus: self.cpus.or(defaults.cpus),
            mem: self.mem.clone().or_else(|| defaults.mem.clone()),
            gpus: self.gpus.or(defaults.gpus),
            time: self.time.clone().or_else(|| defaults.time.clone()),
            partition: self
                .partition
                .clone()
                .or_else(|| defaults.partition.clone()),
            account: self.account.clone().or_else(|| defaults.account.clone()),
        }
    }
}

/// The JSON Schema of `resources:`.
pub fn schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "description": "What the stage asks of a cluster scheduler (`--executor slurm`); not part of the stage key.",
        "additionalProperties": false,
        "properties": {
            "cpus": { "type": "integer", "minimum": 1, "description": "CPUs (`--cpus-per-task`)." },
            "mem": { "type": ["string", "integer"], "pattern": "^[0-9]+[KMGTkmgt]?$", "description": "Memory: megabytes, or with a unit K, M, G, T (`--mem`)." },
            "gpus": { "type": "integer", "minimum": 0, "description": "GPUs (`--gres=gpu:N`)." },
            "time": { "type": ["string", "integer"], "description": "Wall-time limit: minutes, `MM:SS`, `HH:MM:SS` or `D-HH:MM:SS` (`--time`)." },
            "partition": { "type": "string", "description": "The partition (`--partition`)." },
            "account": { "type": "string", "description": "The account charged (`--account`)." }
        }
    })
}

/// Parses a `resources:` mapping, pushing an error located at each bad key or value.
pub fn parse(file: &Path, node: &Node, errors: &mut Vec<Diagnostic>) -> Option<Resources> {
    let Some(entries) = node.as_map() else {
        errors.push(
            Diagnostic::at(
                file,
                node.span,
                format!("`resources` must be a mapping, not {}", node.type_name()),
            )
            .help("write e.g. `resources: { cpus: 4, mem: 16G, gpus: 1, time: \"2:00:00\" }`"),
        );
        return None;
    };
    let before = errors.len();
    let mut resources = Resources::default();
    for (key, key_node, value) in entries {
        let text = match &value.kind {
            NodeKind::Scalar { text, .. } if !text.trim().is_empty() => text.trim(),
            _ => {
                errors.push(Diagnostic::at(
                    file,
                    value.span,
                    format!(
                        "`resources.{key}` must be a value, not {}",
                        value.type_name()
                    ),
                ));
                continue;
            }
        };
        let bad = |what: &str, help: &str| {
            Diagnostic::at(file, value.span, format!("`resources.{key}`: {what}")).help(help)
        };
        match key.as_str() {
            "cpus" => match text.parse::<u32>() {
                Ok(n) if n > 0 => resources.cpus = Some(n),
                _ => errors.push(bad(
                    &format!("`{text}` is not a number of CPUs"),
                    "write a whole number of at least 1, e.g. `cpus: 4`",
                )),
            },
            "gpus" => match text.parse::<u32>() {
                Ok(n) => resources.gpus = Some(n),
                _ => errors.push(bad(
                    &format!("`{text}` is not a number of GPUs"),
                    "write a whole number, e.g. `gpus: 1`",
                )),
            },
            "mem" if is_memory(text) => resources.mem = Some(text.to_string()),
            "mem" => errors.push(bad(
                &format!("`{text}` is not an amount of memory"),
                "write megabytes (`4096`) or a number with a unit K, M, G or T (`16G`)",
            )),
            "time" if is_time(text) => resources.time = Some(text.to_string()),
            "time" => errors.push(bad(
                &format!("`{text}` is not a time limit"),
                "write minutes (`30`), `MM:SS`, `HH:MM:SS` or `D-HH:MM:SS`, quoted: `time: \"2:00:00\"`",
            )),
            "partition" => resources.partition = Some(text.to_string()),
            "account" => resources.account = Some(text.to_string()),
            _ => errors.push(
                Diagnostic::at(
                    file,
                    key_node.span,
                    format!(
                        "unknown resource '{key}'{}",
                        did_you_mean(key, RESOURCE_KEYS.iter().copied())
                    ),
                )
                .help(format!("`resources` takes: {}", RESOURCE_KEYS.join(", "))),
            ),
        }
    }
    (errors.len() == before).then_some(resources)
}

/// `4096`, `512M`, `16G`, `1T`: what `sbatch --mem` takes.
fn is_memory(text: &str) -> bool {
    let digits = text.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    text.len() - digits.len() <= 1 && is_number(digits) && digits != "0"
}

/// What `sbatch --time` takes: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`.
fn is_time(text: &str) -> bool {
    let (days, clock) = match text.split_once('-') {
        Some((days, clock)) => (Some(days), clock),
        None => (None, text),
    };
    let parts: Vec<&str> = clock.split(':').collect();
    days.is_none_or(is_number)
        && parts.iter().all(|p| is_number(p))
        && parts.len() <= 3
        && text != "0"
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> (Option<Resources>, Vec<Diagnostic>) {
        let node = crate::yaml::parse(text).unwrap();
        let (_, value) = node.get("resources").unwrap();
        let mut errors = Vec::new();
        let parsed = parse(Path::new("m.yaml"), value, &mut errors);
        (parsed, errors)
    }

    #[test]
    fn every_key_is_read() {
        let (parsed, errors) = parse_text(
            "resources: { cpus: 4, mem: 16G, gpus: 1, time: \"1:30:00\", partition: gpu, account: ml }",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            parsed.unwrap(),
            Resources {
                cpus: Some(4),
                mem: Some("16G".into()),
                gpus: Some(1),
                time: Some("1:30:00".into()),
                partition: Some("gpu".into()),
                account: Some("ml".into()),
            }
        );
    }

    #[test]
    fn bad_values_and_keys_are_located() {
        let (parsed, errors) =
            parse_text("resources:\n  cpus: 0\n  mem: lots\n  time: 1h\n  gpu: 1\n");
        assert!(parsed.is_none());
        let found: Vec<(usize, &str)> = errors
            .iter()
            .map(|e| (e.span.unwrap().line, e.message.as_str()))
            .collect();
        assert_eq!(found.len(), 4, "{found:?}");
        assert_eq!(found[0].0, 2);
        assert!(found[1].1.contains("`lots` is not an amount of memory"));
        assert_eq!(found[2].0, 4);
        assert!(found[3].1.contains("did you mean 'gpus'"), "{}", found[3].1);
    }

    #[test]
    fn time_and_memory_forms() {
        for good in ["30", "0:01", "1:00:00", "2-00:00:00", "2-12", "1-2:30"] {
            assert!(is_time(good), "{good}");
        }
        for bad in ["0", "1h", "1:2:3:4", "-1", "a-1:00", ""] {
            assert!(!is_time(bad), "{bad}");
        }
        for good in ["4096", "512M", "16G", "1t"] {
            assert!(is_memory(good), "{good}");
        }
        for bad in ["0", "16GB", "G", "1.5G", ""] {
            assert!(!is_memory(bad), "{bad}");
        }
    }

    #[test]
    fn a_stage_value_wins_over_the_default() {
        let stage = Resources {
            cpus: Some(2),
            ..Resources::default()
        };
        let defaults = Resources {
            cpus: Some(8),
            partition: Some("cpu".into()),
            ..Resources::default()
        };
        let merged = stage.or(&defaults);
        assert_eq!(merged.cpus, Some(2));
        assert_eq!(merged.partition.as_deref(), Some("cpu"));
    }
}
