//! The x/y charts of the report, drawn with `plotters` into inline SVG.
//!
//! Only plotters' SVG backend is built, without fonts: its SVG backend writes text as
//! `<text>` elements and only estimates text extents for layout, so labels render without
//! any font file. Axes and text come out black (`#000000`); the page's CSS recolours them
//! with `currentColor` so the charts follow the light or dark theme. The background is left
//! transparent for the same reason.

use anyhow::{Result, anyhow};
use plotters::chart::MeshStyle;
use plotters::coord::ranged1d::Ranged;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::LossCurves;
use crate::scoring::RocCurve;

/// The ten colours of Tableau 10, distinguishable on light and dark backgrounds; classes
/// beyond ten reuse them in order.
const PALETTE: [(u8, u8, u8); 10] = [
    (0x4e, 0x79, 0xa7),
    (0xf2, 0x8e, 0x2b),
    (0xe1, 0x57, 0x59),
    (0x76, 0xb7, 0xb2),
    (0x59, 0xa1, 0x4f),
    (0xed, 0xc9, 0x48),
    (0xb0, 0x7a, 0xa1),
    (0xff, 0x9d, 0xa7),
    (0x9c, 0x75, 0x5f),
    (0xba, 0xb0, 0xac),
];

/// Size of each chart in SVG pixels (it scales down with the page).
const SIZE: (u32, u32) = (480, 360);

/// At most this many points of the loss curve are drawn.
const MAX_LOSS_POINTS: usize = 2000;

/// The colour of the `i`-th class.
fn colour(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

/// The colour of the `i`-th class as CSS (`#4e79a7`), for the HTML legend.
pub(crate) fn css_colour(i: usize) -> String {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// ROC curves of one split: one line per class with a defined curve, in class order and
/// colour, over the dashed diagonal of a random ranking.
pub(crate) fn roc_chart(curves: &[RocCurve]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(drawing)?;
        house_style(&mut chart.configure_mesh())
            .x_desc("false-positive rate")
            .y_desc("true-positive rate")
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .draw()
            .map_err(drawing)?;
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                6,
                4,
                BLACK.mix(0.45).stroke_width(1),
            ))
            .map_err(drawing)?;
        for (i, curve) in curves.iter().enumerate() {
            let points = curve.fpr.iter().copied().zip(curve.tpr.iter().copied());
            chart
                .draw_series(LineSeries::new(points, colour(i).stroke_width(2)))
                .map_err(drawing)?;
        }
        root.present().map_err(drawing)?;
    }
    Ok(inline(svg))
}

/// The training loss against the step: every step's raw loss (faint), a smoothed line through
/// it ([`smooth`]), and the validation loss (points joined by a line, in the second colour)
/// when there is one. `None` when there is no finite training loss to draw.
pub(crate) fn loss_chart(curves: &LossCurves) -> Result<Option<String>> {
    let raw = finite_points(&curves.train);
    if raw.is_empty() {
        return Ok(None);
    }
    let smoothed = thin(smooth(&raw), MAX_LOSS_POINTS);
    let raw = thin(raw, MAX_LOSS_POINTS);
    let validation = finite_points(&curves.validation);
    step_chart(raw.iter().chain(&validation), "loss", |chart| {
        chart
            .draw_series(LineSeries::new(
                raw.iter().copied(),
                colour(0).mix(0.35).stroke_width(1),
            ))
            .map_err(drawing)?;
        chart
            .draw_series(LineSeries::new(smoothed, colour(0).stroke_width(2)))
            .map_err(drawing)?;
        if !validation.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    validation.iter().copied(),
                    colour(1).stroke_width(2),
                ))
                .map_err(drawing)?;
            chart
                .draw_series(
                    validation
                        .iter()
                        .map(|&p| Circle::new(p, 3, colour(1).filled())),
                )
                .map_err(drawing)?;
        }
        Ok(())
    })
}

/// The finite points of a loss curve, as chart coordinates.
fn finite_points(points: &[(u64, f64)]) -> Vec<(f64, f64)> {
    points
        .iter()
        .filter(|(_, loss)| loss.is_finite())
        .map(|&(step, loss)| (step as f64, loss))
        .collect()
}

