//! The real loaded classifier, run by BPF_PROG_TEST_RUN on crafted frames. Every run is
//! also checked against the reference model (see `Classifier::mark`).
use policyroute::reference::frame::ExtHeader;
use policyroute_tests::{
    classifier::Classifier,
    fixture::{frame4 as v4, frame6 as v6, ip, ICMP, ICMPV6, TCP, UDP},
    netns::NetNs,
    rules::rule,
};

/// Runs `body` with a freshly loaded classifier inside a throwaway network namespace.
fn with_classifier(tag: &str, body: impl FnOnce(&mut Classifier)) {
    let ns = NetNs::new(tag);
    let _inside = ns.enter();
    let mut c = Classifier::load();
    body(&mut c);
}

#[test]
fn empty_policy_leaves_mark_untouched() {
    with_classifier("empty", |c| {
        c.set_policy(vec![], u32::MAX);
        assert_eq!(c.mark(&v4(TCP, 1000, 80).build(), 0x55), 0x55);
        assert_eq!(c.mark(&v6(UDP, 1000, 53).build(), 0), 0);
    });
}

#[test]
fn matches_each_field_ipv4_and_ipv6() {
    with_classifier("fields", |c| {
        c.set_policy(
            vec![
                rule("dport", 1)
                    .proto(TCP)
                    .dport(&[[80, 80], [443, 443]])
                    .build(),
                rule("sport", 2).proto(UDP).sport(&[[5000, 5999]]).build(),
                rule("src4", 3).src("192.0.2.0/24").proto(UDP).build(),
                rule("dst6", 4).dst("2001:db8:2::/48").build(),
                rule("dscp", 5).dscp(46).build(),
                rule("icmp", 6).proto(ICMP).build(),
                rule("icmp6", 7).proto(ICMPV6).build(),
            ],
            u32::MAX,
        );
        assert_eq!(c.mark(&v4(TCP, 1000, 443).build(), 0), 1);
        assert_eq!(c.mark(&v6(TCP, 1000, 80).build(), 0), 1);
        assert_eq!(c.mark(&v4(UDP, 5500, 9).build(), 0), 2);
        assert_eq!(c.mark(&v6(UDP, 5999, 9).build(), 0), 2);
        assert_eq!(c.mark(&v4(UDP, 6000, 9).build(), 0), 3);
        assert_eq!(c.mark(&v6(UDP, 6000, 9).build(), 0), 4, "dst prefix");
        let mut ef = v4(TCP, 1, 2);
        ef.dst = ip("203.0.113.9");
        ef.dscp = 46;
        assert_eq!(c.mark(&ef.build(), 0), 5);
        ef.dscp = 10;
        assert_eq!(c.mark(&ef.build(), 0), 0, "nothing matches");
        assert_eq!(c.mark(&v4(ICMP, 0, 0).build(), 0), 6, "src4 is udp only");
        let mut ping = v4(ICMP, 0, 0);
        ping.src = ip("203.0.113.1");
        assert_eq!(c.mark(&ping.build(), 0), 6);
        let mut ping6 = v6(ICMPV6, 0, 0);
        ping6.dst = ip("2001:db8:3::1");
        assert_eq!(c.mark(&ping6.build(), 0), 7);
    });
}

#[test]
fn first_matching_rule_wins_among_overlaps() {
    with_classifier("order", |c| {
        c.set_policy(
            vec![
                rule("narrow", 10)
                    .src("192.0.2.8/29")
                    .proto(TCP)
                    .dport(&[[80, 80]])
                    .build(),
                rule("wide", 20).src("192.0.2.0/24").build(),
                rule("port", 30).dport(&[[0, 65535]]).build(),
                rule("never", 40).src("192.0.2.0/25").build(),
            ],
            u32::MAX,
        );
        assert_eq!(c.mark(&v4(TCP, 1, 80).build(), 0), 10);
        assert_eq!(c.mark(&v4(TCP, 1, 81).build(), 0), 20);
        let mut other = v4(TCP, 1, 81);
        other.src = ip("203.0.113.1");
        assert_eq!(c.mark(&other.build(), 0), 30);
        assert_eq!(c.mark(&v6(UDP, 1, 1).build(), 0), 30);
        assert_eq!(
            c.mark(&v6(ICMPV6, 0, 0).build(), 0),
            0,
            "no ports: port rule cannot match"
        );
    });
}

