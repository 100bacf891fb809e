//! Config errors that point at a file, line and column, in the words of the key
//! that is wrong and what was expected there.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in a config or pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line and column; 0 when the problem concerns the whole file.
    pub line: usize,
    pub column: usize,
    /// The dotted key the problem is about, e.g. `ingest.settle`, when known.
    pub key: Option<String>,
    pub message: String,
}

impl Diagnostic {
    /// A problem with the whole file (unreadable, missing).
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            key: None,
            message: message.into(),
        }
    }

    /// A problem located by a byte span of `source`.
    pub fn at_span(file: &Path, source: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        let (line, column) = line_column(source, span.start);
        Diagnostic {
            file: file.to_path_buf(),
            line,
            column,
            key: key_at(source, span.start),
            message: message.into(),
        }
    }

    /// Converts a toml deserialization error, rewording serde's vocabulary
    /// ("field") into the config's ("key").
    pub fn from_toml(file: &Path, source: &str, error: &toml::de::Error) -> Self {
        let message = error
            .message()
            .replace("unknown field", "unknown key")
            .replace("missing field", "missing key")
            .trim_end()
            .to_string();
        match error.span() {
            Some(span) => Diagnostic::at_span(file, source, span, message),
            None => Diagnostic::whole_file(file, message),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// A list of diagnostics, displayed one per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, diagnostic) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = source[line_start..offset].chars().count() + 1;
    (line, column)
}

/// The dotted key whose line contains `offset`: the enclosing `[table]`
/// header joined with the key before `=` on that line.
fn key_at(source: &str, offset: usize) -> Option<String> {
    let offset = offset.min(source.len());
    let line_start = source[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = source[offset..].find('\n').map_or(source.len(), |i| offset + i);
    let line = source[line_start..line_end].trim();
    if let Some(header) = table_header(line) {
        return Some(header);
    }
    let table = source[..line_start].lines().rev().find_map(|l| table_header(l.trim()));
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty());
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

fn table_header(line: &str) -> Option<String> {
    let inner = line.strip_prefix('[')?;
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let end = inner.find(']')?;
    Some(inner[..end].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_key_inside_table() {
        let source = "[paths]\ninbox = \"in\"\n\n[ingest]\nsettle = \"2\"\n";
        let offset = source.find("\"2\"").unwrap();
        let d = Diagnostic::at_span(Path::new("x.toml"), source, offset..offset + 3, "bad");
        assert_eq!((d.line, d.column), (5, 10));
        assert_eq!(d.key.as_deref(), Some("ingest.settle"));
        assert_eq!(d.to_string(), "x.toml:5:10: `ingest.settle`: bad");
    }

    #[test]
    fn locates_top_level_key() {
        let source = "pipelines = 3\n[paths]\n";
        let d = Diagnostic::at_span(Path::new("x.toml"), source, 12..13, "bad");
        assert_eq!(d.key.as_deref(), Some("pipelines"));
    }
}
