//! `charlab report`: one self-contained HTML file about a sweep that a person can mail or attach
//! (no network, no scripts): the sweep's settings, the runs ranked, every run's validation curve
//! on one chart, a parallel-coordinates chart of the swept keys against the metric, the keys'
//! importance, and the best run's config with a text sample from it. Charts are inline SVG drawn
//! with `plotters`.

use crate::compare;
use crate::error::{Error, IoContext, Result};
use crate::importance::{self, Importance};
use crate::run_dir::{Checkpoint, Metric, RunDir};
use crate::runs::{self, Group, Row};
use crate::sample::{SampleOptions, Sampling};
use crate::sweep::manifest::Manifest;
use crate::sweep::pbt;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// What a written report holds (for the command's summary line and the tests).
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub runs: usize,
    pub charts: usize,
    pub best: Option<String>,
    /// Files it could not read (see [`runs::collect`]).
    pub warnings: Vec<String>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

type Chart = std::result::Result<String, String>;
type Canvas<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type Drawn = std::result::Result<(), Box<dyn std::error::Error>>;

/// Runs `draw` on an SVG canvas of `size` and returns the SVG text.
fn svg(size: (u32, u32), draw: impl FnOnce(&Canvas) -> Drawn) -> Chart {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Axes against each other on `root`, captioned, with room for their labels: the frame of the
/// line charts.
fn frame<'a, 'b>(
    root: &'a Canvas<'b>,
    caption: &str,
    (xs, ys): (std::ops::Range<f64>, std::ops::Range<f64>),
) -> std::result::Result<
    ChartContext<
        'a,
        SVGBackend<'b>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    Box<dyn std::error::Error>,
> {
    Ok(ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(xs, ys)?)
}

/// A color for rank `i` of `n` (best blue → worst red).
fn ramp(i: usize, n: usize) -> RGBColor {
    let t = if n > 1 {
        i as f64 / (n - 1) as f64
    } else {
        0.0
    };
    let lerp = |a: f64, b: f64| (a + (b - a) * t) as u8;
    RGBColor(lerp(31.0, 214.0), lerp(119.0, 39.0), lerp(180.0, 40.0))
}

/// Every run's validation loss against its step, best run thickest (rows sorted best first).
fn curves_chart(rows: &[Row]) -> Chart {
    let points: Vec<Vec<(f64, f64)>> = rows
        .iter()
        .map(|r| {
            r.record
                .evals
                .iter()
                .map(|e| (e.step as f64, e.val_loss))
                .collect()
        })
        .collect();
    let all = points.iter().flatten();
    let max_x = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = all
        .filter(|p| p.1.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    if !lo.is_finite() {
        return Err("no run has an evaluation yet".into());
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    // Worst first, so that the best run is drawn last, on top.
    let series = rows
        .iter()
        .zip(&points)
        .enumerate()
        .rev()
        .map(|(i, (r, pts))| Series {
            label: r.run.clone(),
            points: pts.clone(),
            color: ramp(i, rows.len()),
            width: if i == 0 { 3 } else { 1 },
        })
        .collect();
    line_chart(
        ("validation loss of every run", crate::tags::VAL_LOSS),
        (max_x, (lo - pad, hi + pad)),
        series,
    )
}

/// The sweep's two objectives, every completed run a dot (its cost across, its metric up), the
/// Pareto front ringed and joined by a step line: the trade-off a researcher picks from.
fn pareto_chart(rows: &[Row], (a, b): (Metric, Metric)) -> Chart {
    let shown = |m: Metric, v: f64| if m == Metric::ValAccuracy { -v } else { v };
    let dots: Vec<(f64, f64, bool, &str)> = (rows.iter())
        .filter_map(|r| {
            let (y, x) = (r.metric(a)?, r.metric(b)?);
            let on = r.pareto?;
            (x.is_finite() && y.is_finite()).then(|| (x, shown(a, y), on, r.run.as_str()))
        })
        .collect();
    if dots.is_empty() {
        return Err("no completed run has both objectives yet".into());
    }
    let span = |f: fn(&(f64, f64, bool, &str)) -> f64| {
        let (lo, hi) =
            (dots.iter().map(f)).fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(v), h.max(v)));
        let pad = ((hi - lo) * 0.08).max(1e-3 * (1.0 + hi.abs()));
        (lo - pad)..(hi + pad)
    };
    let (mut xs, ys) = (span(|d| d.0), span(|d| d.1));
    // Room on the right for the front's labels.
    xs.end += 0.35 * (xs.end - xs.start);
    let mut front: Vec<(f64, f64)> = (dots.iter().filter(|d| d.2)).map(|d| (d.0, d.1)).collect();
    front.sort_by(|p, q| p.0.total_cmp(&q.0));
    let steps: Vec<(f64, f64)> = (front.windows(2))
        .flat_map(|w| [w[0], (w[1].0, w[0].1)])
        .chain(front.last().copied())
        .collect();
    let caption = format!("{} against {}: the Pareto front", a.name(), b.name());
    svg((900, 420), |root| {
        let mut chart = frame(root, &caption, (xs, ys))?;
        let x_desc = if b == Metric::Time {
            "time (s)"
        } else {
            b.name()
        };
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(a.name())
            .x_label_formatter(&|x| fmt_num(*x))
            .draw()?;
        chart.draw_series(LineSeries::new(
            steps,
            RGBColor(214, 39, 40).stroke_width(2),
        ))?;
        let grey = RGBColor(150, 150, 150);
        chart.draw_series(dots.iter().map(|d| {
            let style = if d.2 {
                RGBColor(214, 39, 40).filled()
            } else {
                grey.filled()
            };
            Circle::new((d.0, d.1), if d.2 { 5 } else { 3 }, style)
        }))?;
        // The front's runs by name, so a reader can find them in the table.
        chart.draw_series(dots.iter().filter(|d| d.2).map(|d| {
            let name: String = d.3.chars().take(28).collect();
            Text::new(format!("  {name}"), (d.0, d.1), ("sans-serif", 12))
        }))?;
        Ok(())
    })
}

/// One line of a [`line_chart`].
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    width: u32,
}

