//! What a bundle answers for a text, in the form `pipe predict --json` prints and
//! `pipe serve` returns: the most probable label, the labels at or above
//! [`THRESHOLD`] (multi-label bundles only) and every label's probability.

use serde::Serialize;

use super::{Bundle, Predictions};
use crate::classifier::ProblemType;

/// A multi-label prediction includes each label at or above this probability.
pub const THRESHOLD: f32 = 0.5;

/// The answer for one text.
#[derive(Debug, Clone, Serialize)]
pub struct Answer<'a> {
    /// The text as given.
    pub text: &'a str,
    /// Its most probable label (the first of ties).
    pub label: &'a str,
    /// The labels at or above [`THRESHOLD`]; multi-label bundles only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<&'a str>>,
    /// Every label's probability, in label order.
    pub probabilities: serde_json::Map<String, serde_json::Value>,
}

impl Bundle {
    /// The labels shown as the prediction of row `i`: the top one, or for multi-label every
    /// one at or above [`THRESHOLD`].
    pub fn chosen(&self, predictions: &Predictions, i: usize) -> Vec<&str> {
        let labels = self.labels();
        match self.problem_type() {
            ProblemType::SingleLabelClassification => vec![labels[predictions.top(i)].as_str()],
            ProblemType::MultiLabelClassification => predictions
                .row(i)
                .iter()
                .zip(labels)
                .filter(|(p, _)| **p >= THRESHOLD)
                .map(|(_, l)| l.as_str())
                .collect(),
        }
    }

    /// One [`Answer`] per text; `predictions` holds the rows of `texts`, in order.
    pub fn answers<'a>(&'a self, texts: &[&'a str], predictions: &Predictions) -> Vec<Answer<'a>> {
        let labels = self.labels();
        let multi = self.problem_type() == ProblemType::MultiLabelClassification;
        texts
            .iter()
            .enumerate()
            .map(|(i, &text)| Answer {
                text,
                label: &labels[predictions.top(i)],
                labels: multi.then(|| self.chosen(predictions, i)),
                probabilities: labels
                    .iter()
                    .zip(predictions.row(i))
                    .map(|(l, p)| (l.clone(), serde_json::json!(p)))
                    .collect(),
            })
            .collect()
    }
}
