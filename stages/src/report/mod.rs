//! `report.html`, the evaluation report of the `evaluate` stage: one self-contained page
//! (inline CSS and SVG, no script, no external resource; it opens offline) with, for each
//! split, the headline numbers, a per-class table, the one-vs-rest ROC curves, the confusion
//! matrix as a heatmap (single-label only) and the most confidently wrong examples; plus the
//! training-loss curve.
//!
//! With many labels the page stays small: past [`CLASSES_SHOWN`] classes the per-class
//! table and the ROC chart show the [`CLASSES_SHOWN`] classes with the most rows, and the
//! confusion matrix becomes a table of its [`CONFUSIONS_SHOWN`] largest off-diagonal
//! cells, each with a line saying how many were left out (all are in `metrics.json`).
//!
//! [`render`] builds the page from a [`Report`]; the page is a pure function of it (no
//! timestamp), so the same evaluation gives byte-identical HTML. Charts are in `charts`
//! (plotters) and `heatmap` (hand-written SVG), escaping and tables in `html`. The page
//! follows the reader's light or dark theme (`prefers-color-scheme`).

pub(crate) mod charts;
mod heatmap;
pub(crate) mod html;

use anyhow::Result;

use crate::scoring::{RocCurve, SplitMetrics, TaskMetrics};
use html::{escape, number, shorten, table};

/// Everything the report shows.
pub struct Report<'a> {
    /// The page's title, e.g. the pipeline and stage name.
    pub title: &'a str,
    /// The labels, in the order of the metrics' classes.
    pub labels: &'a [String],
    /// One entry per evaluated split, shown in this order.
    pub splits: Vec<SplitReport<'a>>,
    /// The losses of finetune's `train_log.jsonl`; may be empty.
    pub loss_curve: LossCurves,
}

/// The losses of a training run, by optimizer step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LossCurves {
    /// (step, training loss of that step's batch).
    pub train: Vec<(u64, f64)>,
    /// (step, validation loss), when the run had a validation split.
    pub validation: Vec<(u64, f64)>,
}

/// One split's part of the report.
pub struct SplitReport<'a> {
    /// The split's name: `train`, `test`, ...
    pub name: &'a str,
    /// Its metrics.
    pub metrics: &'a SplitMetrics,
    /// Its one-vs-rest ROC curves, one per label, or past [`CLASSES_SHOWN`] labels those of
    /// [`SplitMetrics::top_classes`] (see [`crate::scoring::roc_curves_of`]).
    pub roc: Vec<RocCurve>,
    /// The few most confidently wrong rows, most confident first.
    pub wrong: Vec<WrongExample>,
}

/// A row the model got wrong.
pub struct WrongExample {
    /// The row's text.
    pub text: String,
    /// Its true label (or labels, joined by the caller).
    pub truth: String,
    /// What the model predicted.
    pub predicted: String,
    /// The probability the model gave its prediction.
    pub confidence: f32,
}

/// Most classes shown in the per-class table, the ROC chart and the confusion heatmap.
pub const CLASSES_SHOWN: usize = 50;

/// Most confusions (off-diagonal cells) listed when the matrix is too large to draw.
pub const CONFUSIONS_SHOWN: usize = 50;

/// Longest example text shown; the rest is cut off with `…`.
const EXAMPLE_CHARS: usize = 600;

