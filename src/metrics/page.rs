//! The status page: `page.html` (one self-contained file: inline style, no
//! script, no external resource, a refresh every 5 s) filled in on the
//! server. It shows keyed study ids, job names, states, reason codes,
//! times and config names; never a value read from a DICOM file, nor an
//! inbox path (a sender may put patient names in file names).

use super::routes::LedgerView;
use super::{lock, Metrics};
use std::fmt::Write;

const TEMPLATE: &str = include_str!("page.html");

pub(super) fn render(metrics: &Metrics, view: &LedgerView) -> String {
    let now = crate::ledger::now();
    let minute = Metrics::minute_now();
    let hour = lock(&metrics.live.throughput).last_hour(minute);
    let fields = [
        ("{{version}}", escape(env!("CARGO_PKG_VERSION"))),
        ("{{uptime}}", duration(metrics.started.elapsed().as_secs_f64())),
        ("{{generated}}", utc(now)),
        ("{{banner}}", banner(metrics)),
        ("{{throughput}}", throughput(&hour)),
        (
            "{{jobs}}",
            counts("jobs", view.jobs.iter().map(|(s, n)| (s.as_str(), *n)), view),
        ),
        (
            "{{instances}}",
            counts("instances", view.instances.iter().map(|(s, n)| (s.as_str(), *n)), view),
        ),
        ("{{waiting}}", waiting(view)),
        ("{{studies}}", studies(view)),
        ("{{quarantines}}", quarantines(view)),
        ("{{pipelines}}", pipelines(metrics)),
        ("{{destinations}}", destinations(metrics)),
    ];
    let mut page = TEMPLATE.to_string();
    for (placeholder, value) in fields {
        page = page.replace(placeholder, &value);
    }
    page
}

fn banner(metrics: &Metrics) -> String {
    match lock(&metrics.live.pause).as_ref() {
        Some(pause) => format!(
            r#"<div class="banner paused" id="intake" data-state="paused" data-cause="{cause}">Intake paused since {since}: <code>{cause}</code> — {reason}. Nothing is dropped; synthd retries.</div>"#,
            cause = escape(pause.cause),
            since = utc(pause.since),
            reason = escape(&pause.reason),
        ),
        None => r#"<div class="banner running" id="intake" data-state="running">Intake running</div>"#.to_string(),
    }
}

/// Instances written per minute as bars, oldest left.
fn throughput(hour: &[u64]) -> String {
    let total: u64 = hour.iter().sum();
    let peak = hour.iter().copied().max().unwrap_or(0).max(1);
    let (width, height) = (6 * hour.len(), 60);
    let mut svg = format!(
        r#"<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="instances written per minute">"#
    );
    for (index, n) in hour.iter().enumerate() {
        let h = (*n as f64 / peak as f64 * height as f64).round() as usize;
        let _ = write!(
            svg,
            r#"<rect x="{}" y="{}" width="5" height="{h}"><title>{n}</title></rect>"#,
            index * 6,
            height - h
        );
    }
    svg.push_str("</svg>");
    format!(
        r#"{svg}<div><span id="written-last-hour" data-value="{total}">{total}</span> instances written in the last hour (peak {peak}/min)</div>"#,
        peak = hour.iter().copied().max().unwrap_or(0)
    )
}

