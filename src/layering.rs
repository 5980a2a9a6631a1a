//! Who may import whom, checked on the sources (test only): the domain
//! layer has no web imports; the top-level modules import each other along
//! a graph without cycles; so do the files inside each folder; and nothing
//! imports the crate root.
//!
//! The graph is read from the paths the non-test code names, file by file:
//! `crate::ws::guard::X`, `super::guard::X`, `self::guard::X`, a face's own
//! `guard::X` (see below) and the items of `use` groups
//! (`use super::{guard::X, State}`), each resolved to the deepest module
//! file it reaches. A folder's `mod.rs` (and `lib.rs` for the crate) is the
//! folder's face: it declares and re-exports its files (`pub use`, not an
//! import) and holds what they share (`super::State`); the folder check is
//! about the files beside each other, not about the face.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The domain layer: may import neither the web layer nor warp/hyper.
const DOMAIN: &[&str] = &[
    "activity",
    "cluster",
    "config",
    "error",
    "event",
    "hub",
    "persist",
    "pipeline",
    "retention",
    "schemas",
    "stats",
    "tls",
];
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

/// A module by its path below the crate: `[]` is the crate root (`lib.rs`),
/// `["ws"]` is `ws/mod.rs`, `["ws", "guard"]` is `ws/guard.rs`.
type ModPath = Vec<String>;

/// One source file of the library.
struct Source {
    module: ModPath,
    /// The path below `src/`, for messages.
    rel: String,
    /// Whether it is a face (`lib.rs`, `mod.rs`): the module of a folder.
    face: bool,
    /// Its non-test code, without comment lines.
    code: String,
}

/// Every source file of the library (not the binaries, not this file).
fn sources() -> Vec<Source> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
            if path.is_dir() {
                if rel != "bin" {
                    stack.push(path);
                }
                continue;
            }
            let Some(stem) = rel.strip_suffix(".rs") else { continue };
            if ["main", "layering"].contains(&stem) {
                continue;
            }
            let mut module: ModPath = stem.split('/').map(str::to_string).collect();
            let face = matches!(module.last().map(String::as_str), Some("mod" | "lib"));
            if face {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            let code = code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
            out.push(Source { module, rel, face, code });
        }
    }
    out
}