/// The report as one HTML page.
pub fn render(report: &Report) -> Result<String> {
    let mut page = page_start(
        report.title,
        &format!(
            "Evaluation report · {} labels · {}",
            report.labels.len(),
            report
                .splits
                .iter()
                .map(|s| format!("{} ({} rows)", escape(s.name), s.metrics.rows))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    page.push_str(&summary(&report.splits));
    page.push_str(&training(&report.loss_curve)?);
    for split in &report.splits {
        page.push_str(&split_section(report.labels, split)?);
    }
    page.push_str(PAGE_END);
    Ok(page)
}

/// The start of a report page, up to and with its title and `subtitle` (HTML): the same
/// head, styles and theme for every page pipe writes.
pub(crate) fn page_start(title: &str, subtitle: &str) -> String {
    let title = escape(title);
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>\n{}</style>\n</head>\n<body>\n<main>\n\
         <h1>{title}</h1>\n<p class=\"muted\">{subtitle}</p>\n",
        include_str!("report.css"),
    )
}

/// The end of a page begun with [`page_start`].
pub(crate) const PAGE_END: &str = "</main>\n</body>\n</html>\n";

/// The numbers that sum a split up, by task; `None` where undefined.
fn key_numbers(m: &SplitMetrics) -> Vec<(&'static str, Option<f64>)> {
    match &m.task {
        TaskMetrics::SingleLabel {
            accuracy, log_loss, ..
        } => vec![
            ("accuracy", Some(*accuracy)),
            ("macro F1", Some(m.macro_f1)),
            ("weighted F1", Some(m.weighted_f1)),
            ("macro AUC", m.macro_auc),
            ("log loss", Some(*log_loss)),
        ],
        TaskMetrics::MultiLabel {
            subset_accuracy,
            micro_f1,
            hamming_loss,
            ..
        } => vec![
            ("subset accuracy", Some(*subset_accuracy)),
            ("micro F1", Some(*micro_f1)),
            ("macro F1", Some(m.macro_f1)),
            ("macro AUC", m.macro_auc),
            ("Hamming loss", Some(*hamming_loss)),
        ],
    }
}

/// One row per split with its key numbers, the columns being those of the first split.
fn summary(splits: &[SplitReport]) -> String {
    let Some(first) = splits.first() else {
        return "<p class=\"note\">No split was evaluated.</p>\n".to_string();
    };
    let columns: Vec<&str> = key_numbers(first.metrics).iter().map(|c| c.0).collect();
    let rows: Vec<Vec<String>> = splits
        .iter()
        .map(|s| {
            let numbers = key_numbers(s.metrics);
            let value = |name: &str| number(numbers.iter().find(|n| n.0 == name).and_then(|n| n.1));
            [escape(s.name), s.metrics.rows.to_string()]
                .into_iter()
                .chain(columns.iter().map(|c| value(c)))
                .collect()
        })
        .collect();
    let head: Vec<&str> = ["split", "rows"]
        .into_iter()
        .chain(columns.iter().copied())
        .collect();
    format!("<h2>Summary</h2>\n{}", table("numbers", &head, &rows))
}

/// The training-loss section.
fn training(curves: &LossCurves) -> Result<String> {
    let validation = if curves.validation.is_empty() {
        String::new()
    } else {
        format!(
            "; <span style=\"color:{}\">●</span> validation loss",
            charts::css_colour(1)
        )
    };
    let body = match charts::loss_chart(curves)? {
        Some(svg) => format!(
            "<figure>{svg}<figcaption>Loss by step (from finetune's train_log.jsonl): each \
             step's training loss (faint) and its moving average (solid){validation}.\
             </figcaption></figure>\n"
        ),
        None => "<p class=\"note\">No training log to show.</p>\n".to_string(),
    };
    Ok(format!("<h2>Training</h2>\n{body}"))
}

/// A split's section: headline, charts, per-class table, wrong examples.
fn split_section(labels: &[String], split: &SplitReport) -> Result<String> {
    let m = split.metrics;
    let mut out = format!(
        "<section>\n<h2>{} <span class=\"muted\">· {} rows</span></h2>\n<p class=\"headline\">{}</p>\n",
        escape(split.name),
        m.rows,
        escape(&m.headline())
    );
    out.push_str("<div class=\"charts\">\n");
    let left_out = labels.len().saturating_sub(split.roc.len());
    let roc_caption = match left_out {
        0 => "ROC curves, one class against the rest; the dashed diagonal is a random ranking."
            .to_string(),
        n => format!(
            "ROC curves of the {} classes with the most rows ({n} more left out; every AUC \
             is in metrics.json), one class against the rest; the dashed diagonal is a random \
             ranking.",
            split.roc.len()
        ),
    };
    out.push_str(&roc_figure(&split.roc, &roc_caption)?);
    let single = matches!(m.task, TaskMetrics::SingleLabel { .. });
    if single && labels.len() <= CLASSES_SHOWN {
        let k = labels.len();
        let mut dense = vec![vec![0u64; k]; k];
        for [t, p, n] in m.confusion_cells() {
            if let Some(cell) = dense
                .get_mut(t as usize)
                .and_then(|r| r.get_mut(p as usize))
            {
                *cell = n;
            }
        }
        out.push_str(&format!(
            "<figure>{}<figcaption>Confusion matrix: rows are the true class, columns the \
             predicted one; the shade is the share of the true class's rows.</figcaption></figure>\n",
            heatmap::confusion_heatmap(labels, &dense)
        ));
    }
    out.push_str("</div>\n");
    if single && labels.len() > CLASSES_SHOWN {
        out.push_str(&top_confusions(labels, m));
    }
    out.push_str(&per_class_table(m));
    out.push_str(&wrong_table(&split.wrong));
    out.push_str("</section>\n");
    Ok(out)
}

/// The ROC chart with an HTML legend naming each curve's colour and AUC, above `caption`.
pub(crate) fn roc_figure(curves: &[RocCurve], caption: &str) -> Result<String> {
    let legend: String = curves
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let auc = match c.auc {
                Some(_) => format!("AUC {}", number(c.auc)),
                None => "AUC undefined: no positive or no negative row".to_string(),
            };
            format!(
                "<li><span class=\"swatch\" style=\"background:{}\"></span>{} · {auc}</li>",
                charts::css_colour(i),
                escape(&c.label)
            )
        })
        .collect();
    Ok(format!(
        "<figure>{}<figcaption>{caption}</figcaption>\n<ul class=\"legend\">{legend}</ul></figure>\n",
        charts::roc_chart(curves)?
    ))
}

