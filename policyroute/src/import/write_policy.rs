//! The policy file's text: a header listing what is not expressed, then the gateways,
//! rules and attach points in the layout the README uses.
use std::fmt::Write as _;

use super::{Draft, RuleOut};
use crate::policy::ports::PortSet;
use crate::policy::{protocol, Target};

pub fn toml(d: &Draft) -> String {
    let mut out = header(d);
    if let Some(mask) = d.mark_mask {
        let _ = writeln!(out, "mark_mask = {mask:#x}\n");
    }
    for g in &d.gateways {
        let _ = writeln!(out, "[[gateway]]");
        let _ = writeln!(out, "name = {}", quote(&g.name));
        let _ = writeln!(out, "dev = {}", quote(&g.dev));
        if !g.via.is_empty() {
            let via: Vec<String> = g.via.iter().map(|v| quote(&v.to_string())).collect();
            let _ = writeln!(out, "via = [{}]", via.join(", "));
        }
        let table = match g.table.parse::<u32>() {
            Ok(id) => id.to_string(),
            Err(_) => quote(&g.table),
        };
        let _ = writeln!(out, "table = {table}");
        if let Some(mark) = g.mark {
            let _ = writeln!(out, "mark = {mark:#x}");
        }
        if g.sticky {
            out.push_str("sticky = true\n");
        }
        out.push('\n');
    }
    for r in &d.rules {
        out.push_str(&rule(r));
    }
    out.push_str(&attach(d));
    out
}

fn header(d: &Draft) -> String {
    let mut out = format!(
        "# Imported by `policyroute import` from {}.\n",
        d.sources.join(", ")
    );
    if d.notes.is_empty() {
        out.push_str("# Everything in the input is expressed below.\n");
    } else {
        out.push_str("#\n# NOT EXPRESSED in this policy (review before applying):\n");
        for n in &d.notes {
            let _ = writeln!(out, "# - {}", n.to_string().replace('\n', " "));
        }
    }
    for r in &d.remarks {
        let _ = writeln!(out, "#\n# {r}");
    }
    out.push('\n');
    out
}

fn rule(r: &RuleOut) -> String {
    let mut out = format!("[[rule]]\n# {}\nname = {}\n", r.origin, quote(&r.name));
    let m = &r.matcher;
    if let Some(p) = m.proto {
        let _ = writeln!(out, "proto = {}", quote(&protocol::name(p)));
    }
    for (key, net) in [("src", &m.src), ("dst", &m.dst)] {
        if let Some(net) = net {
            let _ = writeln!(out, "{key} = {}", quote(&net.to_string()));
        }
    }
    for (key, ports) in [("sport", &m.sport), ("dport", &m.dport)] {
        if let Some(ports) = ports {
            let _ = writeln!(out, "{key} = {}", port_list(ports));
        }
    }
    if let Some(dscp) = m.dscp {
        let _ = writeln!(out, "dscp = {dscp}");
    }
    let _ = match &r.target {
        Target::Gateway(name) => writeln!(out, "gateway = {}\n", quote(name)),
        Target::Mark(mark) => writeln!(out, "mark = {mark:#x}\n"),
    };
    out
}

fn port_list(ports: &PortSet) -> String {
    let items: Vec<String> = ports
        .ranges()
        .iter()
        .map(|r| {
            if r.lo == r.hi {
                r.lo.to_string()
            } else {
                quote(&r.to_string())
            }
        })
        .collect();
    match items.as_slice() {
        [one] => one.clone(),
        _ => format!("[{}]", items.join(", ")),
    }
}

fn attach(d: &Draft) -> String {
    let a = &d.attach;
    let mut out = "[attach]\n".to_owned();
    if !a.ingress.is_empty() {
        let devs: Vec<String> = a.ingress.iter().map(|dev| quote(dev)).collect();
        let _ = writeln!(out, "ingress = [{}]", devs.join(", "));
    }
    if a.local {
        out.push_str("local = true\n");
    }
    out
}

/// A TOML basic string.
fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
