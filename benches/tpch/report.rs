//! The benchmark's report: a Markdown table per placement (per-query times, geometric
//! means and ratios) and an SVG chart of the same times.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use tributary_testkit::tpch::{Placement, Query};

/// Who answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    Tributary,
    Flight,
    DuckDb,
    Ceiling,
    Alone,
}

impl Contender {
    fn label(self, alone: Option<&str>) -> String {
        match self {
            Contender::Tributary => "Tributary".into(),
            Contender::Flight => "Tributary over Flight SQL".into(),
            Contender::DuckDb => "DuckDB + scanners".into(),
            Contender::Ceiling => "DataFusion on Parquet".into(),
            Contender::Alone => alone.unwrap_or("the database alone").into(),
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Contender::Tributary => "#1f77b4",
            Contender::Flight => "#6baed6",
            Contender::DuckDb => "#ff7f0e",
            Contender::Ceiling => "#2ca02c",
            Contender::Alone => "#9467bd",
        }
    }
}

/// How a contender's answers to one query compared with the reference answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Every answer checked matched.
    Matched,
    /// An answer differed (or the contender failed other than by timing out).
    Wrong,
    /// There was no reference answer to check against.
    Unchecked,
}

/// One contender's result for one query.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Median time, and how its answers compared with the reference.
    Time(Duration, Checked),
    /// An error or timeout.
    Failed(String),
}

impl Outcome {
    fn seconds(&self) -> Option<f64> {
        match self {
            Outcome::Time(t, _) => Some(t.as_secs_f64()),
            Outcome::Failed(_) => None,
        }
    }
}

/// The results of one placement.
pub struct PlacementReport {
    name: String,
    alone: Option<&'static str>,
    contenders: Vec<Contender>,
    rows: Vec<(String, Vec<(Contender, Outcome)>)>,
    /// Queries whose answers were checked against another contender's than DuckDB's
    /// (`Some`), or against none (`None`), because DuckDB gave none.
    other_references: Vec<(String, Option<Contender>)>,
}

impl PlacementReport {
    pub fn new(placement: &Placement, alone: Option<&'static str>) -> Self {
        PlacementReport {
            name: placement.name.clone(),
            alone,
            contenders: Vec::new(),
            rows: Vec::new(),
            other_references: Vec::new(),
        }
    }

    /// Adds a query's outcomes, whose answers were checked against `reference`'s.
    pub fn add(
        &mut self,
        query: &Query,
        outcomes: Vec<(Contender, Outcome)>,
        reference: Option<Contender>,
    ) {
        for (c, _) in &outcomes {
            if !self.contenders.contains(c) {
                self.contenders.push(*c);
            }
        }
        if reference != Some(Contender::DuckDb) {
            self.other_references.push((query.name.clone(), reference));
        }
        self.rows.push((query.name.clone(), outcomes));
    }

    fn seconds(&self, row: usize, contender: Contender) -> Option<f64> {
        self.rows[row]
            .1
            .iter()
            .find(|(c, _)| *c == contender)
            .and_then(|(_, o)| o.seconds())
    }

    /// The geometric mean of a contender's times over the queries Tributary, DuckDB and the
    /// ceiling all answered; none for a contender that missed one of them (the database
    /// alone may time out or not know the syntax, and must not shrink the others' set).
    fn geomean(&self, contender: Contender) -> Option<f64> {
        let complete: Vec<usize> = (0..self.rows.len())
            .filter(|&r| {
                self.contenders
                    .iter()
                    .filter(|c| **c != Contender::Alone)
                    .all(|c| self.seconds(r, *c).is_some())
            })
            .collect();
        let times: Vec<f64> = complete
            .iter()
            .filter_map(|&r| self.seconds(r, contender))
            .collect();
        if complete.is_empty() || times.len() < complete.len() {
            return None;
        }
        geometric_mean(&times)
    }

