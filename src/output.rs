//! Answers on stdout. A reader that leaves early (`pipe schema | head -1`) makes a
//! write fail with `BrokenPipe`; the error travels up like any other, and `main`
//! ends quietly on it instead of reporting it.

use std::io::Write;

use serde::Serialize;

/// Writes `text` and a newline to stdout.
pub fn answer(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Writes `value` to stdout as one pretty-printed JSON document.
pub fn answer_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    answer(&serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// Whether `error` (or one of its causes) is stdout's reader having gone away.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}
