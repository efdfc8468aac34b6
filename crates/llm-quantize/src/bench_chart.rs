//! `bench --chart FILE.svg`: the size/quality/speed frontier of a bench run as an SVG
//! picture (written by hand: a few dozen elements need no plotting library). Two
//! panels share the x axis, bits per weight: KL-divergence against `--base` (log
//! scale) and decode tokens/s. One point per bench row, labelled with its name and
//! coloured by series, the points of a series joined in order of size: rows named
//! `PREFIX-REST` (e.g. `measured-4.5`, `measured-5.3`) form the series `PREFIX`, the
//! others one series per format (GGUF, folder, other). So one sees at a glance which
//! format wins at a given size.

use serde_json::Value;
use std::fmt::Write as _;

const W: f64 = 980.0;
const H: f64 = 440.0;
const PANEL_W: f64 = 400.0;
const PANEL_H: f64 = 300.0;
const TOP: f64 = 60.0;
const LEFTS: [f64; 2] = [80.0, 560.0];

/// One plotted point.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartPoint {
    pub name: String,
    pub bpw: f64,
    pub kl: Option<f64>,
    pub decode_tps: Option<f64>,
    /// the series it is drawn with
    pub series: String,
}

/// The points of a bench result (`models` rows); rows without bits per weight are
/// left out.
pub fn points(result: &Value) -> Vec<ChartPoint> {
    let rows = result["models"].as_array().cloned().unwrap_or_default();
    rows.iter()
        .filter_map(|r| {
            let bpw = r["bits_per_weight"].as_f64()?;
            let model = r["model"].as_str().unwrap_or("");
            let name = r["name"].as_str().unwrap_or(model).to_string();
            let series = match name.rsplit_once('-') {
                Some((prefix, _)) if !prefix.is_empty() => prefix.to_string(),
                _ if model.ends_with(".gguf") => "GGUF".to_string(),
                _ if std::path::Path::new(model).is_dir() => "folder".to_string(),
                _ => "other".to_string(),
            };
            Some(ChartPoint {
                name,
                bpw,
                kl: r["quality"]["mean_kl_divergence"]
                    .as_f64()
                    .filter(|k| *k > 0.0),
                decode_tps: r["decode"]["tokens_per_second"].as_f64(),
                series,
            })
        })
        .collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Axis ticks: about five round values covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut v = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi + step * 1e-9 {
        v.push(t);
        t += step;
    }
    v
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{}", (v * 100.0).round() / 100.0)
    } else {
        format!("{v:.1e}")
    }
}

/// A y axis: linear or base-10 logarithmic over the values.
struct YAxis {
    lo: f64,
    hi: f64,
    log: bool,
}

impl YAxis {
    fn over(vals: &[f64], log: bool) -> Option<YAxis> {
        let (mut lo, mut hi) = vals
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        if !lo.is_finite() {
            return None;
        }
        if log {
            // whole decades with room above and below the extreme points
            lo = 10f64.powf(lo.log10().ceil() - 1.0);
            hi = 10f64.powf(hi.log10().floor() + 1.0);
        } else {
            lo = 0.0;
            hi = if hi > 0.0 { hi * 1.1 } else { 1.0 };
        }
        Some(YAxis { lo, hi, log })
    }
    fn frac(&self, v: f64) -> f64 {
        if self.log {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }
    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let (a, b) = (
                self.lo.log10().round() as i32,
                self.hi.log10().round() as i32,
            );
            (a..=b).map(|e| 10f64.powi(e)).collect()
        } else {
            ticks(self.lo, self.hi)
        }
    }
}

