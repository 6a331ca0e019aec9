//! The benchmark's result table: one row per figure, next to its baseline
//! and the target it is held to.

use super::tools::Timing;

/// One line of the table.
pub(super) struct Row {
    measure: String,
    value: String,
    baseline: String,
    ratio: String,
    target: &'static str,
    ok: bool,
}

impl Row {
    /// A figure with no target (reported, never missed).
    pub(super) fn info(measure: impl Into<String>, value: String, baseline: String) -> Row {
        Row {
            measure: measure.into(),
            value,
            baseline,
            ratio: "-".into(),
            target: "-",
            ok: true,
        }
    }

    /// `ours` against `theirs` by median, held to a ratio of at most `max`
    /// (`None`: reported only).
    pub(super) fn ratio(
        measure: impl Into<String>,
        ours: &Timing,
        theirs: &Timing,
        target: &'static str,
        max: Option<f64>,
    ) -> Row {
        let ratio = ours.median_ms / theirs.median_ms;
        Row {
            ratio: format!("{ratio:.2}"),
            target,
            ok: max.is_none_or(|max| ratio <= max),
            ..Row::info(measure, ours.to_string(), theirs.to_string())
        }
    }

    /// Replaces the ratio column's text.
    pub(super) fn with_ratio(self, ratio: String) -> Row {
        Row { ratio, ..self }
    }

    /// Holds the row to `target`, met when `ok`.
    pub(super) fn held_to(self, target: &'static str, ok: bool) -> Row {
        Row { target, ok, ..self }
    }

    fn cells(&self) -> [String; 6] {
        [
            self.measure.clone(),
            self.value.clone(),
            self.baseline.clone(),
            self.ratio.clone(),
            self.target.to_owned(),
            if self.ok { "ok" } else { "MISSED" }.to_owned(),
        ]
    }
}

/// Prints `rows` as a Markdown table, columns padded to their widest cell.
pub(super) fn print(rows: &[Row]) {
    let headers = [
        "measure (median ± sd)",
        "lifehook",
        "baseline",
        "ratio",
        "target",
        "",
    ]
    .map(str::to_owned);
    let cells: Vec<[String; 6]> = rows.iter().map(Row::cells).collect();
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(&headers);
    line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
    for r in &cells {
        line(r);
    }
}
