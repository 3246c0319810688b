//! The run report's plots, as SVG: kept attention heads and MLP width per layer (dense and
//! pruned), the recovery loss curve with the validation losses, and perplexity over steps.

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

/// A named line of (x, y) points.
pub struct Line<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
    pub dots: bool,
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing a plot: {e}")
}

/// The range that holds every point, padded a little.
fn bounds(lines: &[Line], from_zero: bool) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let pts = || lines.iter().flat_map(|l| l.points.iter());
    let (x0, x1) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = pts().filter(|p| p.1.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (x0, x1) = if x0.is_finite() { (x0, x1.max(x0 + 1.0)) } else { (0.0, 1.0) };
    let (y0, y1) = if y0.is_finite() { (if from_zero { 0.0f64.min(y0) } else { y0 }, y1.max(y0 + 1e-9)) } else { (0.0, 1.0) };
    let pad = (y1 - y0) * 0.08;
    (x0..x1, (if from_zero { y0 } else { y0 - pad })..y1 + pad)
}

fn draw<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, title: &str, x: &str, y: &str, lines: &[Line], from_zero: bool) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (xr, yr) = bounds(lines, from_zero);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(xr, yr)
        .map_err(err)?;
    chart.configure_mesh().x_desc(x).y_desc(y).light_line_style(WHITE.mix(0.0)).draw().map_err(err)?;
    for l in lines {
        let color = l.color;
        chart
            .draw_series(LineSeries::new(l.points.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(l.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        if l.dots {
            chart.draw_series(l.points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err)?;
        }
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(err)?;
    Ok(())
}

/// One chart in its own SVG file.
pub fn chart(path: &Path, title: &str, x: &str, y: &str, lines: &[Line], from_zero: bool) -> Result<()> {
    let root = SVGBackend::new(path, (820, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    draw(&root, title, x, y, lines, from_zero)?;
    root.present().map_err(err)
}

/// Charts stacked in one SVG file, each (title, y label, lines) over the same x label.
pub fn stacked(path: &Path, x: &str, charts: &[(&str, &str, Vec<Line>)]) -> Result<()> {
    let root = SVGBackend::new(path, (820, 360 * charts.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    for (area, (title, y, lines)) in root.split_evenly((charts.len(), 1)).iter().zip(charts) {
        draw(area, title, x, y, lines, true)?;
    }
    root.present().map_err(err)
}
