//! A plain text table for stdout: columns padded to their widest cell, text
//! columns left-aligned and number columns right-aligned.

use std::io::Write;

use pipe_engine::Printer;

/// Rows under a header; the first `text_columns` columns are text, the rest numbers.
pub struct Table {
    header: Vec<String>,
    text_columns: usize,
    rows: Vec<Row>,
}

struct Row {
    cells: Vec<String>,
    bold: bool,
}

impl Table {
    /// An empty table with these column titles.
    pub fn new(header: &[&str], text_columns: usize) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            text_columns,
            rows: Vec::new(),
        }
    }

    /// Adds a row, in bold when `bold` (and stdout gets colour).
    pub fn row(&mut self, cells: Vec<String>, bold: bool) {
        debug_assert_eq!(cells.len(), self.header.len(), "one cell per column");
        self.rows.push(Row { cells, bold });
    }

    /// Writes the header and the rows to stdout.
    pub fn print(&self, printer: &Printer) -> std::io::Result<()> {
        let width = |column: usize| {
            std::iter::once(&self.header[column])
                .chain(self.rows.iter().map(|r| &r.cells[column]))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.header.len()).map(width).collect();
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(column, (cell, &width))| {
                    if column < self.text_columns {
                        format!("{cell:<width$}")
                    } else {
                        format!("{cell:>width$}")
                    }
                })
                .collect();
            padded.join("  ").trim_end().to_string()
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", line(&self.header))?;
        for row in &self.rows {
            let text = line(&row.cells);
            if row.bold {
                writeln!(out, "{}", printer.bold_stdout(&text))?;
            } else {
                writeln!(out, "{text}")?;
            }
        }
        Ok(())
    }
}
