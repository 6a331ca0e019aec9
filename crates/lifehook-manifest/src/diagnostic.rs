//! Errors that point into the pipeline file: path, line, column, the line
//! itself, and a hint on how to fix it.
//!
//! The renderer is hand-written (a few dozen lines) rather than pulled from a
//! diagnostics crate: the output is one shape, rustc-like, and it keeps the
//! binary that runs inside every container small.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The file cannot be used as it is.
    Error,
    /// The file works, but probably not as meant (a budget that does not
    /// fit the grace period, say). `check` reports these; `run` logs them.
    Warning,
}

/// One problem found in a pipeline file, located to the byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The pipeline file.
    pub path: PathBuf,
    /// 1-based line of the offending value.
    pub line: usize,
    /// 1-based column (in characters) of the offending value.
    pub column: usize,
    /// What is wrong, lower-case, no trailing period.
    pub message: String,
    /// How to fix it, when there is something useful to say.
    pub help: Option<String>,
    /// The source line the problem is on, for display.
    source_line: String,
    /// How many characters of `source_line` to underline.
    width: usize,
}

/// Where each line of a source starts, so that locating many diagnostics
/// in a large file costs a binary search each, not a scan.
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    /// Indexes `source`.
    pub fn new(source: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    /// The 1-based line holding byte `at`.
    fn line(&self, at: usize) -> usize {
        self.starts.partition_point(|&s| s <= at)
    }
}

impl Diagnostic {
    /// Locates `span` (byte offsets into `source`) and builds a diagnostic.
    pub fn new(path: &Path, source: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        Diagnostic::indexed(&LineIndex::new(source), path, source, span, message)
    }

    /// Like [`Diagnostic::new`], with the source's [`LineIndex`] at hand.
    pub fn indexed(
        index: &LineIndex,
        path: &Path,
        source: &str,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> Self {
        let mut start = span.start.min(source.len());
        while !source.is_char_boundary(start) {
            start -= 1;
        }
        let line = index.line(start);
        let line_start = index.starts[line - 1];
        let line_end = index
            .starts
            .get(line)
            .map_or(source.len(), |&next| next - 1);
        let source_line = source[line_start..line_end].trim_end_matches('\r');
        let column = source[line_start..start].chars().count() + 1;
        let mut end = span.end.clamp(start, line_end);
        while !source.is_char_boundary(end) {
            end -= 1;
        }
        let width = source[start..end].chars().count().max(1);
        Diagnostic {
            severity: Severity::Error,
            path: path.to_path_buf(),
            line,
            column,
            message: message.into(),
            help: None,
            source_line: source_line.to_owned(),
            width,
        }
    }

    /// Makes this a warning.
    pub fn warning(mut self) -> Self {
        self.severity = Severity::Warning;
        self
    }

    /// The same place, with another message (a problem found later at a
    /// location kept from resolving, such as a grant's TLS files).
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// Adds a hint on how to fix the problem.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    /// Renders like rustc:
    ///
    /// ```text
    /// error: unknown field `timout`, expected one of `name`, `plugin`, ...
    ///  --> lifehook.toml:7:1
    ///   |
    /// 7 | timout = "5s"
    ///   | ^^^^^^
    ///   = help: ...
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let number = self.line.to_string();
        let pad = " ".repeat(number.len());
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        writeln!(f, "{label}: {}", self.message)?;
        writeln!(
            f,
            "{pad}--> {}:{}:{}",
            self.path.display(),
            self.line,
            self.column
        )?;
        writeln!(f, "{pad} |")?;
        writeln!(f, "{number} | {}", self.source_line)?;
        write!(
            f,
            "{pad} | {}{}",
            " ".repeat(self.column - 1),
            "^".repeat(self.width)
        )?;
        if let Some(help) = &self.help {
            write!(f, "\n{pad} = help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found in one pipeline file (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render_problems(&self.0))
    }
}

/// The one way lifehook lists problems, whatever found them: each problem
/// in its own paragraph, then a count when there is more than one.
pub fn render_problems<T: fmt::Display>(problems: &[T]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push_str("\n\n");
        }
        out.push_str(&p.to_string());
    }
    if problems.len() > 1 {
        out.push_str(&format!("\n\n{} problems found", problems.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_line_and_column_of_a_span() {
        let src = "a = 1\nbb = \"x\"\n";
        let at = src.find("\"x\"").expect("fixture has the value");
        let d = Diagnostic::new(Path::new("p.toml"), src, at..at + 3, "bad value");
        assert_eq!((d.line, d.column), (2, 6));
        let text = d.with_help("write it right").to_string();
        assert_eq!(
            text,
            "error: bad value\n --> p.toml:2:6\n  |\n2 | bb = \"x\"\n  |      ^^^\n  = help: write it right"
        );
    }

    #[test]
    fn problems_are_counted_only_when_several() {
        assert_eq!(render_problems(&["error: a"]), "error: a");
        assert_eq!(
            render_problems(&["error: a", "error: b"]),
            "error: a\n\nerror: b\n\n2 problems found"
        );
        assert_eq!(render_problems::<&str>(&[]), "");
    }

    #[test]
    fn span_at_end_of_file_does_not_panic() {
        let src = "a = ";
        let d = Diagnostic::new(Path::new("p.toml"), src, 4..9, "missing value");
        assert_eq!((d.line, d.column), (1, 5));
    }
}