/// Lines against the step, drawn in the order given, with a legend for up to 12 of them.
fn line_chart(
    (caption, y_desc): (&str, &str),
    (max_x, (y_lo, y_hi)): (f64, (f64, f64)),
    series: Vec<Series>,
) -> Chart {
    svg((900, 420), |root| {
        let mut chart = frame(root, caption, (0f64..max_x, y_lo..y_hi))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(y_desc)
            .draw()?;
        let n = series.len();
        for s in series {
            let color = s.color;
            chart
                .draw_series(LineSeries::new(s.points, color.stroke_width(s.width)))?
                .label(s.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        if n <= 12 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        Ok(())
    })
}

/// Where a value sits on an axis, in [0, 1].
type Place = Box<dyn Fn(&str) -> Option<f64>>;

/// How a parallel-coordinates axis places a key's values on [0, 1].
struct Axis {
    name: String,
    /// (position, label) ticks.
    ticks: Vec<(f64, String)>,
    place: Place,
}

fn axis(name: &str, values: &[String]) -> Axis {
    let nums: Option<Vec<f64>> = values.iter().map(|v| v.parse::<f64>().ok()).collect();
    match nums.filter(|xs| !xs.is_empty()) {
        Some(xs) => {
            let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let log = lo > 0.0 && hi / lo >= 100.0;
            let t = move |x: f64| if log { x.log10() } else { x };
            let (a, b) = (t(lo), t(hi));
            let place = move |v: &str| {
                let x = t(v.parse::<f64>().ok()?);
                Some(if b > a { (x - a) / (b - a) } else { 0.5 })
            };
            let ticks = vec![
                (place(&lo.to_string()).unwrap_or(0.0), fmt_num(lo)),
                (place(&hi.to_string()).unwrap_or(1.0), fmt_num(hi)),
            ];
            Axis {
                name: name.into(),
                ticks,
                place: Box::new(place),
            }
        }
        None => {
            let mut cats: Vec<String> = values.to_vec();
            cats.sort();
            cats.dedup();
            let n = cats.len();
            let pos = move |i: usize| {
                if n > 1 {
                    i as f64 / (n - 1) as f64
                } else {
                    0.5
                }
            };
            let ticks = cats
                .iter()
                .enumerate()
                .map(|(i, c)| (pos(i), c.clone()))
                .collect();
            let place = move |v: &str| cats.iter().position(|c| c == v).map(pos);
            Axis {
                name: name.into(),
                ticks,
                place: Box::new(place),
            }
        }
    }
}

fn fmt_num(x: f64) -> String {
    if x.abs() >= 1e5 && x.abs() < 1e9 {
        // Sizes: 796k, 1.49M.
        let (v, unit) = if x.abs() >= 1e6 {
            (x / 1e6, "M")
        } else {
            (x / 1e3, "k")
        };
        format!("{}{unit}", (v * 100.0).round() / 100.0)
    } else if x != 0.0 && (x.abs() < 1e-3 || x.abs() >= 1e5) {
        format!("{x:.1e}")
    } else {
        format!("{}", (x * 1e4).round() / 1e4)
    }
}

/// A population-based sweep's schedules: its first explored key (lr when explored) against the
/// step, one step line per member; a jump is a copy with its explore (the lineage is in the
/// runs table).
fn schedules_chart(m: &Manifest) -> Chart {
    let key = m
        .pbt
        .as_ref()
        .and_then(|p| {
            p.explored
                .iter()
                .find(|k| *k == "lr")
                .or(p.explored.first())
        })
        .cloned()
        .ok_or("no explored key")?;
    let lines: Vec<(String, Vec<(f64, f64)>)> = (0..m.trials.len())
        .map(|i| {
            let mut pts: Vec<(f64, f64)> = Vec::new();
            for (step, values) in pbt::schedule(m, i) {
                let Some((_, v)) = values.iter().find(|(k, _)| *k == key) else {
                    continue;
                };
                if let Some(&(_, prev)) = pts.last() {
                    pts.push((step as f64, prev));
                }
                pts.push((step as f64, v.log10()));
            }
            (m.trials[i].dir.clone(), pts)
        })
        .collect();
    let all = lines.iter().flat_map(|(_, p)| p.iter());
    // The last piece runs an interval (or more) past the last decision.
    let interval = m.pbt.as_ref().map_or(1, |p| p.interval) as f64;
    let max_x = all.clone().map(|p| p.0).fold(1.0, f64::max) + interval;
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.1), b.max(p.1))
    });
    if !lo.is_finite() {
        return Err("no member has a schedule yet".into());
    }
    let pad = ((hi - lo) * 0.05).max(0.05);
    let n = lines.len();
    let series = lines
        .into_iter()
        .enumerate()
        .map(|(i, (label, mut points))| {
            if let Some(&(_, last)) = points.last() {
                points.push((max_x, last));
            }
            Series {
                label,
                points,
                color: ramp(i, n),
                width: 2,
            }
        })
        .collect();
    line_chart(
        (
            &format!("log10({key}) of every member by step"),
            &format!("log10 {key}"),
        ),
        (max_x, (lo - pad, hi + pad)),
        series,
    )
}

