//! Draws a plan's schedule as a plain SVG picture: one lane per IPU of
//! replica 0, coloured segments (compute, links, streaming, bubbles), the
//! overlapped Streaming Memory transfers as a thin strip under each lane,
//! a time axis and a legend.

use crate::plan::{Plan, Segment, SegmentKind};
use std::fmt::Write;

const WIDTH: f64 = 1400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 78.0;
const LANE: f64 = 22.0;
const LANE_GAP: f64 = 6.0;
const STRIP: f64 = 4.0;

/// Every kind in legend order, with its colour and legend text.
const KINDS: [(SegmentKind, &str, &str); 8] = [
    (SegmentKind::Forward, "#4e79a7", "forward compute"),
    (SegmentKind::Backward, "#f28e2b", "backward + recompute"),
    (SegmentKind::Optimizer, "#59a14f", "AdamW update"),
    (SegmentKind::Links, "#e15759", "collectives (IPU-Links)"),
    (SegmentKind::Send, "#b07aa1", "stage-to-stage send"),
    (
        SegmentKind::StreamingWait,
        "#9c755f",
        "waiting for Streaming Memory",
    ),
    (
        SegmentKind::Streaming,
        "#76b7b2",
        "Streaming Memory transfer (overlapped)",
    ),
    (SegmentKind::Bubble, "#d9d9d9", "idle (pipeline bubble)"),
];

fn colour(kind: SegmentKind) -> &'static str {
    KINDS
        .iter()
        .find(|k| k.0 == kind)
        .map_or("#000000", |k| k.1)
}

/// The SVG text of `plan`'s timeline (lanes for replica 0).
pub fn timeline(plan: &Plan) -> String {
    let lanes = plan.ipus_per_replica as f64;
    let span = plan
        .timeline
        .iter()
        .map(|s| s.end_s)
        .fold(0.0, f64::max)
        .max(1e-9);
    let lanes_bottom = TOP + lanes * (LANE + LANE_GAP);
    let legend_rows = KINDS.len().div_ceil(3) as f64;
    let height = lanes_bottom + 40.0 + legend_rows * 20.0 + 10.0;
    let x = |t: f64| LEFT + (WIDTH - LEFT - RIGHT) * t / span;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(&title(plan))
    );
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="40" fill="#555">{}</text>"##,
        escape(&subtitle(plan))
    );
    for k in 0..plan.ipus_per_replica {
        let y = lane_y(k);
        let _ = writeln!(
            svg,
            r#"<text x="{:.0}" y="{:.1}" text-anchor="end">IPU {k}</text>"#,
            LEFT - 8.0,
            y + LANE * 0.6
        );
        let _ = writeln!(
            svg,
            r##"<rect x="{LEFT}" y="{y:.1}" width="{:.1}" height="{LANE}" fill="#f7f7f7"/>"##,
            WIDTH - LEFT - RIGHT
        );
    }
    draw_bands(&mut svg, plan, &x);
    for s in &plan.timeline {
        draw_segment(&mut svg, s, x(s.start_s), x(s.end_s));
    }
    draw_axis(&mut svg, span, lanes_bottom, &x);
    draw_legend(&mut svg, plan, lanes_bottom + 40.0);
    svg.push_str("</svg>\n");
    svg
}

fn lane_y(ipu: u64) -> f64 {
    TOP + ipu as f64 * (LANE + LANE_GAP)
}

fn title(plan: &Plan) -> String {
    let strategy = serde_json::to_value(plan.strategy).unwrap_or_default();
    let mode = serde_json::to_value(plan.mode).unwrap_or_default();
    format!(
        "{} on {}: {} {}, step {:.2} s",
        plan.model,
        plan.system,
        strategy.as_str().unwrap_or(""),
        mode.as_str().unwrap_or(""),
        plan.step_time_s.unwrap_or(0.0)
    )
}

fn subtitle(plan: &Plan) -> String {
    let others = match plan.replicas {
        1 => String::new(),
        2 => "; replica 1 runs the same schedule".to_string(),
        r => format!("; replicas 1-{} run the same schedule", r - 1),
    };
    format!(
        "replica 0: {} IPUs; micro-batch {}, {} micro-batches per replica; {} → {} tokens{others}",
        plan.ipus_per_replica,
        plan.micro_batch,
        plan.micro_batches_per_replica,
        plan.source_len,
        plan.target_len
    )
}