/// A chart of `y_desc` against the step, framed to hold every point of `all`, whose
/// series `draw` adds; `None` when there is no point.
fn step_chart<'p>(
    all: impl Iterator<Item = &'p (f64, f64)> + Clone,
    y_desc: &str,
    draw: impl FnOnce(
        &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    ) -> Result<()>,
) -> Result<Option<String>> {
    let (Some(x), Some(y)) = (
        span(all.clone().map(|p| p.0), 0.0),
        span(all.map(|p| p.1), 0.05),
    ) else {
        return Ok(None);
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(x, y)
            .map_err(drawing)?;
        house_style(&mut chart.configure_mesh())
            .x_desc("step")
            .y_desc(y_desc)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| tick(*v))
            .draw()
            .map_err(drawing)?;
        draw(&mut chart)?;
        root.present().map_err(drawing)?;
    }
    Ok(Some(inline(svg)))
}

/// An exponential moving average of `points`, debiased at the start (as TensorBoard's
/// smoothing is) so the line starts at the first loss rather than at 0. Its span grows with
/// the run: a tenth of the points, from 1 to 50.
fn smooth(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let span = (points.len() / 10).clamp(1, 50) as f64;
    let keep = 1.0 - 2.0 / (span + 1.0);
    let mut average = 0.0;
    let mut weight = 0.0;
    points
        .iter()
        .map(|&(x, y)| {
            average = keep * average + (1.0 - keep) * y;
            weight = keep * weight + (1.0 - keep);
            (x, average / weight)
        })
        .collect()
}

/// The grid and axes every chart shares: six ticks per axis, faint major lines, no minor
/// lines, 14-pixel labels.
fn house_style<'m, 'a, 'b, X, Y, DB>(
    mesh: &'m mut MeshStyle<'a, 'b, X, Y, DB>,
) -> &'m mut MeshStyle<'a, 'b, X, Y, DB>
where
    X: Ranged,
    Y: Ranged,
    DB: DrawingBackend,
{
    mesh.x_labels(6)
        .y_labels(6)
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(TRANSPARENT)
        .axis_style(BLACK.mix(0.6))
        .label_style(("sans-serif", 14))
}

/// An axis tick: at most three decimals, without trailing zeros (`0.25`, `1`).
fn tick(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    match text {
        "-0" => "0".to_string(),
        _ => text.to_string(),
    }
}

/// The range of `values` widened by `pad` of its width on each side (and to a width of 1
/// around a single value); `None` for no values.
fn span(values: impl Iterator<Item = f64>, pad: f64) -> Option<std::ops::Range<f64>> {
    let (lo, hi) = values.fold(None, |acc: Option<(f64, f64)>, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })?;
    if hi > lo {
        let margin = (hi - lo) * pad;
        Some(lo - margin..hi + margin)
    } else {
        Some(lo - 0.5..hi + 0.5)
    }
}

/// Every `n`-th point, `n` chosen so that at most about `max` remain, plus the last point.
fn thin(points: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points;
    }
    let stride = points.len().div_ceil(max);
    let last = points.last().copied();
    let mut kept: Vec<(f64, f64)> = points.into_iter().step_by(stride).collect();
    if kept.last().copied() != last {
        kept.extend(last);
    }
    kept
}

/// plotters' SVG made fit to sit inside HTML: without the `xmlns` attribute (the HTML parser
/// puts `<svg>` in the SVG namespace itself, and the page then names no URL at all).
fn inline(svg: String) -> String {
    svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1)
}

/// plotters' errors are generic over the backend; say what failed and keep their text.
fn drawing<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing a chart of the report: {e}")
}

