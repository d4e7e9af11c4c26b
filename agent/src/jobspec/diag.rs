//! Located errors: every problem of a job file, each with `FILE:LINE:COLUMN`,
//! the field path and what was expected.

use std::fmt;

/// One problem in a job file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as given to the parser.
    pub file: String,
    /// One-based line; 0 when the problem has no place in the file (unreadable file).
    pub line: usize,
    /// One-based column, counted in characters; 0 with `line` 0.
    pub column: usize,
    /// Field path such as `job.web.group.g.task.t.resources.memory`; empty for syntax errors.
    pub path: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one job file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics {
    /// The problems, sorted by line and column.
    pub errors: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Number of problems.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// True when there is no problem.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The problems in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.errors.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

/// Collects diagnostics for one source text, turning byte offsets into line and column.
pub(crate) struct Collector<'s> {
    file: String,
    src: &'s str,
    pub(crate) errors: Vec<Diagnostic>,
    /// Check what only this host can tell too (the user of an exec task).
    pub(crate) on_this_host: bool,
}

impl<'s> Collector<'s> {
    pub(crate) fn new(file: &str, src: &'s str) -> Self {
        Collector {
            file: file.to_string(),
            src,
            errors: Vec::new(),
            on_this_host: false,
        }
    }

    /// Line and column (one-based, column in characters) of a byte offset.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.src.len());
        while !self.src.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.src[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// Records an error at a byte offset.
    pub(crate) fn error(&mut self, at: usize, path: &str, message: impl Into<String>) {
        let (line, column) = self.line_col(at);
        self.at_line_col(line, column, path, message);
    }

    /// Records an error at a known line and column.
    pub(crate) fn at_line_col(
        &mut self,
        line: usize,
        column: usize,
        path: &str,
        message: impl Into<String>,
    ) {
        self.errors.push(Diagnostic {
            file: self.file.clone(),
            line,
            column,
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// The collected errors, sorted by place (the sort is stable: same place keeps order).
    pub(crate) fn finish(mut self) -> Diagnostics {
        self.errors.sort_by_key(|d| (d.line, d.column));
        Diagnostics {
            errors: self.errors,
        }
    }
}
