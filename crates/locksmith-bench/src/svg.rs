//! A hand-written SVG bar chart (no plotting dependency): one horizontal bar per system,
//! log-scaled, with a whisker from p10 to p99.

use std::fmt::Write as _;

/// One bar of the chart.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Label on the left.
    pub label: String,
    /// Length of the bar (median).
    pub value: f64,
    /// Whisker start (e.g. p10), if known.
    pub lo: Option<f64>,
    /// Whisker end (e.g. p99), if known.
    pub hi: Option<f64>,
    /// Drawn in the highlight colour (locksmith's rows).
    pub ours: bool,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders a log-scale horizontal bar chart. Non-positive or non-finite values are left out.
pub fn bar_chart(title: &str, unit: &str, bars: &[Bar]) -> String {
    let bars: Vec<&Bar> = bars
        .iter()
        .filter(|b| b.value.is_finite() && b.value > 0.0)
        .collect();
    let (label_w, plot_w, row_h, top, bottom) = (330.0, 560.0, 24.0, 48.0, 44.0);
    let width = label_w + plot_w + 30.0;
    let height = top + bottom + row_h * bars.len().max(1) as f64;
    let mut lo = f64::INFINITY;
    let mut hi: f64 = 0.0;
    for b in &bars {
        for v in [Some(b.value), b.lo, b.hi].into_iter().flatten() {
            if v.is_finite() && v > 0.0 {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
    }
    if !lo.is_finite() {
        lo = 1.0;
        hi = 10.0;
    }
    let dmin = lo.log10().floor();
    let dmax = hi.log10().ceil().max(dmin + 1.0);
    let x = |v: f64| label_w + (v.max(1e-300).log10() - dmin) / (dmax - dmin) * plot_w;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        10,
        esc(title)
    );
    // Decade grid lines and labels.
    let mut d = dmin;
    while d <= dmax + 1e-9 {
        let gx = x(10f64.powf(d));
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{top}" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle" fill="#444">{}</text>"##,
            height - bottom,
            height - bottom + 16.0,
            esc(&fmt_tick(10f64.powf(d)))
        );
        d += 1.0;
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#444">{} (log scale; bar = median, whisker = p10 to p99)</text>"##,
        label_w + plot_w / 2.0,
        height - 8.0,
        esc(unit)
    );
    for (i, b) in bars.iter().enumerate() {
        let y = top + row_h * i as f64;
        let colour = if b.ours { "#d9480f" } else { "#1c7ed6" };
        let x0 = x(10f64.powf(dmin));
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}" opacity="0.8"/>"#,
            label_w - 8.0,
            y + row_h * 0.65,
            esc(&b.label),
            y + 4.0,
            (x(b.value) - x0).max(1.0),
            row_h - 8.0
        );
        if let (Some(l), Some(h)) = (b.lo, b.hi) {
            if l > 0.0 && h > 0.0 && l.is_finite() && h.is_finite() {
                let ym = y + row_h / 2.0;
                let _ = writeln!(
                    s,
                    r##"<line x1="{:.1}" y1="{ym:.1}" x2="{:.1}" y2="{ym:.1}" stroke="#222"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#222"/>"##,
                    x(l),
                    x(h),
                    x(h),
                    ym - 5.0,
                    x(h),
                    ym + 5.0
                );
            }
        }
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" fill="#222">{}</text>"##,
            (x(b.value) + 4.0).min(width - 60.0),
            y + row_h * 0.65 - 8.0,
            esc(&fmt_tick(b.value))
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A short human number: 1.23, 45.6, 789, 12k, 3.4M.
pub fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.3}M", v / 1e6).replace(".000M", "M")
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_escapes() {
        let svg = bar_chart(
            "t<",
            "µs",
            &[
                Bar {
                    label: "a&b".into(),
                    value: 12.0,
                    lo: Some(10.0),
                    hi: Some(40.0),
                    ours: false,
                },
                Bar {
                    label: "nan".into(),
                    value: f64::NAN,
                    lo: None,
                    hi: None,
                    ours: true,
                },
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("a&amp;b"));
        assert!(svg.contains("t&lt;"));
        assert!(!svg.contains("nan<"));
        let empty = bar_chart("e", "µs", &[]);
        assert!(empty.ends_with("</svg>\n"));
    }
}
