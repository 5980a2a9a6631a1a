//! Outside programs some tests need (`prometheus`, `promtool`, `chromium`).
//!
//! Policy: a test that needs a program calls [`find`]. When the program is
//! there, it gets its path. When it is missing, the test prints why it is
//! skipped and returns — unless the environment variable
//! `SIDEWIRE_TEST_REQUIRE` (comma-separated keys, e.g.
//! `prometheus,chromium`; CI sets it) names the program's key, in which case
//! the test fails. A program that is present but misbehaves always fails
//! the test: skipping is only for "not installed".
//!
//! Each program can also be pointed at explicitly with
//! `SIDEWIRE_TEST_<NAME>` (e.g. `SIDEWIRE_TEST_CHROMIUM=/opt/chromium/chrome`).
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// The keys listed in `SIDEWIRE_TEST_REQUIRE`, lower-cased.
pub fn required_keys() -> Vec<String> {
    std::env::var("SIDEWIRE_TEST_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether `SIDEWIRE_TEST_REQUIRE` names `key`.
pub fn is_required(key: &str) -> bool {
    required_keys().iter().any(|k| k == &key.to_ascii_lowercase())
}

/// Looks for a program: first `SIDEWIRE_TEST_<NAME>` (NAME = `names[0]`
/// upper-cased, `-` as `_`), then each of `names` (a bare name is searched on
/// `PATH`, a path is taken as is).
pub fn locate(names: &[&str]) -> Option<PathBuf> {
    let var = format!("SIDEWIRE_TEST_{}", names[0].to_ascii_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(&var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return is_executable(&p).then_some(p);
    }
    for name in names {
        if name.contains('/') {
            let p = PathBuf::from(name);
            if is_executable(&p) {
                return Some(p);
            }
            continue;
        }
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let p = dir.join(name);
            if is_executable(&p) {
                return Some(p);
            }
        }
    }
    None
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// The program for `test`, or `None` after printing a skip reason.
/// Panics when the program is missing and `SIDEWIRE_TEST_REQUIRE` names
/// `key`. `install_hint` says how to get it (e.g. the Debian package).
pub fn find(test: &str, key: &str, names: &[&str], install_hint: &str) -> Option<PathBuf> {
    find_with(&required_keys(), test, key, names, install_hint)
}

/// [`find`] with the required keys given (testable without touching the
/// process environment).
pub fn find_with(required: &[String], test: &str, key: &str, names: &[&str], install_hint: &str) -> Option<PathBuf> {
    if let Some(p) = locate(names) {
        return Some(p);
    }
    let what = format!(
        "`{}` not found (looked for {} and $SIDEWIRE_TEST_{}); {install_hint}",
        names[0],
        names.join(", "),
        names[0].to_ascii_uppercase().replace('-', "_"),
    );
    if required.iter().any(|k| k.eq_ignore_ascii_case(key)) {
        panic!("{test}: {what} — and SIDEWIRE_TEST_REQUIRE lists `{key}`, so this is a failure");
    }
    skip(test, &format!("{what} (list `{key}` in SIDEWIRE_TEST_REQUIRE to make this a failure)"));
    None
}

/// Prints a skip line straight to the process's stderr, so it shows even
/// when the test harness captures output (it only captures `print!`-family
/// macros).
pub fn skip(test: &str, reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}