#[test]
fn mark_mask_keeps_outside_bits() {
    with_classifier("mask", |c| {
        c.set_policy(vec![rule("r", 0xabcd).proto(TCP).build()], 0x0000_ff00);
        assert_eq!(c.mark(&v4(TCP, 1, 2).build(), 0x1234_5678), 0x1234_ab78);
        assert_eq!(c.mark(&v4(UDP, 1, 2).build(), 0x1234_5678), 0x1234_5678);
    });
}

#[test]
fn ipv4_options_are_skipped_to_reach_ports() {
    with_classifier("opts", |c| {
        c.set_policy(
            vec![rule("r", 9).proto(TCP).dport(&[[22, 22]]).build()],
            u32::MAX,
        );
        for options in [4, 20, 40] {
            let mut f = v4(TCP, 1000, 22);
            f.ipv4_options = options;
            assert_eq!(c.mark(&f.build(), 0), 9, "IHL with {options} option bytes");
        }
    });
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    with_classifier("ext", |c| {
        c.set_policy(
            vec![rule("r", 9).proto(UDP).dport(&[[53, 53]]).build()],
            u32::MAX,
        );
        let chains = [
            vec![ExtHeader::HopByHop { len8: 0 }],
            vec![ExtHeader::Routing { len8: 2 }],
            vec![ExtHeader::DestOpts { len8: 1 }],
            vec![ExtHeader::Fragment {
                offset: 0,
                more: true,
            }],
            vec![ExtHeader::Auth { len4: 4 }],
            vec![
                ExtHeader::HopByHop { len8: 0 },
                ExtHeader::DestOpts { len8: 0 },
                ExtHeader::Routing { len8: 0 },
                ExtHeader::Fragment {
                    offset: 0,
                    more: true,
                },
                ExtHeader::DestOpts { len8: 3 },
            ],
        ];
        for chain in chains {
            let mut f = v6(UDP, 1000, 53);
            f.ipv6_ext = chain.clone();
            assert_eq!(c.mark(&f.build(), 0), 9, "{chain:?}");
        }
        // Longer chains than the parser walks are left untouched.
        let mut f = v6(UDP, 1000, 53);
        f.ipv6_ext = vec![ExtHeader::DestOpts { len8: 0 }; 9];
        assert_eq!(c.mark(&f.build(), 0), 0);
    });
}

#[test]
fn non_first_fragments_match_only_portless_rules() {
    with_classifier("frag", |c| {
        c.set_policy(
            vec![
                rule("ports", 1).proto(UDP).dport(&[[53, 53]]).build(),
                rule("proto", 2).proto(UDP).build(),
            ],
            u32::MAX,
        );
        let mut f4 = v4(UDP, 1000, 53);
        assert_eq!(c.mark(&f4.build(), 0), 1);
        f4.ipv4_frag_offset = 185;
        assert_eq!(c.mark(&f4.build(), 0), 2, "IPv4 non-first fragment");
        let mut f6 = v6(UDP, 1000, 53);
        f6.ipv6_ext = vec![ExtHeader::Fragment {
            offset: 0,
            more: true,
        }];
        assert_eq!(c.mark(&f6.build(), 0), 1, "IPv6 first fragment");
        f6.ipv6_ext = vec![ExtHeader::Fragment {
            offset: 181,
            more: false,
        }];
        assert_eq!(c.mark(&f6.build(), 0), 2, "IPv6 non-first fragment");
    });
}

#[test]
fn truncated_frames() {
    with_classifier("trunc", |c| {
        c.set_policy(
            vec![
                rule("ports", 1).proto(TCP).dport(&[[80, 80]]).build(),
                rule("any-tcp", 2).proto(TCP).build(),
            ],
            u32::MAX,
        );
        let full = v4(TCP, 1000, 80).build();
        assert_eq!(c.mark(&full, 0), 1);
        // L4 header cut: ports unknown, only the port-less rule matches.
        assert_eq!(c.mark(&full[..14 + 20 + 3], 0), 2);
        let full6 = v6(TCP, 1000, 80).build();
        assert_eq!(c.mark(&full6[..14 + 40 + 2], 0), 2);
        // IP header cut: untouched. BPF_PROG_TEST_RUN itself refuses untagged IP frames
        // shorter than an IP header, so these ride in a VLAN tag (same parser path).
        let mut tagged = v4(TCP, 1000, 80);
        tagged.vlans = vec![(0x8100, 5)];
        let tagged = tagged.build();
        assert_eq!(c.mark(&tagged, 0), 1);
        assert_eq!(c.mark(&tagged[..18 + 19], 0), 0);
        assert_eq!(c.mark(&tagged[..18 + 1], 0), 0);
        assert_eq!(c.mark(&tagged[..16], 0), 0, "VLAN tag itself cut");
        let mut tagged6 = v6(TCP, 1000, 80);
        tagged6.vlans = vec![(0x8100, 5)];
        assert_eq!(c.mark(&tagged6.build()[..18 + 39], 0), 0);
        let mut ext = v6(TCP, 1000, 80);
        ext.ipv6_ext = vec![ExtHeader::HopByHop { len8: 0 }];
        let ext = ext.build();
        assert_eq!(c.mark(&ext[..14 + 40 + 1], 0), 0, "extension header cut");
        assert_eq!(c.mark(&ext[..14 + 40 + 8 + 1], 0), 2, "ports cut after it");
    });
}

