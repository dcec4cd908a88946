//! Differential test: random policies and frames (overlapping rules, malformed frames)
//! through the loaded kernel program and through the reference model. Marks and per-rule
//! counters must agree exactly.
use policyroute::{plan::compile::CompileError, reference::classifier as reference};
use policyroute_tests::{
    classifier::Classifier,
    netns::NetNs,
    random::{self, host_in},
};
use rand::{rngs::StdRng, Rng, SeedableRng};

const POLICIES: usize = 250;
const FRAMES_PER_POLICY: usize = 48;
const MAX_RULES: usize = 40;

#[test]
fn kernel_agrees_with_reference_model() {
    let ns = NetNs::new("diff");
    let _inside = ns.enter();
    let mut rng = StdRng::seed_from_u64(random::seed());
    let mut c = Classifier::load();
    let mut cases = 0;
    let mut hits = 0;
    let mut policies = 0;
    while policies < POLICIES {
        let (rules, mask) = random::policy(&mut rng, MAX_RULES);
        match c.compile(&rules, mask) {
            Err(CompileError::TooManyShapes { .. }) => continue,
            Err(e) => panic!("random policy failed to compile: {e}"),
            Ok(_) => {}
        }
        policies += 1;
        c.set_policy(rules.clone(), mask);
        let slots = 0..rules.len() as u32;
        c.dp.maps.zero_counters(slots).unwrap();
        let mut want = vec![(0u64, 0u64); rules.len()];
        for _ in 0..FRAMES_PER_POLICY {
            let frame = random::frame(&mut rng);
            let mark_in = rng.gen();
            // `mark` asserts kernel == model for this frame.
            c.mark(&frame, mark_in);
            if let Some(i) =
                reference::parse(&frame).and_then(|p| reference::first_match(&rules, &p))
            {
                want[i].0 += 1;
                want[i].1 += frame.len() as u64;
                hits += 1;
            }
            cases += 1;
        }
        let got = c.dp.maps.counters(rules.len()).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                (g.packets, g.bytes),
                *w,
                "counters of rule {i} in {rules:#?}"
            );
        }
    }
    eprintln!("{cases} cases, {hits} matched a rule");
    assert!(cases >= 10_000);
    assert!(
        hits > cases / 5,
        "the generator should make rules match often"
    );
    assert!(hits < cases, "and leave some frames unmatched");
}

/// A million set prefixes in the kernel's trie, against the reference model: a big list of
/// mixed lengths that also holds prefixes inside its own (which the trie merges away), a
/// smaller list nested in it and partly outside it, and rules where first-match order
/// between them matters. Frames aim at prefixes of both lists (and at nothing); they only
/// go through the test-run path, so any address may be used.
#[test]
fn a_million_set_prefixes_agree_with_reference_model() {
    use std::sync::Arc;

    use policyroute::policy::{
        matcher::{Match, Rule},
        ports::PortSet,
        sets::{PrefixSet, SetRef},
    };
    use policyroute_tests::fixture::frame;

    let ns = NetNs::new("diffbig");
    let _inside = ns.enter();
    let mut rng = StdRng::seed_from_u64(random::seed());
    let big: Vec<ipnet::IpNet> = (0..1_000_000)
        .map(|i| million_prefix(&mut rng, i % 5 < 3))
        .collect();
    // Inside prefixes of `big` (longer, so nested) and a few anywhere.
    let inner: Vec<ipnet::IpNet> = (0..20_000)
        .map(|i| {
            if i % 10 < 3 {
                return million_prefix(&mut rng, i % 4 != 0);
            }
            let outer = big[rng.gen_range(0..big.len())];
            let max = outer.max_prefix_len();
            let len = rng.gen_range(outer.prefix_len()..=max);
            ipnet::IpNet::new(host_in(&mut rng, &outer), len)
                .unwrap()
                .trunc()
        })
        .collect();
    let set = |name: &str, p: &[ipnet::IpNet]| {
        SetRef::new(Arc::new(PrefixSet::new(name.into(), None, p.to_vec())))
    };
    let (big_set, inner_set) = (set("big", &big), set("inner", &inner));
    let rule = |name: &str, mark: u32, m: Match| Rule {
        name: name.into(),
        matcher: m,
        mark,
    };
    let tcp443 = |m: Match| Match {
        proto: Some(6),
        dport: Some(PortSet::single(443)),
        ..m
    };
    let rules = vec![
        rule(
            "inner-tls",
            3,
            tcp443(Match {
                dst_set: Some(inner_set.clone()),
                ..Match::default()
            }),
        ),
        rule(
            "big",
            1,
            Match {
                dst_set: Some(big_set.clone()),
                ..Match::default()
            },
        ),
        rule(
            "inner",
            2,
            Match {
                dst_set: Some(inner_set),
                ..Match::default()
            },
        ),
        rule(
            "from-big",
            4,
            Match {
                src_set: Some(big_set),
                ..Match::default()
            },
        ),
    ];
    let (mut c, compiled) = Classifier::load_for(rules, u32::MAX);
    let held: Vec<usize> = compiled
        .classes
        .fields
        .values()
        .map(|f| f.prefixes.len())
        .collect();
    eprintln!(
        "prefixes in the tries (per family and field): {held:?}, image {} MiB",
        (compiled.trie.nodes() * 64) >> 20
    );
    // Nested prefixes of one list merge away; the rest must all be there.
    assert!(held.iter().sum::<usize>() > 1_700_000, "{held:?}");
    let mut marks = [0usize; 5];
    for i in 0..4_000 {
        let v6 = i % 2 == 1;
        let pick = |rng: &mut StdRng, list: &[ipnet::IpNet]| {
            let family: Vec<&ipnet::IpNet> = (0..64)
                .map(|_| &list[rng.gen_range(0..list.len())])
                .filter(|p| matches!(p, ipnet::IpNet::V6(_)) == v6)
                .collect();
            host_in(rng, family[0])
        };
        let dst = match i % 3 {
            0 => pick(&mut rng, &big),
            1 => pick(&mut rng, &inner),
            _ => {
                let anywhere = million_prefix(&mut rng, !v6);
                host_in(&mut rng, &anywhere)
            }
        };
        let src = if i % 7 == 0 {
            pick(&mut rng, &big)
        } else if v6 {
            "2001:db8::5".parse().unwrap()
        } else {
            "192.0.2.5".parse().unwrap()
        };
        let (proto, dport) = if i % 4 == 0 { (17, 53) } else { (6, 443) };
        let f = frame(proto, &src.to_string(), 40000, &dst.to_string(), dport).build();
        // `mark` asserts kernel == model.
        marks[c.mark(&f, 0) as usize] += 1;
    }
    eprintln!("marks given (none, big, inner, inner-tls, from-big): {marks:?}");
    assert!(
        marks.iter().all(|&n| n >= 10),
        "every rule and no rule should be reached: {marks:?}"
    );
}

/// A prefix for the million: IPv4 mostly /20–/32 with a few shorter, IPv6 /24–/128.
fn million_prefix(rng: &mut StdRng, v4: bool) -> ipnet::IpNet {
    let (addr, len): (std::net::IpAddr, u8) = if v4 {
        let len = if rng.gen_ratio(1, 20_000) {
            rng.gen_range(8..20)
        } else {
            rng.gen_range(20..=32)
        };
        (std::net::Ipv4Addr::from(rng.gen::<u32>()).into(), len)
    } else {
        (
            std::net::Ipv6Addr::from(rng.gen::<u128>()).into(),
            rng.gen_range(24..=128),
        )
    };
    ipnet::IpNet::new(addr, len).unwrap().trunc()
}
