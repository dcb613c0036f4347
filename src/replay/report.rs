//! `report.html`: one self-contained page (no external assets). Per detector
//! and key, an SVG plot over event time of the p-value (log scale, with the
//! threshold line) — or of the statistic and its threshold for distances —
//! and of the statistic below it; alerts are marked, true drift intervals
//! shaded. Then the summary and, with ground truth, detections, delays and
//! false alarms per detector. Every plotted point carries its values in a
//! `data-` attribute so the numbers can be checked against `stats.jsonl`.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::Summary;
use super::accuracy::AccuracyRow;
use crate::alert::Evaluation;
use crate::scenario::Truth;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const W: f64 = 900.0;
const H: f64 = 180.0;
const PAD_L: f64 = 70.0;
const PAD_R: f64 = 20.0;
const PAD_T: f64 = 12.0;
const PAD_B: f64 = 28.0;

/// A plot of `(t, y)` points with a y transform.
struct Plot<'a> {
    title: String,
    points: Vec<(i64, f64, &'a Evaluation)>,
    log: bool,
    threshold: Option<f64>,
    shade: Vec<(i64, i64, String)>,
}

fn fmt_time(ms: i64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
        .to_string()
}

/// Where a plot puts a time (x) and a value (y): times t0…t0 + span
/// across, values lo…hi (after the log transform, if any) up.
struct Frame {
    t0: i64,
    span: f64,
    lo: f64,
    hi: f64,
    log: bool,
}

impl Frame {
    /// The value as plotted: its log10 on a log plot.
    fn tf(&self, y: f64) -> f64 {
        if self.log { y.max(1e-300).log10() } else { y }
    }

    fn x(&self, t: i64) -> f64 {
        PAD_L + (t - self.t0) as f64 / self.span * (W - PAD_L - PAD_R)
    }

    fn y(&self, v: f64) -> f64 {
        PAD_T + (self.hi - self.tf(v)) / (self.hi - self.lo) * (H - PAD_T - PAD_B)
    }

    /// An axis label for a transformed value.
    fn label(&self, v: f64) -> String {
        if self.log {
            format!("1e{v:.0}")
        } else {
            format!("{v:.3}")
        }
    }
}

impl Plot<'_> {
    fn svg(&self, t0: i64, t1: i64) -> String {
        let f = self.frame(t0, t1);
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{}">"#,
            esc(&self.title)
        );
        for (a, b, label) in &self.shade {
            let (xa, xb) = (f.x(*a).max(PAD_L), f.x(*b).min(W - PAD_R));
            if xb > xa {
                let _ = write!(
                    s,
                    r##"<rect class="truth" x="{xa:.1}" y="{PAD_T}" width="{:.1}" height="{:.1}" fill="#f4c54255"><title>{}</title></rect>"##,
                    xb - xa,
                    H - PAD_T - PAD_B,
                    esc(label)
                );
            }
        }
        axes(&f, t1, &mut s);
        if let Some(th) = self.threshold {
            let yy = f.y(th);
            let _ = write!(
                s,
                r##"<line class="threshold" x1="{PAD_L}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#c00" stroke-dasharray="4 3"><title>threshold {th:e}</title></line>"##,
                W - PAD_R
            );
        }
        self.points_svg(&f, &mut s);
        s.push_str("</svg>");
        s
    }

    /// The frame that holds every point and the threshold, times t0…t1.
    fn frame(&self, t0: i64, t1: i64) -> Frame {
        let mut f = Frame {
            t0,
            span: (t1 - t0).max(1) as f64,
            lo: 0.0,
            hi: 1.0,
            log: self.log,
        };
        let ys = self.points.iter().map(|p| p.1).chain(self.threshold);
        let ys: Vec<f64> = ys.map(|y| f.tf(y)).filter(|y| y.is_finite()).collect();
        let (lo, hi) = ys
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(*y), b.max(*y)));
        if lo.is_finite() {
            (f.lo, f.hi) = (lo, hi);
        }
        if self.log {
            f.hi = f.hi.max(0.0);
        }
        if f.hi - f.lo < 1e-12 {
            (f.lo, f.hi) = (f.lo - 0.5, f.hi + 0.5);
        }
        f
    }

    /// The points: a line through them, and a dot each (alerts and held
    /// back drifts marked) with its evaluation.
    fn points_svg(&self, f: &Frame, s: &mut String) {
        let path: Vec<String> = self
            .points
            .iter()
            .map(|(t, v, _)| format!("{:.1},{:.1}", f.x(*t), f.y(*v)))
            .collect();
        let _ = write!(
            s,
            r##"<polyline fill="none" stroke="#2a6fdb" stroke-width="1.5" points="{}"/>"##,
            path.join(" ")
        );
        for (t, v, e) in &self.points {
            let (fill, r) = if e.alert {
                ("#d00", 4.5)
            } else if e.drift {
                ("#e90", 3.0)
            } else {
                ("#2a6fdb", 2.0)
            };
            let _ = write!(
                s,
                r#"<circle class="{}" cx="{:.1}" cy="{:.1}" r="{r}" fill="{fill}" data-evaluation="{}" data-value="{v:e}"><title>eval {} at {}: {v:e}{}</title></circle>"#,
                if e.alert { "alert" } else { "point" },
                f.x(*t),
                f.y(*v),
                e.evaluation,
                e.evaluation,
                fmt_time(*t),
                if e.alert { " (alert)" } else { "" }
            );
        }
    }
}