/// One polyline per finished run through an axis per swept key and one for the metric,
/// colored by the run's rank (rows sorted best first).
fn parallel_chart(rows: &[Row], keys: &[String], metric: Metric) -> Chart {
    let finished: Vec<&Row> = rows.iter().filter(|r| r.metric(metric).is_some()).collect();
    if finished.is_empty() || keys.is_empty() {
        return Err("no finished run with swept values yet".into());
    }
    let value = |r: &Row, k: &str| r.value(k).map(String::from);
    let mut axes: Vec<Axis> = keys
        .iter()
        .map(|k| {
            let vals: Vec<String> = finished.iter().filter_map(|r| value(r, k)).collect();
            axis(k, &vals)
        })
        .collect();
    let metric_vals: Vec<String> = finished
        .iter()
        .filter_map(|r| r.metric(metric).map(|m| m.to_string()))
        .collect();
    axes.push(axis(&format!("best {}", metric.name()), &metric_vals));
    let n_axes = axes.len();
    svg((900, 420), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "swept keys → metric (one line per run, best blue)",
                ("sans-serif", 18),
            )
            .margin(30)
            .build_cartesian_2d(-0.1f64..(n_axes as f64 - 0.9), -0.08f64..1.08f64)?;
        for (i, r) in finished.iter().enumerate().rev() {
            let pts: Vec<(f64, f64)> = axes
                .iter()
                .enumerate()
                .filter_map(|(j, a)| {
                    let v = if j + 1 == n_axes {
                        r.metric(metric).map(|m| m.to_string())
                    } else {
                        value(r, &a.name)
                    };
                    Some((j as f64, (a.place)(&v?)?))
                })
                .collect();
            let color = ramp(i, finished.len());
            chart.draw_series(LineSeries::new(
                pts,
                color.stroke_width(if i == 0 { 3 } else { 1 }),
            ))?;
        }
        for (j, a) in axes.iter().enumerate() {
            let x = j as f64;
            chart.draw_series(LineSeries::new(
                vec![(x, 0.0), (x, 1.0)],
                BLACK.stroke_width(1),
            ))?;
            chart.draw_series(std::iter::once(Text::new(
                a.name.clone(),
                (x - 0.05, 1.07),
                ("sans-serif", 14),
            )))?;
            for (p, label) in &a.ticks {
                chart.draw_series(std::iter::once(Text::new(
                    label.clone(),
                    (x + 0.02, *p),
                    ("sans-serif", 11),
                )))?;
            }
        }
        Ok(())
    })
}

