//! The planner without a kernel: namespaces described as [`Observed`] values.
use std::net::IpAddr;

use super::*;
use crate::policy::{rt_tables::RtTables, Policy};

/// The integration tests' standard gateway, made sticky, and their web and dns rules.
const POLICY: &str = concat!(
    include_str!("../../../tests/fixtures/gateway-isp2.toml"),
    "sticky = true\n\n",
    include_str!("../../../tests/fixtures/rules-web-dns.toml"),
    "\n[attach]\ningress = [\"lan0\"]\n",
);

fn policy(text: &str) -> Policy {
    Policy::parse(text, "test.toml", &RtTables::builtin()).expect("valid policy")
}

/// A router with lan0 and wan2 and nothing of ours installed.
fn namespace() -> Observed {
    let addr = |s: &str| s.parse::<IpAddr>().unwrap();
    Observed {
        links: [("lo", 1), ("lan0", 2), ("wan2", 3)]
            .into_iter()
            .map(|(n, i)| (n.to_string(), i))
            .collect(),
        addresses: [(
            "wan2".to_string(),
            vec![addr("203.0.113.1"), addr("2001:db8:b::1")],
        )]
        .into_iter()
        .collect(),
        netns_cookie: 7,
        tcx: true,
        ..Observed::default()
    }
}

fn tcx_ingress(dev: &str, ifindex: u32) -> Hook {
    Hook::TcxIngress {
        dev: dev.into(),
        ifindex,
    }
}

/// What observing the namespace finds after `plan` was executed, its dataplane (new or
/// kept) having the rules map id `id`.
fn after(observed: &Observed, plan: &Plan, id: u32) -> Observed {
    let mut o = observed.clone();
    o.ip_rules = plan.desired.rules.clone();
    o.routes = plan.desired.routes.clone();
    let kept = (0..observed.attachments.len()).filter(|i| !plan.detach.contains(i));
    let mut attachments: Vec<Attachment> = kept.map(|i| observed.attachments[i].clone()).collect();
    attachments.extend(plan.attach.iter().map(|hook| Attachment {
        hook: hook.clone(),
        program_id: 1000 + id,
        dataplane: id,
    }));
    o.attachments = attachments;
    let capacity = match (&plan.dataplane, &observed.dataplane) {
        (DataplaneStep::Load(c), _) => *c,
        (_, Some(dp)) => dp.capacity,
        _ => Capacity::default(),
    };
    o.dataplane = Some(ObservedDataplane {
        id,
        capacity,
        shapes: plan.compiled.shapes.clone(),
        epoch: 1,
    });
    o
}

/// `text` planned in `observed` with nothing recorded before.
fn fresh(text: &str, observed: &Observed, devices: Devices) -> Result<Plan, PlanError> {
    plan(policy(text), "test.toml", observed, None, devices)
}

/// `text` planned once `first` was executed (its dataplane has rules map id 5) and `change`
/// altered the namespace.
fn again(first: &Plan, text: &str, change: impl FnOnce(&mut Observed)) -> Plan {
    let mut now = after(&namespace(), first, 5);
    change(&mut now);
    let previous = Some(&first.record);
    plan(policy(text), "test.toml", &now, previous, Devices::Required).expect("a plan")
}

/// [`POLICY`] planned in a fresh [`namespace`].
fn first() -> Plan {
    fresh(POLICY, &namespace(), Devices::Required).expect("a plan")
}

fn with_mode(mode: &str) -> String {
    format!("{POLICY}mode = \"{mode}\"\n")
}

#[test]
fn auto_attaches_through_tcx_where_the_kernel_has_it_else_through_clsact() {
    let tc_ingress = |dev: &str, ifindex| Hook::TcIngress {
        dev: dev.into(),
        ifindex,
    };
    let without_tcx = Observed {
        tcx: false,
        ..namespace()
    };
    let p = fresh(POLICY, &without_tcx, Devices::Required).expect("a plan");
    assert_eq!(p.attach, vec![tc_ingress("lan0", 2), tc_ingress("wan2", 3)]);
    let forced = fresh(&with_mode("tc"), &namespace(), Devices::Required).expect("a plan");
    assert_eq!(forced.attach, p.attach, "mode = \"tc\" even with tcx there");
    let tcx = fresh(&with_mode("tcx"), &namespace(), Devices::Required).expect("a plan");
    assert_eq!(tcx.attach[0], tcx_ingress("lan0", 2));
}