/// A plot's axes, with its value range and its times (`t1`: the last).
fn axes(f: &Frame, t1: i64, s: &mut String) {
    let _ = write!(
        s,
        r##"<line x1="{PAD_L}" y1="{0}" x2="{1}" y2="{0}" stroke="#999"/><line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{0}" stroke="#999"/>"##,
        H - PAD_B,
        W - PAD_R
    );
    for (v, yy) in [(f.hi, PAD_T + 4.0), (f.lo, H - PAD_B)] {
        let _ = write!(
            s,
            r#"<text x="{}" y="{yy:.1}" font-size="10" text-anchor="end">{}</text>"#,
            PAD_L - 4.0,
            f.label(v)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{PAD_L}" y="{}" font-size="10">{}</text><text x="{}" y="{}" font-size="10" text-anchor="end">{}</text>"#,
        H - 8.0,
        fmt_time(f.t0),
        W - PAD_R,
        H - 8.0,
        fmt_time(t1)
    );
}

/// Per phase of the truth, each detector's drifting windows.
fn phases_table(summary: &Summary) -> String {
    if summary.phases.is_empty() {
        return String::new();
    }
    let names: Vec<&String> = summary.detectors.keys().collect();
    let mut h = String::from(
        "<h2>By phase: drifting windows / windows ending in it (alerts)</h2><table class=\"phases\"><tr><th>key</th><th>phase</th><th>kind</th>",
    );
    for d in &names {
        let _ = write!(h, "<th>{}</th>", esc(d));
    }
    h.push_str("</tr>");
    for p in &summary.phases {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td>",
            esc(&p.key),
            esc(&p.phase),
            esc(&p.kind)
        );
        for d in &names {
            match p.detectors.get(*d) {
                Some([n, drifts, alerts]) => {
                    let _ = write!(h, "<td>{drifts}/{n} ({alerts})</td>");
                }
                None => h.push_str("<td>-</td>"),
            }
        }
        h.push_str("</tr>");
    }
    h + "</table>"
}

/// cbpe's estimate per window next to the realised accuracy.
fn accuracy_table(summary: &Summary, rows: &[AccuracyRow]) -> String {
    let Some(s) = &summary.accuracy else {
        return String::new();
    };
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    let mut h = format!(
        "<h2>Estimated vs realised accuracy</h2><p class=\"meta\">{} windows estimated, {} with their labels in: mean |estimated − realised| {}, realised inside the band in {}</p>",
        s.windows,
        s.realised,
        f(s.mean_abs_error),
        s.in_band.map_or("-".into(), |b| format!("{:.0} %", 100.0 * b))
    );
    h.push_str("<table class=\"accuracy\"><tr><th>detector</th><th>key</th><th>evaluation</th><th>window from</th><th>to</th><th>estimated</th><th>band</th><th>realised</th></tr>");
    for r in rows {
        let _ = write!(
            h,
            "<tr data-estimated=\"{}\" data-realised=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4} – {:.4}</td><td>{}</td></tr>",
            r.estimated,
            r.realised.map_or(String::new(), |v| v.to_string()),
            esc(&r.detector),
            esc(r.key.as_deref().unwrap_or("")),
            r.evaluation,
            fmt_time(r.current_start_ms),
            fmt_time(r.current_end_ms),
            r.estimated,
            r.band[0],
            r.band[1],
            f(r.realised)
        );
    }
    h + "</table>"
}

/// Renders the page.
pub fn render(summary: &Summary, evals: &[Evaluation], truth: Option<&Truth>, estimates: &[AccuracyRow]) -> String {
    let mut groups: BTreeMap<(String, String), Vec<&Evaluation>> = BTreeMap::new();
    for e in evals {
        groups
            .entry((e.detector.clone(), e.key.clone().unwrap_or_default()))
            .or_default()
            .push(e);
    }
    let (t0, t1) = evals.iter().fold((i64::MAX, i64::MIN), |(a, b), e| {
        (a.min(e.window.current_start_ms), b.max(e.window.current_end_ms))
    });
    let span = if t0 > t1 { (0, 1) } else { (t0, t1) };
    let mut h = page_head(summary);
    h.push_str(&detectors_table(summary));
    h.push_str(&phases_table(summary));
    h.push_str(&accuracy_table(summary, estimates));
    for ((detector, key), es) in &groups {
        h.push_str(&detector_section(detector, key, es, truth, span));
    }
    h.push_str("</body></html>\n");
    h
}

