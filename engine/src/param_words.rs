//! Serde's messages about a stage's parameters, in the manifest's words: what the value
//! must be and what it is, never a Rust type name (`u64`, `struct ModelParams`,
//! `untagged enum ModelConfig`).

/// `message` (serde's, about one parameter) in plain words, and a `help:` line when there
/// is one to give. Messages it does not know are returned as they are.
pub(crate) fn plain(message: &str) -> (String, Option<String>) {
    if let Some(field) = between(message, "missing field `", "`") {
        return (
            format!("`{field}` is required"),
            Some(format!("add `{field}:` to the stage")),
        );
    }
    if message.starts_with("data did not match any variant of untagged enum") {
        return (
            "is none of the forms this parameter takes".into(),
            Some("see this stage's section of the README, or `pipe schema`, for its forms".into()),
        );
    }
    let mismatch = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "));
    if let Some((found, expected)) = mismatch.and_then(|rest| rest.split_once(", expected "))
        && let Some(wanted) = expected_words(expected)
    {
        let text = format!("must be {wanted}, not {}", found_words(found));
        let help = wanted
            .starts_with("a mapping")
            .then(|| "write its entries indented below it, or `{ key: value }` on one line".into());
        return (text, help);
    }
    (message.to_string(), None)
}

/// The text between `start` and the next `end` in `text`.
fn between<'t>(text: &'t str, start: &str, end: &str) -> Option<&'t str> {
    let rest = text.split_once(start)?.1;
    Some(rest.split_once(end)?.0)
}

/// Serde's "expected" phrase as the manifest's words; `None` when it names no type.
fn expected_words(expected: &str) -> Option<&'static str> {
    Some(match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number ≥ 0",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a string" | "a character" => "text",
        "a sequence" => "a list",
        "a map" => "a mapping",
        other if other.starts_with("struct ") => "a mapping of its parameters",
        _ => return None,
    })
}

/// Serde's description of the value found (`integer \`-1\``, `string "tiny"`, `map`).
fn found_words(found: &str) -> String {
    let quoted = between(found, "`", "`").or_else(|| between(found, "\"", "\""));
    match (found, quoted) {
        (f, Some(value)) if f.starts_with("string") => format!("`{value}` (text)"),
        (_, Some(value)) => value.to_string(),
        ("map", None) => "a mapping".into(),
        ("sequence", None) => "a list".into(),
        ("unit" | "null" | "Option value", None) => "empty".into(),
        (other, None) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::plain;

    #[test]
    fn type_names_become_words() {
        let cases = [
            (
                "invalid value: integer `-1`, expected u64",
                "must be a whole number ≥ 0, not -1",
            ),
            (
                "invalid type: string \"tiny\", expected struct ModelParams",
                "must be a mapping of its parameters, not `tiny` (text)",
            ),
            (
                "invalid type: string \"fast\", expected f64",
                "must be a number, not `fast` (text)",
            ),
            (
                "invalid type: string \"maybe\", expected a boolean",
                "must be true or false, not `maybe` (text)",
            ),
            (
                "invalid type: sequence, expected a string",
                "must be text, not a list",
            ),
            ("missing field `model`", "`model` is required"),
            (
                "data did not match any variant of untagged enum ModelConfig",
                "is none of the forms this parameter takes",
            ),
            (
                "unknown field `lr`, expected one of `a`, `b`",
                "unknown field `lr`, expected one of `a`, `b`",
            ),
        ];
        for (serde, words) in cases {
            assert_eq!(plain(serde).0, words, "{serde}");
        }
        assert_eq!(
            plain("missing field `model`").1.unwrap(),
            "add `model:` to the stage"
        );
    }
}
