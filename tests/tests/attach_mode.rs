//! `[attach] mode`: the classic tc path (clsact qdisc, direct-action bpf filter) is found,
//! adopted, updated and removed like tcx, leaves other filters alone, and `status` names
//! the path in use. `tc` (iproute2) is the independent witness. Forwarding over this path
//! is covered by the whole suite run with `POLICYROUTE_TEST_ATTACH_MODE=tc`.
use policyroute_tests::{
    cli,
    fixture::{self, lone_router, TempFile, GATEWAY_ISP2, RULES_WEB_DNS},
    netns::NetNs,
};

fn policy(mode: &str, rules: &[&str]) -> String {
    let attach = format!("ingress = [\"lan0\"]\nmode = \"{mode}\"\n");
    fixture::policy(GATEWAY_ISP2, rules, &attach)
}

fn filters(ns: &NetNs) -> String {
    ns.exec("tc", &["filter", "show", "dev", "lan0", "ingress"])
}

fn status(ns: &NetNs) -> serde_json::Value {
    cli::json(ns, &["status"])
}

fn tcx_available(ns: &NetNs) -> bool {
    status(ns)["tcx_available"] == true
}

#[test]
fn tc_filters_are_adopted_updated_and_flushed_and_foreign_ones_stay() {
    let ns = lone_router("tcmode");
    ns.exec("tc", &["qdisc", "add", "dev", "lan0", "clsact"]);
    // u32 is the classifier every kernel here has built in or as a module.
    let foreign = [
        "filter", "add", "dev", "lan0", "ingress", "prio", "1", "u32", "match", "u32", "0", "0",
    ];
    ns.exec("tc", &foreign);
    let file = TempFile::new("tc.toml", &policy("tc", &[RULES_WEB_DNS]));
    cli::ok(&ns, &["apply", "-c", file.arg()]);
    let s = status(&ns);
    assert_eq!(s["attach_mode"], "tc", "{s}");
    assert_eq!(s["hooks"][0]["hook"], "tc-ingress", "{s}");
    let id = s["hooks"][0]["program_id"].clone();
    let f = filters(&ns);
    assert!(
        f.contains("policyroute_tc") && f.contains("direct-action"),
        "{f}"
    );
    assert!(f.contains("u32"), "{f}");
    assert!(cli::ok(&ns, &["status"]).contains("attach mode tc"));

    // A later process finds the filter and keeps it: nothing to attach, same program.
    let again = cli::json(&ns, &["apply", "-c", file.arg()]);
    assert!(again["attach"].as_array().unwrap().is_empty(), "{again}");
    assert_eq!(status(&ns)["hooks"][0]["program_id"], id);

    // Fewer rules: the maps are updated in place, the filter stays.
    let fewer = TempFile::new("tc-web.toml", &policy("tc", &[]));
    cli::ok(&ns, &["apply", "-c", fewer.arg()]);
    assert_eq!(status(&ns)["hooks"].as_array().unwrap().len(), 1);

    cli::ok(&ns, &["flush"]);
    let f = filters(&ns);
    assert!(!f.contains("policyroute"), "{f}");
    assert!(f.contains("u32"), "a foreign filter stays: {f}");
    assert!(cli::owned_objects(&ns).is_empty());
}

#[test]
fn switching_modes_moves_the_hook() {
    let ns = lone_router("tcswitch");
    let tc = TempFile::new("tc.toml", &policy("tc", &[RULES_WEB_DNS]));
    cli::ok(&ns, &["apply", "-c", tc.arg()]);
    if !tcx_available(&ns) {
        // Kernels before 6.6: forcing tcx is one line naming the key and the kernel.
        let tcx = TempFile::new("tcx.toml", &policy("tcx", &[RULES_WEB_DNS]));
        let out = cli::run(&ns, &["apply", "-c", tcx.arg()]);
        let err = &out.stderr;
        assert!(!out.status.success());
        assert!(err.contains("attach.mode: tcx needs Linux 6.6"), "{err}");
        assert_eq!(status(&ns)["attach_mode"], "tc");
        cli::ok(&ns, &["flush"]);
        return;
    }
    let tcx = TempFile::new("tcx.toml", &policy("tcx", &[RULES_WEB_DNS]));
    cli::ok(&ns, &["apply", "-c", tcx.arg()]);
    let s = status(&ns);
    assert_eq!(s["attach_mode"], "tcx", "{s}");
    assert!(!filters(&ns).contains("policyroute"));
    cli::ok(&ns, &["apply", "-c", tc.arg()]);
    assert_eq!(status(&ns)["attach_mode"], "tc");
    let auto = TempFile::new("auto.toml", &policy("auto", &[RULES_WEB_DNS]));
    cli::ok(&ns, &["apply", "-c", auto.arg()]);
    assert_eq!(status(&ns)["attach_mode"], "tcx");
    cli::ok(&ns, &["flush"]);
    assert!(cli::owned_objects(&ns).is_empty());
}
