//! Latency over time as an SVG chart (`plotters`, SVG backend): per
//! priority, p99 (solid) and p50 (thin) end-to-end latency per window of a
//! replay, on a log scale.

use std::path::Path;

use plotters::prelude::*;

use crate::replay::Report;
use convoy::Priority;

const COLOURS: [RGBColor; Priority::COUNT] = [
    RGBColor(200, 30, 30),
    RGBColor(230, 130, 0),
    RGBColor(30, 110, 200),
    RGBColor(40, 150, 60),
    RGBColor(120, 120, 120),
];

/// Draws `report.timeline` into an SVG file at `path`; the error names the
/// file when it cannot be written.
pub fn latency_svg(report: &Report, path: &Path) -> Result<(), String> {
    let t = &report.timeline;
    let (lo, hi) = t
        .windows
        .iter()
        .flat_map(|w| w.iter().flatten())
        .fold((f64::MAX, 0f64), |(lo, hi), &(p50, p99)| {
            (lo.min(p50), hi.max(p99))
        });
    // A replay that completed nothing (every request refused, expired or
    // cancelled, or no rows) still gets a chart: empty axes that say so,
    // rather than an error after a report that did run.
    let empty = t.windows.is_empty() || hi <= 0.0;
    let (lo, hi) = if empty {
        (0.1, 10.0)
    } else {
        ((lo * 0.8).max(0.01), hi * 1.25)
    };
    let x_max = (t.windows.len() as f64 * t.window_s)
        .max(t.window_s)
        .max(1e-3);
    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| format!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "convoy replay: end-to-end latency per {} s window ({}, {}){}",
                t.window_s,
                report.policy,
                report.trace,
                if empty { ": nothing completed" } else { "" }
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        .y_desc("latency (ms, log)")
        .draw()
        .map_err(err)?;
    for p in Priority::ALL {
        let colour = COLOURS[p.index()];
        let points = |pick: fn((f64, f64)) -> f64| -> Vec<(f64, f64)> {
            t.windows
                .iter()
                .enumerate()
                .filter_map(|(i, w)| w[p.index()].map(|v| ((i as f64 + 0.5) * t.window_s, pick(v))))
                .collect()
        };
        chart
            .draw_series(LineSeries::new(points(|v| v.1), colour.stroke_width(2)))
            .map_err(err)?
            .label(format!("{} p99", p.as_str()))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(points(|v| v.0), colour.stroke_width(1)))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