#[test]
fn forcing_tcx_on_a_kernel_without_it_names_the_key_and_the_kernel() {
    let without_tcx = Observed {
        tcx: false,
        ..namespace()
    };
    let text = with_mode("tcx");
    let Err(e) = fresh(&text, &without_tcx, Devices::Required) else {
        panic!("planned tcx on a kernel without it");
    };
    let line = text.lines().count();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "test.toml:{line}: attach.mode: tcx needs Linux 6.6"
        )),
        "{msg}"
    );
}

#[test]
fn switching_the_path_moves_every_device_hook() {
    let first = first();
    let classic = again(&first, &with_mode("tc"), |_| {});
    assert_eq!(classic.attach.len(), 2);
    assert_eq!(classic.detach.len(), 2, "the tcx hooks go");
    assert!(classic
        .attach
        .iter()
        .all(|h| h.tc_path() == Some(TcPath::Classic)));
}

#[test]
fn a_fresh_namespace_gets_everything() {
    let p = first();
    assert!(matches!(p.dataplane, DataplaneStep::Load(_)));
    assert_eq!(
        p.attach,
        vec![tcx_ingress("lan0", 2), tcx_ingress("wan2", 3)],
        "the LAN classifies, the sticky gateway's device records"
    );
    assert!(p.detach.is_empty());
    // Per family: the main-routes-first rule, the fwmark rule, a `from` rule.
    assert_eq!(p.ip_rules.add.len(), 6);
    assert_eq!(p.routes.add.len(), 2);
    assert!(p.ip_rules.remove.is_empty() && p.routes.remove.is_empty());
    assert_eq!(p.record.slots, vec![0, 1]);
    assert_eq!(p.slots_to_zero, vec![0, 1]);
    // Two rules, two families, two ports for "web".
    assert_eq!(p.compiled.entries.len(), 6);
    assert_eq!(p.netns_cookie, 7);
    assert_eq!(p.sticky_ttl_ns, 300_000_000_000);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn replanning_what_was_applied_changes_nothing() {
    let first = first();
    let second = again(&first, POLICY, |_| {});
    assert_eq!(
        second.dataplane,
        DataplaneStep::Reuse {
            id: 5,
            new_programs: false
        }
    );
    assert!(second.attach.is_empty() && second.detach.is_empty());
    assert!(second.ip_rules.is_empty() && second.routes.is_empty());
    assert_eq!(second.record.slots, first.record.slots);
    assert!(second.slots_to_zero.is_empty());
    assert_eq!(second.compiled.shapes, first.compiled.shapes);
}

#[test]
fn rules_keep_their_counter_slots_by_name() {
    let edited = POLICY.replace(
        "[[rule]]\nname = \"web\"",
        "[[rule]]\nname = \"ssh\"\nproto = \"tcp\"\ndport = 22\ngateway = \"isp2\"\n\n[[rule]]\nname = \"web\"",
    );
    let edited = edited.replace("name = \"dns\"", "name = \"dns2\"");
    let second = again(&first(), &edited, |_| {});
    // ssh and dns2 are new: the lowest free slots; web keeps 0.
    assert_eq!(second.record.slots, vec![1, 0, 2]);
    assert_eq!(second.slots_to_zero, vec![1, 2]);
}

#[test]
fn new_hooks_on_a_kept_dataplane_load_programs_sharing_its_maps() {
    let text = POLICY.replace("ingress = [\"lan0\"]", "ingress = [\"lan0\", \"lan1\"]");
    let second = again(&first(), &text, |now| {
        now.links.insert("lan1".into(), 4);
    });
    assert_eq!(
        second.dataplane,
        DataplaneStep::Reuse {
            id: 5,
            new_programs: true
        }
    );
    assert_eq!(second.attach, vec![tcx_ingress("lan1", 4)]);
    assert!(second.detach.is_empty());
}

#[test]
fn outgrown_maps_mean_a_new_dataplane_and_every_hook_moves() {
    let second = again(&first(), POLICY, |now| {
        now.dataplane.as_mut().unwrap().capacity = Capacity {
            entries: 2,
            rules: 2,
            trie_nodes: 2,
        };
    });
    assert!(matches!(second.dataplane, DataplaneStep::Load(c) if c.entries >= 6));
    assert_eq!(second.attach.len(), 2);
    assert_eq!(second.detach, vec![0, 1]);
    assert!(second.warnings[0].contains("outgrew"));
}

#[test]
fn hooks_of_a_stale_dataplane_are_detached() {
    let second = again(&first(), POLICY, |now| {
        now.attachments.push(Attachment {
            hook: tcx_ingress("lan0", 2),
            program_id: 99,
            dataplane: 4,
        });
    });
    assert!(second.attach.is_empty());
    assert_eq!(second.detach, vec![2]);
}

#[test]
fn owned_objects_the_policy_no_longer_has_are_removed() {
    let stale = IpRule {
        family: crate::policy::matcher::Family::V4,
        priority: 10001,
        table: 101,
        fwmark: Some((2, u32::MAX)),
        suppress_prefixlen: None,
        src: None,
    };
    let second = again(&first(), POLICY, |now| {
        now.ip_rules.insert(stale.clone());
    });
    assert_eq!(second.ip_rules.remove, vec![stale]);
    assert!(second.ip_rules.add.is_empty());
}

#[test]
fn a_missing_device_is_refused_at_its_line() {
    let text = POLICY.replace("ingress = [\"lan0\"]", "ingress = [\"lan9\"]");
    let err = fresh(&text, &namespace(), Devices::Required).unwrap_err();
    let msg = err.to_string();
    // Line 23: the gateway fixture's 6 lines, sticky, a blank line, the rules fixture's 12,
    // a blank line and `[attach]` come before it.
    assert!(
        msg.starts_with("test.toml:23: attach.ingress[1]: device lan9 does not exist"),
        "{msg}"
    );
}

#[test]
fn without_hooks_nothing_is_loaded_and_everything_detaches() {
    let second = again(&first(), "", |_| {});
    assert_eq!(second.dataplane, DataplaneStep::Unused);
    assert_eq!(second.detach, vec![0, 1]);
    assert!(second.desired.rules.is_empty() && second.desired.routes.is_empty());
}

#[test]
fn gateways_without_any_hook_are_refused_naming_the_attach_table() {
    let text = POLICY
        .replace("sticky = true\n", "")
        .replace("ingress = [\"lan0\"]", "ingress = []");
    let err = fresh(&text, &namespace(), Devices::Required).expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains(": attach: gateway isp2 would get a table"),
        "{text}"
    );
    // Hooked by the sticky gateway's device alone, it is a policy.
    let sticky_only = POLICY.replace("ingress = [\"lan0\"]", "ingress = []");
    fresh(&sticky_only, &namespace(), Devices::Required).expect("a plan");
}

