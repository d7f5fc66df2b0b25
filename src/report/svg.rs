//! SVG charts with plotters. Text is emitted as SVG <text> elements and laid out with plotters'
//! built-in size estimate, so no system fonts are needed.
use crate::util::error::{Error, Result};
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

type Chart<'a> = ChartContext<
    'a,
    SVGBackend<'a>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// The legend box every chart here draws.
fn legend(chart: &mut Chart<'_>, path: &Path) -> Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_err(path, e))
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
        legend(&mut chart, path)?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    crate::util::io::atomic_write(path, svg.as_bytes())
}

/// One row per label: a grey line from the first value to the second, blue dot for the first,
/// orange for the second; `names` label the two in the legend.
pub fn dumbbell(
    path: &Path,
    title: &str,
    x_label: &str,
    names: (&str, &str),
    rows: &[(String, f64, f64)],
) -> Result<()> {
    let mut svg = String::new();
    {
        let h = (60 + 24 * rows.len().max(1)) as u32;
        let root = SVGBackend::with_string(&mut svg, (720, h.max(200))).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let vals = rows.iter().flat_map(|r| [r.1, r.2]).filter(|v| v.is_finite());
        let (lo, hi) = vals.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        let (lo, hi) = if lo > hi { (-1.0, 1.0) } else { (lo - 0.05, hi + 0.05) };
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
            .label(names.0)
            .legend(|(x, y)| Circle::new((x + 8, y), 5, PALETTE[0].filled()));
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| Circle::new((r.2, i as f64), 5, PALETTE[1].filled())))
            .map_err(|e| plot_err(path, e))?
            .label(names.1)
            .legend(|(x, y)| Circle::new((x + 8, y), 5, PALETTE[1].filled()));
        legend(&mut chart, path)?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    crate::util::io::atomic_write(path, svg.as_bytes())
}

/// One value per (group, series), optionally with an interval.
pub struct Bar {
    pub value: Option<f64>,
    pub ci: Option<(f64, f64)>,
}

/// One box per (group, series): the values summarised as min, quartiles, median, max.
pub type Boxes = Vec<Vec<f64>>;

/// Horizontal layout shared by the grouped charts: one row per group (long category names fit
/// on the left), series side by side within a row.
fn grouped<F>(
    path: &Path,
    title: &str,
    x_label: &str,
    groups: &[String],
    series: &[String],
    x_range: (f64, f64),
    draw: F,
) -> Result<()>
where
    F: FnOnce(&mut Chart<'_>, &dyn Fn(usize, usize) -> (f64, f64)) -> std::result::Result<(), String>,
{
    let mut svg = String::new();
    {
        let n = groups.len().max(1);
        let m = series.len().max(1);
        let h = (80 + (14 * m + 12) * n) as u32;
        let root = SVGBackend::with_string(&mut svg, (820, h.max(220))).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let label_w = groups.iter().map(|g| g.len()).max().unwrap_or(8).clamp(6, 48) as u32 * 7 + 10;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(label_w)
            .build_cartesian_2d(x_range.0..x_range.1, -0.5..(n as f64 - 0.5))
            .map_err(|e| plot_err(path, e))?;
        let labels: Vec<String> = groups.to_vec();
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_labels(n)
            .y_label_formatter(&|y| {
                let i = y.round();
                if (y - i).abs() > 1e-6 {
                    return String::new();
                }
                labels.get(i as usize).cloned().unwrap_or_default()
            })
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| plot_err(path, e))?;
        // Row i, series j -> (centre y, half height); the first series on top.
        let slot = move |i: usize, j: usize| {
            let band = 0.8 / m as f64;
            let y = i as f64 + 0.4 - band * (j as f64 + 0.5);
            (y, band * 0.4)
        };
        draw(&mut chart, &slot).map_err(|e| plot_err(path, e))?;
        if series.len() > 1 {
            legend(&mut chart, path)?;
        }
        root.present().map_err(|e| plot_err(path, e))?;
    }
    crate::util::io::atomic_write(path, svg.as_bytes())
}

fn finite_range(vals: impl Iterator<Item = f64>, floor: Option<f64>) -> (f64, f64) {
    let (mut lo, mut hi) = vals.filter(|v| v.is_finite()).fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if let Some(f) = floor {
        lo = lo.min(f);
        hi = hi.max(f);
    }
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(0.02);
    (lo - pad, hi + pad)
}

