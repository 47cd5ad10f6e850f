//! Charts as SVG, drawn on the server from data the gateway already has.
//!
//! Pure functions from rows to markup: no script, no chart library, nothing
//! to load. Text in them (task names, tooltips) goes through maud, so it is
//! escaped like everything else. Colours come from CSS classes
//! (`style.css`), since the policy allows no inline styles.

use chrono::{DateTime, Utc};
use maud::{html, Markup};

use crate::db::ui::FunctionHour;

const WIDTH: f64 = 960.0;
const LABEL_W: f64 = 220.0;
const ROW_H: f64 = 22.0;
const AXIS_H: f64 = 24.0;

/// One bar of a Gantt chart: a dispatch's queued and running spans.
pub struct GanttBar {
    pub href: String,
    pub label: String,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The Gantt chart of `bars` (top to bottom), with `now` as the end of
/// anything unfinished. Queued time is drawn apart from running time.
pub fn gantt(bars: &[GanttBar], now: DateTime<Utc>) -> Markup {
    let Some(t0) = bars.iter().map(|b| b.created_at).min() else {
        return html! { p.empty { "No dispatches to draw." } };
    };
    let t1 = bars.iter().map(|b| b.finished_at.unwrap_or(now)).max().unwrap_or(now).max(t0);
    let span_ms = ((t1 - t0).num_milliseconds() as f64).max(1.0);
    let plot_w = WIDTH - LABEL_W - 10.0;
    let x = |at: DateTime<Utc>| LABEL_W + ((at - t0).num_milliseconds() as f64).clamp(0.0, span_ms) / span_ms * plot_w;
    let height = AXIS_H + ROW_H * bars.len() as f64 + 4.0;
    html! {
        svg.chart.gantt xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {WIDTH} {height}"))
            width=(WIDTH) height=(height) role="img" aria-label="Gantt chart of the run's dispatches" {
            @for (i, tick) in ticks(span_ms).iter().enumerate() {
                @let tx = LABEL_W + tick / span_ms * plot_w;
                line.grid x1=(tx) x2=(tx) y1=(AXIS_H - 6.0) y2=(height) {}
                text.axis x=(tx) y=(AXIS_H - 10.0) text-anchor=(if i == 0 { "start" } else { "middle" }) {
                    "+" (short_duration(*tick))
                }
            }
            @for (i, bar) in bars.iter().enumerate() {
                @let y = AXIS_H + ROW_H * i as f64;
                @let end = bar.finished_at.unwrap_or(now);
                @let queued_end = bar.started_at.unwrap_or(end);
                a href=(bar.href) {
                    text.row-label x="4" y=(y + ROW_H * 0.7) { (truncate(&bar.label, 30)) }
                    rect.queued x=(x(bar.created_at)) y=(y + 4.0) width=((x(queued_end) - x(bar.created_at)).max(1.0))
                        height=(ROW_H - 8.0) {
                        title { (bar.label) " queued " (short_duration((queued_end - bar.created_at).num_milliseconds() as f64)) }
                    }
                    @if let Some(started) = bar.started_at {
                        rect class=(format!("st-{}", bar.state)) x=(x(started)) y=(y + 2.0)
                            width=((x(end) - x(started)).max(2.0)) height=(ROW_H - 4.0) {
                            title { (bar.label) " " (bar.state) " after running " (short_duration((end - started).num_milliseconds() as f64)) }
                        }
                    }
                }
            }
        }
    }
}

/// A function's running time per hour (p50 and p95), as lines.
pub fn durations(hours: &[FunctionHour]) -> Markup {
    let points: Vec<_> = hours.iter().filter_map(|h| Some((h.hour, h.p50_ms?, h.p95_ms?))).collect();
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return html! { p.empty { "No finished calls in the last week." } };
    };
    let max = points.iter().map(|p| p.2).fold(1.0_f64, f64::max);
    let (height, plot_h) = (240.0, 200.0);
    let span = ((last.0 - first.0).num_seconds() as f64).max(3600.0);
    let x = |at: DateTime<Utc>| 60.0 + (at - first.0).num_seconds() as f64 / span * (WIDTH - 80.0);
    let y = |ms: f64| 10.0 + plot_h - ms / max * plot_h;
    let line = |pick: fn(&(DateTime<Utc>, f64, f64)) -> f64| {
        points.iter().map(|p| format!("{:.1},{:.1}", x(p.0), y(pick(p)))).collect::<Vec<_>>().join(" ")
    };
    html! {
        svg.chart.durations xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {WIDTH} {height}"))
            width=(WIDTH) height=(height) role="img" aria-label="Running time per hour, p50 and p95" {
            @for frac in [0.0, 0.5, 1.0] {
                line.grid x1="60" x2=(WIDTH - 20.0) y1=(y(max * frac)) y2=(y(max * frac)) {}
                text.axis x="56" y=(y(max * frac) + 4.0) text-anchor="end" { (short_duration(max * frac)) }
            }
            text.axis x="60" y=(height - 8.0) { (first.0.format("%b %d %H:00")) }
            text.axis x=(WIDTH - 20.0) y=(height - 8.0) text-anchor="end" { (last.0.format("%b %d %H:00")) }
            polyline.p95 points=(line(|p| p.2)) {}
            polyline.p50 points=(line(|p| p.1)) {}
            @for p in &points {
                circle.p50 cx=(x(p.0)) cy=(y(p.1)) r="3" { title { (p.0.format("%b %d %H:00")) ": p50 " (short_duration(p.1)) ", p95 " (short_duration(p.2)) } }
            }
        }
    }
}

