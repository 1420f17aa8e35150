//! The report page: charts with their numbers beside them, the last
//! evaluation's confusion matrix and per-class scores, and what the run
//! was (configuration, data, model, machine, tessera version).
//!
//! The page is one self-contained file: inline SVG and CSS, no script, no
//! network. It is written as well-formed XML (polyglot XHTML), so an XML
//! parser reads it as an HTML parser does.

use crate::chart::{line_chart, ChartError, Series, Threshold};
use crate::read::{RunLog, Step};
use serde_json::Value;
use std::fmt::Write;

/// Rows of a chart's number table at most: longer runs show every k-th
/// step (and always the last).
const TABLE_ROWS: usize = 400;

/// The smoothing of the loss curve: an exponential moving average with
/// this weight on the past (TensorBoard's default 0.6 is for noisier logs;
/// per-step losses of small batches want more).
const SMOOTHING: f64 = 0.9;

/// `&`, `<`, `>` and quotes as entities.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number as the tables show it: the shortest text that reads back as
/// the same f64, so the page's numbers are `metrics.jsonl`'s.
fn num(v: f64) -> String {
    v.to_string()
}

/// One quantity per step of every run, as chart series and a table.
struct Quantity<'a> {
    title: &'a str,
    unit: &'a str,
    value: fn(&Step) -> Option<f64>,
    /// Drawn raw and smoothed (the loss).
    smoothed: bool,
    /// Drawn with the clipping threshold (the gradient norm).
    clipped: bool,
}

/// The exponential moving average of `points` (the smoothed loss).
fn smoothed(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut avg = None;
    points
        .iter()
        .map(|&(x, y)| {
            let next = avg.map_or(y, |a: f64| SMOOTHING * a + (1.0 - SMOOTHING) * y);
            avg = Some(next);
            (x, next)
        })
        .collect()
}

/// Every run's `(step, value)` points of one quantity.
fn points(run: &RunLog, value: fn(&Step) -> Option<f64>) -> Vec<(f64, f64)> {
    run.steps
        .values()
        .filter_map(|s| Some((s.step as f64, value(s)?)))
        .collect()
}

