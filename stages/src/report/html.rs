//! HTML text: escaping, number formatting and tables.

/// `text` with `& < > " '` replaced by entities, safe in element content and in quoted
/// attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// At most `max` characters of `text`, with `…` in place of the rest.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// A metric with three decimals, or an em dash when it is undefined or not finite.
pub(crate) fn number(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.3}"),
        _ => "—".to_string(),
    }
}

/// A `<table>` with the given class, header cells (plain text) and body cells (HTML, escaped
/// by the caller).
pub(crate) fn table(class: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("<table class=\"{class}\">\n<thead><tr>");
    for cell in head {
        out.push_str(&format!("<th>{}</th>", escape(cell)));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            out.push_str(&format!("<td>{cell}</td>"));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_replaces_every_markup_character() {
        assert_eq!(
            escape(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("plain ✓"), "plain ✓");
    }

    #[test]
    fn shorten_cuts_on_character_boundaries() {
        assert_eq!(shorten("héllo", 10), "héllo");
        assert_eq!(shorten("héllo", 2), "hé…");
    }

    #[test]
    fn numbers_have_three_decimals_and_undefined_is_a_dash() {
        assert_eq!(number(Some(0.98765)), "0.988");
        assert_eq!(number(None), "—");
        assert_eq!(number(Some(f64::NAN)), "—");
    }

    #[test]
    fn table_escapes_the_header_and_keeps_cells_as_given() {
        let html = table("t", &["a<b"], &[vec!["<b>1</b>".to_string()]]);
        assert!(html.contains("<th>a&lt;b</th>"));
        assert!(html.contains("<td><b>1</b></td>"));
    }
}
