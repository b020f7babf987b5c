//! SVG plots of a campaign report (plotters' SVG backend: no fonts, no C libraries). Errors
//! are small numbers spanning decades, so every error axis is logarithmic; a value of 0 is
//! drawn at the axis floor.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use esmfuzz::harness::campaign::CampaignReport;
use esmfuzz::harness::summary::FamilyResult;

/// Smallest error drawn (zeros land here).
const FLOOR: f64 = 1e-9;
const SIZE: (u32, u32) = (760, 420);

fn clamp(v: f64) -> f64 {
    if v.is_finite() { v.max(FLOOR) } else { 1.0 }
}

/// One error value per case, per family, with the family's threshold and FP32 noise floor.
struct Series<'a> {
    family: &'a FamilyResult,
    values: Vec<(f64, f64)>,
    threshold: Option<f64>,
    floor: Option<f64>,
}

fn draw_errors(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
    x_max: f64,
) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max.max(1.0), (FLOOR..1.0).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(
                s.values
                    .iter()
                    .map(|&(x, y)| Circle::new((x, clamp(y)), 3, color.filled())),
            )
            .map_err(|e| anyhow!("{e}"))?
            .label(s.family.family.clone())
            .legend(move |(x, y)| Circle::new((x, y), 3, color.filled()));
        let xs = s.values.iter().map(|v| v.0);
        let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
        if lo.is_finite() {
            // Thick: the threshold; thin: the FP32 noise floor.
            for (value, width) in [(s.threshold, 2), (s.floor.map(clamp), 1)] {
                if let Some(y) = value {
                    chart
                        .draw_series(LineSeries::new(
                            [(lo - 0.3, y), (hi + 0.3, y)],
                            color.stroke_width(width),
                        ))
                        .map_err(|e| anyhow!("{e}"))?;
                }
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// The threshold of `property` in `family`'s metric summaries, if it measured it.
fn threshold(
    family: &FamilyResult,
    property: esmfuzz::harness::verdict::PropertyId,
) -> Option<f64> {
    family
        .metrics
        .iter()
        .find(|m| m.property == property)
        .map(|m| m.threshold)
}

/// Writes the plots into `dir`; returns (file name, caption) of each.
pub fn write_plots(dir: &Path, campaign: &CampaignReport) -> Result<Vec<(PathBuf, &'static str)>> {
    use esmfuzz::harness::verdict::PropertyId;
    let families: Vec<&FamilyResult> = campaign
        .families
        .iter()
        .filter(|f| !f.points.is_empty())
        .collect();
    let mut written = Vec::new();
    if families.is_empty() {
        return Ok(written);
    }
    let jitter = |k: usize| 0.15 * ((k % 5) as f64 - 2.0) / 2.0;
    let by_family = |value: fn(&esmfuzz::harness::summary::CasePoint) -> f64,
                     property,
                     as_error: fn(f64) -> f64|
     -> Vec<Series<'_>> {
        families
            .iter()
            .enumerate()
            .map(|(i, f)| Series {
                family: f,
                values: f
                    .points
                    .iter()
                    .enumerate()
                    .map(|(k, p)| (i as f64 + 0.5 + jitter(k), value(p)))
                    .collect(),
                threshold: threshold(f, property).map(as_error),
                floor: f
                    .noise_floor
                    .iter()
                    .find(|v| v.property == property)
                    .map(|v| as_error(v.measured)),
            })
            .collect()
    };
    let x_max = families.len() as f64;
    let path = dir.join("pooled_cosine.svg");
    draw_errors(
        &path,
        "1 - pooled cosine per case, by family (thick line: threshold; thin: FP32 noise floor)",
        "family (see legend)",
        "1 - pooled cosine",
        &by_family(
            |p| 1.0 - p.pooled_cosine,
            PropertyId::PooledCosine,
            |c| 1.0 - c,
        ),
        x_max,
    )?;
    written.push((
        path,
        "1 - pooled cosine per case, by family, against the threshold and the FP32 noise floor",
    ));
    let path = dir.join("relative_l2.svg");
    draw_errors(
        &path,
        "relative L2 per case, by family (thick line: bound; thin: FP32 noise floor)",
        "family (see legend)",
        "relative L2",
        &by_family(|p| p.relative_l2, PropertyId::RelativeL2, |x| x),
        x_max,
    )?;
    written.push((
        path,
        "relative L2 per case, by family, against the bound and the FP32 noise floor",
    ));
    let longest = families
        .iter()
        .flat_map(|f| f.points.iter().map(|p| p.lengths.iter().sum::<usize>()))
        .max()
        .unwrap_or(1);
    let scatter: Vec<Series<'_>> = families
        .iter()
        .map(|f| Series {
            family: f,
            values: f
                .points
                .iter()
                .map(|p| {
                    (
                        p.lengths.iter().sum::<usize>() as f64,
                        1.0 - p.pooled_cosine,
                    )
                })
                .collect(),
            threshold: None,
            floor: None,
        })
        .collect();
    let path = dir.join("length_vs_cosine.svg");
    draw_errors(
        &path,
        "1 - pooled cosine against residues per case",
        "residues in the case",
        "1 - pooled cosine",
        &scatter,
        longest as f64 * 1.05,
    )?;
    written.push((path, "case length against 1 - pooled cosine"));
    let worst = campaign
        .families
        .iter()
        .filter(|f| f.localisation.is_some())
        .max_by(|a, b| {
            let used = |f: &FamilyResult| {
                f.tightest.as_ref().map_or(0.0, |t| {
                    if t.used.is_nan() {
                        f64::INFINITY
                    } else {
                        t.used
                    }
                })
            };
            used(a).total_cmp(&used(b))
        });
    if let Some(f) = worst
        && let Some(l) = &f.localisation
    {
        let path = dir.join("layers.svg");
        let curve = Series {
            family: f,
            values: l
                .places
                .iter()
                .enumerate()
                .map(|(i, p)| (i as f64, p.relative_l2))
                .collect(),
            threshold: Some(l.threshold),
            floor: None,
        };
        draw_errors(
            &path,
            &format!(
                "relative L2 through the layers, {} worst case (x: embeddings, then attention/FFN of each layer, final LayerNorm)",
                f.family
            ),
            "place in the forward pass",
            "relative L2",
            std::slice::from_ref(&curve),
            l.places.len() as f64,
        )?;
        written.push((path, "relative L2 through the layers of the tightest case"));
    }
    Ok(written)
}