#[test]
fn an_awaited_device_leaves_its_part_out_and_is_reported() {
    let text = POLICY.replace("ingress = [\"lan0\"]", "ingress = [\"lan0\", \"wg0\"]");
    let p = fresh(&text, &namespace(), Devices::Awaited).unwrap();
    assert_eq!(
        p.waiting,
        vec![Waiting {
            dev: "wg0".into(),
            reason: "missing"
        }]
    );
    assert_eq!(
        p.attach,
        vec![tcx_ingress("lan0", 2), tcx_ingress("wan2", 3)]
    );
}

#[test]
fn a_gateway_device_that_is_down_gets_no_routes_until_it_is_up() {
    let mut now = namespace();
    now.down.insert("wan2".into());
    let p = fresh(POLICY, &now, Devices::Awaited).unwrap();
    assert!(p.routes.add.is_empty());
    // The fwmark and from rules stay: they point at the table, not the device.
    assert_eq!(p.ip_rules.add.len(), 6);
    assert_eq!(p.waiting[0].reason, "down");
    assert!(p.warnings[0].contains("wan2 is down"), "{:?}", p.warnings);
    now.down.clear();
    let up = fresh(POLICY, &now, Devices::Awaited).unwrap();
    assert_eq!(up.routes.add.len(), 2);
    assert!(up.waiting.is_empty());
}

/// `text` planned after `first` was executed and recorded (its entries at epoch 1), with the
/// digests both files have.
fn changed_keys(first_text: &str, text: &str) -> (Plan, Option<Vec<policyroute_common::RuleKey>>) {
    let digests = crate::policy::incremental::digests;
    let mut first = fresh(first_text, &namespace(), Devices::Required).unwrap();
    first.record.digests = digests(first_text);
    first.record.epoch = Some(1);
    let mut second = again(&first, text, |_| {});
    second.record.digests = digests(text);
    let now = after(&namespace(), &first, 5);
    let keys = changed::entries_to_check(&first.record, &second, &now);
    (second, keys)
}

