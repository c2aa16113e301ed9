//! A small SVG line chart (connect p50 vs service count, one line per arm), written by hand:
//! a plotting crate would be a heavier dependency than this whole file.
use std::fmt::Write as _;

/// One line of the chart.
pub struct Series {
    pub name: String,
    /// (service count, p50 µs)
    pub points: Vec<(f64, f64)>,
}

const COLORS: [&str; 6] = [
    "#333333", "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd",
];
const W: f64 = 760.0;
const H: f64 = 460.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The y axis: linear from 0, or logarithmic when the values span more than 20x (kube-proxy's
/// iptables arm at 30,000 services is two orders of magnitude above the others).
enum YAxis {
    Linear { max: f64 },
    Log { min: f64, max: f64 },
}

impl YAxis {
    fn new(ys: &[f64]) -> Self {
        let hi = ys.iter().copied().fold(1.0, f64::max);
        let lo = ys.iter().copied().fold(f64::INFINITY, f64::min).max(1e-3);
        if hi / lo > 20.0 {
            YAxis::Log {
                min: 10f64.powf(lo.log10().floor()),
                max: 10f64.powf(hi.log10().ceil()),
            }
        } else {
            YAxis::Linear {
                max: nice_ceiling(hi * 1.1),
            }
        }
    }

    /// 0 at the bottom, 1 at the top.
    fn fraction(&self, y: f64) -> f64 {
        match *self {
            YAxis::Linear { max } => y / max,
            YAxis::Log { min, max } => (y.max(min).log10() - min.log10()) / (max / min).log10(),
        }
    }

    fn ticks(&self) -> Vec<f64> {
        match *self {
            YAxis::Linear { max } => (0..=5).map(|i| max * f64::from(i) / 5.0).collect(),
            YAxis::Log { min, max } => {
                let mut t = Vec::new();
                let mut decade = min;
                while decade <= max * 1.0001 {
                    for m in [1.0, 2.0, 5.0] {
                        if m * decade <= max * 1.0001 {
                            t.push(m * decade);
                        }
                    }
                    decade *= 10.0;
                }
                t
            }
        }
    }

    fn is_log(&self) -> bool {
        matches!(self, YAxis::Log { .. })
    }
}

/// The x axis is logarithmic (service counts 1 .. 30,000); see [`YAxis`] for y.
pub fn line_chart(title: &str, y_label: &str, series: &[Series]) -> String {
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|y| y.is_finite())
        .collect();
    let (x_min, x_max) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min).max(1.0),
        xs.iter().copied().fold(1.0, f64::max),
    );
    let y_axis = YAxis::new(&ys);
    let (lx_min, lx_max) = (x_min.log10(), x_max.log10().max(x_min.log10() + 1.0));
    let px = |x: f64| LEFT + (x.max(1.0).log10() - lx_min) / (lx_max - lx_min) * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - y_axis.fraction(y) * (H - TOP - BOTTOM);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        escape(title)
    );
    // Grid and y ticks.
    for y in y_axis.ticks() {
        let (right, at, label_x) = (W - RIGHT, py(y), LEFT - 6.0);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{right}" y1="{at:.1}" y2="{at:.1}" stroke="#ddd"/><text x="{label_x}" y="{:.1}" text-anchor="end">{}</text>"##,
            at + 4.0,
            trim(y)
        );
    }
    // x ticks at the measured counts.
    let mut ticks: Vec<f64> = xs.clone();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    for x in ticks {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{TOP}" y2="{1}" stroke="#eee"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
            px(x),
            H - BOTTOM,
            H - BOTTOM + 18.0,
            trim(x)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">services installed (log scale; the measured service is the last)</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (TOP + H - BOTTOM) / 2.0,
        escape(&if y_axis.is_log() {
            format!("{y_label}, log scale")
        } else {
            y_label.to_owned()
        })
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        for p in &points {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(svg, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
        }
        let ly = TOP + 14.0 + 20.0 * i as f64;
        let lx = W - RIGHT + 14.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            lx + 22.0,
            lx + 28.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn trim(v: f64) -> String {
    if v >= 1000.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_a_line_per_series() {
        let svg = line_chart(
            "t",
            "µs",
            &[
                Series {
                    name: "a".into(),
                    points: vec![(1.0, 10.0), (30000.0, 12.0)],
                },
                Series {
                    name: "b<".into(),
                    points: vec![(1.0, 20.0), (30000.0, 80.0)],
                },
            ],
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("b&lt;"));
        assert_eq!(nice_ceiling(88.0), 100.0);
        assert_eq!(nice_ceiling(13.0), 20.0);
        let log = YAxis::new(&[4.0, 400.0]);
        assert!(log.is_log());
        assert_eq!(log.ticks().first(), Some(&1.0));
        assert!((log.fraction(1000.0) - 1.0).abs() < 1e-9);
    }
}
