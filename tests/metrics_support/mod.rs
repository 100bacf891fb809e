//! Helpers for the metrics tests: a layout with `[metrics]` on a free
//! loopback port, plain HTTP/1.1 requests over a TcpStream, and reading
//! samples out of the Prometheus text format.
#![allow(dead_code)]

use crate::daemon_support::Layout;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// A layout (short durations) whose daemon serves metrics on a free loopback port.
pub fn metrics_layout() -> (Layout, u16) {
    metrics_layout_with(&[])
}

/// [`metrics_layout`] with `Layout::with`'s replacements.
pub fn metrics_layout_with(replacements: &[(&str, &str)]) -> (Layout, u16) {
    let layout = Layout::with(replacements);
    let port = free_port();
    let mut text = std::fs::read_to_string(&layout.config).unwrap();
    text.push_str(&format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    std::fs::write(&layout.config, text).unwrap();
    (layout, port)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// One request; None when the connection failed.
pub fn request(port: u16, method: &str, path: &str) -> Option<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

pub fn get(port: u16, path: &str) -> Option<Reply> {
    request(port, "GET", path)
}

/// `/metrics` as `series -> value`, e.g. `synthd_instances_total{state="written"}`.
pub fn scrape(port: u16) -> BTreeMap<String, f64> {
    let reply = get(port, "/metrics").expect("/metrics answers");
    assert_eq!(reply.status, 200, "{}", reply.body);
    samples(&reply.body)
}

pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// A sample's value; 0 when absent (a labelled counter not yet seen).
pub fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

/// How much a sample grew between two scrapes.
pub fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, series: &str) -> f64 {
    value(after, series) - value(before, series)
}

/// The daemon's resident memory in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}
