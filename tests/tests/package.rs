//! The Debian package `cargo xtask dist` builds (`cargo xtask test` builds it first and
//! names it in `POLICYROUTE_DEB`):
//!
//! - unpacked into a throwaway directory: every file an operator expects is there, the
//!   binary in it runs, and its manual pages render without warnings;
//! - installed, upgraded, removed and purged by dpkg in a throwaway root (`dpkg --root`,
//!   which runs the maintainer scripts chrooted there, with a static busybox as /bin/sh),
//!   where `systemctl`, `deb-systemd-helper`, `deb-systemd-invoke` and `policyroute` are
//!   fakes that log their arguments: the calls are what the maintainer scripts promise.
//!   Nothing reaches the host's systemd, /etc or network configuration: the root is a
//!   directory of its own, and dpkg runs in a network namespace of its own besides.
use std::{
    fs,
    os::unix::fs::{symlink, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

use policyroute_tests::manpage;

use policyroute_tests::cli::succeeds as run;

/// The tests here write executables and then run them. A test beside it forking at that
/// moment would keep the file open for writing in its child until that child's exec, and
/// running the file then fails with ETXTBSY ("Text file busy", seen once in CI): they
/// take turns instead (each takes about a second).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn deb() -> String {
    std::env::var("POLICYROUTE_DEB")
        .expect("POLICYROUTE_DEB names the package: run the tests through `cargo xtask test`")
}

/// A directory of this test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("prt-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_package_holds_what_an_operator_needs() {
    let _turn = one_at_a_time();
    let deb = deb();
    let root = TempDir::new("deb-root");
    let root = &root.0;
    run(Command::new("dpkg-deb").args(["-x", &deb]).arg(root));
    let files = [
        "usr/bin/policyroute",
        "usr/lib/systemd/system/policyroute.service",
        "usr/share/bash-completion/completions/policyroute",
        "usr/share/zsh/vendor-completions/_policyroute",
        "usr/share/fish/vendor_completions.d/policyroute.fish",
        "usr/share/man/man8/policyroute.8.gz",
        "usr/share/man/man5/policyroute.toml.5.gz",
        "usr/share/doc/policyroute/README.md",
        "etc/policyroute/example.toml",
    ];
    let missing: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| !root.join(f).is_file())
        .collect();
    assert!(missing.is_empty(), "missing from the package: {missing:?}");
    let version = run(Command::new(root.join("usr/bin/policyroute")).arg("--version"));
    assert!(version.starts_with("policyroute "), "{version}");
    let unit = fs::read_to_string(root.join("usr/lib/systemd/system/policyroute.service"));
    assert!(unit.unwrap().contains("ExecStart=/usr/bin/policyroute run"));
    // The pages the package installs render cleanly and refer only to pages that exist
    // (cli_docs.rs checks their contents).
    for page in [
        "usr/share/man/man8/policyroute.8.gz",
        "usr/share/man/man5/policyroute.toml.5.gz",
    ] {
        let (text, warnings) = manpage::render(&root.join(page));
        assert!(warnings.is_empty(), "{page}: {warnings}");
        let unknown = manpage::unknown_references(&text);
        assert!(unknown.is_empty(), "{page} refers to {unknown:?}");
    }
    let fields = run(Command::new("dpkg-deb").args(["-f", &deb, "Package", "Section", "Depends"]));
    assert!(fields.contains("Package: policyroute"), "{fields}");
    assert!(fields.contains("Section: net"), "{fields}");
    assert!(fields.contains("init-system-helpers"), "{fields}");
    assert!(Path::new(&deb).is_file());
}

/// The fakes the maintainer scripts meet in the throwaway root. Each logs its name and
/// arguments to /calls. deb-systemd-helper keeps the state it reports (`debian-installed`
/// after `update-state`, `was-enabled` while /var/lib/fake-systemd/enabled exists);
/// policyroute reports a flush that removed something in the root namespace only.
const FAKES: [(&str, &str); 4] = [
    (
        "usr/bin/systemctl",
        "#!/bin/sh\necho \"systemctl $*\" >> /calls\n",
    ),
    (
        "usr/bin/deb-systemd-invoke",
        "#!/bin/sh\necho \"deb-systemd-invoke $*\" >> /calls\n",
    ),
    (
        "usr/bin/deb-systemd-helper",
        "#!/bin/sh\n\
         echo \"deb-systemd-helper $*\" >> /calls\n\
         state=/var/lib/fake-systemd\n\
         case \"$*\" in\n\
         *debian-installed*) [ -e $state/installed ] ;;\n\
         *was-enabled*) [ -e $state/enabled ] ;;\n\
         *update-state*) mkdir -p $state && touch $state/installed ;;\n\
         *purge*) rm -f $state/installed $state/enabled ;;\n\
         esac\n",
    ),
    // Ahead of the package's /usr/bin/policyroute in the maintainer scripts' PATH.
    (
        "usr/local/sbin/policyroute",
        "#!/bin/sh\n\
         echo \"policyroute $*\" >> /calls\n\
         case \"$1\" in\n\
         -n) echo 'removed 0 hook(s), 0 ip rule(s), 0 route(s)' ;;\n\
         *) echo 'removed 1 hook(s), 2 ip rule(s), 2 route(s), pins' ;;\n\
         esac\n",
    ),
];

