//! `schedctl simulate --plot FILE.svg`: the replay's curves, one line per
//! policy, drawn with `plotters`' SVG backend.
//!
//! Only SVG: plotters renders PNG text through font-kit, which needs the
//! fontconfig and freetype development packages that a default Debian
//! lacks; its SVG backend writes text as SVG text, with no font library.

use std::path::Path;

use anyhow::{anyhow, bail};
use plotters::prelude::*;

use crate::replay::Series;

/// Line colours, one per policy (ColorBrewer's Set1, readable on white).
const COLORS: [RGBColor; 6] = [
    RGBColor(228, 26, 28),
    RGBColor(55, 126, 184),
    RGBColor(77, 175, 74),
    RGBColor(152, 78, 163),
    RGBColor(255, 127, 0),
    RGBColor(166, 86, 40),
];

/// At most this many points per line: a replay of the openb trace has
/// 16,000 instants, many more than a figure 1,000 pixels wide can show.
const MAX_POINTS: usize = 1_000;

type Metric = fn(&sched_core::replay::Sample, &sched_core::resources::Resources) -> f64;

fn pct(a: u64, c: u64) -> f64 {
    if c == 0 {
        0.0
    } else {
        100.0 * a as f64 / c as f64
    }
}

const PANELS: [(&str, Metric); 4] = [
    ("GPU allocated (% of capacity)", |s, c| {
        pct(s.allocated.gpu.0, c.gpu.0)
    }),
    ("CPU allocated (% of capacity)", |s, c| {
        pct(s.allocated.cpu.0, c.cpu.0)
    }),
    ("fragmented GPUs (expected, over the task mix)", |s, _| {
        s.gpu_milli_fragmented as f64 / 1000.0
    }),
    ("tasks waiting", |s, _| s.tasks_waiting as f64),
];

/// Draws the curves of every series into `path` (`.svg`). With
/// `by_arrived`, the x axis is the GPU requests arrived, in % of capacity
/// (the paper's figures); otherwise the time in hours.
pub fn draw(path: &Path, series: &[Series], by_arrived: bool) -> anyhow::Result<()> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if ext != "svg" {
        bail!(
            "--plot {}: only .svg is supported (PNG needs fontconfig and freetype)",
            path.display()
        );
    }
    let x = |s: &sched_core::replay::Sample, c: &sched_core::resources::Resources| {
        if by_arrived {
            pct(s.gpu_milli_arrived, c.gpu.0)
        } else {
            s.time_ms as f64 / 3_600_000.0
        }
    };
    let x_desc = if by_arrived {
        "GPU requests arrived (% of capacity)"
    } else {
        "time (hours)"
    };
    let xmax = series
        .iter()
        .flat_map(|s| s.samples.iter().map(|p| x(p, &s.capacity)))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let root = SVGBackend::new(path, (1000, 1200)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("--plot {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let areas = root.split_evenly((PANELS.len(), 1));
    for (area, (title, metric)) in areas.iter().zip(PANELS) {
        let ymax = series
            .iter()
            .flat_map(|s| s.samples.iter().map(|p| metric(p, &s.capacity)))
            .fold(0.0f64, f64::max)
            .max(1.0)
            * 1.05;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..xmax, 0.0..ymax)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .draw()
            .map_err(|e| err(&e))?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let step = s.samples.len().div_ceil(MAX_POINTS).max(1);
            let points = s
                .samples
                .iter()
                .step_by(step)
                .chain(s.samples.last())
                .map(|p| (x(p, &s.capacity), metric(p, &s.capacity)));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
