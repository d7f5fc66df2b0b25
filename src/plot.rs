//! SVG charts with plotters. Text is emitted as SVG <text> elements and laid out with plotters'
//! built-in size estimate, so no system fonts are needed.
use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: plotting failed: {e}", path.display()))
}

fn bounds(series: &[Series]) -> ((f64, f64), (f64, f64)) {
    let pts = || series.iter().flat_map(|s| s.points.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return ((0.0, 1.0), (0.0, 1.0));
    }
    let pad = |a: f64, b: f64| if (b - a).abs() < 1e-12 { (a - 0.5, b + 0.5) } else { (a, b) };
    let (y0, y1) = pad(y0, y1);
    let m = (y1 - y0) * 0.05;
    (pad(x0, x1), (y0 - m, y1 + m))
}

/// Lines (with point markers) for each series, written atomically as SVG.
pub fn lines(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let ((x0, x1), (y0, y1)) = bounds(series);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| plot_err(path, e))?;
        for (i, s) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let pts: Vec<(f64, f64)> =
                s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| plot_err(path, e))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            if pts.len() <= 60 {
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| plot_err(path, e))?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(path, e))?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    crate::io::atomic_write(path, svg.as_bytes())
}

/// One row per label: a grey line from `before` to `after`, blue dot before, orange dot after.
pub fn dumbbell(path: &Path, title: &str, x_label: &str, rows: &[(String, f64, f64)]) -> Result<()> {
    let mut svg = String::new();
    {
        let h = (60 + 24 * rows.len().max(1)) as u32;
        let root = SVGBackend::with_string(&mut svg, (720, h.max(200))).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let vals = rows.iter().flat_map(|r| [r.1, r.2]).filter(|v| v.is_finite());
        let (lo, hi) = vals.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        let (lo, hi) = if lo > hi { (-1.0, 1.0) } else { ((lo - 0.05).max(-1.0), (hi + 0.05).min(1.0)) };
        let n = rows.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(lo..hi, -0.5..(n as f64 - 0.5))
            .map_err(|e| plot_err(path, e))?;
        let labels: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_labels(n)
            .y_label_formatter(&|y| labels.get(y.round() as usize).cloned().unwrap_or_default())
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| plot_err(path, e))?;
        for (i, (_, b, a)) in rows.iter().enumerate() {
            let y = i as f64;
            chart
                .draw_series(LineSeries::new(vec![(*b, y), (*a, y)], RGBColor(160, 160, 160).stroke_width(2)))
                .map_err(|e| plot_err(path, e))?;
        }
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| Circle::new((r.1, i as f64), 5, PALETTE[0].filled())))
            .map_err(|e| plot_err(path, e))?
            .label("before")
            .legend(|(x, y)| Circle::new((x + 8, y), 5, PALETTE[0].filled()));
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| Circle::new((r.2, i as f64), 5, PALETTE[1].filled())))
            .map_err(|e| plot_err(path, e))?
            .label("after")
            .legend(|(x, y)| Circle::new((x + 8, y), 5, PALETTE[1].filled()));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(path, e))?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    crate::io::atomic_write(path, svg.as_bytes())
}
