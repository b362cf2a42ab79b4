//! `--plot`: SVG charts of a report, drawn with plotters' SVG backend only (the bitmap and
//! TrueType backends need system font libraries; SVG leaves the fonts to the viewer).
//!
//! - `inbox` and `live`: the latency distribution as HdrHistogram's percentile spectrum —
//!   latency (ms) against percentile on a log axis of 1/(1−q), so 90 %, 99 % and 99.9 % are
//!   evenly spaced and the tail is as readable as the median. `live` draws one line per
//!   broadcast.
//! - `fanout`: time to completion per audience size, log-log, with seed 004's target for each
//!   size as a second series.
//!
//! The charts are drawn from the report's `figures`, so a saved JSON report can be re-plotted.

use crate::stats::SpectrumPoint;
use anyhow::{anyhow, Context as _};
use plotters::prelude::*;
use serde::Deserialize;
use std::path::{Path, PathBuf};

const SIZE: (u32, u32) = (900, 560);
/// The spectrum's axis ends here at most: 1/(1 − 0.9999), i.e. the 99.99th percentile.
const MAX_INVERSE_TAIL: f64 = 10_000.0;

/// One line of a latency chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<SpectrumPoint>,
}

/// One audience size of the fan-out sweep.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct FanoutPoint {
    pub audience: u64,
    pub secs: f64,
    pub target_secs: f64,
}

/// Writes the charts that suit `report` as `<dir>/<stem>-<chart>.svg`; none for scenarios
/// without a distribution or a sweep.
pub fn write_plots(report: &crate::Report, dir: &Path, stem: &str) -> anyhow::Result<Vec<PathBuf>> {
    let f = &report.figures;
    let mut written = Vec::new();
    match report.scenario.as_str() {
        "inbox" => {
            let points = spectrum_of(&f["latency_spectrum"])?;
            let path = dir.join(format!("{stem}-latency.svg"));
            let title = format!(
                "GET /v1/inbox latency at {} req/s (open loop)",
                report.params["rate"]
            );
            latency_chart(
                &path,
                &title,
                &[Series {
                    name: "inbox reads".into(),
                    points,
                }],
            )?;
            written.push(path);
        }
        "live" => {
            let mut series = Vec::new();
            for (i, b) in f["broadcasts"].as_array().into_iter().flatten().enumerate() {
                let points = spectrum_of(&b["latency_spectrum"])?;
                if !points.is_empty() {
                    series.push(Series {
                        name: format!("broadcast #{i}"),
                        points,
                    });
                }
            }
            let path = dir.join(format!("{stem}-latency.svg"));
            let title = format!(
                "Broadcast latency to {} WebSockets (from the 202)",
                f["established"]
            );
            latency_chart(&path, &title, &series)?;
            written.push(path);
        }
        "fanout" => {
            let points: Vec<FanoutPoint> = serde_json::from_value(f["sizes"].clone())
                .context("figures.sizes of a fanout report")?;
            let path = dir.join(format!("{stem}-fanout.svg"));
            fanout_chart(
                &path,
                "Fan-out: creation to completion per audience size",
                &points,
            )?;
            written.push(path);
        }
        _ => {}
    }
    Ok(written)
}

fn spectrum_of(v: &serde_json::Value) -> anyhow::Result<Vec<SpectrumPoint>> {
    if v.is_null() {
        return Ok(Vec::new());
    }
    serde_json::from_value(v.clone()).context("a latency spectrum in the report's figures")
}

/// Where a percentile sits on the spectrum's axis: 1/(1 − q), capped at the axis end.
fn inverse_tail(percentile: f64) -> f64 {
    let q = (percentile / 100.0).clamp(0.0, 1.0);
    // 100 % divides by zero: infinity, drawn at the axis end.
    (1.0 / (1.0 - q)).min(MAX_INVERSE_TAIL)
}

