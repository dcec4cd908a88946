//! `ip route show table all` (and `ip -6 ...`) output: what a gateway needs, its table's
//! default route, and the other routes to tell whether main already has them.
use std::net::IpAddr;

use ipnet::IpNet;

use super::{ImportError, Source};
use crate::policy::matcher::Family;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub origin: (String, usize),
    pub kind: String,
    /// `None`: `default`.
    pub dst: Option<IpNet>,
    pub family: Family,
    /// As printed; `main` when the line names none.
    pub table: String,
    pub dev: Option<String>,
    pub via: Option<IpAddr>,
    /// Has `nexthop` lines: one gateway per table cannot hold it.
    pub multipath: bool,
}

impl Route {
    pub fn is_default(&self) -> bool {
        self.dst.is_none()
    }
}

const TYPES: [&str; 10] = [
    "unicast",
    "local",
    "broadcast",
    "multicast",
    "anycast",
    "blackhole",
    "unreachable",
    "prohibit",
    "throw",
    "nat",
];

pub fn parse(src: &Source) -> Result<Vec<Route>, ImportError> {
    let family = src.family();
    let mut out: Vec<Route> = Vec::new();
    for (n, line) in src.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            match out.last_mut() {
                Some(r) if line.trim_start().starts_with("nexthop") => r.multipath = true,
                _ => {
                    return Err(ImportError::at(
                        &src.label,
                        n,
                        "unexpected continuation line",
                    ))
                }
            }
            continue;
        }
        let route = route(line, family).map_err(|m| ImportError::at(&src.label, n, m))?;
        out.push(Route {
            origin: (src.label.clone(), n),
            ..route
        });
    }
    Ok(out)
}

fn route(line: &str, file_family: Family) -> Result<Route, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (kind, rest) = match words.split_first() {
        Some((k, rest)) if TYPES.contains(k) => (*k, rest),
        _ => ("unicast", &words[..]),
    };
    let Some((dst, keys)) = rest.split_first() else {
        return Err("a route without a destination".to_owned());
    };
    let dst = destination(dst)?;
    let value = |key: &str| {
        let at = keys.iter().position(|w| *w == key)?;
        keys.get(at + 1).copied()
    };
    let via = match value("via") {
        Some("inet" | "inet6") => {
            let at = keys.iter().position(|w| *w == "via").unwrap_or(0);
            keys.get(at + 2).copied()
        }
        v => v,
    };
    let via = via
        .map(|v| {
            v.parse::<IpAddr>()
                .map_err(|_| format!("invalid next hop {v:?}"))
        })
        .transpose()?;
    let family = match (&dst, &via) {
        (Some(net), _) => Family::of_net(net),
        (None, Some(addr)) => Family::of(addr),
        (None, None) => file_family,
    };
    Ok(Route {
        origin: (String::new(), 0),
        kind: kind.to_owned(),
        dst,
        family,
        table: value("table").unwrap_or("main").to_owned(),
        dev: value("dev").map(str::to_owned),
        via,
        multipath: false,
    })
}

fn destination(text: &str) -> Result<Option<IpNet>, String> {
    if text == "default" {
        return Ok(None);
    }
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map(Some)
        .map_err(|_| format!("expected [TYPE] PREFIX ..., found {text:?}"))
}
