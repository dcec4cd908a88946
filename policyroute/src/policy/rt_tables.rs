//! Routing table names (`rt_tables`), so a policy can say `table = "isp2"` like `ip` does.
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Where iproute2 keeps its configuration: `/etc` for the administrator, a vendor directory
/// for the distribution (`/usr/lib/iproute2` upstream, `/usr/share/iproute2` on Debian).
const ETC_DIR: &str = "/etc/iproute2";
const USR_DIRS: [&str; 2] = ["/usr/lib/iproute2", "/usr/share/iproute2"];

/// The kernel's main table (`lookup main`).
pub const MAIN: u32 = libc::RT_TABLE_MAIN as u32;

/// The kernel's own tables, which a policy may not use: also the names iproute2 knows
/// without any file (`unspec` comes from the shipped file, but every distribution has it,
/// and a policy must not be able to pick table 0 by a name that happens to be missing).
const RESERVED: [(u32, &str); 4] = [
    (libc::RT_TABLE_UNSPEC as u32, "unspec"),
    (libc::RT_TABLE_DEFAULT as u32, "default"),
    (MAIN, "main"),
    (libc::RT_TABLE_LOCAL as u32, "local"),
];

/// The name of one of the kernel's own tables.
pub fn reserved(id: u32) -> Option<&'static str> {
    RESERVED.iter().find(|(t, _)| *t == id).map(|(_, n)| *n)
}

/// A table as `ip` shows it without rt_tables files: the kernel's own by name, others
/// by number.
pub fn display(id: u32) -> String {
    reserved(id)
        .filter(|_| id != 0)
        .map_or_else(|| id.to_string(), str::to_string)
}

/// A two-way map between routing table ids and names. When a name or an id is defined
/// twice, the later definition wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtTables {
    by_name: BTreeMap<String, u32>,
    by_id: BTreeMap<u32, String>,
}

impl Default for RtTables {
    /// Only the built-in names: `unspec` (0), `default` (253), `main` (254), `local` (255).
    fn default() -> Self {
        Self::builtin()
    }
}

impl RtTables {
    /// Only the built-in names: `unspec` (0), `default` (253), `main` (254), `local` (255).
    pub fn builtin() -> Self {
        let empty = Self {
            by_name: BTreeMap::new(),
            by_id: BTreeMap::new(),
        };
        RESERVED
            .iter()
            .fold(empty, |t, &(id, name)| t.with_entry(id, name))
    }

    /// The names `ip` would use on this machine. Missing files are fine.
    pub fn system() -> Self {
        let usr: Vec<&Path> = USR_DIRS.iter().map(Path::new).collect();
        Self::from_dirs(Path::new(ETC_DIR), &usr)
    }

    /// Reads the files the way iproute2 (6.5 and later) does: `rt_tables` from `etc`, or
    /// from the first vendor directory that has one if `etc` has none; then the vendor
    /// directories' `rt_tables.d/*.conf` except those that `etc/rt_tables.d` overrides by
    /// file name; then `etc/rt_tables.d/*.conf`. Files of a directory are read in name
    /// order (iproute2 uses readdir order, which is unspecified).
    pub fn from_dirs(etc: &Path, usr: &[&Path]) -> Self {
        let main = std::iter::once(etc)
            .chain(usr.iter().copied())
            .map(|dir| dir.join("rt_tables"))
            .find(|path| path.exists());
        let etc_d = conf_files(&etc.join("rt_tables.d"));
        let etc_names: Vec<_> = etc_d.iter().filter_map(|p| p.file_name()).collect();
        let usr_d = usr
            .iter()
            .flat_map(|dir| conf_files(&dir.join("rt_tables.d")))
            .filter(|p| p.file_name().is_none_or(|n| !etc_names.contains(&n)));
        main.into_iter()
            .chain(usr_d)
            .chain(etc_d.iter().cloned())
            .fold(Self::builtin(), |t, path| {
                let max = super::bounded_file::MAX_RT_TABLES_FILE;
                t.with_text(&super::bounded_file::read_to_string(&path, max).unwrap_or_default())
            })
    }

    /// The built-in names plus the entries of one `rt_tables` file.
    pub fn parse(text: &str) -> Self {
        Self::builtin().with_text(text)
    }

    /// Adds the entries of `rt_tables` text: `ID NAME` per line, `ID` decimal or `0x` hex,
    /// `#` starts a comment. Malformed lines are skipped (iproute2 prints "Database ... is
    /// corrupted" and ignores the rest of the file; a policy tool should not be stricter
    /// than `ip` about a file it does not own, nor silently lose the later lines).
    pub fn with_text(self, text: &str) -> Self {
        text.lines()
            .filter_map(parse_line)
            .fold(self, |t, (id, name)| t.with_entry(id, name))
    }

