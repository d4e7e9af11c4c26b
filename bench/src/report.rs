//! The results table: rows of figures, written as Markdown and JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::Summary;

/// A target beside a figure: met or missed, never asserted.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What the target says ("<= 3x floor").
    pub text: String,
    /// Whether the figure meets it.
    pub met: bool,
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Figure number and letter ("1a").
    pub figure: String,
    /// What was measured.
    pub what: String,
    /// Unit of median and p95.
    pub unit: String,
    /// The measurement, if any.
    pub summary: Option<Summary>,
    /// Name of the same-run baseline.
    pub baseline: Option<String>,
    /// Baseline median, same unit.
    pub baseline_median: Option<f64>,
    /// median / baseline median (or the ratio named in `note`).
    pub ratio: Option<f64>,
    /// The target, with its verdict.
    pub target: Option<Target>,
    /// Why nothing was measured.
    pub not_measured: Option<String>,
    /// How it was measured, in a few words.
    pub note: String,
}

impl Row {
    /// A row with a measurement and nothing else yet.
    pub fn measured(figure: &str, what: &str, unit: &str, s: Option<Summary>) -> Row {
        Row {
            figure: figure.into(),
            what: what.into(),
            unit: unit.into(),
            summary: s,
            baseline: None,
            baseline_median: None,
            ratio: None,
            target: None,
            not_measured: if s.is_none() {
                Some("no samples".into())
            } else {
                None
            },
            note: String::new(),
        }
    }

    /// A row that says why it could not be measured.
    pub fn not_measured(figure: &str, what: &str, why: impl Into<String>) -> Row {
        let mut r = Row::measured(figure, what, "", None);
        r.not_measured = Some(why.into());
        r
    }

    /// Set the baseline and the ratio median / baseline.
    pub fn vs(mut self, name: &str, base: Option<Summary>) -> Row {
        self.baseline = Some(name.into());
        if let Some(b) = base {
            self.baseline_median = Some(b.median);
            if let Some(s) = self.summary {
                if b.median > 0.0 {
                    self.ratio = Some(s.median / b.median);
                }
            }
        } else {
            self.baseline = Some(format!("{name} (not measured)"));
        }
        self
    }

    /// Set the ratio explicitly (when it is not median / baseline median).
    pub fn ratio(mut self, r: Option<f64>) -> Row {
        self.ratio = r;
        self
    }

    /// A target; `met` decides the verdict (None: cannot be judged).
    pub fn target(mut self, text: &str, met: Option<bool>) -> Row {
        if let Some(met) = met {
            self.target = Some(Target {
                text: text.into(),
                met,
            });
        } else {
            self.note = format!("{} target {text}: not judged", self.note)
                .trim()
                .to_string();
        }
        self
    }

    /// Add a note.
    pub fn note(mut self, n: impl Into<String>) -> Row {
        let n = n.into();
        self.note = if self.note.is_empty() {
            n
        } else {
            format!("{}; {n}", self.note)
        };
        self
    }
}

fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// One line about the machine.
    pub machine: String,
    /// When, which commit, which mode.
    pub run: String,
    /// The rows.
    pub rows: Vec<Row>,
    /// Free-form findings.
    pub notes: Vec<String>,
}

impl Report {
    /// The Markdown page.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# tend benchmark results\n");
        let _ = writeln!(s, "**Machine:** {}\n", self.machine);
        let _ = writeln!(s, "**Run:** {}\n", self.run);
        let _ = writeln!(
            s,
            "Every figure: median and p95 over n runs, with its ratio to a baseline measured in the same run. Targets are reported, never asserted.\n"
        );
        let _ = writeln!(
            s,
            "| fig | what | median | p95 | n | unit | baseline (median) | ratio | target | verdict | note |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &self.rows {
            if let Some(why) = &r.not_measured {
                let _ = writeln!(
                    s,
                    "| {} | {} | not measured: {} | | | | | | {} | | {} |",
                    r.figure,
                    r.what,
                    why.replace('|', "/").replace('\n', " "),
                    r.target.as_ref().map_or("", |t| t.text.as_str()),
                    r.note
                );
                continue;
            }
            let (med, p95, n) = r.summary.map_or((String::new(), String::new(), 0), |x| {
                (num(x.median), num(x.p95), x.n)
            });
            let base = match (&r.baseline, r.baseline_median) {
                (Some(b), Some(m)) => format!("{b} ({})", num(m)),
                (Some(b), None) => b.clone(),
                _ => String::new(),
            };
            let ratio = r.ratio.map_or(String::new(), |x| format!("{x:.2}x"));
            let (tt, verdict) = r.target.as_ref().map_or((String::new(), ""), |t| {
                (t.text.clone(), if t.met { "met" } else { "missed" })
            });
            let _ = writeln!(
                s,
                "| {} | {} | {med} | {p95} | {n} | {} | {base} | {ratio} | {tt} | {verdict} | {} |",
                r.figure, r.what, r.unit, r.note
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }
}
