//! Differential test: random policies and frames (overlapping rules, malformed frames)
//! through the loaded kernel program and through the reference model. Marks and per-rule
//! counters must agree exactly.
use policyroute::{plan::compile::CompileError, reference::classifier as reference};
use policyroute_tests::{classifier::Classifier, netns::NetNs, random};
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
