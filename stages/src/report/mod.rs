//! STUB of the report module (replace with the metrics-report branch): the agreed API with a
//! minimal HTML page, so that `evaluate` compiles and runs meanwhile.

use anyhow::Result;

use crate::metrics::{RocCurve, SplitMetrics};

/// Everything the evaluation page shows.
pub struct Report<'a> {
    /// The page title.
    pub title: &'a str,
    /// Label names in class-index order.
    pub labels: &'a [String],
    /// One section per split.
    pub splits: Vec<SplitReport<'a>>,
    /// Training loss by step (empty when there is no training log).
    pub loss_curve: Vec<(u64, f64)>,
}

/// One split's section.
pub struct SplitReport<'a> {
    /// The split's name.
    pub name: &'a str,
    /// Its metrics.
    pub metrics: &'a SplitMetrics,
    /// One-vs-rest ROC curves.
    pub roc: Vec<RocCurve>,
    /// The most confidently wrong rows.
    pub wrong: Vec<WrongExample>,
}

/// A row the model got wrong.
pub struct WrongExample {
    /// The text.
    pub text: String,
    /// The true label(s).
    pub truth: String,
    /// The predicted label(s).
    pub predicted: String,
    /// How sure the model was.
    pub confidence: f32,
}

/// The page as HTML.
pub fn render(report: &Report) -> Result<String> {
    let mut html = format!(
        "<!doctype html>\n<meta charset=\"utf-8\">\n<title>{0}</title>\n<h1>{0}</h1>\n",
        escape(report.title)
    );
    html.push_str(&format!(
        "<p>{} labels; {} logged training steps</p>\n",
        report.labels.len(),
        report.loss_curve.len()
    ));
    for split in &report.splits {
        html.push_str(&format!(
            "<h2>{}</h2>\n<p>{}</p>\n<ul>\n",
            escape(split.name),
            escape(&split.metrics.headline())
        ));
        for curve in &split.roc {
            let auc = curve.auc.map_or("n/a".to_string(), |a| format!("{a:.3}"));
            html.push_str(&format!("<li>AUC {}: {auc}</li>\n", escape(&curve.label)));
        }
        for w in &split.wrong {
            html.push_str(&format!(
                "<li>{} — true {}, predicted {} ({:.3})</li>\n",
                escape(&w.text),
                escape(&w.truth),
                escape(&w.predicted),
                w.confidence
            ));
        }
        html.push_str("</ul>\n");
    }
    Ok(html)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