/// The page's head, title, counts and legend.
fn page_head(summary: &Summary) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>driftwatch replay: {name}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}h2{{margin-top:28px;font-size:17px}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f3f3f3}}
td:first-child,th:first-child{{text-align:left}}.legend span{{margin-right:14px}}.meta{{color:#666;font-size:13px}}</style></head><body>
<h1>driftwatch replay: {name}</h1><p class="meta">source {src} · {ev} events · {dl} dead-lettered · {n} evaluations · {al} alerts</p>
<p class="legend"><span style="color:#2a6fdb">● evaluation</span><span style="color:#e90">● drift (held back)</span><span style="color:#d00">● alert</span><span style="color:#c00">- - threshold</span><span style="background:#f4c54255">&nbsp;true drift&nbsp;</span></p>
"#,
        name = esc(&summary.pipeline),
        src = esc(&summary.source),
        ev = summary.events,
        dl = summary.dead_lettered,
        n = summary.evaluations,
        al = summary.alerts
    );
    h
}

/// Per detector: evaluations, drifts and alerts, and against the truth
/// (when the replay has one) what it caught and missed.
fn detectors_table(summary: &Summary) -> String {
    let mut h = String::new();
    h.push_str("<table><tr><th>detector</th><th>evaluations</th><th>drifts</th><th>alerts</th>");
    if summary.truth.is_some() {
        h.push_str(
            "<th>watches</th><th>detected</th><th>missed</th><th>false alarms</th><th>delays (events)</th><th>alerted in other kinds</th>",
        );
    }
    h.push_str("</tr>");
    for (d, c) in &summary.detectors {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            esc(d),
            c.evaluations,
            c.drifts,
            c.alerts
        );
        if let Some(s) = summary.truth.as_ref().and_then(|t| t.detectors.get(d)) {
            let delays: Vec<String> = s
                .intervals
                .iter()
                .filter(|i| i.watched)
                .map(|i| i.delay_events.map_or("-".into(), |d| d.to_string()))
                .collect();
            let _ = write!(
                h,
                "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
                s.drift_type.map_or("-", crate::alert::drift_type_name),
                s.detected,
                s.missed,
                s.false_alarms,
                delays.join(", "),
                s.other_kinds_alerted
            );
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    h
}

/// One detector's plots on one key, over the replay's time `span`: its
/// p-values (or statistics) and its statistics, true drift shaded.
fn detector_section(detector: &str, key: &str, es: &[&Evaluation], truth: Option<&Truth>, span: (i64, i64)) -> String {
    let (t0, t1) = span;
    let mut h = String::new();
    let shade: Vec<(i64, i64, String)> = truth
        .map(|t| {
            t.phases
                .iter()
                .filter(|p| p.drift && p.key == *key)
                .map(|p| (p.start_ms, p.end_ms, format!("{} ({})", p.name, p.kind)))
                .collect()
        })
        .unwrap_or_default();
    let has_p = es.iter().any(|e| e.p_value.is_some());
    let main = Plot {
        title: format!("{detector} {key}: {}", if has_p { "p-value" } else { "statistic" }),
        points: es
            .iter()
            .map(|e| {
                (
                    e.window.current_end_ms,
                    if has_p { e.p_value.unwrap_or(1.0) } else { e.statistic },
                    *e,
                )
            })
            .collect(),
        log: has_p,
        threshold: es.iter().find_map(|e| e.threshold),
        shade: shade.clone(),
    };
    let stat = Plot {
        title: format!("{detector} {key}: statistic"),
        points: es.iter().map(|e| (e.window.current_end_ms, e.statistic, *e)).collect(),
        log: false,
        threshold: if has_p {
            None
        } else {
            es.iter().find_map(|e| e.threshold)
        },
        shade,
    };
    let _ = write!(
        h,
        r#"<section class="detector" data-detector="{d}" data-key="{k}"><h2>{d} · key {kk} · {kind}</h2><div>{}</div><div>{}</div></section>"#,
        main.svg(t0, t1),
        stat.svg(t0, t1),
        d = esc(detector),
        k = esc(key),
        kk = if key.is_empty() { "(none)".into() } else { esc(key) },
        kind = esc(&es[0].kind),
    );
    h
}