#[test]
fn a_one_rule_edit_looks_at_that_rules_entries_only() {
    let edited = POLICY.replace("dport = 53", "dport = 5353");
    let (second, keys) = changed_keys(POLICY, &edited);
    let keys = keys.expect("the quick path applies");
    // dns: UDP 53 before, UDP 5353 after, one entry per family each.
    assert_eq!(keys.len(), 4);
    let dns = 1;
    let new: Vec<_> = second
        .compiled
        .entries
        .iter()
        .filter(|(_, v)| v.prio == dns)
        .map(|(k, _)| k)
        .collect();
    assert!(new.iter().all(|k| keys.contains(k)));
}

#[test]
fn the_quick_path_needs_the_same_rule_positions_and_epoch() {
    let added = POLICY.replace(
        "[attach]",
        "[[rule]]\nname = \"x\"\nproto = \"udp\"\ngateway = \"isp2\"\n\n[attach]",
    );
    assert!(changed_keys(POLICY, &added).1.is_none(), "a rule added");
    let mut first = first();
    first.record.digests = crate::policy::incremental::digests(POLICY);
    first.record.epoch = Some(2);
    let mut second = again(&first, POLICY, |_| {});
    second.record.digests = first.record.digests.clone();
    let now = after(&namespace(), &first, 5);
    assert!(
        changed::entries_to_check(&first.record, &second, &now).is_none(),
        "entries written since the record"
    );
}

/// [`POLICY`] without stickiness, with the fast path.
const FAST: &str = concat!(
    "fast_path = true\n",
    include_str!("../../../tests/fixtures/gateway-isp2.toml"),
    "\n",
    include_str!("../../../tests/fixtures/rules-web-dns.toml"),
    "\n[attach]\ningress = [\"lan0\"]\n",
);

fn with_tables(mut o: Observed) -> Observed {
    let prefix = |table, p: &str| objects::KernelPrefix {
        table,
        dst: p.parse().unwrap(),
        oif: None,
    };
    o.kernel_prefixes = [
        prefix(objects::LOCAL_TABLE, "192.0.2.1/32"),
        prefix(objects::LOCAL_TABLE, "192.0.2.127/32"),
        prefix(objects::MAIN_TABLE, "192.0.2.0/25"),
        prefix(objects::MAIN_TABLE, "0.0.0.0/0"),
        prefix(objects::MAIN_TABLE, "::/0"),
        prefix(7, "10.0.0.0/8"),
    ]
    .into_iter()
    .collect();
    o.addresses
        .insert("lan0".into(), vec!["192.0.2.1".parse().unwrap()]);
    o
}

#[test]
fn the_fast_path_needs_no_ip_rules_and_leaves_local_and_main_routes_to_the_kernel() {
    let p = fresh(FAST, &with_tables(namespace()), Devices::Required).expect("a plan");
    assert!(p.desired.rules.is_empty(), "{:?}", p.desired.rules);
    assert_eq!(p.routes.add.len(), 2, "the gateway's table is still filled");
    let kernel: Vec<String> = p
        .desired
        .kernel_dsts
        .iter()
        .map(|n| n.to_string())
        .collect();
    for want in [
        "192.0.2.1/32",
        "192.0.2.127/32",
        "192.0.2.0/25",
        "224.0.0.0/4",
        "ff00::/8",
    ] {
        assert!(kernel.contains(&want.to_string()), "{want} in {kernel:?}");
    }
    assert!(
        !kernel
            .iter()
            .any(|k| k.ends_with("/0") || k.starts_with("10.")),
        "{kernel:?}"
    );
    assert_eq!(
        p.desired.fast.values().map(|f| f.table).collect::<Vec<_>>(),
        [100]
    );
    assert_eq!(
        p.desired.addresses.get(&2).map(|a| a.has_v4),
        Some(1),
        "lan0's address"
    );
    assert!(
        p.warnings.iter().any(|w| w.contains("bypasses netfilter")),
        "{:?}",
        p.warnings
    );

    // Without main_routes_first only this host's destinations (and multicast) stay.
    let text = format!("main_routes_first = false\n{FAST}");
    let p = fresh(&text, &with_tables(namespace()), Devices::Required).expect("a plan");
    assert!(!p
        .desired
        .kernel_dsts
        .contains(&"192.0.2.0/25".parse().unwrap()));

    // A feature that routes by mark brings all the rules back, and says what they cost.
    let text = FAST.replace("ingress = [\"lan0\"]", "ingress = [\"lan0\"]\nlocal = true");
    let p = fresh(&text, &with_tables(namespace()), Devices::Required).expect("a plan");
    assert!(!p.desired.rules.is_empty());
    assert!(
        p.warnings.iter().any(|w| w.contains("local = true")),
        "{:?}",
        p.warnings
    );
}

