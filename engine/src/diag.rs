//! Located errors in a manifest, collected so one pass reports them all.

use std::fmt;
use std::path::PathBuf;

use crate::yaml::Span;

/// One problem in a manifest, with its place and, when there is one, the fix.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    /// The manifest file.
    pub file: PathBuf,
    /// Line and column, when the problem has a place.
    pub span: Option<Span>,
    /// What is wrong (a short lowercase phrase).
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic at `span` in `file`.
    pub fn at(file: impl Into<PathBuf>, span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.into(),
            span: Some(span),
            message: message.into(),
            help: None,
        }
    }

    /// Adds a hint.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// `file:line:col`, or just the file.
    pub fn location(&self) -> String {
        match self.span {
            Some(s) => format!("{}:{}:{}", self.file.display(), s.line, s.col),
            None => self.file.display().to_string(),
        }
    }

    /// The diagnostic as a few lines: location and message, the source line
    /// with a caret under the column (when `source` is given), and the hint.
    /// A long line is shown as [`SHOWN_CHARS`] characters around the column,
    /// and a long message is cut, so a 5 MB line is never echoed whole.
    pub fn render(&self, source: Option<&str>) -> String {
        let mut out = format!(
            "{}: {}",
            self.location(),
            clip(&self.message, MESSAGE_CHARS)
        );
        if let (Some(span), Some(source)) = (self.span, source)
            && let Some(line) = source.lines().nth(span.line.saturating_sub(1))
        {
            let gutter = span.line.to_string();
            let pad = " ".repeat(gutter.len());
            let before = span.col.saturating_sub(1);
            let start = before.saturating_sub(SHOWN_CHARS / 2);
            let shown: String = line.chars().skip(start).take(SHOWN_CHARS).collect();
            let cut_after = line.chars().nth(start + SHOWN_CHARS).is_some();
            let (lead, tail) = (
                if start > 0 { "…" } else { "" },
                if cut_after { "…" } else { "" },
            );
            let caret_pad: String = lead
                .chars()
                .map(|_| ' ')
                .chain(
                    (line.chars().skip(start).take(before - start))
                        .map(|c| if c == '\t' { '\t' } else { ' ' }),
                )
                .collect();
            out.push_str(&format!(
                "\n{pad} |\n{gutter} | {lead}{shown}{tail}\n{pad} | {caret_pad}^"
            ));
        }
        if let Some(help) = &self.help {
            out.push_str(&format!("\n  help: {help}"));
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(None))
    }
}

/// Every problem found in one manifest.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ManifestError {
    /// The problems, in source order.
    pub diagnostics: Vec<Diagnostic>,
    /// The manifest's text, for rendering source lines.
    pub source_text: Option<String>,
}

impl ManifestError {
    /// A single diagnostic.
    pub fn single(diagnostic: Diagnostic, source_text: Option<String>) -> Self {
        ManifestError {
            diagnostics: vec![diagnostic],
            source_text,
        }
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rendered: Vec<String> = self
            .diagnostics
            .iter()
            .map(|d| d.render(self.source_text.as_deref()))
            .collect();
        f.write_str(&rendered.join("\n\nerror: "))
    }
}

/// The closest of `candidates` to `word`, when it is close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 3.max(word.len().min(c.len()) / 3) && *d < word.len().max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `; did you mean 'x'?` when a close candidate exists, else the empty string.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(word, candidates)
        .map(|c| format!("; did you mean '{c}'?"))
        .unwrap_or_default()
}

/// How many characters of a source line a diagnostic shows.
const SHOWN_CHARS: usize = 120;

/// How many characters of a message a diagnostic shows (a message may quote
/// a value of the manifest).
const MESSAGE_CHARS: usize = 1000;

/// `text`, when longer than `max` characters, as its first two thirds and last third of them
/// around `…`: the end of a message is usually what to do.
fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    let chars = text.chars().count();
    if chars <= max {
        return text.into();
    }
    let head_end = text.char_indices().nth(max * 2 / 3).map_or(0, |(at, _)| at);
    let tail_start = text
        .char_indices()
        .nth(chars - max / 3)
        .map_or(text.len(), |(at, _)| at);
    let cut = text.len() - head_end - (text.len() - tail_start);
    format!(
        "{} … ({cut} bytes cut) … {}",
        &text[..head_end],
        &text[tail_start..]
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let known = ["learning_rate", "epochs", "batch_size"];
        assert_eq!(closest("lerning_rate", known), Some("learning_rate"));
        assert_eq!(closest("epoch", known), Some("epochs"));
        assert_eq!(closest("zzz", known), None);
    }

    #[test]
    fn a_long_line_is_shown_around_its_column_only() {
        let line = format!("key: {}", "x".repeat(5_000_000));
        let d = Diagnostic::at(
            "a.yaml",
            Span {
                line: 1,
                col: 2_000_000,
            },
            "bad",
        );
        let text = d.render(Some(&line));
        assert!(text.len() < 1_000, "{} bytes", text.len());
        let lines: Vec<&str> = text.lines().collect();
        let caret = lines[3].find('^').unwrap();
        assert_eq!(lines[2].chars().nth(caret), Some('x'));
        let message = format!("the cause {} what to do", "y".repeat(10_000));
        let long = Diagnostic::at("a.yaml", Span { line: 1, col: 1 }, message);
        let shown = long.render(None);
        assert!(shown.len() < 1_100, "{} bytes", shown.len());
        // Both ends stay: the cause, and what to do about it.
        assert!(
            shown.contains("the cause") && shown.ends_with("what to do"),
            "{shown}"
        );
        assert!(shown.contains("bytes cut"));
    }

    #[test]
    fn renders_a_caret_under_the_column() {
        let d = Diagnostic::at("a.yaml", Span { line: 2, col: 3 }, "bad").help("fix it");
        let text = d.render(Some("x: 1\n  y: 2\n"));
        assert_eq!(
            text,
            "a.yaml:2:3: bad\n  |\n2 |   y: 2\n  |   ^\n  help: fix it"
        );
    }
}