const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// The SVG document for `points` (title above both panels).
pub fn svg(points: &[ChartPoint], title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    let mut series: Vec<&str> = Vec::new();
    for p in points {
        if !series.contains(&p.series.as_str()) {
            series.push(&p.series);
        }
    }
    let colour =
        |name: &str| COLOURS[series.iter().position(|s| *s == name).unwrap_or(0) % COLOURS.len()];
    for (i, name) in series.iter().enumerate() {
        let x = 80.0 + 150.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<circle cx="{x}" cy="{}" r="5" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            H - 18.0,
            colour(name),
            x + 9.0,
            H - 14.0,
            esc(name)
        );
    }
    let (xmin, xmax) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.bpw), b.max(p.bpw))
        });
    let (xlo, xhi) = if xmin.is_finite() {
        let pad = ((xmax - xmin) * 0.08).max(0.25);
        (xmin - pad, xmax + pad)
    } else {
        (0.0, 1.0)
    };
    let panels: [(&str, Vec<f64>, bool); 2] = [
        (
            "KL-divergence vs original (log)",
            points.iter().filter_map(|p| p.kl).collect(),
            true,
        ),
        (
            "decode tokens/s",
            points.iter().filter_map(|p| p.decode_tps).collect(),
            false,
        ),
    ];
    for (pi, (label, vals, log)) in panels.iter().enumerate() {
        let left = LEFTS[pi];
        let bottom = TOP + PANEL_H;
        let x_of = |v: f64| left + (v - xlo) / (xhi - xlo) * PANEL_W;
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#444"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">bits per weight</text>"#,
            left + PANEL_W / 2.0,
            bottom + 36.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">{}</text>"#,
            left - 58.0,
            TOP + PANEL_H / 2.0,
            left - 58.0,
            TOP + PANEL_H / 2.0,
            esc(label)
        );
        for t in ticks(xlo, xhi) {
            let x = x_of(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{bottom}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                bottom + 16.0,
                fmt_tick(t)
            );
        }
        let Some(y) = YAxis::over(vals, *log) else {
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" text-anchor="middle" fill="#888">not measured</text>"##,
                left + PANEL_W / 2.0,
                TOP + PANEL_H / 2.0
            );
            continue;
        };
        let y_of = |v: f64| bottom - y.frac(v) * PANEL_H;
        for t in y.ticks() {
            let yy = y_of(t);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + PANEL_W,
                left - 6.0,
                yy + 4.0,
                fmt_tick(t)
            );
        }
        for name in &series {
            let mut line: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.series == *name)
                .filter_map(|p| {
                    let v = if pi == 0 { p.kl } else { p.decode_tps };
                    v.map(|v| (x_of(p.bpw), y_of(v)))
                })
                .collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            if line.len() > 1 {
                let pts: Vec<String> = line.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let _ = writeln!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5" opacity="0.6"/>"#,
                    pts.join(" "),
                    colour(name)
                );
            }
        }
        for p in points {
            let v = if pi == 0 { p.kl } else { p.decode_tps };
            let Some(v) = v else { continue };
            let (cx, cy) = (x_of(p.bpw), y_of(v));
            let _ = writeln!(
                s,
                r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="4" fill="{}"><title>{}: {:.3} bpw, {}</title></circle><text x="{:.1}" y="{:.1}" font-size="10">{}</text>"#,
                colour(&p.series),
                esc(&p.name),
                p.bpw,
                v,
                cx + 6.0,
                cy - 4.0,
                esc(&p.name)
            );
        }
    }
    let _ = writeln!(s, "</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plots_one_point_per_row_in_both_panels() {
        let r = json!({"models": [
            {"model": "a.gguf", "name": "a", "bits_per_weight": 4.5,
             "quality": {"mean_kl_divergence": 0.01}, "decode": {"tokens_per_second": 100.0}},
            {"model": "b.gguf", "name": "b<&>", "bits_per_weight": 8.5,
             "quality": {"mean_kl_divergence": 0.0005}, "decode": {"tokens_per_second": 60.0}},
            {"model": "c", "name": "c", "bits_per_weight": null}
        ]});
        let p = points(&r);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].series, "GGUF");
        assert_eq!(p[0].kl, Some(0.01));
        let s = svg(&p, "t");
        // two points in each panel and one legend entry
        assert_eq!(s.matches("<circle").count(), 5);
        assert!(s.contains("b&lt;&amp;&gt;"));
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        // the lower KL is drawn lower on the log axis... i.e. nearer the bottom
        let y = YAxis::over(&[0.01, 0.0005], true).unwrap();
        assert!(y.frac(0.0005) < y.frac(0.01));
        assert_eq!((y.lo, y.hi), (1e-4, 1e-1));
    }

    #[test]
    fn names_with_a_prefix_form_a_series_joined_by_a_line() {
        let r = json!({"models": [
            {"model": "x/m-4.5.gguf", "name": "m-4.5", "bits_per_weight": 4.5,
             "quality": {"mean_kl_divergence": 0.01}},
            {"model": "x/m-5.5.gguf", "name": "m-5.5", "bits_per_weight": 5.5,
             "quality": {"mean_kl_divergence": 0.004}},
            {"model": "x/Q4_K_M.gguf", "name": "Q4_K_M", "bits_per_weight": 5.0,
             "quality": {"mean_kl_divergence": 0.009}}
        ]});
        let p = points(&r);
        let series: Vec<&str> = p.iter().map(|p| p.series.as_str()).collect();
        assert_eq!(series, ["m", "m", "GGUF"]);
        let s = svg(&p, "t");
        assert_eq!(
            s.matches("<polyline").count(),
            1,
            "one line: series m, KL panel"
        );
        assert!(s.contains("not measured"), "no decode rates");
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(3.0, 9.0), vec![4.0, 6.0, 8.0]);
        let t = ticks(0.0, 1.0);
        assert_eq!(t.first(), Some(&0.0));
        assert!((t.last().unwrap() - 1.0).abs() < 1e-9);
    }
}
