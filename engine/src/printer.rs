//! All terminal output goes through one [`Printer`]: it knows whether colour
//! and progress bars are on, keeps stdout for answers and writes status lines,
//! notes and progress to stderr.

use std::io::{IsTerminal, Write};

use anstyle::{AnsiColor, Style};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stage::Reporter;

/// When to colour output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColorChoice {
    /// Colour when stderr is a terminal, unless `NO_COLOR` is set (or `FORCE_COLOR` forces it).
    #[default]
    Auto,
    /// Always colour.
    Always,
    /// Never colour.
    Never,
}

/// The tone of a status verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Work done (green).
    Good,
    /// Nothing to do (cyan).
    Quiet,
    /// Something went wrong (red).
    Bad,
    /// Needs attention (yellow).
    Warn,
}

impl Tone {
    fn style(self) -> Style {
        let color = match self {
            Tone::Good => AnsiColor::Green,
            Tone::Quiet => AnsiColor::Cyan,
            Tone::Bad => AnsiColor::Red,
            Tone::Warn => AnsiColor::Yellow,
        };
        Style::new().fg_color(Some(color.into())).bold()
    }
}

/// The one place that writes to the terminal.
pub struct Printer {
    color: bool,
    color_stdout: bool,
    progress: bool,
    quiet: bool,
    multi: MultiProgress,
}

impl Printer {
    /// A printer. `quiet` hides status lines and notes; `machine` (for
    /// `--json`) hides progress bars as well. Colour follows `choice`,
    /// then `NO_COLOR`, then `FORCE_COLOR`, then whether stderr is a terminal
    /// (whether stdout is, for answers styled with [`Printer::bold_stdout`]).
    pub fn new(choice: ColorChoice, quiet: bool, machine: bool) -> Printer {
        let tty = std::io::stderr().is_terminal();
        let resolve = |tty: bool| match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
                    false
                } else if std::env::var_os("FORCE_COLOR").is_some_and(|v| !v.is_empty()) {
                    true
                } else {
                    tty
                }
            }
        };
        let color = resolve(tty);
        let color_stdout = resolve(std::io::stdout().is_terminal());
        let progress = tty && !quiet && !machine;
        let multi = MultiProgress::with_draw_target(if progress {
            ProgressDrawTarget::stderr_with_hz(10)
        } else {
            ProgressDrawTarget::hidden()
        });
        Printer {
            color,
            color_stdout,
            progress,
            quiet,
            multi,
        }
    }

    /// `text` in the style of `tone` (plain when colour is off).
    pub fn paint(&self, text: &str, tone: Tone) -> String {
        styled(self.color, tone.style(), text)
    }

    /// `text` dimmed (plain when colour is off).
    pub fn dim(&self, text: &str) -> String {
        styled(self.color, Style::new().dimmed(), text)
    }

    /// `text` in the style of `tone`, for an answer on stdout (plain when stdout gets no
    /// colour).
    pub fn paint_stdout(&self, text: &str, tone: Tone) -> String {
        styled(self.color_stdout, tone.style(), text)
    }

    /// `text` dimmed, for an answer on stdout (plain when stdout gets no colour).
    pub fn dim_stdout(&self, text: &str) -> String {
        styled(self.color_stdout, Style::new().dimmed(), text)
    }

    /// `text` in bold, for an answer on stdout (plain when stdout gets no colour).
    pub fn bold_stdout(&self, text: &str) -> String {
        styled(self.color_stdout, Style::new().bold(), text)
    }

    /// A status line for stdout, as [`Printer::status`] draws it, for a command whose answer
    /// is such lines (`pipe doctor`): the caller writes it, and `--quiet` does not hide it.
    pub fn status_stdout(&self, verb: &str, tone: Tone, rest: &str) -> String {
        format!("{} {rest}", self.paint_stdout(&format!("{verb:>9}"), tone))
    }

    /// A status line on stderr: a right-aligned coloured verb, then the rest.
    pub fn status(&self, verb: &str, tone: Tone, rest: &str) {
        if self.quiet && tone != Tone::Bad {
            return;
        }
        self.line(&format!(
            "{} {rest}",
            self.paint(&format!("{verb:>9}"), tone)
        ));
    }

    /// Whether `--quiet` asked for nothing but warnings, errors and answers.
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// A warning on stderr, cargo style; shown even with `--quiet`, because it
    /// says something about the user's files.
    pub fn warn(&self, text: &str) {
        self.line(&format!("{}: {text}", self.paint("warning", Tone::Warn)));
    }

    /// An error and its causes on stderr, cargo style.
    pub fn error(&self, error: &anyhow::Error) {
        let mut text = format!("{}: {error}", self.paint("error", Tone::Bad));
        let causes: Vec<String> = error.chain().skip(1).map(|c| c.to_string()).collect();
        if !causes.is_empty() {
            text.push_str("\n\nCaused by:");
            for cause in causes {
                text.push_str(&format!("\n  {cause}"));
            }
        }
        self.line(&text);
    }

    /// A raw line on stderr, above any progress bars.
    pub fn line(&self, text: &str) {
        if self.progress {
            self.multi.suspend(|| eprintln!("{text}"));
        } else {
            let mut err = std::io::stderr().lock();
            // A closed stderr is not worth failing a run for.
            let _ = writeln!(err, "{text}");
        }
    }

    /// A [`Reporter`] for stage `stage`.
    pub fn reporter<'p>(&'p self, stage: &str) -> StageReporter<'p> {
        StageReporter {
            printer: self,
            stage: stage.to_string(),
        }
    }
}

/// `text` in `style` when `color` is on, else plain.
fn styled(color: bool, style: Style, text: &str) -> String {
    if color {
        format!("{}{text}{}", style.render(), style.render_reset())
    } else {
        text.to_string()
    }
}

/// Reports one stage's notes and progress through a [`Printer`].
pub struct StageReporter<'p> {
    printer: &'p Printer,
    stage: String,
}

impl Reporter for StageReporter<'_> {
    fn note(&self, message: &str) {
        if !self.printer.quiet {
            self.printer.line(&format!(
                "{} {}: {message}",
                self.printer.dim(&format!("{:>9}", "note")),
                self.stage
            ));
        }
    }

    fn progress(&self, total: u64, unit: &str) -> ProgressBar {
        if !self.printer.progress {
            return ProgressBar::hidden();
        }
        // indicatif colours by its own rules (NO_COLOR only): say the colours only when on.
        let (prefix, bar) = if self.printer.color {
            ("{prefix:>9.cyan.bold}", "{bar:30.cyan/blue}")
        } else {
            ("{prefix:>9}", "{bar:30}")
        };
        let style = ProgressStyle::with_template(&format!(
            "{prefix} {bar} {{pos}}/{{len}} {unit} {{msg}} [{{elapsed_precise}} < {{eta}}]"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("━╸─");
        let bar = self.printer.multi.add(ProgressBar::new(total));
        bar.set_style(style);
        bar.set_prefix(self.stage.clone());
        bar
    }
}
