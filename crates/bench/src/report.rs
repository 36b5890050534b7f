//! Numbers and how they are shown: summaries over runs, tables printed to
//! the terminal and written as Markdown.

use std::fmt::Write as _;

/// Median and spread of a handful of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The median.
    pub median: f64,
    /// The smallest sample.
    pub min: f64,
    /// The largest sample.
    pub max: f64,
    /// How many samples.
    pub n: usize,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        Some(Summary {
            median: percentile_sorted(&s, 50.0),
            min: s[0],
            max: s[s.len() - 1],
            n: s.len(),
        })
    }

    /// `median (min–max)` with `digits` decimals, or the median alone for one sample.
    pub fn show(&self, digits: usize) -> String {
        if self.n < 2 {
            return fmt_num(self.median, digits);
        }
        format!(
            "{} ({}–{})",
            fmt_num(self.median, digits),
            fmt_num(self.min, digits),
            fmt_num(self.max, digits)
        )
    }
}

/// The `p`th percentile (nearest rank) of already sorted samples.
fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The `p`th percentile (nearest rank) of `samples`; NaN when empty.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    percentile_sorted(&s, p)
}

/// Formats with thousands separators above 10,000, else with `digits` decimals.
pub fn fmt_num(v: f64, digits: usize) -> String {
    if !v.is_finite() {
        return "-".to_owned();
    }
    if v.abs() >= 10_000.0 {
        let whole = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in whole.chars().enumerate() {
            if i > 0 && (whole.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        return if v < 0.0 { format!("-{out}") } else { out };
    }
    format!("{v:.digits$}")
}

/// One table of a scenario.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Heading above the table.
    pub title: String,
    /// Column names.
    pub headers: Vec<String>,
    /// Cells, row by row.
    pub rows: Vec<Vec<String>>,
    /// Lines printed under the table (method, targets, explanations).
    pub notes: Vec<String>,
}

impl Table {
    /// An empty table with `title` and `headers`.
    pub fn new(title: &str, headers: &[&str]) -> Table {
        Table {
            title: title.to_owned(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            ..Table::default()
        }
    }

    /// Appends a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Appends a note.
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// The table as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = format!("### {}\n\n", self.title);
        let _ = writeln!(out, "| {} |", self.headers.join(" | "));
        let _ = writeln!(
            out,
            "|{}",
            self.headers
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
                .collect::<String>()
        );
        for r in &self.rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }

    /// The table as aligned plain text for the terminal.
    pub fn plain(&self) -> String {
        let cols = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate().take(cols) {
                let pad = widths[i] - c.chars().count();
                if i == 0 {
                    let _ = write!(s, "{c}{}  ", " ".repeat(pad));
                } else {
                    let _ = write!(s, "{}{c}  ", " ".repeat(pad));
                }
            }
            s.trim_end().to_owned()
        };
        let mut out = format!("== {}\n{}\n", self.title, line(&self.headers));
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        for n in &self.notes {
            let _ = writeln!(out, "  * {n}");
        }
        out
    }
}

/// Whether a measured value meets its target, as a table cell.
pub fn verdict(met: bool) -> String {
    if met { "met" } else { "MISSED" }.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_takes_the_middle_and_the_ends() {
        let s = Summary::of(&[3.0, 1.0, 2.0, f64::NAN]).expect("samples");
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn big_numbers_get_separators() {
        assert_eq!(fmt_num(31_934.4, 0), "31,934");
        assert_eq!(fmt_num(1_234_567.0, 1), "1,234,567");
        assert_eq!(fmt_num(0.456, 2), "0.46");
    }

    #[test]
    fn markdown_has_one_row_per_row() {
        let mut t = Table::new("t", &["a", "b"]);
        t.row(vec!["x".into(), "1".into()]);
        let md = t.markdown();
        assert!(md.contains("| a | b |\n|---|---:|\n| x | 1 |\n"), "{md}");
    }
}
