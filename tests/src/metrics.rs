//! Scraping `policyroute run --metrics` from inside its namespace.
use std::{
    io::{Read, Write},
    net::TcpStream,
};

use crate::netns::NetNs;

/// GET /metrics from inside `ns`, at 127.0.0.1:`port`: the body.
pub fn scrape(ns: &NetNs, port: u16) -> String {
    let _in = ns.enter();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_string()
}

/// The value of the sample `name` (with its labels, as exposed) in Prometheus text, every
/// line of which must parse; None if there is no such sample.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("SERIES VALUE");
        let value: f64 = value.parse().expect("a number");
        let metric = series.split('{').next().unwrap();
        assert!(
            metric
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        if series == name {
            found = Some(value);
        }
    }
    found
}

/// The value of the series of `metric` whose labels are exactly `labels`, in whatever order
/// the exposition writes them; None if there is none.
pub fn sample_with(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    want.sort();
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, rest) = series.split_once('{')?;
            let mut have: Vec<String> = rest
                .strip_suffix('}')?
                .split(',')
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            have.sort();
            (name == metric && have == want).then(|| value.parse().expect("a number"))
        })
}