/// A chart and, below it, a collapsible table of the numbers it draws.
fn figure(out: &mut String, svg: &str, columns: &[String], rows: &[(f64, Vec<Option<f64>>)]) {
    let _ = write!(
        out,
        "<figure>{svg}<details><summary>numbers</summary><table><tr><th>step</th>"
    );
    for c in columns {
        let _ = write!(out, "<th>{}</th>", escape(c));
    }
    out.push_str("</tr>");
    let every = rows.len().div_ceil(TABLE_ROWS).max(1);
    for (i, (step, values)) in rows.iter().enumerate() {
        if i % every != 0 && i + 1 != rows.len() {
            continue;
        }
        let _ = write!(out, "<tr><td>{}</td>", num(*step));
        for v in values {
            let _ = write!(out, "<td>{}</td>", v.map_or(String::new(), num));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    if every > 1 {
        let _ = write!(
            out,
            "<p class=\"note\">every {every}th step and the last</p>"
        );
    }
    out.push_str("</details></figure>\n");
}

/// The series of `columns` joined on the step into table rows.
///
/// Each column is in step order with one point per step (as the log's
/// maps hold them), so one cursor per column walks the steps once.
fn join(columns: &[&[(f64, f64)]]) -> Vec<(f64, Vec<Option<f64>>)> {
    let mut steps: Vec<f64> = columns.iter().copied().flatten().map(|p| p.0).collect();
    steps.sort_by(f64::total_cmp);
    steps.dedup();
    let mut cursors = vec![0; columns.len()];
    steps
        .into_iter()
        .map(|s| {
            let values = columns
                .iter()
                .zip(&mut cursors)
                .map(|(c, at)| {
                    let hit = c.get(*at).filter(|p| p.0 == s).map(|p| p.1);
                    *at += usize::from(hit.is_some());
                    hit
                })
                .collect();
            (s, values)
        })
        .collect()
}

/// A chart of `series` with the table of their numbers (nothing without any).
fn series_figure(
    out: &mut String,
    title: &str,
    unit: &str,
    series: &[Series],
    threshold: Option<&Threshold>,
) -> Result<(), ChartError> {
    if series.is_empty() {
        return Ok(());
    }
    let svg = line_chart(title, unit, series, threshold)?;
    let names: Vec<String> = series.iter().map(|s| s.name.clone()).collect();
    let columns: Vec<&[(f64, f64)]> = series.iter().map(|s| s.points.as_slice()).collect();
    figure(out, &svg, &names, &join(&columns));
    Ok(())
}

/// The legend prefix naming a run when the page compares several.
fn run_label(runs: &[RunLog], run: &RunLog) -> String {
    if runs.len() > 1 {
        format!("{} ", run.name)
    } else {
        String::new()
    }
}

/// A chart of one quantity over every run (with the smoothed loss for `loss`).
fn quantity_figure(
    out: &mut String,
    runs: &[RunLog],
    q: &Quantity<'_>,
    threshold: Option<&Threshold>,
) -> Result<(), ChartError> {
    let mut series = Vec::new();
    for (colour, run) in runs.iter().enumerate() {
        let points = points(run, q.value);
        if points.is_empty() {
            continue;
        }
        let label = run_label(runs, run);
        let smooth = q.smoothed.then(|| smoothed(&points));
        series.push(Series {
            name: format!("{label}{}", q.title),
            points,
            faint: q.smoothed,
            colour,
        });
        series.extend(smooth.map(|points| Series {
            name: format!("{label}smoothed"),
            points,
            faint: false,
            colour,
        }));
    }
    series_figure(out, q.title, q.unit, &series, threshold)
}

/// Accuracy and loss of every evaluation, per run.
fn eval_figures(out: &mut String, runs: &[RunLog]) -> Result<(), ChartError> {
    for (key, title) in [
        ("accuracy", "evaluation accuracy"),
        ("loss", "evaluation loss"),
    ] {
        let mut series = Vec::new();
        for (colour, run) in runs.iter().enumerate() {
            let points: Vec<(f64, f64)> = run
                .evals
                .values()
                .filter_map(|e| Some((e.step as f64, e.number(key)?)))
                .collect();
            if !points.is_empty() {
                series.push(Series {
                    name: format!("{}{key}", run_label(runs, run)),
                    points,
                    faint: false,
                    colour,
                });
            }
        }
        series_figure(out, title, key, &series, None)?;
    }
    Ok(())
}

/// The last evaluation's confusion matrix and per-class precision, recall, F1.
fn classes(out: &mut String, run: &RunLog) {
    let Some(eval) = run.evals.values().next_back() else {
        out.push_str("<p>No evaluation yet.</p>\n");
        return;
    };
    let per_class = eval
        .summary
        .pointer("/classes/per_class")
        .and_then(Value::as_array);
    let confusion = eval
        .summary
        .pointer("/classes/confusion")
        .and_then(Value::as_array);
    let (Some(per_class), Some(confusion)) = (per_class, confusion) else {
        let _ = writeln!(
            out,
            "<p>Evaluation at step {} has no per-class scores (not a classification task).</p>",
            eval.step
        );
        return;
    };
    let labels: Vec<String> = per_class
        .iter()
        .map(|c| {
            c.get("label")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    let _ = write!(
        out,
        "<h3>Evaluation at step {}</h3><table class=\"confusion\"><tr><th>gold \\ predicted</th>",
        eval.step
    );
    for l in &labels {
        let _ = write!(out, "<th>{}</th>", escape(l));
    }
    out.push_str("<th>malformed</th></tr>");
    for (label, row) in labels.iter().zip(confusion) {
        let _ = write!(out, "<tr><th>{}</th>", escape(label));
        for cell in row.as_array().into_iter().flatten() {
            let _ = write!(out, "<td>{}</td>", cell.as_u64().unwrap_or(0));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table><table><tr><th>class</th><th>gold</th><th>predicted</th><th>correct</th><th>precision</th><th>recall</th><th>F1</th></tr>");
    for c in per_class {
        let n = |k: &str| c.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let (gold, predicted, correct) = (n("gold"), n("predicted"), n("correct"));
        let p = (predicted > 0.0).then(|| correct / predicted);
        let r = (gold > 0.0).then(|| correct / gold);
        let f1 = match (p, r) {
            (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
            _ => None,
        };
        let cell = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.4}"));
        let label = c.get("label").and_then(Value::as_str).unwrap_or("?");
        let _ = write!(
            out,
            "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(label), num(gold), num(predicted), num(correct), cell(p), cell(r), cell(f1)
        );
    }
    out.push_str("</table>\n");
}

/// A JSON object as a two-column table (nested values as compact JSON).
fn object_table(out: &mut String, title: &str, value: Option<&Value>) {
    let Some(Value::Object(map)) = value else {
        return;
    };
    let _ = write!(out, "<h3>{}</h3><table>", escape(title));
    for (k, v) in map {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Null => "–".to_string(),
            other => other.to_string(),
        };
        let _ = write!(
            out,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(k),
            escape(&text)
        );
    }
    out.push_str("</table>\n");
}

/// One run's summary: what it is, where it ran, how far it got.
fn run_summary(out: &mut String, run: &RunLog) {
    let _ = write!(out, "<section><h2>{}</h2><ul>", escape(&run.name));
    let field = |path: &str| {
        run.header
            .as_ref()
            .and_then(|h| h.pointer(path))
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
    };
    let items = [
        ("model", field("/config/model")),
        ("shape", field("/model/shape")),
        ("parameters", field("/model/parameters")),
        ("trained parameters", field("/model/trainable")),
        ("precision", field("/model/precision")),
        ("task", field("/config/task")),
        ("CPU", field("/machine/cpu")),
        ("threads", field("/machine/threads")),
        ("matmul kernels", field("/machine/kernels")),
        ("tessera", field("/tessera")),
    ];
    for (name, value) in items {
        if let Some(v) = value {
            let _ = write!(out, "<li>{name}: {}</li>", escape(&v));
        }
    }
    let last = run.steps.values().next_back();
    let _ = write!(
        out,
        "<li>steps recorded: {}{}</li>",
        run.steps.len(),
        last.map_or(String::new(), |s| format!(
            ", last {} (loss {:.4})",
            s.step, s.loss
        ))
    );
    let starts: Vec<String> = run
        .starts
        .iter()
        .map(|(e, at)| format!("{e} at step {at}"))
        .collect();
    if !starts.is_empty() {
        let _ = write!(out, "<li>{}</li>", escape(&starts.join("; ")));
    }
    let skipped = run.steps.values().filter(|s| s.skipped).count();
    if skipped > 0 {
        let _ = write!(
            out,
            "<li>fp16 steps skipped (gradient overflow): {skipped}</li>"
        );
    }
    if run.truncated {
        out.push_str("<li class=\"warn\">the last line of metrics.jsonl was cut short (a killed run) and is not shown</li>");
    }
    out.push_str("</ul>");
    classes(out, run);
    object_table(out, "data", run.header_field("data"));
    object_table(out, "configuration", run.header_field("config"));
    out.push_str("</section>\n");
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1400px;color:#222}\
figure{display:inline-block;vertical-align:top;margin:0 1em 1em 0}\
table{border-collapse:collapse;font-size:13px;margin:.5em 0}\
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}\
th{background:#f4f4f4}.note{font-size:12px;color:#666}.warn{color:#b00}\
details{font-size:13px}section{margin-top:2em}";

/// A report page around `body` (markup: charts, tables), titled `title`:
/// the one page skeleton of the run reports and the simulator's.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\"><head><meta charset=\"utf-8\"/><title>{0}</title><style>{STYLE}</style></head><body><h1>{0}</h1>\n{body}</body></html>\n",
        escape(title)
    )
}

/// The page for `runs` (one, or several overlaid); an error names a chart
/// plotters could not draw.
pub fn render(runs: &[RunLog]) -> Result<String, ChartError> {
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    let title = format!("tessera report: {}", names.join(", "));
    let mut out = String::new();
    let clip = runs
        .first()
        .and_then(|r| {
            r.header
                .as_ref()?
                .pointer("/config/max_grad_norm")?
                .as_f64()
        })
        .filter(|&c| c > 0.0)
        .map(|value| Threshold {
            name: "clip threshold".into(),
            value,
        });
    let quantities = [
        Quantity {
            title: "loss",
            unit: "cross-entropy",
            value: |s| (!s.skipped).then_some(s.loss),
            smoothed: true,
            clipped: false,
        },
        Quantity {
            title: "learning rate",
            unit: "lr",
            value: |s| Some(s.lr),
            smoothed: false,
            clipped: false,
        },
        Quantity {
            title: "gradient norm before clipping",
            unit: "L2 norm",
            value: |s| (!s.skipped).then_some(s.grad_norm),
            smoothed: false,
            clipped: true,
        },
        Quantity {
            title: "examples per second",
            unit: "rows/s",
            value: |s| Some(s.examples_per_s),
            smoothed: false,
            clipped: false,
        },
        Quantity {
            title: "tokens per second",
            unit: "real tokens/s",
            value: |s| Some(s.tokens_per_s()),
            smoothed: false,
            clipped: false,
        },
        Quantity {
            title: "fp16 loss scale",
            unit: "scale",
            value: |s| s.loss_scale,
            smoothed: false,
            clipped: false,
        },
    ];
    for q in &quantities {
        let threshold = if q.clipped { clip.as_ref() } else { None };
        quantity_figure(&mut out, runs, q, threshold)?;
    }
    eval_figures(&mut out, runs)?;
    for run in runs {
        run_summary(&mut out, run);
    }
    Ok(page(&title, &out))
}