/// The percentile at a point of the spectrum's axis: 10 → "90%", 1000 → "99.9%".
fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x.max(1.0));
    let text = format!("{p:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// A tick of the seconds axis without float noise: 0.3, 2, 150.
fn seconds_label(secs: f64) -> String {
    let text = format!("{secs:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The latency spectrum of each series: ms against percentile.
pub fn latency_chart(path: &Path, title: &str, series: &[Series]) -> anyhow::Result<()> {
    // The axis reaches the deepest percentile measured below 100 % (at least 99.9 %), rounded
    // up to a power of ten; the maximum (100 %) is drawn at its end.
    let deepest = series
        .iter()
        .flat_map(|s| &s.points)
        .filter(|p| p.percentile < 100.0)
        .map(|p| inverse_tail(p.percentile))
        .fold(1000.0_f64, f64::max);
    let x_end = 10f64.powf(deepest.log10().ceil()).min(MAX_INVERSE_TAIL);
    let y_max = series
        .iter()
        .flat_map(|s| &s.points)
        .map(|p| p.ms)
        .fold(0.0_f64, f64::max);
    let y_end = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let draw = || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let root = SVGBackend::new(path, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d((1.0..x_end).log_scale(), 0.0..y_end)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (ms)")
            .x_label_formatter(&|x| percentile_label(*x))
            .draw()?;
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .map(|p| (inverse_tail(p.percentile).min(x_end), p.ms))
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        if !series.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}

/// Time to completion per audience size, log-log, next to seed 004's target for that size.
pub fn fanout_chart(path: &Path, title: &str, points: &[FanoutPoint]) -> anyhow::Result<()> {
    // Log axes: no zero. A sub-millisecond completion is drawn at 1 ms.
    let secs = |s: f64| s.max(1e-3);
    let x_max = points.iter().map(|p| p.audience.max(1)).max().unwrap_or(1) as f64;
    let ys = points
        .iter()
        .flat_map(|p| [secs(p.secs), secs(p.target_secs)]);
    let y_min = ys.clone().fold(f64::INFINITY, f64::min);
    let y_max = ys.fold(0.0_f64, f64::max);
    let (y_min, y_max) = if y_max > 0.0 {
        (y_min / 2.0, y_max * 2.0)
    } else {
        (0.1, 10.0)
    };
    let measured: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.audience.max(1) as f64, secs(p.secs)))
        .collect();
    let targets: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.audience.max(1) as f64, secs(p.target_secs)))
        .collect();
    let draw = || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let root = SVGBackend::new(path, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d((0.5..x_max * 2.0).log_scale(), (y_min..y_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("audience (users)")
            .y_desc("creation to completion (s)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| seconds_label(*y))
            .draw()?;
        let measured_style = BLUE.stroke_width(2);
        chart
            .draw_series(LineSeries::new(measured.clone(), measured_style))?
            .label("measured")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], measured_style));
        chart.draw_series(PointSeries::of_element(
            measured,
            4,
            BLUE.filled(),
            &|c, s, st| Circle::new(c, s, st),
        ))?;
        let target_style = RED.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(targets.clone(), 8, 5, target_style))?
            .label("seed 004 target")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], target_style));
        chart.draw_series(PointSeries::of_element(
            targets,
            4,
            RED.filled(),
            &|c, s, st| TriangleMarker::new(c, s, st),
        ))?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn assert_svg(path: &Path, needles: &[&str]) {
        let svg = std::fs::read_to_string(path).expect("read the chart");
        assert!(
            svg.starts_with("<svg") || svg.starts_with("<?xml"),
            "{}",
            &svg[..svg.len().min(200)]
        );
        assert!(svg.trim_end().ends_with("</svg>"));
        for needle in needles {
            assert!(svg.contains(needle), "no {needle:?} in the chart");
        }
    }

    fn spectrum(scale: f64) -> Vec<SpectrumPoint> {
        [0.0, 50.0, 90.0, 99.0, 99.9, 100.0]
            .iter()
            .zip([0.5, 1.5, 2.3, 3.2, 6.3, 8.4])
            .map(|(&percentile, ms)| SpectrumPoint {
                percentile,
                ms: ms * scale,
            })
            .collect()
    }

    #[test]
    fn a_latency_chart_is_an_svg_with_each_series_and_percentile_ticks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("latency.svg");
        let series = [
            Series {
                name: "broadcast #0".into(),
                points: spectrum(1.0),
            },
            Series {
                name: "broadcast #1".into(),
                points: spectrum(2.0),
            },
        ];
        latency_chart(&path, "Broadcast latency", &series).expect("draw");
        assert_svg(
            &path,
            &[
                "Broadcast latency",
                "broadcast #0",
                "broadcast #1",
                "99%",
                "latency (ms)",
            ],
        );
        let svg = std::fs::read_to_string(&path).expect("read");
        assert!(svg.matches("<polyline").count() >= 2, "{svg}");
    }

    #[test]
    fn a_fanout_chart_is_an_svg_with_measured_times_and_seed_004_targets() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fanout.svg");
        let points = [
            FanoutPoint {
                audience: 1,
                secs: 1.37,
                target_secs: 1.0,
            },
            FanoutPoint {
                audience: 10_000,
                secs: 1.29,
                target_secs: 10.0,
            },
            FanoutPoint {
                audience: 1_000_000,
                secs: 15.6,
                target_secs: 300.0,
            },
        ];
        fanout_chart(&path, "Fan-out", &points).expect("draw");
        assert_svg(
            &path,
            &["Fan-out", "measured", "seed 004 target", "audience"],
        );
    }

    #[test]
    fn charts_are_drawn_from_a_reports_figures() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut report = crate::Report::new("fanout", "http://127.0.0.1:1", &json!({}));
        report.figures = json!({"sizes": [
            {"audience": 1, "secs": 0.2, "target_secs": 1.0, "strategy": "direct"},
            {"audience": 100, "secs": 0.4, "target_secs": 2.0, "strategy": "batch"},
        ]});
        let written = write_plots(&report, dir.path(), "fanout-x").expect("plots");
        assert_eq!(written, vec![dir.path().join("fanout-x-fanout.svg")]);
        assert_svg(&written[0], &["seed 004 target"]);

        report.scenario = "inbox".into();
        report.figures = json!({"latency_spectrum": spectrum(1.0)});
        let written = write_plots(&report, dir.path(), "inbox-x").expect("plots");
        assert_svg(&written[0], &["inbox reads"]);

        report.scenario = "seed".into();
        assert!(write_plots(&report, dir.path(), "seed-x")
            .expect("no plots")
            .is_empty());
    }

    #[test]
    fn an_empty_distribution_still_draws_an_empty_chart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("empty.svg");
        latency_chart(&path, "nothing measured", &[]).expect("draw");
        assert_svg(&path, &["nothing measured"]);
    }

    #[test]
    fn the_spectrum_axis_is_labelled_in_percentiles() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(2.0), "50%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(inverse_tail(100.0), MAX_INVERSE_TAIL);
        assert!((inverse_tail(99.0) - 100.0).abs() < 1e-9);
        assert_eq!(seconds_label(0.30000000000000004), "0.3");
        assert_eq!(seconds_label(200.0), "200");
    }
}
