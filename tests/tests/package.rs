//! The Debian package `cargo xtask dist` builds (`cargo xtask test` builds it first and
//! names it in `POLICYROUTE_DEB`), unpacked into a throwaway root: every file an operator
//! expects is there, and the binary in it runs.
use std::{path::Path, process::Command};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_package_holds_what_an_operator_needs() {
    let deb = std::env::var("POLICYROUTE_DEB")
        .expect("POLICYROUTE_DEB names the package: run the tests through `cargo xtask test`");
    let root = std::env::temp_dir().join(format!("prt-{}-deb-root", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    run(Command::new("dpkg-deb").args(["-x", &deb]).arg(&root));
    let files = [
        "usr/bin/policyroute",
        "lib/systemd/system/policyroute.service",
        "usr/share/bash-completion/completions/policyroute",
        "usr/share/zsh/vendor-completions/_policyroute",
        "usr/share/fish/vendor_completions.d/policyroute.fish",
        "usr/share/man/man8/policyroute.8.gz",
        "etc/policyroute/example.toml",
    ];
    let missing: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| !root.join(f).is_file())
        .collect();
    let version = run(Command::new(root.join("usr/bin/policyroute")).arg("--version"));
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/policyroute.service"));
    let _ = std::fs::remove_dir_all(&root);
    assert!(missing.is_empty(), "missing from the package: {missing:?}");
    assert!(version.starts_with("policyroute "), "{version}");
    assert!(unit.unwrap().contains("ExecStart=/usr/bin/policyroute run"));
    let fields = run(Command::new("dpkg-deb").args(["-f", &deb, "Package", "Section"]));
    assert!(fields.contains("Package: policyroute"), "{fields}");
    assert!(fields.contains("Section: net"), "{fields}");
    assert!(Path::new(&deb).is_file());
}
