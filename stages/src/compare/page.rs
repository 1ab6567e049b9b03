//! `report.html`: the members side by side, in the evaluation report's style (its head,
//! styles, tables and charts).

use anyhow::Result;

use super::members::MemberResult;
use super::{Comparison, higher_is_better};
use crate::report::charts::{css_colour, loss_lines_chart};
use crate::report::html::{escape, number, table};
use crate::report::{PAGE_END, page_start, roc_figure};
use crate::scoring::RocCurve;

/// The page: the metrics table with the best member marked, then one ROC chart per split
/// and the loss curves, every member in its own colour (the same in every chart).
pub fn render(title: &str, comparison: &Comparison, members: &[MemberResult]) -> Result<String> {
    let mut page = page_start(
        title,
        &format!(
            "Comparison of {} members · best by {} ({} is better)",
            members.len(),
            escape(&comparison.by),
            if higher_is_better(&comparison.by) {
                "higher"
            } else {
                "lower"
            }
        ),
    );
    page.push_str(&summary(comparison));
    page.push_str(&roc_section(members)?);
    page.push_str(&loss_section(members)?);
    page.push_str(PAGE_END);
    Ok(page)
}

/// The best member, and the table of every column for every member.
fn summary(comparison: &Comparison) -> String {
    let best = comparison.best.as_ref().map(|b| b.member.as_str());
    let headline = match &comparison.best {
        Some(b) => format!(
            "<p class=\"headline\">Best: <strong>{}</strong> · {} {}</p>\n",
            escape(&b.member),
            escape(&comparison.by),
            number(Some(b.value))
        ),
        None => format!(
            "<p class=\"note\">No member has a value for {}.</p>\n",
            escape(&comparison.by)
        ),
    };
    let rows: Vec<Vec<String>> = comparison
        .members
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let name = format!(
                "<span class=\"swatch\" style=\"background:{}\"></span>{}",
                css_colour(i),
                escape(&row.member)
            );
            let name = if Some(row.member.as_str()) == best {
                format!("<strong>{name}</strong> ★")
            } else {
                name
            };
            std::iter::once(name)
                .chain(comparison.columns.iter().map(|c| {
                    let value = row.metrics.get(c).and_then(serde_json::Value::as_f64);
                    match c.as_str() {
                        "train_seconds" => {
                            value.map_or_else(|| number(None), |v| format!("{v:.1}"))
                        }
                        "tokens_per_s" => value.map_or_else(|| number(None), |v| format!("{v:.0}")),
                        _ => number(value),
                    }
                }))
                .collect()
        })
        .collect();
    let head: Vec<&str> = std::iter::once("member")
        .chain(comparison.columns.iter().map(String::as_str))
        .collect();
    format!(
        "<h2>Summary</h2>\n{headline}{}",
        table("numbers", &head, &rows)
    )
}

/// One ROC chart per split, a curve per member.
fn roc_section(members: &[MemberResult]) -> Result<String> {
    let mut splits: Vec<&str> = Vec::new();
    for (split, _) in members.iter().flat_map(|m| &m.roc) {
        if !splits.contains(&split.as_str()) {
            splits.push(split);
        }
    }
    if splits.is_empty() {
        return Ok(
            "<h2>ROC curves</h2>\n<p class=\"note\">No member has predictions to draw.</p>\n"
                .into(),
        );
    }
    let mut out = String::from("<h2>ROC curves</h2>\n<div class=\"charts\">\n");
    for split in splits {
        // Keep each member's colour: a member without this split gets an empty curve.
        let curves: Vec<RocCurve> = members
            .iter()
            .map(|m| {
                m.roc
                    .iter()
                    .find(|(s, _)| s == split)
                    .map(|(_, c)| c.clone())
                    .unwrap_or_else(|| RocCurve {
                        label: m.name.clone(),
                        fpr: Vec::new(),
                        tpr: Vec::new(),
                        auc: None,
                    })
            })
            .collect();
        out.push_str(&format!(
            "<section class=\"split\" data-split=\"{}\">\n<h3>{}</h3>\n",
            escape(split),
            escape(split)
        ));
        out.push_str(&roc_figure(
            &curves,
            "Micro-averaged ROC curves (every row and class is one yes/no decision), one per \
             member; the dashed diagonal is a random ranking.",
        )?);
        out.push_str("</section>\n");
    }
    out.push_str("</div>\n");
    Ok(out)
}

/// The training-loss curves of every member that has a training log.
fn loss_section(members: &[MemberResult]) -> Result<String> {
    let curves: Vec<&[(u64, f64)]> = members.iter().map(|m| m.loss.as_slice()).collect();
    let body = match loss_lines_chart(&curves)? {
        Some(svg) => {
            let legend: String = members
                .iter()
                .enumerate()
                .filter(|(_, m)| !m.loss.is_empty())
                .map(|(i, m)| {
                    format!(
                        "<li><span class=\"swatch\" style=\"background:{}\"></span>{}</li>",
                        css_colour(i),
                        escape(&m.name)
                    )
                })
                .collect();
            format!(
                "<figure>{svg}<figcaption>Training loss by step, one line per member (from \
                 each member's train_log.jsonl).</figcaption>\n<ul class=\"legend\">{legend}</ul></figure>\n"
            )
        }
        None => "<p class=\"note\">No training log to show: add the export-onnx or finetune stage to `from:`.</p>\n".to_string(),
    };
    Ok(format!("<h2>Training</h2>\n{body}"))
}
