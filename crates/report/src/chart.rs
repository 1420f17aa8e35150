//! Line charts as SVG, drawn with `plotters`' SVG backend.
//!
//! Text is SVG `<text>` that the browser lays out: plotters is built
//! without its font features, so nothing needs a system font library, and
//! its size estimates only place the labels.

use plotters::prelude::*;

/// Chart size in pixels.
const SIZE: (u32, u32) = (640, 300);

/// Colours of the series, in order (one per run, or per quantity).
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Its legend entry.
    pub name: String,
    /// `(step, value)` points, in step order.
    pub points: Vec<(f64, f64)>,
    /// Drawn faint (the raw loss behind its smoothed line).
    pub faint: bool,
    /// Colour index (into the palette).
    pub colour: usize,
}

/// A chart's horizontal reference line (the clipping threshold).
#[derive(Debug, Clone)]
pub struct Threshold {
    /// Its legend entry.
    pub name: String,
    /// Where it is.
    pub value: f64,
}

/// A chart that could not be drawn (a plotters error, as text).
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the chart {title:?}: {reason}")]
pub struct ChartError {
    title: String,
    reason: String,
}

/// `[lo, hi]` widened so that a flat or single-point series still has a range.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.05
    } else {
        lo.abs().max(1.0) * 0.05
    };
    (lo - pad, hi + pad)
}

/// The range of every finite value, or `None` when there is none.
fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.filter(|v| v.is_finite()).fold(None, |r, v| match r {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Draws `series` against the step as an SVG document (`<svg …>…</svg>`).
pub fn line_chart(
    title: &str,
    y_desc: &str,
    series: &[Series],
    threshold: Option<&Threshold>,
) -> Result<String, ChartError> {
    let err = |e: &dyn std::fmt::Display| ChartError {
        title: title.to_string(),
        reason: e.to_string(),
    };
    let points = || series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = range(points().map(|p| p.0)).unwrap_or((0.0, 1.0));
    let ys = points().map(|p| p.1).chain(threshold.map(|t| t.value));
    let (y0, y1) = range(ys).unwrap_or((0.0, 1.0));
    let ((x0, x1), (y0, y1)) = (padded(x0, x1), padded(y0, y1));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(34)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc(y_desc)
            .light_line_style(RGBColor(238, 238, 238))
            .draw()
            .map_err(|e| err(&e))?;
        for s in series {
            let colour = COLOURS[s.colour % COLOURS.len()];
            let style = if s.faint {
                colour.mix(0.3).stroke_width(1)
            } else {
                colour.stroke_width(2)
            };
            let finite = s.points.iter().copied().filter(|p| p.1.is_finite());
            chart
                .draw_series(LineSeries::new(finite, style))
                .map_err(|e| err(&e))?
                .label(&s.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
        }
        if let Some(t) = threshold {
            let style = BLACK.mix(0.6).stroke_width(1);
            chart
                .draw_series(LineSeries::new([(x0, t.value), (x1, t.value)], style))
                .map_err(|e| err(&e))?
                .label(&t.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}
