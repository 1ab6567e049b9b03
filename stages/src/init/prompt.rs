//! Asking the user: the [`Prompter`] trait, so `pipe init` can be driven by a
//! terminal or by a test script, and [`TerminalPrompter`], which asks on
//! stderr and reads answers from stdin.

use std::io::{BufRead, Write};

use anyhow::bail;

/// Asks questions and shows information. `pipe init` only talks through this.
pub trait Prompter {
    /// Shows a block of information (detected columns, sample values).
    fn show(&mut self, text: &str) -> anyhow::Result<()>;
    /// Asks to pick one of `choices`; returns the chosen index.
    fn select(
        &mut self,
        question: &str,
        choices: &[String],
        default: usize,
    ) -> anyhow::Result<usize>;
    /// Asks a yes/no question.
    fn confirm(&mut self, question: &str, default: bool) -> anyhow::Result<bool>;
    /// Asks for a line of text; an empty answer means `default`.
    fn input(&mut self, question: &str, default: &str) -> anyhow::Result<String>;
}

/// A [`Prompter`] that writes to stderr and reads lines from stdin.
///
/// Choices are picked by number or by name; an empty answer takes the
/// default, shown in brackets. A closed stdin is an error that points to the
/// flags of `pipe init`.
pub struct TerminalPrompter<R, W> {
    input: R,
    output: W,
    /// Whether to keep what [`Prompter::show`] says to itself (`--quiet`); questions are
    /// still asked.
    quiet: bool,
}

impl TerminalPrompter<std::io::StdinLock<'static>, std::io::Stderr> {
    /// A prompter on the process's stdin and stderr.
    pub fn stdio() -> Self {
        TerminalPrompter {
            input: std::io::stdin().lock(),
            output: std::io::stderr(),
            quiet: false,
        }
    }
}

impl<R: BufRead, W: Write> TerminalPrompter<R, W> {
    /// A prompter on any reader and writer.
    pub fn new(input: R, output: W) -> Self {
        TerminalPrompter {
            input,
            output,
            quiet: false,
        }
    }

    /// The same prompter, showing nothing but its questions when `quiet`.
    pub fn quiet(self, quiet: bool) -> Self {
        TerminalPrompter { quiet, ..self }
    }

    /// Asks `question`, showing `hint`; `None` for an empty answer.
    fn ask(&mut self, question: &str, hint: &str) -> anyhow::Result<Option<String>> {
        write!(self.output, "? {question} [{hint}] ")?;
        self.output.flush()?;
        let mut line = String::new();
        if self.input.read_line(&mut line)? == 0 {
            bail!(
                "no answer to \"{question}\" (input closed); answer with flags, or pass --yes for the defaults"
            );
        }
        let answer = line.trim();
        Ok((!answer.is_empty()).then(|| answer.to_string()))
    }
}

impl<R: BufRead, W: Write> Prompter for TerminalPrompter<R, W> {
    fn show(&mut self, text: &str) -> anyhow::Result<()> {
        if !self.quiet {
            writeln!(self.output, "{text}")?;
        }
        Ok(())
    }

    fn select(
        &mut self,
        question: &str,
        choices: &[String],
        default: usize,
    ) -> anyhow::Result<usize> {
        for (i, choice) in choices.iter().enumerate() {
            writeln!(self.output, "  {}) {choice}", i + 1)?;
        }
        loop {
            let default_name = choices.get(default).map_or("", String::as_str);
            let Some(answer) = self.ask(question, default_name)? else {
                return Ok(default);
            };
            if let Some(i) = choices.iter().position(|c| *c == answer) {
                return Ok(i);
            }
            match answer.parse::<usize>() {
                Ok(n) if (1..=choices.len()).contains(&n) => return Ok(n - 1),
                _ => writeln!(
                    self.output,
                    "  answer with a number from 1 to {} or a name",
                    choices.len()
                )?,
            }
        }
    }

    fn confirm(&mut self, question: &str, default: bool) -> anyhow::Result<bool> {
        loop {
            let Some(answer) = self.ask(question, if default { "Y/n" } else { "y/N" })? else {
                return Ok(default);
            };
            match answer.to_lowercase().as_str() {
                "y" | "yes" => return Ok(true),
                "n" | "no" => return Ok(false),
                _ => writeln!(self.output, "  answer y or n")?,
            }
        }
    }

    fn input(&mut self, question: &str, default: &str) -> anyhow::Result<String> {
        Ok(self
            .ask(question, default)?
            .unwrap_or_else(|| default.to_string()))
    }
}
