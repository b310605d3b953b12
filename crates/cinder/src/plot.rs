//! Line charts as SVG, for `cinder simulate` and `cinder bench`.

use std::path::Path;

use plotters::prelude::*;

/// Named lines of (x, y) points; non-finite values are skipped.
pub type Series = Vec<(String, Vec<(f64, f64)>)>;

pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &Series) -> anyhow::Result<()> {
    let points = series.iter().flat_map(|(_, p)| p.iter()).filter(|p| p.1.is_finite());
    let (x_max, y_max) = points.fold((1e-9f64, 1e-9f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max * 1.05, 0f64..y_max * 1.1)?;
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let finite: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.1.is_finite()).collect();
        chart
            .draw_series(LineSeries::new(finite, color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
