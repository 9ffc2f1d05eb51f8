//! Collecting samples over repeated runs and writing the Markdown and JSON report.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

/// One figure measured in every repeat of a scenario.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) scenario: &'static str,
    pub(crate) metric: String,
    pub(crate) unit: &'static str,
    pub(crate) values: Vec<f64>,
}

impl Row {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    pub(crate) fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub(crate) fn median(&self) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            f64::NAN
        } else if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        }
    }

    pub(crate) fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

/// A target from issue 7, judged on the median of a row.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) text: String,
    pub(crate) metric: String,
    pub(crate) at_least: bool,
    pub(crate) bound: f64,
}

/// Everything the suite found, in the order it was found.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) skipped: Vec<(String, String)>,
    pub(crate) notes: Vec<String>,
    pub(crate) context: Vec<(String, String)>,
}

impl Report {
    /// Adds one sample of `metric` (a repeat of `scenario`).
    pub(crate) fn add(
        &mut self,
        scenario: &'static str,
        metric: &str,
        unit: &'static str,
        value: f64,
    ) {
        match self
            .rows
            .iter_mut()
            .find(|r| r.scenario == scenario && r.metric == metric)
        {
            Some(row) => row.values.push(value),
            None => self.rows.push(Row {
                scenario,
                metric: metric.to_owned(),
                unit,
                values: vec![value],
            }),
        }
    }

    pub(crate) fn skip(&mut self, what: impl Into<String>, why: impl Into<String>) {
        let (what, why) = (what.into(), why.into());
        println!("SKIPPED {what}: {why}");
        self.skipped.push((what, why));
    }

    pub(crate) fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        println!("note: {note}");
        self.notes.push(note);
    }

    pub(crate) fn row(&self, metric: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.metric == metric)
    }

    fn verdicts(&self, targets: &[Target]) -> Vec<(String, String, String)> {
        targets
            .iter()
            .map(|t| match self.row(&t.metric) {
                None => (
                    t.text.clone(),
                    "not measured".to_owned(),
                    "NOT MEASURED".to_owned(),
                ),
                Some(row) => {
                    let m = row.median();
                    let met = if t.at_least {
                        m >= t.bound
                    } else {
                        m <= t.bound
                    };
                    (
                        t.text.clone(),
                        format!("{} {} (median of `{}`)", fmt(m), row.unit, t.metric),
                        if met { "met" } else { "MISSED" }.to_owned(),
                    )
                }
            })
            .collect()
    }

    pub(crate) fn markdown(&self, targets: &[Target]) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# courier benchmark report\n");
        for (key, value) in &self.context {
            let _ = writeln!(out, "- **{key}**: {value}");
        }
        let _ = writeln!(out, "\n## Targets (issues 7, 13, 15)\n");
        let _ = writeln!(out, "| target | measured | verdict |\n|---|---|---|");
        for (text, measured, verdict) in self.verdicts(targets) {
            let _ = writeln!(out, "| {text} | {measured} | {verdict} |");
        }
        let mut scenario = "";
        for row in &self.rows {
            if row.scenario != scenario {
                scenario = row.scenario;
                let _ = writeln!(out, "\n## {scenario}\n");
                let _ = writeln!(
                    out,
                    "| metric | unit | min | median | max | runs |\n|---|---|---:|---:|---:|---:|"
                );
            }
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                row.metric,
                row.unit,
                fmt(row.min()),
                fmt(row.median()),
                fmt(row.max()),
                row.values.len()
            );
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(out, "\n## Skipped\n");
            for (what, why) in &self.skipped {
                let _ = writeln!(out, "- **{what}**: {why}");
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\n## Notes\n");
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        out
    }

    pub(crate) fn json(&self, targets: &[Target]) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({"scenario": r.scenario, "metric": r.metric, "unit": r.unit,
                       "min": r.min(), "median": r.median(), "max": r.max(), "values": r.values})
            })
            .collect();
        let targets: Vec<Value> = self
            .verdicts(targets)
            .into_iter()
            .map(|(t, m, v)| json!({"target": t, "measured": m, "verdict": v}))
            .collect();
        let context: serde_json::Map<String, Value> = self
            .context
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        json!({"context": context, "targets": targets, "rows": rows,
               "skipped": self.skipped.iter().map(|(w, y)| json!({"scenario": w, "reason": y})).collect::<Vec<_>>(),
               "notes": self.notes})
    }

    pub(crate) fn write(&self, dir: &Path, targets: &[Target]) -> anyhow::Result<String> {
        std::fs::create_dir_all(dir)?;
        let markdown = self.markdown(targets);
        std::fs::write(dir.join("report.md"), &markdown)?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(&self.json(targets))?,
        )?;
        Ok(markdown)
    }
}

/// A backlog size as metrics name it: `10k`, `1M`.
pub(crate) fn size_label(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{}M", n / 1_000_000)
    } else {
        format!("{}k", n / 1000)
    }
}

/// Three significant figures, without scientific notation for the usual ranges.
pub(crate) fn fmt(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_owned();
    }
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The value at quantile `q` (0..=1) of `sorted`.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}