fn counts<'a>(id: &str, rows: impl Iterator<Item = (&'a str, u64)>, view: &LedgerView) -> String {
    if let Some(problem) = &view.problem {
        return format!(r#"<p class="empty">ledger not readable: {}</p>"#, escape(problem));
    }
    let mut table = format!(r#"<table id="{id}"><tr><th>state</th><th>count</th></tr>"#);
    for (state, n) in rows {
        let _ = write!(
            table,
            r#"<tr data-state="{state}"><td>{state}</td><td class="n">{n}</td></tr>"#,
            state = escape(state)
        );
    }
    table.push_str("</table>");
    table
}

fn waiting(view: &LedgerView) -> String {
    match &view.oldest_waiting {
        Some((study, age)) => format!(
            r#"<p id="oldest-waiting">oldest waiting study <code>{}</code>: {}</p>"#,
            escape(study),
            duration(*age)
        ),
        None => r#"<p id="oldest-waiting" class="empty">no study waiting</p>"#.to_string(),
    }
}

fn studies(view: &LedgerView) -> String {
    if view.recent_studies.is_empty() {
        return r#"<p id="studies" class="empty">no study yet</p>"#.to_string();
    }
    let mut table =
        r#"<table id="studies"><tr><th>study (keyed id)</th><th>job</th><th>state</th><th>updated (UTC)</th></tr>"#
            .to_string();
    for job in &view.recent_studies {
        let _ = write!(
            table,
            r#"<tr data-study="{study}" data-state="{state}"><td><code>{study}</code></td><td>{job}</td><td>{state}</td><td>{updated}</td></tr>"#,
            study = escape(&job.study_key),
            job = escape(&job.name()),
            state = job.state.as_str(),
            updated = utc(job.updated),
        );
    }
    table.push_str("</table>");
    table
}

fn quarantines(view: &LedgerView) -> String {
    if view.recent_quarantines.is_empty() {
        return r#"<p id="quarantines" class="empty">none</p>"#.to_string();
    }
    let mut table = r#"<table id="quarantines"><tr><th>job</th><th>study (keyed id)</th><th>reason</th><th>state</th><th>when (UTC)</th></tr>"#.to_string();
    for job in &view.recent_quarantines {
        let _ = write!(
            table,
            r#"<tr data-reason="{code}"><td>{job}</td><td><code>{study}</code></td><td><code>{code}</code></td><td>{state}</td><td>{when}</td></tr>"#,
            job = escape(&job.name()),
            study = escape(&job.study_key),
            code = escape(job.reason_code.as_deref().unwrap_or("?")),
            state = job.state.as_str(),
            when = utc(job.updated),
        );
    }
    table.push_str("</table>");
    table
}

fn pipelines(metrics: &Metrics) -> String {
    let pipelines = lock(&metrics.live.pipelines);
    if pipelines.is_empty() {
        return r#"<p id="pipelines" class="empty">none loaded</p>"#.to_string();
    }
    let mut table =
        r#"<table id="pipelines"><tr><th>pipeline</th><th>model</th><th>execution provider</th></tr>"#.to_string();
    for pipeline in pipelines.iter() {
        let _ = write!(
            table,
            r#"<tr data-pipeline="{name}"><td>{name}</td><td>{model}</td><td>{provider}</td></tr>"#,
            name = escape(&pipeline.name),
            model = escape(pipeline.model.as_deref().unwrap_or("— (de-identify only)")),
            provider = escape(&pipeline.provider),
        );
    }
    table.push_str("</table>");
    table
}

fn destinations(metrics: &Metrics) -> String {
    let destinations = lock(&metrics.live.destinations);
    if destinations.is_empty() {
        return r#"<p id="destinations" class="empty">none: outputs stay in the outbox</p>"#.to_string();
    }
    let mut table = r#"<table id="destinations"><tr><th>destination</th><th>address</th></tr>"#.to_string();
    for destination in destinations.iter() {
        let _ = write!(
            table,
            r#"<tr><td>{}</td><td>{}</td></tr>"#,
            escape(&destination.name),
            escape(&destination.address)
        );
    }
    table.push_str("</table>");
    table
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS`.
fn utc(epoch: f64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp(epoch as i64)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "?".to_string())
}

fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_a_value_is_escaped() {
        assert_eq!(escape(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn the_page_is_self_contained() {
        let page = render(super::super::get(), &LedgerView::default());
        assert!(!page.contains("{{"), "a placeholder was left: {page}");
        for external in ["http://", "https://", "<script", "src="] {
            assert!(!page.contains(external), "the page loads {external}");
        }
    }
}
