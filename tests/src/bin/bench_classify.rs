//! `cargo xtask bench classify`: classifier cost per packet, measured by BPF_PROG_TEST_RUN,
//! at 1, 1,000 and 100,000 rules of one shape, hit and miss, IPv4 and IPv6, beside an empty
//! TC program measured in the same run. A second table shows the cost per shape (the
//! documented bound: a miss costs one hash lookup per shape of its family).
use std::{net::IpAddr, time::Duration};

use aya::{programs::SchedClassifier, Ebpf};
use policyroute::{
    compile::compile,
    dataplane::{classifier_mut, Capacity, Dataplane},
    frame::FrameSpec,
    object,
    rule::Rule,
    testrun,
};
use policyroute_tests::{netns::NetNs, rules::rule};

const SIZES: [usize; 3] = [1, 1_000, 100_000];
/// Different packets per measurement (one BPF_PROG_TEST_RUN each), median taken.
const ROUNDS: usize = 31;
const REPEAT: u32 = 50_000;
const TCP: u8 = 6;

fn main() -> anyhow::Result<()> {
    let ns = NetNs::new("bench");
    let _inside = ns.enter();
    let mut noop_obj = Ebpf::load(object::noop())?;
    let noop = classifier_mut(&mut noop_obj, object::NOOP_PROGRAM)?;
    noop.load()?;
    let mut dp = Dataplane::load(Capacity {
        entries: 1 << 22,
        rules: 1 << 18,
    })?;
    println!("classifier cost per packet (BPF_PROG_TEST_RUN, median of {ROUNDS} packets x {REPEAT} runs)\n");
    println!("| rules per family | family | case | ns/packet | empty program | classifier - empty | vs 1 rule |");
    println!("|---:|---|---|---:|---:|---:|---:|");
    let mut one_rule = std::collections::HashMap::new();
    let mut worst_ratio: f64 = 0.0;
    for n in SIZES {
        install(&mut dp, &same_shape_rules(n))?;
        for v6 in [false, true] {
            for hit in [true, false] {
                let frames: Vec<Vec<u8>> = (0..ROUNDS).map(|r| frame(n, v6, hit, r)).collect();
                let cost = median_ns(dp.program()?, &frames)?;
                let base = median_ns(noop, &frames)?;
                let key = (v6, hit);
                let first = *one_rule.entry(key).or_insert(cost);
                let ratio = cost / first;
                worst_ratio = worst_ratio.max(ratio);
                println!(
                    "| {n} | {} | {} | {cost:.1} | {base:.1} | {:.1} | {ratio:.2}x |",
                    if v6 { "IPv6" } else { "IPv4" },
                    if hit { "hit" } else { "miss" },
                    cost - base
                );
            }
        }
    }
    println!("\nworst 100k-vs-1 ratio: {worst_ratio:.2}x (target: at most 1.5x)");
    shapes_table(&mut dp, noop)?;
    Ok(())
}

/// Rule `i` of every family: tcp from one /32 (/128) source to destination port p(i).
fn same_shape_rules(n: usize) -> Vec<Rule> {
    let mut rules = Vec::with_capacity(2 * n);
    for i in 0..n {
        let p = port(i);
        rules.push(
            rule(&format!("v4-{i}"), 1)
                .proto(TCP)
                .src(&format!("{}/32", v4_src(i)))
                .dport(&[[p, p]])
                .build(),
        );
        rules.push(
            rule(&format!("v6-{i}"), 2)
                .proto(TCP)
                .src(&format!("{}/128", v6_src(i)))
                .dport(&[[p, p]])
                .build(),
        );
    }
    rules
}

fn port(i: usize) -> u16 {
    1000 + (i % 50_000) as u16
}

/// Addresses inside 198.18.0.0/15 (131,072 of them) and 2001:db8::/32.
fn v4_src(i: usize) -> IpAddr {
    IpAddr::from((0xc612_0000u32 + i as u32).to_be_bytes())
}

fn v6_src(i: usize) -> IpAddr {
    IpAddr::from(((0x2001_0db8_u128 << 96) | i as u128).to_be_bytes())
}

/// Round `r`'s packet: a hit on a rule spread across the policy, or a miss.
fn frame(n: usize, v6: bool, hit: bool, r: usize) -> Vec<u8> {
    let i = (r * 7919) % n;
    let src = if v6 { v6_src(i) } else { v4_src(i) };
    let dst: IpAddr = if v6 {
        "2001:db8:ffff::1".parse().unwrap()
    } else {
        "203.0.113.1".parse().unwrap()
    };
    let dport = if hit { port(i) } else { 999 };
    FrameSpec::new(TCP, src, 40000 + r as u16, dst, dport).build()
}

fn install(dp: &mut Dataplane, rules: &[Rule]) -> anyhow::Result<()> {
    let compiled = compile(rules, u32::MAX, &dp.maps.live_shapes()?)?;
    dp.maps.install(&compiled)?;
    Ok(())
}

fn median_ns(prog: &SchedClassifier, frames: &[Vec<u8>]) -> anyhow::Result<f64> {
    let mut samples: Vec<Duration> = frames
        .iter()
        .map(|f| testrun::run(prog, f, 0, REPEAT).map(|o| o.duration))
        .collect::<Result<_, _>>()?;
    samples.sort();
    Ok(samples[samples.len() / 2].as_nanos() as f64)
}

/// Misses scan every shape of their family: the worst case, by shape count.
fn shapes_table(dp: &mut Dataplane, noop: &SchedClassifier) -> anyhow::Result<()> {
    println!("\nworst case (miss) by number of IPv4 shapes, 1,000 rules\n");
    println!("| shapes | ns/packet | empty program | per shape |");
    println!("|---:|---:|---:|---:|");
    for shapes in [1usize, 8, 32, 64] {
        let rules: Vec<Rule> = (0..1000)
            .map(|i| {
                let s = i % shapes;
                let dst_len = 32 - (s % 32) as u8;
                let src_len = if s < 32 { 32 } else { 24 };
                let dst = ipnet::Ipv4Net::new(v4_src(i).to_string().parse()?, dst_len)?.trunc();
                let src = ipnet::Ipv4Net::new("192.0.2.0".parse()?, src_len)?.trunc();
                Ok(rule(&format!("s{i}"), 1)
                    .proto(TCP)
                    .src(&src.to_string())
                    .dst(&dst.to_string())
                    .build())
            })
            .collect::<anyhow::Result<_>>()?;
        install(dp, &rules)?;
        let frames: Vec<Vec<u8>> = (0..ROUNDS)
            .map(|r| {
                FrameSpec::new(
                    TCP,
                    "203.0.113.5".parse().unwrap(),
                    1000 + r as u16,
                    "203.0.113.9".parse().unwrap(),
                    80,
                )
                .build()
            })
            .collect();
        let cost = median_ns(dp.program()?, &frames)?;
        let base = median_ns(noop, &frames)?;
        println!(
            "| {shapes} | {cost:.1} | {base:.1} | {:.1} |",
            (cost - base) / shapes as f64
        );
    }
    Ok(())
}