/// The largest off-diagonal cells of a confusion matrix too large to draw.
fn top_confusions(labels: &[String], m: &SplitMetrics) -> String {
    let mut wrong: Vec<[u64; 3]> = m
        .confusion_cells()
        .into_iter()
        .filter(|[t, p, _]| t != p)
        .collect();
    let total = wrong.len();
    wrong.sort_by_key(|&[t, p, n]| (std::cmp::Reverse(n), t, p));
    wrong.truncate(CONFUSIONS_SHOWN);
    let name = |i: u64| {
        labels
            .get(i as usize)
            .map_or_else(|| format!("#{i}"), |l| escape(l))
    };
    let support = |i: u64| m.per_class.get(i as usize).map_or(0, |c| c.support);
    let rows: Vec<Vec<String>> = wrong
        .iter()
        .map(|&[t, p, n]| {
            let share = match support(t) {
                0 => None,
                s => Some(n as f64 / s as f64),
            };
            vec![name(t), name(p), n.to_string(), number(share)]
        })
        .collect();
    let head = ["true class", "predicted", "rows", "share of the true class"];
    let note = match total.saturating_sub(rows.len()) {
        0 => String::new(),
        n => format!(
            "<p class=\"note\">{n} more confusions left out; metrics.json has every cell \
             (<code>confusion_cells</code>).</p>\n"
        ),
    };
    format!(
        "<h3>Most frequent confusions</h3>\n<p class=\"muted\">{} labels are too many for a \
         matrix: the {} largest off-diagonal cells.</p>\n{}{note}",
        labels.len(),
        rows.len(),
        table("numbers", &head, &rows)
    )
}

/// Precision, recall, F1, support and AUC of each class; past [`CLASSES_SHOWN`] classes,
/// those with the most rows, and a line saying how many were left out.
fn per_class_table(m: &SplitMetrics) -> String {
    let shown: Vec<usize> = match m.per_class.len() {
        k if k <= CLASSES_SHOWN => (0..k).collect(),
        _ => m.top_classes(CLASSES_SHOWN),
    };
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|&i| &m.per_class[i])
        .map(|c| {
            vec![
                escape(&c.label),
                number(Some(c.precision)),
                number(Some(c.recall)),
                number(Some(c.f1)),
                c.support.to_string(),
                number(c.auc),
            ]
        })
        .collect();
    let head = ["class", "precision", "recall", "F1", "support", "AUC"];
    let note = match m.per_class.len() - shown.len() {
        0 => String::new(),
        n => format!(
            "<p class=\"note\">The {} classes with the most rows; {n} more left out \
             (metrics.json has every class).</p>\n",
            shown.len()
        ),
    };
    format!(
        "<h3>Per class</h3>\n{}{note}",
        table("numbers", &head, &rows)
    )
}

/// The confidently wrong rows, their text escaped.
fn wrong_table(wrong: &[WrongExample]) -> String {
    if wrong.is_empty() {
        return "<h3>Confidently wrong</h3>\n<p class=\"note\">No wrong examples to show.</p>\n"
            .to_string();
    }
    let rows: Vec<Vec<String>> = wrong
        .iter()
        .map(|w| {
            vec![
                escape(&shorten(&w.text, EXAMPLE_CHARS)),
                escape(&w.truth),
                escape(&w.predicted),
                number(Some(f64::from(w.confidence))),
            ]
        })
        .collect();
    let head = ["text", "truth", "predicted", "confidence"];
    format!(
        "<h3>Confidently wrong</h3>\n{}",
        table("examples", &head, &rows)
    )
}
