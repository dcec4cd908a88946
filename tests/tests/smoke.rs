use policyroute::{
    compile::compile, dataplane::Dataplane, frame::FrameSpec, ports::PortSet, rule::*, testrun,
};
use policyroute_tests::netns::NetNs;

#[test]
fn loads_and_marks() {
    let ns = NetNs::new("smoke");
    let _in = ns.enter();
    let mut dp = Dataplane::load(None).expect("load");
    let rules = vec![Rule {
        name: "a".into(),
        matcher: Match {
            proto: Some(6),
            dport: Some(PortSet::single(80)),
            ..Default::default()
        },
        mark: 4,
    }];
    let c = compile(&rules, 0xff, &Default::default()).unwrap();
    dp.maps.install(&c).unwrap();
    let f = FrameSpec::new(
        6,
        "192.0.2.1".parse().unwrap(),
        1234,
        "198.51.100.1".parse().unwrap(),
        80,
    )
    .build();
    let out = testrun::run(dp.program().unwrap(), &f, 0x100, 1).unwrap();
    assert_eq!(out.mark, 0x104);
}