/// A function's outcomes per hour, as stacked bars.
pub fn outcomes(hours: &[FunctionHour]) -> Markup {
    let (Some(first), Some(last)) = (hours.first(), hours.last()) else {
        return html! { p.empty { "No finished calls in the last week." } };
    };
    let slots = ((last.hour - first.hour).num_hours() + 1).max(1) as f64;
    let max = hours.iter().map(|h| h.succeeded + h.failed + h.cancelled + h.timed_out).max().unwrap_or(1).max(1) as f64;
    let (height, plot_h) = (220.0, 180.0);
    let bar_w = ((WIDTH - 80.0) / slots).clamp(2.0, 40.0);
    html! {
        svg.chart.outcomes xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {WIDTH} {height}"))
            width=(WIDTH) height=(height) role="img" aria-label="Outcomes per hour" {
            text.axis x="56" y="14" text-anchor="end" { (max) }
            text.axis x="56" y=(10.0 + plot_h) text-anchor="end" { "0" }
            text.axis x="60" y=(height - 8.0) { (first.hour.format("%b %d %H:00")) }
            text.axis x=(WIDTH - 20.0) y=(height - 8.0) text-anchor="end" { (last.hour.format("%b %d %H:00")) }
            @for hour in hours {
                @let bx = 60.0 + (hour.hour - first.hour).num_hours() as f64 / slots * (WIDTH - 80.0);
                @for (class, count, top, h) in stack(hour, max, plot_h) {
                    rect class=(class) x=(bx) y=(top) width=(bar_w - 1.0) height=(h) {
                        title { (hour.hour.format("%b %d %H:00")) ": " (count) " " (class.trim_start_matches("st-")) }
                    }
                }
            }
        }
    }
}

/// One hour's outcome segments, bottom up: (class, count, top y, height).
fn stack(hour: &FunctionHour, max: f64, plot_h: f64) -> Vec<(&'static str, i64, f64, f64)> {
    let mut top = 10.0 + plot_h;
    let counts = [
        ("st-succeeded", hour.succeeded),
        ("st-failed", hour.failed),
        ("st-cancelled", hour.cancelled),
        ("st-timed_out", hour.timed_out),
    ];
    counts
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(class, count)| {
            let h = count as f64 / max * plot_h;
            top -= h;
            (class, count, top, h)
        })
        .collect()
}