#[test]
fn vlan_tagged_frames_classify_the_inner_packet() {
    with_classifier("vlan", |c| {
        c.set_policy(
            vec![rule("r", 7).proto(TCP).dport(&[[443, 443]]).build()],
            u32::MAX,
        );
        let mut f = v4(TCP, 1, 443);
        f.vlans = vec![(0x8100, 10)];
        assert_eq!(c.mark(&f.build(), 0), 7, "802.1Q");
        f.vlans = vec![(0x88a8, 100), (0x8100, 10)];
        assert_eq!(c.mark(&f.build(), 0), 7, "QinQ");
        let mut g = v6(TCP, 1, 443);
        g.vlans = vec![(0x8100, 4094)];
        assert_eq!(c.mark(&g.build(), 0), 7, "802.1Q IPv6");
    });
}

#[test]
fn non_ip_and_malformed_frames_are_untouched() {
    with_classifier("nonip", |c| {
        c.set_policy(vec![rule("all", 3).build()], u32::MAX);
        let mut arp = v4(UDP, 1, 2).build();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(c.mark(&arp, 0x10), 0x10);
        let mut bad_version = v4(UDP, 1, 2).build();
        bad_version[14] = 0x65;
        assert_eq!(c.mark(&bad_version, 0x10), 0x10);
        let mut short_ihl = v4(UDP, 1, 2).build();
        short_ihl[14] = 0x44;
        assert_eq!(c.mark(&short_ihl, 0x10), 0x10);
        assert_eq!(c.mark(&v4(UDP, 1, 2).build(), 0x10), 3);
    });
}

#[test]
fn counters_count_packets_and_bytes_per_rule() {
    with_classifier("count", |c| {
        c.set_policy(
            vec![
                rule("a", 1).proto(TCP).build(),
                rule("b", 2).proto(UDP).build(),
            ],
            u32::MAX,
        );
        let tcp = v4(TCP, 1, 2).build();
        let udp = v6(UDP, 1, 2).build();
        for _ in 0..3 {
            c.mark(&tcp, 0);
        }
        c.mark(&udp, 0);
        c.mark(&v4(ICMP, 0, 0).build(), 0);
        let counts = c.dp.maps.counters(2).unwrap();
        assert_eq!(counts[0].packets, 3);
        assert_eq!(counts[0].bytes, 3 * tcp.len() as u64);
        assert_eq!(counts[1].packets, 1);
        assert_eq!(counts[1].bytes, udp.len() as u64);
    });
}

#[test]
fn reinstall_touches_only_what_changed() {
    with_classifier("diff", |c| {
        let base = vec![
            rule("a", 1).proto(TCP).dport(&[[80, 80]]).build(),
            rule("b", 2).src("192.0.2.0/24").build(),
            rule("c", 3).dst("2001:db8:2::/48").build(),
        ];
        let first = c.set_policy(base.clone(), u32::MAX);
        assert_eq!(first.inserted, 4, "a is two entries (IPv4 and IPv6)");
        let again = c.set_policy(base.clone(), u32::MAX);
        assert_eq!((again.inserted, again.updated, again.removed), (0, 0, 0));
        let mut changed = base.clone();
        changed[1].mark = 5;
        changed.remove(2);
        let stats = c.set_policy(changed, u32::MAX);
        assert_eq!((stats.inserted, stats.updated, stats.removed), (0, 1, 1));
        assert_eq!(c.mark(&v4(UDP, 1, 2).build(), 0), 5);
        assert_eq!(c.mark(&v6(UDP, 1, 2).build(), 0), 0, "rule c is gone");
        assert_eq!(c.mark(&v6(TCP, 1, 80).build(), 0), 1);
    });
}
