//! Test executables: built by cargo (`--no-run`), run here one after another (as `cargo
//! test` would), their output passed through as it comes, results and each test's time
//! collected.
//!
//! Why not `cargo test`: libtest reports a test's time only with
//! `-Z unstable-options --report-time`, which a stable-built harness accepts when
//! `RUSTC_BOOTSTRAP` is set in its environment. Setting that for `cargo test` would reach
//! rustc and the build scripts too (some probe for nightly features when they see it);
//! here it reaches the test executables alone.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::bail;

use crate::cmd::root;

/// A test executable and where cargo would run it.
#[derive(Clone)]
pub struct TestBinary {
    /// The target's name (`lifecycle`, `policyroute`, ...).
    pub name: String,
    /// `test` for a file of tests/, `lib` or `bin` for unit tests.
    pub kind: String,
    pub path: PathBuf,
    /// Its package's directory: cargo runs tests there.
    pub dir: PathBuf,
}

/// Builds the test targets `cargo test ARGS --no-run` selects; their executables.
pub fn build(args: &[&str]) -> anyhow::Result<Vec<TestBinary>> {
    let mut child = Command::new(env!("CARGO"))
        .arg("test")
        .args(args)
        .args(["--no-run", "--message-format=json-render-diagnostics"])
        .current_dir(root())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut found = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let msg: serde_json::Value = serde_json::from_str(&line?).unwrap_or_default();
        let (Some(exe), Some(name), Some(manifest)) = (
            msg["executable"].as_str(),
            msg["target"]["name"].as_str(),
            msg["manifest_path"].as_str(),
        ) else {
            continue;
        };
        if msg["profile"]["test"] == true {
            found.push(TestBinary {
                name: name.to_string(),
                kind: msg["target"]["kind"][0].as_str().unwrap_or("").to_string(),
                path: exe.into(),
                dir: Path::new(manifest)
                    .parent()
                    .map_or_else(root, Path::to_path_buf),
            });
        }
    }
    if !child.wait()?.success() {
        bail!("building the tests failed (cargo test {})", args.join(" "));
    }
    Ok(found)
}

/// What a lane's test runs gave.
#[derive(Default)]
pub struct Results {
    pub passed: u64,
    pub failed: u64,
    /// Test files whose run failed.
    pub failed_files: Vec<String>,
    /// Each test's time: (lane, `file::test`, seconds).
    pub times: Vec<(String, String, f64)>,
}

impl Results {
    /// Adds what one test file printed (libtest's `test NAME ... ok <1.234s>` lines and
    /// its `test result:` lines).
    pub fn read(&mut self, lane: &str, file: &str, output: &str) {
        for line in output.lines() {
            if line.starts_with("test result:") {
                let (p, f) = result_counts(line);
                self.passed += p;
                self.failed += f;
            } else if let Some((test, secs)) = timed(line) {
                self.times
                    .push((lane.to_string(), format!("{file}::{test}"), secs));
            }
        }
    }

    pub fn add(&mut self, other: Results) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.failed_files.extend(other.failed_files);
        self.times.extend(other.times);
    }

    /// The `n` slowest tests, slowest first, as lines.
    pub fn slowest(&self, n: usize) -> Vec<String> {
        let mut all: Vec<&(String, String, f64)> = self.times.iter().collect();
        all.sort_by(|a, b| b.2.total_cmp(&a.2));
        all.into_iter()
            .take(n)
            .map(|(lane, test, secs)| format!("{secs:>8.1} s  {lane:<12} {test}"))
            .collect()
    }
}

/// The harness arguments that make libtest print each test's time.
pub const REPORT_TIME: [&str; 3] = ["-Z", "unstable-options", "--report-time"];

/// Runs each binary with `args` and `env`, all of them even when one fails.
pub fn run(
    lane: &str,
    binaries: &[TestBinary],
    args: &[String],
    env: &[(&str, &Path)],
) -> anyhow::Result<Results> {
    let mut results = Results::default();
    for b in binaries {
        println!("     Running {} ({})", b.name, b.path.display());
        let mut child = Command::new(&b.path)
            .args(REPORT_TIME)
            .args(args)
            .env("RUSTC_BOOTSTRAP", "1")
            .envs(env.iter().copied())
            .current_dir(&b.dir)
            .stdout(Stdio::piped())
            .spawn()?;
        let mut output = String::new();
        for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
            let line = line?;
            println!("{line}");
            output.push_str(&line);
            output.push('\n');
        }
        results.read(lane, &b.name, &output);
        if !child.wait()?.success() {
            results.failed_files.push(format!("{lane}: {}", b.name));
        }
    }
    Ok(results)
}

/// (passed, failed) of one `test result:` line.
pub fn result_counts(line: &str) -> (u64, u64) {
    let count = |word: &str| {
        line.split("; ")
            .find_map(|part| {
                part.trim_start_matches("test result: ok. ")
                    .trim_start_matches("test result: FAILED. ")
                    .strip_suffix(word)
            })
            .and_then(|n| n.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (count(" passed"), count(" failed"))
}

/// `test NAME ... ok <1.234s>` (or `FAILED <...>`): the name and seconds.
fn timed(line: &str) -> Option<(&str, f64)> {
    let rest = line.strip_prefix("test ")?;
    let (name, outcome) = rest.split_once(" ... ")?;
    let secs = outcome.rsplit_once('<')?.1.strip_suffix("s>")?;
    Some((name, secs.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_times_and_results() {
        let mut r = Results::default();
        r.read(
            "host",
            "lifecycle",
            "test a ... ok <1.500s>\ntest b ... FAILED <0.250s>\ntest c ... ignored\n\
             test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured",
        );
        assert_eq!((r.passed, r.failed), (1, 1));
        assert_eq!(r.times.len(), 2);
        assert_eq!(r.slowest(1)[0].trim(), "1.5 s  host         lifecycle::a");
    }
}
