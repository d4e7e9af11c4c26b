//! The CLI's side of the agent's API: the client (shared with the tests, in
//! [`crate::api::client`]) and the table its verbs print.

pub use crate::api::client::{ApiClient, ApiError};
pub use crate::api::wire::enc;

/// Print rows as aligned columns.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(&[
            vec!["ID".into(), "STATUS".into()],
            vec!["abc".into(), "running".into()],
        ]);
        assert_eq!(t, "ID   STATUS\nabc  running\n");
    }
}