/// Training loss against the step, one line per curve in palette order (`compare` draws one
/// per member), or `None` when there is no finite point to draw.
pub(crate) fn loss_lines_chart(curves: &[&[(u64, f64)]]) -> Result<Option<String>> {
    let curves: Vec<Vec<(f64, f64)>> = curves
        .iter()
        .map(|points| thin(finite_points(points), MAX_LOSS_POINTS))
        .collect();
    step_chart(curves.iter().flatten(), "training loss", |chart| {
        for (i, points) in curves.iter().enumerate() {
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour(i).stroke_width(2),
                ))
                .map_err(drawing)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(fpr: Vec<f64>, tpr: Vec<f64>) -> RocCurve {
        RocCurve {
            label: "a".into(),
            auc: Some(0.75),
            fpr,
            tpr,
        }
    }

    #[test]
    fn roc_chart_is_an_inline_svg_with_text_and_no_url() {
        let svg = roc_chart(&[curve(vec![0.0, 0.5, 1.0], vec![0.0, 1.0, 1.0])]).unwrap();
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.contains(">\nfalse-positive rate\n</text>"), "{svg}");
        assert!(!svg.contains("http"));
        // The curve in its class colour.
        assert!(svg.contains("stroke=\"#4E79A7\""), "{svg}");
    }

    #[test]
    fn loss_chart_skips_non_finite_points_and_needs_one() {
        let train = |points: &[(u64, f64)]| LossCurves {
            train: points.to_vec(),
            validation: Vec::new(),
        };
        assert!(loss_chart(&train(&[])).unwrap().is_none());
        assert!(loss_chart(&train(&[(1, f64::NAN)])).unwrap().is_none());
        let svg = loss_chart(&train(&[(1, 2.0), (2, f64::INFINITY), (3, 1.0)]))
            .unwrap()
            .unwrap();
        assert!(svg.contains("step"));
        assert!(!svg.contains("<circle"), "no validation points");
        // A single point still gets a non-empty range.
        assert!(loss_chart(&train(&[(5, 0.3)])).unwrap().is_some());
        // The validation loss adds a line through its points.
        let mut both = LossCurves {
            train: vec![(1, 2.0), (2, 1.0), (3, 0.5)],
            validation: Vec::new(),
        };
        let lines = |svg: &str| svg.matches("<polyline").count();
        let without = loss_chart(&both).unwrap().unwrap();
        both.validation = vec![(2, 1.2), (3, 0.9)];
        let with = loss_chart(&both).unwrap().unwrap();
        assert_eq!(lines(&with), lines(&without) + 1, "{with}");
        assert_eq!(with.matches("<circle").count(), 2, "{with}");
    }

    #[test]
    fn smoothing_follows_the_loss_without_starting_at_zero() {
        let flat: Vec<(f64, f64)> = (0..40).map(|i| (f64::from(i), 2.0)).collect();
        assert!(smooth(&flat).iter().all(|p| (p.1 - 2.0).abs() < 1e-12));
        // A drop from 2 to 1 halfway: the smoothed line falls steadily, lagging the raw one.
        let step: Vec<(f64, f64)> = (0..40)
            .map(|i| (f64::from(i), if i < 20 { 2.0 } else { 1.0 }))
            .collect();
        let smoothed = smooth(&step);
        assert_eq!(smoothed[0], (0.0, 2.0));
        assert!(smoothed[20].1 < 2.0 && smoothed[20].1 > 1.0);
        assert!(smoothed.windows(2).all(|w| w[1].1 <= w[0].1 + 1e-12));
        assert!((smoothed[39].1 - 1.0).abs() < 0.05, "{:?}", smoothed[39]);
    }

    #[test]
    fn loss_lines_chart_draws_one_line_per_curve_in_palette_order() {
        assert!(loss_lines_chart(&[]).unwrap().is_none());
        let svg = loss_lines_chart(&[&[(1, 2.0), (2, 1.0)], &[(1, 1.5), (2, 0.5)]])
            .unwrap()
            .unwrap();
        assert!(svg.contains("stroke=\"#4E79A7\""), "{svg}");
        assert!(svg.contains("stroke=\"#F28E2B\""), "{svg}");
    }

    #[test]
    fn thin_keeps_the_first_and_last_points() {
        let points: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 0.0)).collect();
        let xs: Vec<f64> = thin(points, 4).iter().map(|p| p.0).collect();
        assert_eq!(xs, vec![0.0, 3.0, 6.0, 9.0]);
        let xs: Vec<f64> = thin((0..5).map(|i| (i as f64, 0.0)).collect(), 2)
            .iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(xs, vec![0.0, 3.0, 4.0]);
    }

    #[test]
    fn ticks_drop_trailing_zeros() {
        assert_eq!(tick(1.0), "1");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(1.5), "1.5");
        assert_eq!(tick(0.12345), "0.123");
        assert_eq!(tick(-0.0001), "0");
        assert_eq!(tick(100.0), "100");
    }

    #[test]
    fn span_pads_and_widens_a_single_value() {
        assert_eq!(span([1.0, 3.0].into_iter(), 0.5), Some(0.0..4.0));
        assert_eq!(span([2.0].into_iter(), 0.5), Some(1.5..2.5));
        assert_eq!(span(std::iter::empty(), 0.5), None);
    }
}