/// About five round tick positions (ms) across a span.
fn ticks(span_ms: f64) -> Vec<f64> {
    let steps = [
        100.0, 250.0, 500.0, 1e3, 2e3, 5e3, 1e4, 15e3, 3e4, 6e4, 12e4, 3e5, 6e5, 18e5, 36e5, 72e5, 216e5, 432e5, 864e5,
    ];
    let step = steps.iter().copied().find(|s| span_ms / s <= 6.0).unwrap_or(span_ms / 5.0);
    (0..).map(|i| i as f64 * step).take_while(|t| *t <= span_ms).collect()
}

/// `850ms`, `12.5s`, `3m 20s`, `2h 5m`.
pub fn short_duration(ms: f64) -> String {
    let ms = ms.max(0.0);
    if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else if ms < 60_000.0 {
        format!("{:.1}s", ms / 1000.0)
    } else if ms < 3_600_000.0 {
        format!("{}m {}s", (ms / 60_000.0) as u64, ((ms % 60_000.0) / 1000.0) as u64)
    } else {
        format!("{}h {}m", (ms / 3_600_000.0) as u64, ((ms % 3_600_000.0) / 60_000.0) as u64)
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn gantt_draws_queued_and_running_apart_and_escapes_labels() {
        let bars = [
            GanttBar {
                href: "/ui/runs/a".into(),
                label: "<script>alert(1)</script>".into(),
                state: "succeeded".into(),
                created_at: at(0),
                started_at: Some(at(10)),
                finished_at: Some(at(20)),
            },
            GanttBar {
                href: "/ui/runs/b".into(),
                label: "queued".into(),
                state: "queued".into(),
                created_at: at(10),
                started_at: None,
                finished_at: None,
            },
        ];
        let svg = gantt(&bars, at(40)).into_string();
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"));
        // The first bar: queued 0..10 s then running 10..20 s of a 40 s axis.
        let plot_w = WIDTH - LABEL_W - 10.0;
        assert!(
            svg.contains(&format!("class=\"queued\" x=\"{LABEL_W}\" y=\"28\" width=\"{}\"", plot_w / 4.0)),
            "{svg}"
        );
        assert!(svg.contains("class=\"st-succeeded\""));
        // The second never started: only a queued bar, up to now.
        assert_eq!(svg.matches("class=\"queued\"").count(), 2);
        assert_eq!(svg.matches("class=\"st-").count(), 1);
    }

    #[test]
    fn charts_of_nothing_say_so() {
        assert!(gantt(&[], at(0)).into_string().contains("No dispatches"));
        assert!(durations(&[]).into_string().contains("No finished calls"));
        assert!(outcomes(&[]).into_string().contains("No finished calls"));
    }

    #[test]
    fn outcome_bars_stack_to_the_hours_total() {
        let hour = |h: i64, succeeded, failed| FunctionHour {
            hour: at(h * 3600),
            succeeded,
            failed,
            cancelled: 0,
            timed_out: 0,
            p50_ms: Some(100.0),
            p95_ms: Some(300.0),
        };
        let svg = outcomes(&[hour(0, 3, 1), hour(2, 4, 0)]).into_string();
        assert_eq!(svg.matches("class=\"st-succeeded\"").count(), 2);
        assert_eq!(svg.matches("class=\"st-failed\"").count(), 1);
        assert!(durations(&[hour(0, 1, 0), hour(1, 1, 0)]).into_string().contains("polyline"));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(short_duration(850.0), "850ms");
        assert_eq!(short_duration(12_500.0), "12.5s");
        assert_eq!(short_duration(200_000.0), "3m 20s");
        assert_eq!(ticks(40_000.0), vec![0.0, 1e4, 2e4, 3e4, 4e4]);
    }
}