    fn markdown(&self, out: &mut String) {
        let labels: Vec<String> = self
            .contenders
            .iter()
            .map(|c| format!("{} s", c.label(self.alone)))
            .collect();
        let _ = writeln!(out, "\n## Placement `{}`\n", self.name);
        let ratios = self.ratios();
        let _ = writeln!(
            out,
            "| query | {} | {} |",
            labels.join(" | "),
            ratios
                .iter()
                .map(|r| r.label(self.alone))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(
            out,
            "|---|{}{}",
            "---:|".repeat(labels.len()),
            "---:|".repeat(ratios.len())
        );
        let mut failures = Vec::new();
        for (r, (name, outcomes)) in self.rows.iter().enumerate() {
            let cells: Vec<String> = self
                .contenders
                .iter()
                .map(|c| match outcomes.iter().find(|(o, _)| o == c) {
                    Some((_, Outcome::Time(t, Checked::Wrong))) => {
                        format!("{:.3} ✗ wrong answer", t.as_secs_f64())
                    }
                    Some((_, Outcome::Time(t, _))) => format!("{:.3}", t.as_secs_f64()),
                    Some((_, Outcome::Failed(e))) => {
                        failures.push(format!("- {name}, {}: {e}", c.label(self.alone)));
                        "failed".into()
                    }
                    None => String::new(),
                })
                .collect();
            let _ = writeln!(
                out,
                "| {name} | {} | {} |",
                cells.join(" | "),
                ratios
                    .iter()
                    .map(|ratio| ratio
                        .of(|c| self.seconds(r, c))
                        .map_or("–".into(), |x| format!("{x:.2}×")))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        let means: Vec<Option<f64>> = self.contenders.iter().map(|c| self.geomean(*c)).collect();
        let mean_of = |c: Contender| {
            self.contenders
                .iter()
                .position(|x| *x == c)
                .and_then(|i| means[i])
        };
        let cells: Vec<String> = means
            .iter()
            .map(|m| m.map_or("–".into(), |m| format!("**{m:.3}**")))
            .collect();
        let _ = writeln!(
            out,
            "| geomean | {} | {} |",
            cells.join(" | "),
            ratios
                .iter()
                .map(|r| {
                    let mean = match r {
                        Ratio::Over(..) => r.of(mean_of),
                        Ratio::OverBetterOfAloneAndDuckDb => self.geomean_ratio(*r),
                    };
                    mean.map_or("–".into(), |m| format!("**{m:.2}×**"))
                })
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(
            out,
            "\nGeometric means are over the queries Tributary, DuckDB and the ceiling all \
             answered; a contender that missed one of those has none. The better of {} and \
             DuckDB is the faster of the two on each query (either one where the other failed).",
            Contender::Alone.label(self.alone)
        );
        let _ = writeln!(out, "\nHighest ratios:");
        for ratio in &ratios {
            if let Some((query, highest)) = self.highest(*ratio) {
                let _ = writeln!(
                    out,
                    "- {}: {highest:.2}× ({query})",
                    ratio.label(self.alone)
                );
            }
        }
        if !failures.is_empty() {
            let _ = writeln!(out, "\nFailures:\n{}", failures.join("\n"));
        }
        if !self.other_references.is_empty() {
            let _ = writeln!(out, "\nWhere DuckDB gave no answer:");
            for (query, reference) in &self.other_references {
                let _ = match reference {
                    Some(c) => writeln!(
                        out,
                        "- {query}: the answers were checked against {}'s",
                        c.label(self.alone)
                    ),
                    None => writeln!(out, "- {query}: no answer to check the others against"),
                };
            }
        }
    }

    /// One panel of the chart: grouped bars per query on a log scale, `top` pixels down.
    fn svg(&self, out: &mut String, top: f64, width: f64, height: f64) {
        let (left, plot_w, plot_h) = (60.0, width - 80.0, height - 70.0);
        let all: Vec<f64> = (0..self.rows.len())
            .flat_map(|r| {
                self.contenders
                    .iter()
                    .filter_map(move |c| self.seconds(r, *c))
            })
            .collect();
        let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(1e-4);
        let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
        let (lo_exp, hi_exp) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        let y = |s: f64| {
            let f = (s.log10() - f64::from(lo_exp)) / f64::from(hi_exp - lo_exp);
            top + 30.0 + plot_h * (1.0 - f)
        };
        let _ = writeln!(
            out,
            r#"<text x="{left}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
            top + 18.0,
            escape(&format!("placement {}", self.name))
        );
        for e in lo_exp..=hi_exp {
            let s = 10f64.powi(e);
            let _ = writeln!(
                out,
                r##"<line x1="{left}" x2="{right}" y1="{at:.1}" y2="{at:.1}" stroke="#ddd"/><text x="{label_x}" y="{label_y:.1}" font-size="10" text-anchor="end">{label}</text>"##,
                right = left + plot_w,
                at = y(s),
                label_x = left - 4.0,
                label_y = y(s) + 3.0,
                label = if s >= 1.0 {
                    format!("{s:.0} s")
                } else {
                    format!("{} ms", s * 1000.0)
                }
            );
        }
        let group = plot_w / self.rows.len().max(1) as f64;
        let bar = (group * 0.8) / self.contenders.len().max(1) as f64;
        for (r, (name, _)) in self.rows.iter().enumerate() {
            let x0 = left + group * r as f64 + group * 0.1;
            for (i, c) in self.contenders.iter().enumerate() {
                if let Some(s) = self.seconds(r, *c) {
                    let top_y = y(s.max(10f64.powi(lo_exp)));
                    let _ = writeln!(
                        out,
                        r#"<rect x="{:.1}" y="{top_y:.1}" width="{bar:.1}" height="{:.1}" fill="{}"><title>{} {}: {s:.3} s</title></rect>"#,
                        x0 + bar * i as f64,
                        top + 30.0 + plot_h - top_y,
                        c.colour(),
                        escape(name),
                        escape(&c.label(self.alone)),
                    );
                }
            }
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
                x0 + group * 0.4,
                top + 44.0 + plot_h,
                escape(name)
            );
        }
        let mut x = left;
        for c in &self.contenders {
            let label = c.label(self.alone);
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
                top + 52.0 + plot_h,
                c.colour(),
                x + 14.0,
                top + 61.0 + plot_h,
                escape(&label)
            );
            x += 30.0 + 6.5 * label.len() as f64;
        }
    }
}

/// A ratio column: one contender's time over another's, or over the better of DuckDB and
/// the database running the whole query alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ratio {
    Over(Contender, Contender),
    OverBetterOfAloneAndDuckDb,
}

impl Ratio {
    fn label(self, alone: Option<&str>) -> String {
        match self {
            Ratio::Over(Contender::Flight, Contender::Tributary) => "Flight ÷ in process".into(),
            Ratio::Over(Contender::Tributary, Contender::Ceiling) => {
                "Tributary ÷ Parquet ceiling".into()
            }
            Ratio::Over(a, b) => format!("{} ÷ {}", a.label(alone), b.label(alone)),
            Ratio::OverBetterOfAloneAndDuckDb => format!(
                "Tributary ÷ better of {} and DuckDB",
                Contender::Alone.label(alone)
            ),
        }
    }

