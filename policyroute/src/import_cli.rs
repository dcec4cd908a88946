//! `policyroute import` at the command line: files (or stdin) in, the policy out, what
//! it does not express on stderr.
use std::path::{Path, PathBuf};

use policyroute::control::Options;
use policyroute::import::{self, Imported, Inputs, Source};
use policyroute::policy::{bounded_file, rt_tables::RtTables, Policy};

pub struct Files {
    pub iptables: Vec<PathBuf>,
    pub ip_rules: Vec<PathBuf>,
    pub ip_routes: Vec<PathBuf>,
}

pub fn run(files: &Files, output: Option<&Path>, json: bool, opts: &Options) -> anyhow::Result<()> {
    let mut stdin_used = false;
    let mut read = |paths: &[PathBuf]| -> anyhow::Result<Vec<Source>> {
        paths.iter().map(|p| source(p, &mut stdin_used)).collect()
    };
    let inputs = Inputs {
        iptables: read(&files.iptables)?,
        ip_rules: read(&files.ip_rules)?,
        ip_routes: read(&files.ip_routes)?,
    };
    // Before anything is written: an --rt-tables file that cannot be read is an error.
    let tables = opts.tables()?;
    let imported = import::import(&inputs)?;
    for note in &imported.unexpressed {
        eprintln!("policyroute import: not expressed: {note}");
    }
    check_loads(&imported, &tables);
    if let Some(path) = output {
        // The cause in the message itself: the CLI prints an error's top line only.
        std::fs::write(path, &imported.policy)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&imported)?);
    } else if output.is_none() {
        print!("{}", imported.policy);
    }
    Ok(())
}

fn source(path: &Path, stdin_used: &mut bool) -> anyhow::Result<Source> {
    if path.as_os_str() == "-" {
        anyhow::ensure!(!*stdin_used, "only one input can be `-` (stdin)");
        *stdin_used = true;
        // The cause in the message itself: the CLI prints an error's top line only.
        let text =
            bounded_file::read_capped(std::io::stdin().lock(), bounded_file::MAX_POLICY_FILE)
                .and_then(bounded_file::text)
                .map_err(|e| anyhow::anyhow!("reading stdin: {e}"))?;
        return Ok(Source::new("<stdin>", text));
    }
    let text = bounded_file::read_to_string(path, bounded_file::MAX_POLICY_FILE)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    Ok(Source::new(path.display().to_string(), text))
}

/// Table names must be known where the policy is applied; say so now rather than at
/// `apply` time.
fn check_loads(imported: &Imported, tables: &RtTables) {
    if let Err(e) = Policy::parse(&imported.policy, "imported policy", tables) {
        eprintln!(
            "policyroute import: warning: the policy does not load with this machine's \
             rt_tables (give the names with --rt-tables FILE): {e}"
        );
    }
}