/// The keys' importance as horizontal bars (or the reason there is none).
fn importance_chart(imp: &Importance, metric: Metric) -> Chart {
    let metric = metric.name();
    let Importance::Ranked { keys, observations } = imp else {
        return Err(match imp {
            Importance::TooFew { observations, needed } => format!(
                "too few finished trials to estimate importance ({observations}; at least {needed} needed)"
            ),
            _ => "no swept key varies across the finished runs".into(),
        });
    };
    let n = keys.len();
    svg((900, 60 + 34 * n as u32), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("importance of best {metric} ({observations} configurations)"),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(30)
            .build_cartesian_2d(-0.3f64..1.15f64, 0f64..n as f64)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .disable_y_axis()
            .x_desc("share of variance")
            .draw()?;
        let name_style = ("sans-serif", 14).into_font().into_text_style(root).pos(
            plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Right,
                plotters::style::text_anchor::VPos::Center,
            ),
        );
        for (i, k) in keys.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(0.0, y + 0.15), (k.importance.max(0.002), y + 0.85)],
                RGBColor(31, 119, 180).filled(),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                k.key.clone(),
                (-0.02, y + 0.5),
                name_style.clone(),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("{:.2}", k.importance),
                (k.importance.max(0.002) + 0.01, y + 0.62),
                ("sans-serif", 13),
            )))?;
        }
        Ok(())
    })
}

/// A table; with `best_first` its first row is marked as the best run.
fn html_table(headers: &[String], lines: &[Vec<String>], best_first: bool) -> String {
    let mut t = String::from("<table><thead><tr>");
    for h in headers {
        t.push_str(&format!("<th>{}</th>", esc(h)));
    }
    t.push_str("</tr></thead><tbody>");
    for (i, l) in lines.iter().enumerate() {
        t.push_str(if i == 0 && best_first {
            "<tr class=\"best\">"
        } else {
            "<tr>"
        });
        for c in l {
            t.push_str(&format!("<td>{}</td>", esc(c)));
        }
        t.push_str("</tr>");
    }
    t.push_str("</tbody></table>");
    t
}

/// A chart's figure, or a note saying why it is missing.
fn figure(id: &str, chart: &Chart) -> String {
    match chart {
        Ok(svg) => format!("<figure id=\"{id}\" class=\"chart\">{svg}</figure>"),
        Err(why) => format!("<p id=\"{id}\" class=\"note\">No chart: {}.</p>", esc(why)),
    }
}