    /// The ratio from each contender's `time`, if both sides have one.
    fn of(self, time: impl Fn(Contender) -> Option<f64>) -> Option<f64> {
        let (ours, theirs) = match self {
            Ratio::Over(a, b) => (time(a), time(b)),
            Ratio::OverBetterOfAloneAndDuckDb => {
                let better = match (time(Contender::Alone), time(Contender::DuckDb)) {
                    (Some(a), Some(d)) => Some(a.min(d)),
                    (a, d) => a.or(d),
                };
                (time(Contender::Tributary), better)
            }
        };
        Some(ours? / theirs?)
    }
}

impl PlacementReport {
    /// The ratio columns this placement's contenders allow.
    fn ratios(&self) -> Vec<Ratio> {
        let mut ratios = vec![Ratio::Over(Contender::Tributary, Contender::DuckDb)];
        if self.contenders.contains(&Contender::Alone) {
            ratios.push(Ratio::OverBetterOfAloneAndDuckDb);
        }
        if self.contenders.contains(&Contender::Flight) {
            ratios.push(Ratio::Over(Contender::Flight, Contender::Tributary));
        }
        ratios.push(Ratio::Over(Contender::Tributary, Contender::Ceiling));
        ratios
    }

    /// The geometric mean of `ratio` over the queries that have it (the better of two
    /// contenders differs from query to query, so it has no geometric mean of its own).
    fn geomean_ratio(&self, ratio: Ratio) -> Option<f64> {
        let ratios: Vec<f64> = (0..self.rows.len())
            .filter_map(|r| ratio.of(|c| self.seconds(r, c)))
            .collect();
        geometric_mean(&ratios)
    }

    /// The query with the highest `ratio`, and that ratio.
    fn highest(&self, ratio: Ratio) -> Option<(&str, f64)> {
        (0..self.rows.len())
            .filter_map(|r| Some((self.rows[r].0.as_str(), ratio.of(|c| self.seconds(r, c))?)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// The geometric mean of `values`; none of none.
fn geometric_mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty())
        .then(|| (values.iter().map(|v| v.ln()).sum::<f64>() / values.len() as f64).exp())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A progress line for one query's outcomes.
pub fn line(outcomes: &[(Contender, Outcome)]) -> String {
    outcomes
        .iter()
        .map(|(c, o)| match o {
            Outcome::Time(t, checked) => format!(
                "{}={:.3}s{}",
                c.label(None),
                t.as_secs_f64(),
                match (checked, c) {
                    (Checked::Wrong, _) => " WRONG",
                    // DuckDB's answer is the reference; the database alone's is not kept.
                    (Checked::Unchecked, Contender::DuckDb | Contender::Alone) => "",
                    (Checked::Unchecked, _) => " (unchecked)",
                    (Checked::Matched, _) => "",
                }
            ),
            Outcome::Failed(e) => format!("{}=failed ({e})", c.label(None)),
        })
        .collect::<Vec<_>>()
        .join("  ")
}

/// Writes `tpch.md` and `tpch.svg` into `dir` and prints the Markdown.
pub fn write(dir: &Path, title: &str, reports: &[PlacementReport]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut md = format!("# {title}\n");
    for report in reports {
        report.markdown(&mut md);
    }
    let (width, height) = (1100.0, 330.0);
    let total = height * reports.len() as f64;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total}" font-family="sans-serif">"#
    );
    svg.push('\n');
    for (i, report) in reports.iter().enumerate() {
        report.svg(&mut svg, height * i as f64, width, height);
    }
    svg.push_str("</svg>\n");
    std::fs::write(dir.join("tpch.md"), &md).unwrap();
    std::fs::write(dir.join("tpch.svg"), &svg).unwrap();
    println!("{md}");
    eprintln!(
        "written to {} and {}",
        dir.join("tpch.md").display(),
        dir.join("tpch.svg").display()
    );
}
