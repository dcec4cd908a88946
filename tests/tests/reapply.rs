//! Re-applying an edited policy takes shortcuts: unchanged `[[rule]]` tables are taken from
//! the recorded policy, and when the rules kept their places only the edited rules' entries
//! are looked up in the kernel. Here a series of edits goes through them, and after each
//! the full comparison (`check`, which reads every entry) finds nothing out of place, and
//! real flows follow the edited rules.
use policyroute_tests::{
    cli,
    fixture::{self, TempFile, GATEWAY_ISP2},
    topology::{Arrival, Place, Topology, LAN_HOST},
};

fn rules(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| {
            format!(
                "[[rule]]\nname = \"p{p}\"\nproto = \"tcp\"\ndport = {p}\ngateway = \"isp2\"\n\n"
            )
        })
        .collect()
}

fn place(a: Option<Arrival>) -> Place {
    a.expect("the flow arrived somewhere").at
}

#[test]
fn edits_through_the_shortcuts_leave_exactly_the_policy() {
    let t = Topology::new("reapply");
    // Fifty more rules that no edit touches: a full comparison reads their entries too.
    let fillers: Vec<u16> = (10_000..10_050).collect();
    let policy = |ports: &[u16]| {
        let rules = [rules(ports), rules(&fillers)];
        fixture::policy(
            GATEWAY_ISP2,
            &[&rules[0], &rules[1]],
            "ingress = [\"lan0\"]",
        )
    };
    let file = TempFile::new("reapply.toml", &policy(&[1001, 1002, 1003, 1004]));
    cli::ok(&t.router, &["apply", "-c", file.arg()]);
    let edits: [&[u16]; 5] = [
        // One rule's port changed in place (the entry lookup path).
        &[1001, 2002, 1003, 1004],
        // Two rules swapped (both at new places: still in place, both looked up).
        &[1003, 2002, 1001, 1004],
        // A rule added in the middle (every later rule moves: the full comparison).
        &[1003, 2002, 3000, 1001, 1004],
        // A rule removed.
        &[1003, 3000, 1001, 1004],
        // Back to the start.
        &[1001, 1002, 1003, 1004],
    ];
    let mut previous = 4;
    for (i, ports) in edits.into_iter().enumerate() {
        file.write(&policy(ports));
        let report = cli::json(&t.router, &["apply", "-c", file.arg()]);
        let compared = report["entries"]["compared"].as_u64().expect("compared");
        // Edits that keep every rule in its place look at the edited rules' entries only
        // (old and new, two families each); others read all 100-odd.
        let in_place = ports.len() == previous;
        assert_eq!(compared <= 16, in_place, "edit {i} {ports:?}: {report}");
        previous = ports.len();
        let check = cli::run(&t.router, &["check"]);
        assert!(check.status.success(), "after {ports:?}: {}", check.stdout);
        for &port in ports {
            let at = place(t.tcp(LAN_HOST, 0, "198.18.0.1", port));
            assert_eq!(at, Place::Up2, "port {port} after {ports:?}");
        }
        assert_eq!(place(t.tcp(LAN_HOST, 0, "198.18.0.1", 2222)), Place::Up1);
    }
}
