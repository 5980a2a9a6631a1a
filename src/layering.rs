//! Who may import whom, checked on the sources (test only): the domain
//! layer has no web imports, and the top-level modules import each other
//! along a graph without cycles.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The domain layer: may import neither the web layer nor warp/hyper.
const DOMAIN: &[&str] =
    &["activity", "cluster", "config", "error", "event", "hub", "persist", "pipeline", "retention", "schemas", "stats"];
/// The web layer (and the edge around it: wiring, front door, telemetry,
/// reload).
const WEB: &[&str] = &["api_docs", "app", "auth", "conn", "http", "reload", "server", "telemetry", "ws"];
/// Cross-cutting: counting, logging and the build's version, used by both
/// layers; import only each other.
const SHARED: &[&str] = &["internal_events", "log_throttle", "metrics", "version"];
/// Commands of the binary besides serving (`demo`, `export`/`import`): may
/// use the domain, not the web layer.
const TOOLS: &[&str] = &["demo", "transfer"];
/// Pairs of modules allowed to import each other: none (issue 9 broke the
/// last ones); keep it empty.
const KNOWN_CYCLES: &[(&str, &str)] = &[];

/// Top-level module -> the top-level modules its non-test code names as
/// `crate::<module>`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::<String, BTreeSet<String>>::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if rel != "bin" {
                    stack.push(path);
                }
                continue;
            }
            let module = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
            if !rel.ends_with(".rs") || ["lib", "main", "layering"].contains(&module.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            let deps = graph.entry(module.clone()).or_default();
            for line in code.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
                for (i, _) in line.match_indices("crate::") {
                    let name: String =
                        line[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    if name != module && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                        deps.insert(name);
                    }
                }
                if DOMAIN.contains(&module.as_str()) {
                    for web in ["warp::", "hyper::", "use warp", "use hyper"] {
                        assert!(!line.contains(web), "{rel} (domain) uses {web}: {line}");
                    }
                }
            }
        }
    }
    graph
}

#[test]
fn the_domain_does_not_import_the_web_layer() {
    for (module, deps) in imports() {
        if DOMAIN.contains(&module.as_str()) {
            let web: Vec<_> = deps.iter().filter(|d| WEB.contains(&d.as_str())).collect();
            assert!(web.is_empty(), "domain module {module} imports {web:?}");
        }
    }
}

#[test]
fn every_module_has_a_layer_and_keeps_to_it() {
    for (module, deps) in imports() {
        let m = module.as_str();
        assert!(
            [DOMAIN, WEB, SHARED, TOOLS].iter().any(|layer| layer.contains(&m)),
            "module {m} is in no layer (add it to one in src/layering.rs and docs/ARCHITECTURE.md)"
        );
        if SHARED.contains(&m) {
            let outside: Vec<_> = deps.iter().filter(|d| !SHARED.contains(&d.as_str())).collect();
            assert!(outside.is_empty(), "shared module {m} imports {outside:?}");
        }
        if TOOLS.contains(&m) {
            let web: Vec<_> = deps.iter().filter(|d| WEB.contains(&d.as_str())).collect();
            assert!(web.is_empty(), "tool module {m} imports {web:?}");
        }
    }
}

#[test]
fn module_imports_have_no_cycles() {
    let mut graph = imports();
    for (a, b) in KNOWN_CYCLES {
        for (x, y) in [(a, b), (b, a)] {
            graph.get_mut(*x).map(|d| d.remove(*y));
        }
    }
    // Kahn: repeatedly take out modules nothing left depends on.
    let mut left = graph.clone();
    loop {
        let free: Vec<String> = left.keys().filter(|m| !left.values().any(|d| d.contains(*m))).cloned().collect();
        if free.is_empty() {
            break;
        }
        for m in free {
            left.remove(&m);
        }
    }
    let mut mutual = Vec::new();
    for (a, deps) in &graph {
        for b in deps {
            if a < b && graph.get(b).is_some_and(|d| d.contains(a)) {
                mutual.push((a, b));
            }
        }
    }
    assert!(
        left.is_empty(),
        "import cycle (modules importing each other: {mutual:?}) among {:?}",
        left.keys().collect::<Vec<_>>()
    );
}
