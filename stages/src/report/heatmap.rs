//! The confusion matrix as an SVG heatmap, written by hand: a grid of labelled cells is not
//! an x/y chart, and owning the markup lets each cell carry its count and a tooltip.

use super::html::{escape, shorten};

/// Longest label shown on an axis; the full label is in the tooltip.
const LABEL_CHARS: usize = 14;
/// Rough width of one label character at the 12px axis font.
const CHAR_WIDTH: usize = 7;

/// One `<svg>` with a `<rect class="cell">` per matrix entry: rows are the true class,
/// columns the predicted class, and the colour's opacity is the entry's share of its row
/// (its row-normalised value; 0 for a class with no rows). Counts are written in the cells
/// when they are large enough to hold them; every cell has a `<title>` tooltip.
pub(super) fn confusion_heatmap(labels: &[String], matrix: &[Vec<u64>]) -> String {
    let names: Vec<String> = (0..matrix.len())
        .map(|i| labels.get(i).cloned().unwrap_or_else(|| format!("#{i}")))
        .collect();
    let grid = Grid::new(&names);
    let (width, height) = grid.size();
    let mut svg = format!(
        "<svg class=\"heatmap\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"confusion matrix\" \
         font-family=\"sans-serif\" font-size=\"12\">\n"
    );
    for (i, name) in names.iter().enumerate() {
        svg.push_str(&grid.axis_labels(i, name));
    }
    for (i, row) in matrix.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (j, &count) in row.iter().enumerate() {
            let share = if total == 0 {
                0.0
            } else {
                count as f64 / total as f64
            };
            let tooltip = format!(
                "true {}, predicted {}: {count} ({:.1}% of the row)",
                escape(&names[i]),
                escape(names.get(j).map_or("?", String::as_str)),
                100.0 * share
            );
            svg.push_str(&grid.cell(i, j, count, share, &tooltip));
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// Where things go: a left margin for the row labels, a top margin for the rotated column
/// labels, then square cells.
struct Grid {
    classes: usize,
    cell: usize,
    left: usize,
    top: usize,
}

impl Grid {
    fn new(names: &[String]) -> Grid {
        let classes = names.len();
        let longest = names
            .iter()
            .map(|n| n.chars().count().min(LABEL_CHARS + 1))
            .max()
            .unwrap_or(1);
        Grid {
            classes,
            cell: (360 / classes.max(1)).clamp(14, 48),
            left: longest * CHAR_WIDTH + 12,
            // Column labels are rotated by 45°: about 0.72 of their length goes up.
            top: longest * CHAR_WIDTH * 72 / 100 + 14,
        }
    }

    fn size(&self) -> (usize, usize) {
        let side = self.classes * self.cell;
        (self.left + side + 8, self.top + side + 4)
    }

    /// Class `i`'s name left of its row and, rotated, above its column.
    fn axis_labels(&self, i: usize, name: &str) -> String {
        let (short, full) = (escape(&shorten(name, LABEL_CHARS)), escape(name));
        let middle = i * self.cell + self.cell / 2;
        format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" dominant-baseline=\"central\">\
             <title>true: {full}</title>{short}</text>\n\
             <text transform=\"translate({} {}) rotate(-45)\">\
             <title>predicted: {full}</title>{short}</text>\n",
            self.left - 6,
            self.top + middle,
            self.left + middle,
            self.top - 6
        )
    }

    /// Entry (`i`, `j`): a shaded square with a tooltip, and its count when it fits.
    fn cell(&self, i: usize, j: usize, count: u64, share: f64, tooltip: &str) -> String {
        let (x, y, side) = (
            self.left + j * self.cell,
            self.top + i * self.cell,
            self.cell,
        );
        // A floor of 0.06 keeps empty cells visible as a grid.
        let mut out = format!(
            "<rect class=\"cell\" x=\"{x}\" y=\"{y}\" width=\"{side}\" height=\"{side}\" \
             fill=\"#2563eb\" fill-opacity=\"{:.3}\" stroke=\"currentColor\" \
             stroke-opacity=\"0.15\"><title>{tooltip}</title></rect>\n",
            0.06 + 0.94 * share
        );
        if side >= 22 {
            let class = if share > 0.5 {
                " class=\"on-strong\""
            } else {
                ""
            };
            let font = (side * 35 / 100).clamp(9, 13);
            out.push_str(&format!(
                "<text{class} x=\"{}\" y=\"{}\" text-anchor=\"middle\" \
                 dominant-baseline=\"central\" font-size=\"{font}\">{count}</text>\n",
                x + side / 2,
                y + side / 2
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cell_per_entry_shaded_by_its_share_of_the_row() {
        let labels = vec!["a".to_string(), "b&c".to_string()];
        let svg = confusion_heatmap(&labels, &[vec![3, 1], vec![0, 0]]);
        assert_eq!(svg.matches("class=\"cell\"").count(), 4);
        // 3 of 4 → 0.06 + 0.94·0.75 = 0.765; the empty row is at the floor 0.06.
        assert!(svg.contains("fill-opacity=\"0.765\""), "{svg}");
        assert_eq!(svg.matches("fill-opacity=\"0.060\"").count(), 2);
        assert!(svg.contains("true a, predicted b&amp;c: 1 (25.0% of the row)"));
        assert!(svg.contains(">3</text>"));
        assert!(!svg.contains("b&c"));
    }
}
