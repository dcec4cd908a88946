//! `[attach]` from the chains the rules came from: PREROUTING rules classify what devices
//! receive (`ingress`), OUTPUT rules the host's own sockets (`local`); `from` ip rules
//! classify what arrives from their source. A policy's rules apply at every hook it
//! attaches, so narrower iptables rules are noted.
use super::ip_route::Route;
use super::iptables_save::Hook;
use super::order::Placed;
use super::Note;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct AttachOut {
    pub ingress: Vec<String>,
    pub local: bool,
}

/// Where the traffic of a rule that no chain holds arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arrives {
    On(Vec<String>),
    Anywhere,
}

/// Whether the rules classify the host's own traffic: OUTPUT has some.
pub fn local(rules: &[Placed]) -> bool {
    rules.iter().any(|r| r.rule.hook == Hook::Local)
}

/// `arrives`: the traffic of the rules that are not from a chain (the `from` ip rules).
pub fn attach(rules: &[Placed], arrives: &[Arrives], routes: &[Route]) -> (AttachOut, Vec<Note>) {
    let forwarded: Vec<&Placed> = rules
        .iter()
        .filter(|r| r.rule.hook == Hook::Forwarded)
        .collect();
    let local = local(rules);
    let any_device =
        forwarded.iter().any(|r| r.rule.iif.is_none()) || arrives.contains(&Arrives::Anywhere);
    let ingress = if any_device {
        devices(routes)
    } else {
        let from = arrives.iter().flat_map(|a| match a {
            Arrives::On(devs) => devs.clone(),
            Arrives::Anywhere => Vec::new(),
        });
        unique(
            forwarded
                .iter()
                .filter_map(|r| r.rule.iif.clone())
                .chain(from),
        )
    };
    let mut notes = Vec::new();
    for r in rules {
        let at = |text: String| Note::at(&r.file, r.rule.line, text);
        let in_both_chains = rules.iter().any(|o| same_in_other_chain(r, o));
        match (&r.rule.hook, &r.rule.iif) {
            _ if in_both_chains => {}
            (Hook::Forwarded, Some(dev)) if ingress.len() > 1 => notes.push(at(format!(
                "-i {dev}: a policy rule matches on every attach.ingress device ({}), not \
                 only on {dev}",
                ingress.join(", ")
            ))),
            (Hook::Forwarded, _) if local => notes.push(at(
                "PREROUTING rule: the policy applies it to this host's own traffic too \
                 (attach.local)"
                    .to_owned(),
            )),
            (Hook::Local, _) if !ingress.is_empty() => notes.push(at(
                "OUTPUT rule: the policy applies it to forwarded traffic too \
                 (attach.ingress)"
                    .to_owned(),
            )),
            _ => {}
        }
        if r.rule.hook == Hook::Local
            && (r.rule.matcher.src.is_some() || r.rule.matcher.sport.is_some())
        {
            notes.push(at(
                "OUTPUT rule with -s or --sport: the host's sockets are classified at \
                 connect and send, which know the source only of a bound socket; replies of \
                 a TCP server are not classified (with attach.local a gateway's own address \
                 answers through the gateway, other addresses through main)"
                    .to_owned(),
            ));
        }
    }
    (AttachOut { ingress, local }, notes)
}

/// The same rule for the other kind of traffic: the policy's one rule serves both.
fn same_in_other_chain(a: &Placed, b: &Placed) -> bool {
    let (a, b) = (&a.rule, &b.rule);
    a.hook != b.hook
        && a.iif.is_none()
        && b.iif.is_none()
        && (&a.matcher, a.mark, a.mask) == (&b.matcher, b.mark, b.mask)
}

/// Every device the routes name but loopback: what PREROUTING without `-i` sees.
fn devices(routes: &[Route]) -> Vec<String> {
    unique(
        routes
            .iter()
            .filter_map(|r| r.dev.clone())
            .filter(|d| d != "lo"),
    )
}

fn unique(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}