    /// Adds or replaces one entry.
    pub fn with_entry(mut self, id: u32, name: &str) -> Self {
        if let Some(old) = self.by_id.insert(id, name.to_owned()) {
            if self.by_name.get(&old) == Some(&id) {
                self.by_name.remove(&old);
            }
        }
        if let Some(old_id) = self.by_name.insert(name.to_owned(), id) {
            if self.by_id.get(&old_id).is_some_and(|n| n == name) && old_id != id {
                self.by_id.remove(&old_id);
            }
        }
        self
    }

    pub fn id(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    pub fn name(&self, id: u32) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }
}

/// `*.conf` files of `dir` in name order (iproute2 skips dot files and requires a name
/// longer than just ".conf").
fn conf_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.') && n.len() > 5 && n.ends_with(".conf"))
        })
        .collect();
    files.sort();
    files
}

fn parse_line(line: &str) -> Option<(u32, &str)> {
    let line = line.split('#').next().unwrap_or_default();
    let mut words = line.split_whitespace();
    let (id, name) = (words.next()?, words.next()?);
    let id = match id.strip_prefix("0x").or_else(|| id.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
        None => id.parse().ok()?,
    };
    Some((id, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
#
# reserved values
#
255\tlocal
254\tmain
253\tdefault
0\tunspec
#
# local
#
100 isp2   # second uplink
0x65 cheap
  102\tlte
not-a-number bogus
103
";

    #[test]
    fn parses_ids_names_comments_and_hex() {
        let t = RtTables::parse(SAMPLE);
        assert_eq!(t.id("isp2"), Some(100));
        assert_eq!(t.id("cheap"), Some(0x65));
        assert_eq!(t.id("lte"), Some(102));
        assert_eq!(t.name(101), Some("cheap"));
        assert_eq!(t.id("main"), Some(254));
        assert_eq!(t.id("bogus"), None);
        assert_eq!(t.name(103), None);
    }

    #[test]
    fn builtin_names_exist_without_a_file() {
        let t = RtTables::parse("");
        assert_eq!(t.id("unspec"), Some(0));
        assert_eq!(t.id("default"), Some(253));
        assert_eq!(t.id("main"), Some(254));
        assert_eq!(t.id("local"), Some(255));
        assert_eq!(t, RtTables::default());
    }

    #[test]
    fn later_definitions_win() {
        let t = RtTables::parse("100 a\n100 b\n200 c\n300 c\n");
        assert_eq!(t.name(100), Some("b"));
        assert_eq!(t.id("a"), None);
        assert_eq!(t.id("b"), Some(100));
        assert_eq!(t.id("c"), Some(300));
        assert_eq!(t.name(200), None);
    }

    #[test]
    fn etc_overrides_vendor_files_like_iproute2() {
        let root = std::env::temp_dir().join(format!("rt_tables_test_{}", std::process::id()));
        let (etc, usr) = (root.join("etc"), root.join("usr"));
        for d in [etc.join("rt_tables.d"), usr.join("rt_tables.d")] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(usr.join("rt_tables"), "10 vendor_main\n").unwrap();
        fs::write(usr.join("rt_tables.d/a.conf"), "11 vendor_a\n").unwrap();
        fs::write(usr.join("rt_tables.d/b.conf"), "12 vendor_b\n").unwrap();
        fs::write(usr.join("rt_tables.d/b.txt"), "13 not_conf\n").unwrap();
        fs::write(etc.join("rt_tables.d/b.conf"), "14 admin_b\n").unwrap();

        let t = RtTables::from_dirs(&etc, &[&usr]);
        assert_eq!(
            t.id("vendor_main"),
            Some(10),
            "no etc/rt_tables: vendor's is read"
        );
        assert_eq!(t.id("vendor_a"), Some(11));
        assert_eq!(t.id("vendor_b"), None, "etc/rt_tables.d/b.conf replaces it");
        assert_eq!(t.id("not_conf"), None);
        assert_eq!(t.id("admin_b"), Some(14));

        fs::write(etc.join("rt_tables"), "20 admin_main\n").unwrap();
        let t = RtTables::from_dirs(&etc, &[&usr]);
        assert_eq!(t.id("admin_main"), Some(20));
        assert_eq!(
            t.id("vendor_main"),
            None,
            "etc/rt_tables replaces the vendor's"
        );
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn missing_directories_give_the_builtins() {
        let nowhere = Path::new("/nonexistent/policyroute");
        assert_eq!(
            RtTables::from_dirs(nowhere, &[nowhere]),
            RtTables::builtin()
        );
    }
}
