//! The demo's chart: mean training loss per epoch, one line per optimizer, as SVG text.

use plotters::prelude::*;

/// One line of the chart.
pub struct Curve<'a> {
    /// The legend entry.
    pub label: &'a str,
    /// The loss of epochs 1, 2, …; non-finite values leave a gap.
    pub losses: &'a [f32],
}

/// Losses are drawn on a log scale; values at or below this (a loss of exactly 0) are
/// drawn here.
const FLOOR: f32 = 1e-6;

/// Line colours (matplotlib's "tab10"), reused in order.
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// The chart as an SVG document; with `lr` (each epoch's learning rate over the optimizers'
/// own), a second panel below the loss shows it.
pub fn svg(
    title: &str,
    curves: &[Curve<'_>],
    lr: Option<&[f64]>,
) -> Result<String, Box<dyn std::error::Error>> {
    let epochs = curves.iter().map(|c| c.losses.len()).max().unwrap_or(0);
    let finite = || {
        curves
            .iter()
            .flat_map(|c| c.losses.iter())
            .filter(|l| l.is_finite())
            .map(|l| l.max(FLOOR))
    };
    let (lo, hi) = finite().fold((f32::INFINITY, FLOOR), |(lo, hi), l| (lo.min(l), hi.max(l)));
    let (lo, hi) = if lo <= hi {
        (lo / 1.5, hi * 1.5)
    } else {
        (0.01, 10.0)
    };
    let mut text = String::new();
    {
        let height = if lr.is_some() { 540 + 240 } else { 540 };
        let root = SVGBackend::with_string(&mut text, (900, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(540);
        if let Some(lr) = lr {
            lr_panel(&bottom, epochs, lr)?;
        }
        let mut chart = ChartBuilder::on(&top)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(1..epochs.max(2), (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("mean training loss (log scale)")
            .axis_desc_style(("sans-serif", 16))
            .label_style(("sans-serif", 13))
            .draw()?;
        for (i, curve) in curves.iter().enumerate() {
            let style = COLOURS[i % COLOURS.len()].stroke_width(2);
            for segment in finite_segments(curve.losses) {
                chart.draw_series(LineSeries::new(segment, style))?;
            }
            // An empty series carries the legend entry, whatever the gaps.
            chart
                .draw_series(LineSeries::new(std::iter::empty(), style))?
                .label(curve.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(text)
}

/// The learning-rate panel: `lr[e]` at epoch `e + 1`, on a linear scale from 0.
fn lr_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    epochs: usize,
    lr: &[f64],
) -> Result<(), Box<dyn std::error::Error>> {
    let hi = lr
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "learning rate (over each optimizer's own)",
            ("sans-serif", 16),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(1..epochs.max(2), 0.0..(hi * 1.1).max(1e-12))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .label_style(("sans-serif", 13))
        .draw()?;
    let points = (lr.iter().enumerate()).filter(|(_, v)| v.is_finite());
    let style = BLACK.stroke_width(2);
    chart.draw_series(LineSeries::new(points.map(|(e, &v)| (e + 1, v)), style))?;
    Ok(())
}

/// The runs of finite losses as (epoch, loss) points, epochs counted from 1.
fn finite_segments(losses: &[f32]) -> Vec<Vec<(usize, f32)>> {
    let mut segments = Vec::new();
    let mut current = Vec::new();
    for (e, &l) in losses.iter().enumerate() {
        if l.is_finite() {
            current.push((e + 1, l.max(FLOOR)));
        } else if !current.is_empty() {
            segments.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        segments.push(current);
    }
    segments
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_split_the_line_at_non_finite_losses() {
        let segments = finite_segments(&[2.0, f32::NAN, 1.0, 0.0, f32::INFINITY]);
        assert_eq!(segments, vec![vec![(1, 2.0)], vec![(3, 1.0), (4, FLOOR)]]);
    }

    #[test]
    fn a_chart_of_only_nan_still_names_its_curve() {
        let text = svg(
            "t",
            &[Curve {
                label: "diverged",
                losses: &[f32::NAN],
            }],
            None,
        )
        .expect("the chart renders");
        assert!(
            text.starts_with("<svg") && text.contains("diverged"),
            "{text}"
        );
    }
}