/// Removes a face's re-exports (`pub use x::Y;`, `pub(crate) use ...;`,
/// also over several lines): they publish its files' items, they are not
/// the face using them.
fn without_reexports(code: &str) -> String {
    let mut out = Vec::new();
    let mut in_reexport = false;
    for line in code.lines() {
        let t = line.trim_start();
        let visibility_end = t.strip_prefix("pub(").and_then(|r| r.find(')').map(|i| &r[i + 1..]));
        if t.starts_with("pub use ") || visibility_end.is_some_and(|r| r.starts_with(" use ")) {
            in_reexport = true;
        }
        if in_reexport {
            in_reexport = !line.contains(';');
            out.push("");
        } else {
            out.push(line);
        }
    }
    out.join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths named in `code` that start with one of `roots`
/// (`crate`, `super`, `self`, or a face's own files), as segments; a `use`
/// group contributes one path per item (`a::{b::C, D}`: `a::b::C`, `a::D`).
fn named_paths(code: &str, roots: &BTreeSet<String>) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let boundary = i == 0 || !(is_ident(chars[i - 1]) || chars[i - 1] == ':');
        if boundary && is_ident(chars[i]) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let first: String = chars[start..i].iter().collect();
            if roots.contains(&first) && chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
                i = path_tail(&chars, i, vec![first], &mut out);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Reads `::seg::seg...` or `::{...}` after `prefix` from `at`, pushing the
/// paths found to `out`; returns where it stopped.
fn path_tail(chars: &[char], mut at: usize, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    while chars.get(at) == Some(&':') && chars.get(at + 1) == Some(&':') {
        at += 2;
        while chars.get(at).is_some_and(|c| c.is_whitespace()) {
            at += 1;
        }
        if chars.get(at) == Some(&'{') {
            // A group: each comma-separated item continues the prefix.
            at += 1;
            loop {
                while chars.get(at).is_some_and(|c| c.is_whitespace() || *c == ',') {
                    at += 1;
                }
                match chars.get(at) {
                    None => return at,
                    Some('}') => return at + 1,
                    _ => {}
                }
                let start = at;
                while chars.get(at).is_some_and(|c| is_ident(*c) || *c == '*') {
                    at += 1;
                }
                if at == start {
                    at += 1; // `as`, a stray character: skip
                    continue;
                }
                let mut item = prefix.clone();
                item.push(chars[start..at].iter().collect());
                at = path_tail(chars, at, item, out);
                // `x as y`: skip the alias.
                while chars.get(at).is_some_and(|c| !matches!(c, ',' | '}')) {
                    at += 1;
                }
            }
        }
        let start = at;
        while chars.get(at).is_some_and(|c| is_ident(*c)) {
            at += 1;
        }
        if at == start {
            break; // `::*`, `::<T>`
        }
        prefix.push(chars[start..at].iter().collect());
    }
    out.push(prefix);
    at
}

/// Module file -> the module files its non-test code names, each with where
/// (file and path) for messages.
fn file_imports() -> BTreeMap<ModPath, BTreeMap<ModPath, String>> {
    let sources = sources();
    let modules: BTreeSet<ModPath> = sources.iter().map(|s| s.module.clone()).collect();
    // The deepest module file that `path` reaches.
    let resolve = |path: &[String]| -> ModPath {
        (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains(p)).unwrap_or_default()
    };
    let mut graph = BTreeMap::new();
    for s in &sources {
        // Where `super::` leads (a bare file name: only in a face, to its own files).
        let parent: ModPath = s.module[..s.module.len().saturating_sub(1)].to_vec();
        let mut roots: BTreeSet<String> = ["crate", "self", "super"].map(String::from).into();
        if s.face {
            for m in &modules {
                if m.len() == s.module.len() + 1 && m.starts_with(&s.module) {
                    roots.insert(m.last().unwrap().clone());
                }
            }
        }
        let code = if s.face { without_reexports(&s.code) } else { s.code.clone() };
        let deps: &mut BTreeMap<ModPath, String> = graph.entry(s.module.clone()).or_default();
        for path in named_paths(&code, &roots) {
            let mut segs = path.as_slice();
            let mut base: ModPath = match segs[0].as_str() {
                "crate" => vec![],
                "self" => s.module.clone(),
                "super" => parent.clone(),
                _ => {
                    // A face naming one of its own files.
                    let mut b = s.module.clone();
                    b.push(segs[0].clone());
                    b
                }
            };
            if segs[0] == "super" {
                while segs.get(1).is_some_and(|n| n == "super") {
                    base.pop();
                    segs = &segs[1..];
                }
            }
            let target = resolve(&[base, segs[1..].to_vec()].concat());
            if target != s.module {
                deps.entry(target).or_insert_with(|| format!("{}: {}", s.rel, path.join("::")));
            }
        }
        if s.module.first().is_some_and(|top| DOMAIN.contains(&top.as_str())) {
            for web in ["warp::", "hyper::", "use warp", "use hyper"] {
                assert!(!code.contains(web), "{} (domain) uses {web}", s.rel);
            }
        }
    }
    graph
}

/// Top-level module -> the top-level modules it imports (the crate root left
/// out: see [`nothing_imports_the_crate_root`]).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::<String, BTreeSet<String>>::new();
    for (module, deps) in file_imports() {
        let Some(top) = module.first() else { continue };
        let entry = graph.entry(top.clone()).or_default();
        entry.extend(deps.keys().filter_map(|d| d.first()).filter(|d| *d != top).cloned());
    }
    graph
}