fn assert_warns(plan: &Plan, text: &str) {
    assert!(
        plan.warnings.iter().any(|w| w.contains(text)),
        "{text} in {:?}",
        plan.warnings
    );
}

/// Seed 003: wan2 also carries the main table's IPv4 default route (two routers on one
/// LAN).
fn sharing_the_main_uplink(mut o: Observed) -> Observed {
    o.kernel_prefixes.insert(objects::KernelPrefix {
        table: objects::MAIN_TABLE,
        dst: "0.0.0.0/0".parse().unwrap(),
        oif: Some(3),
    });
    o
}

#[test]
fn a_gateway_on_the_main_uplinks_device_gets_no_from_rule_for_its_shared_address() {
    let local = POLICY.replace("sticky = true\n", "") + "local = true\n";
    let plan = fresh(
        &local,
        &sharing_the_main_uplink(namespace()),
        Devices::Required,
    )
    .expect("a plan");
    let sources: Vec<String> = plan
        .desired
        .rules
        .iter()
        .filter_map(|r| r.src.map(|s| s.to_string()))
        .collect();
    // The IPv4 address is the main uplink's too; the IPv6 one is the gateway's own.
    assert_eq!(sources, ["2001:db8:b::1/128"]);
    assert_warns(
        &plan,
        "gateway isp2 shares wan2 with the main uplink (IPv4)",
    );
    let source = plan.desired.sources.values().next().expect("a source");
    assert_eq!((source.has_v4, source.has_v6), (0, 1));

    // Without the shared default route, both addresses get their rule.
    let plan = fresh(&local, &namespace(), Devices::Required).expect("a plan");
    assert_eq!(
        plan.desired
            .rules
            .iter()
            .filter(|r| r.src.is_some())
            .count(),
        2
    );
}

#[test]
fn a_sticky_gateway_on_the_main_uplinks_device_is_refused_naming_it() {
    let err = fresh(
        POLICY,
        &sharing_the_main_uplink(namespace()),
        Devices::Required,
    )
    .expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("gateway[1].sticky"), "{text}");
    assert!(
        text.contains("gateway isp2 shares wan2 with the main uplink"),
        "{text}"
    );
}

#[test]
fn main_routes_first_only_in_the_families_a_gateway_routes() {
    let suppress = |text: &str| -> Vec<Family> {
        let plan = fresh(text, &namespace(), Devices::Required).expect("a plan");
        plan.desired
            .rules
            .iter()
            .filter(|r| r.suppress_prefixlen.is_some())
            .map(|r| r.family)
            .collect()
    };
    // An empty policy installs no ip rule at all.
    assert_eq!(suppress(""), []);
    let v4_only = "[[gateway]]\nname = \"isp2\"\ndev = \"wan2\"\nvia = [\"203.0.113.2\"]\n\
                   table = 100\n\n[attach]\ningress = [\"lan0\"]\n";
    assert_eq!(suppress(v4_only), [Family::V4]);
    assert_eq!(suppress(POLICY), [Family::V4, Family::V6]);
    let plan = fresh("", &namespace(), Devices::Required).expect("a plan");
    assert!(plan.desired.rules.is_empty(), "{:?}", plan.desired.rules);
}

#[test]
fn a_device_without_an_ethernet_header_is_read_as_ip_and_left_to_the_fwmark_rules() {
    let mut o = with_tables(namespace());
    o.frames.insert("lan0".into(), Frames::Ip);
    let plan = fresh(FAST, &o, Devices::Required).expect("a plan");
    let lan0 = plan.desired.roles.get(&2).expect("a role for lan0");
    assert_eq!(
        lan0.flags,
        policyroute_common::ROLE_CLASSIFY | policyroute_common::ROLE_IP_FRAME
    );
    assert_ne!(
        plan.desired.control_flags & policyroute_common::CONTROL_DEVICE_ROLES,
        0,
        "the programs look the role up"
    );
    // The fast path forwards Ethernet frames only: what arrives on lan0 needs the rules.
    assert!(!plan.desired.rules.is_empty());
    assert_warns(&plan, "ingress on IP devices (lan0");

    // Ethernet everywhere: no role lookup, and the fast path needs no rules.
    let plan = fresh(FAST, &with_tables(namespace()), Devices::Required).expect("a plan");
    assert_eq!(
        plan.desired.control_flags & policyroute_common::CONTROL_DEVICE_ROLES,
        0
    );
    assert!(plan.desired.rules.is_empty());
}