/// A segment: full lane height, except overlapped transfers (a strip at
/// the lane's foot). Wide segments on IPU 0 carry their label.
fn draw_segment(svg: &mut String, s: &Segment, x0: f64, x1: f64) {
    let y = lane_y(s.ipu);
    let (top, h) = match s.kind {
        SegmentKind::Streaming => (y + LANE - STRIP, STRIP),
        _ => (y, LANE - STRIP - 1.0),
    };
    let w = (x1 - x0).max(0.3);
    // A hairline edge separates neighbouring segments that are wide enough.
    let edge = if w > 3.0 {
        r#" stroke="white" stroke-width="0.5""#
    } else {
        ""
    };
    let _ = writeln!(
        svg,
        r#"<rect x="{x0:.2}" y="{top:.1}" width="{w:.2}" height="{h:.1}" fill="{}"{edge}><title>{}</title></rect>"#,
        colour(s.kind),
        escape(&s.label)
    );
    let fits_label = w > 7.0 * s.label.len() as f64 + 4.0;
    if s.ipu == 0
        && fits_label
        && matches!(
            s.kind,
            SegmentKind::Forward | SegmentKind::Backward | SegmentKind::Optimizer
        )
    {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" fill="white" font-size="10">{}</text>"#,
            x0 + 2.0,
            y + 12.0,
            escape(&s.label)
        );
    }
}

/// The parts of the step (segment `group`s, each spanning from its first
/// start to its last end on any IPU) as alternating bands above the
/// lanes, named when wide enough.
fn draw_bands(svg: &mut String, plan: &Plan, x: &impl Fn(f64) -> f64) {
    let mut bands: Vec<(f64, f64, &str)> = Vec::new();
    for s in plan
        .timeline
        .iter()
        .filter(|s| s.kind != SegmentKind::Streaming)
    {
        match bands.iter_mut().find(|b| b.2 == s.group) {
            Some(b) => *b = (b.0.min(s.start_s), b.1.max(s.end_s), b.2),
            None => bands.push((s.start_s, s.end_s, &s.group)),
        }
    }
    let y = TOP - 22.0;
    for (k, (start, end, name)) in bands.iter().enumerate() {
        let (x0, x1) = (x(*start), x(*end));
        let fill = if k % 2 == 0 { "#e8e8e8" } else { "#d0d0d0" };
        let _ = writeln!(
            svg,
            r#"<rect x="{x0:.2}" y="{y:.1}" width="{:.2}" height="16" fill="{fill}"><title>{}</title></rect>"#,
            (x1 - x0).max(0.3),
            escape(name)
        );
        if x1 - x0 > 6.5 * name.len() as f64 + 6.0 {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"#,
                0.5 * (x0 + x1),
                y + 12.0,
                escape(name)
            );
        }
    }
}

/// Tick spacing of 1, 2 or 5 × 10^k giving at most ten ticks.
pub fn tick_step(span: f64) -> f64 {
    let raw = span / 10.0;
    let base = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * base)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * base)
}

fn draw_axis(svg: &mut String, span: f64, y: f64, x: &impl Fn(f64) -> f64) {
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#333"/>"##,
        WIDTH - RIGHT
    );
    let step = tick_step(span);
    let mut k = 0;
    while k as f64 * step <= span * (1.0 + 1e-9) {
        let t = k as f64 * step;
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{y:.1}" x2="{0:.1}" y2="{1:.1}" stroke="#333"/>"##,
            x(t),
            y + 5.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x(t),
            y + 18.0,
            seconds(t, step)
        );
        k += 1;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">time</text>"#,
        WIDTH - RIGHT,
        y + 32.0
    );
}

/// `t` in s or ms, with as many decimals as the tick step needs.
fn seconds(t: f64, step: f64) -> String {
    if step < 1e-3 {
        format!("{:.3} ms", t * 1e3)
    } else if step < 1.0 {
        format!("{:.0} ms", t * 1e3)
    } else {
        format!("{t:.0} s")
    }
}

fn draw_legend(svg: &mut String, plan: &Plan, y: f64) {
    let present = |k: SegmentKind| plan.timeline.iter().any(|s| s.kind == k);
    for (i, (_, fill, text)) in KINDS.iter().filter(|k| present(k.0)).enumerate() {
        let lx = LEFT + (i % 3) as f64 * 400.0;
        let ly = y + (i / 3) as f64 * 20.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{lx:.0}" y="{:.0}" width="14" height="12" fill="{fill}"/>"#,
            ly - 10.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.0}" y="{ly:.0}">{text}</text>"#,
            lx + 20.0
        );
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(36.0), 5.0);
        assert_eq!(tick_step(100.0), 10.0);
        assert!((tick_step(0.012) - 0.002).abs() < 1e-12);
    }

    #[test]
    fn escape_protects_markup() {
        assert_eq!(escape("a<b&c>"), "a&lt;b&amp;c&gt;");
    }
}