/// A cycle in `graph` (its modules in order, the first repeated at the end),
/// if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|start| visit(start, graph, &mut Vec::new(), &mut done))
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
    assert_eq!(find_cycle(&graph), None, "import cycle between top-level modules");
}

/// Inside every folder, its files (and sub-folders, each taken whole)
/// import each other along a graph without cycles: shared types live in a
/// file below both users, not in one of them.
#[test]
fn the_files_of_each_folder_import_each_other_without_cycles() {
    let files = file_imports();
    let folders: BTreeSet<ModPath> =
        files.keys().filter(|m| !m.is_empty()).map(|m| m[..m.len() - 1].to_vec()).collect();
    let mut cycles = Vec::new();
    // The top level (`src/`) is `module_imports_have_no_cycles`.
    for folder in folders.into_iter().filter(|f| !f.is_empty()) {
        let name = folder.join("/");
        // File (or sub-folder) -> the ones beside it it imports; where, for the message.
        let mut graph = BTreeMap::<String, BTreeSet<String>>::new();
        let mut at = BTreeMap::<(String, String), String>::new();
        for (module, deps) in &files {
            if module.len() <= folder.len() || !module.starts_with(&folder) {
                continue; // the face, or elsewhere
            }
            let from = &module[folder.len()];
            let entry = graph.entry(from.clone()).or_default();
            for (dep, place) in deps {
                if dep.len() > folder.len() && dep.starts_with(&folder) && &dep[folder.len()] != from {
                    entry.insert(dep[folder.len()].clone());
                    at.entry((from.clone(), dep[folder.len()].clone())).or_insert_with(|| place.clone());
                }
            }
        }
        // Every cycle, not only the first: each found is reported, and its
        // last edge taken out before looking again.
        while let Some(cycle) = find_cycle(&graph) {
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} -> {} ({})", w[0], w[1], at[&(w[0].clone(), w[1].clone())]))
                .collect();
            cycles.push(format!("{name}/: {}", steps.join(", ")));
            let [.., from, to] = &cycle[..] else { unreachable!("a cycle has an edge") };
            graph.get_mut(from).map(|d| d.remove(to));
        }
    }
    assert!(cycles.is_empty(), "import cycles among the files of a folder:\n{}", cycles.join("\n"));
}

/// `lib.rs` declares the modules, re-exports and offers `run`; what the
/// modules share lives in modules of their own (`version`), so the crate
/// root sits on top of the import graph, not under it.
#[test]
fn nothing_imports_the_crate_root() {
    let users: Vec<String> = file_imports()
        .into_iter()
        .filter_map(|(module, deps)| deps.get(&Vec::new()).map(|place| format!("{} ({place})", module.join("::"))))
        .collect();
    assert!(users.is_empty(), "modules that import items of lib.rs: {users:?}");
}

#[test]
fn paths_are_read_from_uses_groups_and_faces() {
    let roots: BTreeSet<String> = ["crate", "super", "self", "guard"].map(String::from).into();
    let code = "use super::{guard::ConnectionGuard, State};\nuse crate::ws::{\n    a::B as C,\n    d,\n};\n\
                let x = guard::open(); y::z::w; super::super::q::R; crate::VERSION";
    let paths: Vec<String> = named_paths(code, &roots).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        paths,
        [
            "super::guard::ConnectionGuard",
            "super::State",
            "crate::ws::a::B",
            "crate::ws::d",
            "guard::open",
            "super::super::q::R",
            "crate::VERSION"
        ]
    );
    let face = "pub mod limit;\nmod io;\npub use io::GuardedIo;\npub(crate) use io::{\n  A,\n};\nfn f() { io::x(); }";
    let kept: Vec<_> = without_reexports(face).lines().filter(|l| !l.is_empty()).map(String::from).collect();
    assert_eq!(kept, ["pub mod limit;", "mod io;", "fn f() { io::x(); }"]);
}