/// Grouped horizontal bars from 0 with interval whiskers: `values[series][group]`.
pub fn bars(
    path: &Path,
    title: &str,
    x_label: &str,
    groups: &[String],
    series: &[String],
    values: &[Vec<Bar>],
) -> Result<()> {
    let all =
        values.iter().flatten().flat_map(|b| [b.value, b.ci.map(|c| c.0), b.ci.map(|c| c.1)].into_iter().flatten());
    let range = finite_range(all, Some(0.0));
    grouped(path, title, x_label, groups, series, range, |chart, slot| {
        for (j, (name, vals)) in series.iter().zip(values).enumerate() {
            let color = PALETTE[j % PALETTE.len()];
            let rects: Vec<Rectangle<(f64, f64)>> = vals
                .iter()
                .enumerate()
                .filter_map(|(i, b)| {
                    let v = b.value.filter(|v| v.is_finite())?;
                    let (y, h) = slot(i, j);
                    Some(Rectangle::new([(0.0, y - h), (v, y + h)], color.mix(0.75).filled()))
                })
                .collect();
            chart
                .draw_series(rects)
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.mix(0.75).filled()));
            let whiskers: Vec<PathElement<(f64, f64)>> = vals
                .iter()
                .enumerate()
                .filter_map(|(i, b)| {
                    let (lo, hi) = b.ci?;
                    let (y, _) = slot(i, j);
                    Some(PathElement::new(vec![(lo, y), (hi, y)], BLACK.stroke_width(2)))
                })
                .collect();
            chart.draw_series(whiskers).map_err(|e| e.to_string())?;
        }
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(0.0, -0.5), (0.0, groups.len() as f64 - 0.5)],
                BLACK.stroke_width(1),
            )))
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// Five-number summary (min, q1, median, q3, max) by linear interpolation.
pub fn five_numbers(xs: &[f64]) -> Option<[f64; 5]> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let t = p * (v.len() - 1) as f64;
        let (i, f) = (t.floor() as usize, t - t.floor());
        v[i] + f * (v[(i + 1).min(v.len() - 1)] - v[i])
    };
    Some([v[0], q(0.25), q(0.5), q(0.75), v[v.len() - 1]])
}

/// Grouped horizontal box plots: `values[series][group]` is the sample summarised by one box.
pub fn boxplots(
    path: &Path,
    title: &str,
    x_label: &str,
    groups: &[String],
    series: &[String],
    values: &[Boxes],
) -> Result<()> {
    let range = finite_range(values.iter().flatten().flatten().copied(), None);
    grouped(path, title, x_label, groups, series, range, |chart, slot| {
        for (j, (name, vals)) in series.iter().zip(values).enumerate() {
            let color = PALETTE[j % PALETTE.len()];
            let mut boxes = Vec::new();
            let mut lines = Vec::new();
            for (i, xs) in vals.iter().enumerate() {
                let Some([mn, q1, med, q3, mx]) = five_numbers(xs) else { continue };
                let (y, h) = slot(i, j);
                boxes.push(Rectangle::new([(q1, y - h), (q3, y + h)], color.mix(0.45).filled()));
                lines.push(PathElement::new(vec![(mn, y), (q1, y)], color.stroke_width(1)));
                lines.push(PathElement::new(vec![(q3, y), (mx, y)], color.stroke_width(1)));
                lines.push(PathElement::new(vec![(med, y - h), (med, y + h)], BLACK.stroke_width(2)));
            }
            chart
                .draw_series(boxes)
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.mix(0.45).filled()));
            chart.draw_series(lines).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// Points (x, y) with the y = x diagonal, both axes on [0, 1] (normalised scores).
pub fn scatter(path: &Path, title: &str, x_label: &str, y_label: &str, points: &[(f64, f64)]) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (560, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.02..1.02f64, -0.02..1.02f64)
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| plot_err(path, e))?;
        chart
            .draw_series(LineSeries::new(vec![(0.0, 0.0), (1.0, 1.0)], RGBColor(170, 170, 170).stroke_width(1)))
            .map_err(|e| plot_err(path, e))?;
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|p| p.0.is_finite() && p.1.is_finite())
                    .map(|&p| Circle::new(p, 3, PALETTE[0].mix(0.7).filled())),
            )
            .map_err(|e| plot_err(path, e))?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    crate::util::io::atomic_write(path, svg.as_bytes())
}
