//! Latency percentile plot (SVG): one line per run, x = percentile on a "number of nines"
//! scale (50, 90, 99, 99.9, …), y = latency in ms (log scale).

use plotters::prelude::*;

use crate::error::Error;
use crate::report::Report;

/// Maps a percentile to the x axis: `-log10(1 - p/100)`, so 90 → 1, 99 → 2, 99.9 → 3.
pub fn nines(p: f64) -> f64 {
    let q = (1.0 - p / 100.0).max(1e-5);
    -q.log10()
}

/// Writes an SVG with one latency-percentile line per report to `path`.
pub fn latency_svg(reports: &[Report], path: &str, title: &str) -> Result<(), Error> {
    let lines: Vec<(String, Vec<(f64, f64)>)> = reports
        .iter()
        .filter(|r| !r.latency_curve.is_empty())
        .map(|r| {
            let pts = r
                .latency_curve
                .iter()
                .map(|&(p, ms)| (nines(p), ms.max(0.001)))
                .collect();
            (r.label.clone(), pts)
        })
        .collect();
    if lines.is_empty() {
        return Err(Error::Plot {
            path: path.to_owned(),
            message: "no latency data to plot".to_owned(),
        });
    }
    let x_max = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.0))
        .fold(3.0_f64, f64::max);
    let y_max = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.1))
        .fold(1.0_f64, f64::max)
        * 1.5;
    let y_min = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.1))
        .fold(f64::MAX, f64::min)
        .clamp(0.001, 1.0)
        * 0.7;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| Error::Plot {
        path: path.to_owned(),
        message: e.to_string(),
    };
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-*x));
            if p < 99.0 {
                format!("{p:.0}")
            } else {
                format!("{p:.3}").trim_end_matches('0').to_owned()
            }
        })
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (label, pts)) in lines.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_scale() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(0.0), 0.0);
    }
}