/// A root dpkg can install into: an empty package database, a static busybox for /bin/sh
/// and the tools the scripts use, /dev/null, the fakes, and /run/systemd/system (a system
/// running systemd, as the scripts test for it).
fn throwaway_root(root: &Path) {
    for dir in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "bin",
        "usr/bin",
        "usr/local/sbin",
        "run/systemd/system",
        "tmp",
    ] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    // The scripts send output to /dev/null: without it the redirection fails, and the
    // command with it.
    fs::create_dir_all(root.join("dev")).unwrap();
    run(Command::new("mknod")
        .args(["-m", "666"])
        .arg(root.join("dev/null"))
        .args(["c", "1", "3"]));
    let busybox = run(Command::new("which").arg("busybox"));
    fs::copy(busybox.trim(), root.join("bin/busybox"))
        .expect("a static busybox (cargo xtask setup installs busybox-static)");
    for applet in run(Command::new(root.join("bin/busybox")).arg("--list")).lines() {
        if applet != "busybox" {
            symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    for (path, script) in FAKES {
        fs::write(root.join(path), script).unwrap();
        fs::set_permissions(root.join(path), fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// `dpkg --root=ROOT ARGS` in a network namespace of its own; stdout and stderr.
fn dpkg(root: &Path, args: &[&str]) -> String {
    let out = Command::new("unshare")
        .args(["--net", "--", "dpkg", "--force-depends"])
        .arg(format!("--root={}", root.display()))
        .args(args)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .expect("run dpkg");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "dpkg {args:?}: {text}");
    text
}

/// The calls logged since the last look, and a fresh log.
fn calls(root: &Path) -> Vec<String> {
    let log = root.join("calls");
    let text = fs::read_to_string(&log).unwrap_or_default();
    let _ = fs::remove_file(&log);
    text.lines().map(str::to_string).collect()
}

/// A copy of the package with a higher version, for an upgrade.
fn next_version(deb: &str, dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    run(Command::new("dpkg-deb").args(["-R", deb]).arg(&tree));
    let control = tree.join("DEBIAN/control");
    let text = fs::read_to_string(&control).unwrap();
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .expect("a version");
    let text = text.replace(
        &format!("Version: {version}"),
        &format!("Version: {version}+next"),
    );
    fs::write(&control, text).unwrap();
    let next = dir.join("next.deb");
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Znone", "-b"])
        .arg(&tree)
        .arg(&next));
    next
}

/// Named network namespaces as prerm finds them, made of plain files: `blue`; `green`,
/// which a `policyroute run` not started by the service keeps (its daemon file names PID
/// 4242, whose /proc/4242/ns/net is green's inode: a hard link); `red`, whose daemon file
/// was left by a killed daemon (PID 999 does not exist); and net-77, a namespace without a
/// name with socket hooks.
fn namespaces(root: &Path) {
    for dir in ["run/netns", "run/policyroute", "proc/4242/ns"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    for name in ["blue", "green", "red"] {
        fs::write(root.join("run/netns").join(name), "").unwrap();
    }
    fs::hard_link(root.join("run/netns/green"), root.join("proc/4242/ns/net")).unwrap();
    let inode = |name: &str| {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(root.join("run/netns").join(name))
            .unwrap()
            .ino()
    };
    let daemon = |name: &str, pid: u32| {
        let file = root.join(format!("run/policyroute/net-{}.daemon", inode(name)));
        fs::write(
            file,
            format!("{{\"pid\":{pid},\"started\":1,\"last_reconcile\":null}}"),
        )
        .unwrap();
    };
    daemon("green", 4242);
    daemon("red", 999);
    fs::write(root.join("run/policyroute/net-77.cgroups"), "/\n").unwrap();
}

#[test]
fn install_upgrade_remove_and_purge_run_the_promised_maintainer_scripts() {
    let _turn = one_at_a_time();
    let deb = deb();
    let dir = TempDir::new("deb-lifecycle");
    let root = dir.0.join("root");
    throwaway_root(&root);
    let next = next_version(&deb, &dir.0);

    // A first install reloads systemd and neither enables nor starts the service.
    let out = dpkg(&root, &["-i", &deb]);
    assert_eq!(
        calls(&root),
        [
            "deb-systemd-helper debian-installed policyroute.service",
            "deb-systemd-helper update-state policyroute.service",
            "systemctl --system daemon-reload",
        ],
        "{out}"
    );
    assert!(out.contains("write /etc/policyroute/policy.toml"), "{out}");
    assert!(root.join("usr/bin/policyroute").is_file());

    // The operator enables the service; an upgrade keeps it enabled and restarts it if it
    // runs, and stops nothing before (the old daemon runs until the new one replaces it).
    fs::create_dir_all(root.join("var/lib/fake-systemd")).unwrap();
    fs::write(root.join("var/lib/fake-systemd/enabled"), "").unwrap();
    let out = dpkg(&root, &["-i", next.to_str().unwrap()]);
    assert_eq!(
        calls(&root),
        [
            // The old package's postrm upgrade.
            "systemctl --system daemon-reload",
            // The new package's postinst configure OLD-VERSION.
            "deb-systemd-helper debian-installed policyroute.service",
            "deb-systemd-helper unmask policyroute.service",
            "deb-systemd-helper --quiet was-enabled policyroute.service",
            "deb-systemd-helper enable policyroute.service",
            "deb-systemd-helper update-state policyroute.service",
            "systemctl --system daemon-reload",
            "deb-systemd-invoke try-restart policyroute.service",
        ],
        "{out}"
    );
    assert!(!out.contains("write /etc/policyroute/policy.toml"), "{out}");

    // Removal stops the service, then flushes the root namespace and each named one that
    // no other daemon keeps, naming what it leaves; then systemd forgets the unit.
    namespaces(&root);
    let out = dpkg(&root, &["-r", "policyroute"]);
    assert_eq!(
        calls(&root),
        [
            "deb-systemd-invoke stop policyroute.service",
            "policyroute flush",
            "policyroute -n blue flush",
            "policyroute -n red flush",
            "systemctl --system daemon-reload",
            "deb-systemd-helper mask policyroute.service",
        ],
        "{out}"
    );
    for said in [
        "policyroute: root network namespace: removed 1 hook(s), 2 ip rule(s), 2 route(s), pins",
        "policyroute: network namespace green: left in place: 'policyroute run' (PID 4242)",
        "policyroute: network namespace net-77 (no name in /run/netns): not flushed",
    ] {
        assert!(out.contains(said), "no {said:?} in {out}");
    }
    // Namespaces where nothing was removed are not mentioned.
    assert!(!out.contains("namespace blue"), "{out}");
    assert!(!root.join("usr/bin/policyroute").exists());
    assert!(
        root.join("etc/policyroute/example.toml").is_file(),
        "a conffile stays"
    );

    // Purging forgets the unit's state and the example policy.
    let out = dpkg(&root, &["-P", "policyroute"]);
    assert_eq!(
        calls(&root),
        [
            "systemctl --system daemon-reload",
            "deb-systemd-helper purge policyroute.service",
            "deb-systemd-helper unmask policyroute.service",
        ],
        "{out}"
    );
    assert!(!root.join("etc/policyroute/example.toml").exists());
}

/// The maintainer scripts are POSIX sh: dash (Debian's /bin/sh) parses them, and they carry
/// the systemd sections once, where their sources have the token cargo-deb replaces (it
/// replaces every occurrence, comments included).
#[test]
fn the_maintainer_scripts_are_posix_sh_with_their_systemd_sections() {
    let _turn = one_at_a_time();
    let dir = TempDir::new("deb-control");
    run(Command::new("dpkg-deb").args(["-e", &deb()]).arg(&dir.0));
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/debian");
    for (script, section) in [
        ("postinst", "deb-systemd-invoke try-restart"),
        ("prerm", "deb-systemd-invoke stop"),
        ("postrm", "deb-systemd-helper purge"),
    ] {
        let source = fs::read_to_string(sources.join(script)).unwrap();
        assert_eq!(source.matches("#DEBHELPER#").count(), 1, "{script}");
        assert!(source.contains("\n#DEBHELPER#\n"), "{script}");
        let path = dir.0.join(script);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.matches("# Automatically added by cargo-deb").count(),
            source_sections(script),
            "{script}: {text}"
        );
        assert!(text.starts_with("#!/bin/sh\n"), "{script}");
        assert!(text.contains("\nset -e\n"), "{script}");
        assert!(!text.contains("#DEBHELPER#"), "{script}: {text}");
        assert!(text.contains(section), "{script}: {text}");
        run(Command::new("dash").arg("-n").arg(&path));
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{script}");
    }
}

/// The systemd sections cargo-deb puts into each script (dh_installsystemd's: enablement
/// and restart in postinst, stop in prerm, reload and mask or purge in postrm).
fn source_sections(script: &str) -> usize {
    match script {
        "postinst" | "postrm" => 2,
        _ => 1,
    }
}