/// A sample of the best run's text, from its best checkpoint.
fn best_sample(run: &Path) -> std::result::Result<String, String> {
    let vocab = RunDir::new(run).load_vocab().map_err(|e| e.to_string())?;
    let prime = if vocab.encode("\n").is_ok() {
        "\n".to_string()
    } else {
        vocab.decode(&[0])
    };
    let opts = SampleOptions {
        checkpoint: Checkpoint::Best,
        prime,
        length: 400,
        sampling: Sampling {
            temperature: 0.8,
            top_k: None,
            argmax: false,
        },
        seed: 1,
    };
    crate::sample::sample(run, &opts).map_err(|e| e.to_string())
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}\
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}\
tr.best td{background:#e8f1fb;font-weight:600}pre{background:#f6f6f6;padding:.8em;overflow:auto;white-space:pre-wrap}\
.note{color:#a33}figure.chart{margin:1em 0}";

/// `charlab report DIR -o FILE`: writes the report of the runs under `dir` to `out`.
pub fn report(dir: &Path, out: &Path) -> Result<Written> {
    let runs::Runs {
        mut rows,
        groups,
        warnings,
        manifest,
    } = runs::collect(dir)?;
    if rows.is_empty() {
        return Err(Error::usage(dir, "holds no runs to report on"));
    }
    let metric = Metric::ValLoss;
    runs::sort_by_metric(&mut rows, metric);
    let keys: Vec<String> = rows[0].hparams.iter().map(|(k, _)| k.clone()).collect();
    let imp = importance::of_runs(&rows, metric);
    let mut charts = vec![
        ("curves", curves_chart(&rows)),
        ("parallel", parallel_chart(&rows, &keys, metric)),
        ("importance", importance_chart(&imp, metric)),
    ];
    if let Some(m) = &manifest {
        if m.pbt.is_some() {
            charts.push(("schedules", schedules_chart(m)));
        }
        if let Some(pair) = runs::objectives(m) {
            charts.push(("pareto", pareto_chart(&rows, pair)));
        }
    }
    let name = runs::base_name(dir);
    let settings = std::fs::read_to_string(crate::sweep::manifest::sweep_file(dir)).ok();
    let best = rows.iter().find(|r| r.metric(metric).is_some());
    let mut html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>charlab report: {}</title>\
         <style>{STYLE}</style></head><body><h1>charlab report: {}</h1><p>{} runs under <code>{}</code>, \
         generated {} by charlab {}.</p>",
        esc(&name),
        esc(&name),
        rows.len(),
        esc(&dir.display().to_string()),
        crate::run_dir::now(),
        env!("CARGO_PKG_VERSION")
    );
    for note in manifest.iter().flat_map(compare::sweep_notes) {
        html.push_str(&format!("<p class=\"note\">{}</p>", esc(&note)));
    }
    html.push_str(&sections(
        &rows,
        &groups,
        &charts,
        settings.as_deref(),
        best,
    )?);
    html.push_str("</body></html>\n");
    crate::atomic::write(out, html.as_bytes())?;
    Ok(Written {
        path: out.to_path_buf(),
        runs: rows.len(),
        charts: charts.iter().filter(|(_, c)| c.is_ok()).count(),
        best: best.map(|r| r.run.clone()),
        warnings,
    })
}

/// The report's body, section by section.
fn sections(
    rows: &[Row],
    groups: &[Group],
    charts: &[(&str, Chart)],
    settings: Option<&str>,
    best: Option<&Row>,
) -> Result<String> {
    let mut h = String::new();
    if let Some(text) = settings {
        h.push_str(&format!("<h2>Sweep settings</h2><pre>{}</pre>", esc(text)));
    }
    let (headers, lines) = compare::run_cells(rows);
    h.push_str("<h2>Runs, best first (by best val/loss)</h2>");
    h.push_str(&html_table(&headers, &lines, true));
    let (spent, stops) = crate::runs::budget(rows);
    if !spent.is_empty() {
        let (headers, lines) = compare::budget_cells(&spent);
        h.push_str("<h2>How the sweep spent its budget</h2>");
        h.push_str(&html_table(&headers, &lines, false));
        if let Some(line) = compare::pruned_line(&stops) {
            h.push_str(&format!("<p>{}</p>", esc(&line)));
        }
    }
    if !groups.is_empty() {
        h.push_str(&format!(
            "<p>{} seed groups (see <code>charlab compare</code>).</p>",
            groups.len()
        ));
    }
    for (id, chart) in charts {
        let title = match *id {
            "curves" => "Validation curves",
            "parallel" => "Swept keys against the metric",
            "schedules" => "Population-based training: each member's schedule",
            "pareto" => "Two objectives: the Pareto front",
            _ => "Which keys matter",
        };
        h.push_str(&format!("<h2>{title}</h2>{}", figure(id, chart)));
    }
    if let Some(b) = best {
        let config = std::fs::read_to_string(RunDir::new(&b.path).config_path())
            .at(RunDir::new(&b.path).config_path())?;
        h.push_str(&format!(
            "<h2>Best run: {}</h2><h3>config.toml</h3><pre>{}</pre>",
            esc(&b.run),
            esc(&config)
        ));
        match best_sample(&b.path) {
            Ok(text) => h.push_str(&format!(
                "<h3>Sample (best checkpoint, temperature 0.8)</h3><pre id=\"sample\">{}</pre>",
                esc(&text)
            )),
            Err(e) => h.push_str(&format!("<p class=\"note\">No sample: {}</p>", esc(&e))),
        }
    }
    Ok(h)
}
