//! What a kind reads from its inputs, checked while the manifest is read
//! ([`pipe_engine::Stage::check_inputs`]): `finetune: { from: ingest }` fails `pipe validate`
//! at its `from:` line, saying which stage to point at, instead of failing the run. An input
//! whose outputs the plan does not know yet (a command stage without `outs`, say) is accepted;
//! the run checks it.

use pipe_engine::{ParamError, PlannedInput};

/// Outputs one input must hold, and what usually provides them.
pub(crate) struct Needs<'a> {
    /// The reading kind (`finetune`).
    pub kind: &'a str,
    /// Output names the kind reads.
    pub outputs: &'a [&'a str],
    /// The kind of stage that writes them (`tokenize`), for the hint.
    pub from_kind: &'a str,
}

impl Needs<'_> {
    /// Checks a kind that reads one input (`from: <stage>`).
    pub(crate) fn check_only(&self, inputs: &[PlannedInput<'_>]) -> Result<(), ParamError> {
        match inputs {
            [input] => self.check(input, &["from"]),
            [] => Err(
                ParamError::new(&["from"], format!("{} needs an input", self.kind))
                    .with_help(format!("add `from: <your {} stage>`", self.from_kind)),
            ),
            many => Err(ParamError::new(
                &["from"],
                format!(
                    "{} takes one input, but `from:` names {}",
                    self.kind,
                    many.len()
                ),
            )
            .with_help(format!("name only your {} stage", self.from_kind))),
        }
    }

    /// Checks one input, reporting at `path` (`from`, or `from.model` for a named one).
    pub(crate) fn check(&self, input: &PlannedInput<'_>, path: &[&str]) -> Result<(), ParamError> {
        let Some(outputs) = &input.outputs else {
            return Ok(());
        };
        match self
            .outputs
            .iter()
            .find(|n| !outputs.iter().any(|o| o == *n))
        {
            None => Ok(()),
            Some(missing) => Err(ParamError::new(
                path,
                format!(
                    "stage `{}` has no output `{missing}` ({} reads {}, which a `{}` stage \
                     writes; `{}` has {})",
                    input.stage,
                    self.kind,
                    list(self.outputs),
                    self.from_kind,
                    input.stage,
                    if outputs.is_empty() {
                        "none".to_string()
                    } else {
                        list(outputs)
                    },
                ),
            )
            .with_help(format!("point `from:` at your {} stage", self.from_kind))),
        }
    }
}

/// The input called `name` of a kind that reads named inputs (`from: { model: …, data: … }`).
pub(crate) fn named<'i, 'a>(
    kind: &str,
    inputs: &'i [PlannedInput<'a>],
    name: &str,
    example: &str,
) -> Result<&'i PlannedInput<'a>, ParamError> {
    inputs.iter().find(|i| i.name == name).ok_or_else(|| {
        ParamError::new(&["from"], format!("{kind} needs an input named `{name}`"))
            .with_help(format!("write `from: {example}`"))
    })
}

fn list<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| format!("`{}`", n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEEDS: Needs<'static> = Needs {
        kind: "finetune",
        outputs: &["train", "tokenizer"],
        from_kind: "tokenize",
    };

    fn input<'a>(stage: &'a str, outputs: Option<&[&str]>) -> PlannedInput<'a> {
        PlannedInput {
            name: stage,
            stage,
            outputs: outputs.map(|o| o.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn a_missing_output_names_the_stage_what_it_has_and_where_to_point() {
        let e = NEEDS
            .check_only(&[input("ingest", Some(&["dataset", "labels"]))])
            .unwrap_err();
        assert_eq!(e.path, ["from"]);
        assert!(
            e.message.contains("stage `ingest` has no output `train`")
                && e.message.contains("`ingest` has `dataset`, `labels`"),
            "{}",
            e.message
        );
        assert_eq!(e.help.unwrap(), "point `from:` at your tokenize stage");
    }

    #[test]
    fn unknown_outputs_pass_and_the_input_count_is_checked() {
        NEEDS.check_only(&[input("cmd", None)]).unwrap();
        NEEDS
            .check_only(&[input("t", Some(&["train", "tokenizer", "test"]))])
            .unwrap();
        assert!(NEEDS.check_only(&[]).is_err());
        let two = [input("a", None), input("b", None)];
        assert!(
            NEEDS
                .check_only(&two)
                .unwrap_err()
                .message
                .contains("names 2")
        );
    }
}