#[test]
fn a_hooked_device_of_an_unknown_link_type_is_refused_at_its_line() {
    let mut o = namespace();
    // ARPHRD_INFINIBAND: a 20-byte hardware address, no Ethernet header.
    o.frames.insert("lan0".into(), Frames::Unsupported(32));
    let err = fresh(POLICY, &o, Devices::Required).expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("attach.ingress[1]"), "{text}");
    assert!(text.contains("device lan0 has link type 32"), "{text}");

    // A gateway's device is only routed through, unless sticky hooks it.
    let mut o = namespace();
    o.frames.insert("wan2".into(), Frames::Unsupported(32));
    let routed = POLICY.replace("sticky = true\n", "");
    fresh(&routed, &o, Devices::Required).expect("routing through it needs no program");
    let err = fresh(POLICY, &o, Devices::Required).expect_err("sticky hooks it");
    assert!(err.to_string().contains("gateway[1].dev"), "{err}");
}

fn foreign_route(table: u32, dst: &str, metric: u32, protocol: u8) -> foreign::ForeignRoute {
    let dst: ipnet::IpNet = dst.parse().unwrap();
    foreign::ForeignRoute {
        family: Family::of(&dst.addr()),
        table,
        kind: "unicast",
        dst,
        nexthops: vec![foreign::NextHop {
            gateway: None,
            oif: Some(3),
        }],
        metric,
        protocol,
        message: Vec::new(),
    }
}

fn foreign_rule(priority: u32, fwmark: (u32, u32)) -> foreign::ForeignRule {
    foreign::ForeignRule {
        family: Family::V4,
        priority,
        invert: false,
        src: None,
        fwmark: Some(fwmark),
        selectors: Vec::new(),
        action: "lookup",
        table: 100,
        goto: None,
        suppress_prefixlen: None,
        protocol: 0,
        message: Vec::new(),
    }
}

#[test]
fn others_routes_in_the_gateways_table_and_rules_on_its_mark_are_in_the_way() {
    let mut o = namespace();
    let boot = 3;
    let old_default = foreign_route(100, "0.0.0.0/0", 0, boot);
    o.foreign_routes = vec![
        old_default.clone(),
        // What the kernel adds itself it adds again: never in the way.
        foreign_route(100, "fe80::/64", 256, foreign::RTPROT_KERNEL),
        // Another table (observe asks for the gateways' only; the plan decides anyway).
        foreign_route(200, "0.0.0.0/0", 0, boot),
    ];
    let old_rule = foreign_rule(100, (0x1, u32::MAX));
    o.foreign_rules = vec![old_rule.clone(), foreign_rule(101, (0x2, u32::MAX))];
    let p = fresh(POLICY, &o, Devices::Required).unwrap();
    assert_eq!(p.record.policy.gateways[0].mark, 0x1);
    assert_eq!(p.foreign.routes, vec![old_default.clone()]);
    assert_eq!(p.foreign.ip_rules, vec![old_rule]);
    // The old default route holds the place of the gateway's IPv4 one, not the IPv6 one.
    let held: Vec<bool> = p.routes.add.iter().map(|r| holds_place(&p, r)).collect();
    assert_eq!(held, vec![true, false], "{:?}", p.routes.add);
    // At another metric it holds no place of ours (both can be in the table).
    o.foreign_routes = vec![foreign_route(100, "0.0.0.0/0", 100, boot)];
    let p = fresh(POLICY, &o, Devices::Required).unwrap();
    assert_eq!(p.foreign.routes.len(), 1);
    assert!(p.routes.add.iter().all(|r| !holds_place(&p, r)));
}

fn holds_place(p: &Plan, r: &IpRoute) -> bool {
    p.foreign.in_place_of(r).is_some()
}

#[test]
fn a_rule_on_another_tools_bits_is_not_in_the_way() {
    let mut o = namespace();
    o.foreign_rules = vec![foreign_rule(100, (0x100, 0xff00))];
    let p = fresh(POLICY, &o, Devices::Required).unwrap();
    assert!(p.foreign.is_empty(), "{:?}", p.foreign);
}
