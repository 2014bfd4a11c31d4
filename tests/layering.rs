//! The layer rules of DESIGN.md, checked on the source: who may name whom.
//!
//! ```text
//! bin ─► daemon ─► (subnet, backend) ─► exec ─► datapath ─► sys
//!          config, compat, cancel and the subnet types are the shared ground
//! ```
//! - `sys/` is the ground floor: it names no other module of the crate.
//! - Nothing below `daemon/` names `crate::daemon` or `crate::cli`; `ctl/` (flannelctl, beside
//!   `daemon` at the top) may name `cli` but never `daemon`.
//! - Along the chain daemon → backend → exec → datapath → sys nothing names a module above it.
//! - No two top-level modules import each other, directly or round a longer circle.
//! - No source file holds more than 800 lines before its `#[cfg(test)]` module: past that
//!   it is two files (DESIGN.md: split along pure and effect).
//!
//! A reference is any `crate::name` in a file (a `use`, a path in code, a doc link), so the
//! check agrees with `grep -rn 'crate::datapath' src/sys`. Pure file reading: no root needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The chain, highest first: a module may name only modules after it in this list.
const CHAIN: [&str; 5] = ["daemon", "backend", "exec", "datapath", "sys"];

/// Top-level modules that may name `cli` or `daemon` (the program's top).
const TOP: [&str; 3] = ["daemon", "ctl", "fuzzing"];

/// The top-level module a source file belongs to (`src/exec/masq/rules.rs` → `exec`), or
/// `None` for the crate root and the binaries, which may name anything.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "bin").then(|| name.to_owned())
}

/// Every top-level module named as `crate::name` or inside `crate::{a, b::c}` in `text`.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The items of a `use crate::{...}` group, at brace depth one.
            let mut depth = 1;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if item_start && depth == 1 && (c.is_alphabetic() || c == '_') => {
                        out.insert(ident_at(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn ident_at(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// One reference: file, the module it is in, the module it names.
struct Edge {
    file: PathBuf,
    from: String,
    to: String,
}

fn edges(src: &Path) -> Vec<Edge> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let Some(from) = top_module(src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for to in named_modules(&text) {
            if to != from {
                out.push(Edge {
                    file: file.clone(),
                    from: from.clone(),
                    to,
                });
            }
        }
    }
    out
}

/// The broken rules in `src`, one line each (empty when the layering holds).
fn violations(src: &Path) -> Vec<String> {
    let edges = edges(src);
    let mut bad = Vec::new();
    let rank = |m: &str| CHAIN.iter().position(|c| *c == m);
    for e in &edges {
        let at = e.file.strip_prefix(src).unwrap().display();
        if e.from == "sys" {
            bad.push(format!(
                "src/{at}: sys/ is the ground floor but names crate::{}",
                e.to
            ));
        }
        if (e.to == "daemon" || e.to == "cli") && !TOP.contains(&e.from.as_str()) {
            bad.push(format!(
                "src/{at}: {} is below daemon but names crate::{}",
                e.from, e.to
            ));
        }
        // flannelctl shares flanneld's flags, never its running parts.
        if e.from == "ctl" && e.to == "daemon" {
            bad.push(format!(
                "src/{at}: ctl is the operator's tool beside daemon but names crate::daemon"
            ));
        }
        if let (Some(f), Some(t)) = (rank(&e.from), rank(&e.to)) {
            if t < f && e.from != "sys" {
                bad.push(format!(
                    "src/{at}: {} names crate::{}, which is above it",
                    e.from, e.to
                ));
            }
        }
    }
    // Circles between top-level modules.
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in &edges {
        graph.entry(&e.from).or_default().insert(&e.to);
    }
    for circle in circles(&graph) {
        let files: BTreeSet<String> = circle
            .windows(2)
            .flat_map(|w| {
                edges
                    .iter()
                    .filter(move |e| e.from == w[0] && e.to == w[1])
                    .map(|e| e.file.strip_prefix(src).unwrap().display().to_string())
                    .take(1)
            })
            .collect();
        bad.push(format!(
            "module circle {} (via {})",
            circle.join(" → "),
            files.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    bad
}

/// One circle per strongly connected part of the graph, as a closed path `a → b → a`.
fn circles<'a>(graph: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<Vec<&'a str>> {
    let mut found = Vec::new();
    let mut seen_in_circle = BTreeSet::new();
    for &start in graph.keys() {
        if seen_in_circle.contains(start) {
            continue;
        }
        // Depth-first search for a path back to `start`.
        let mut stack = vec![(start, vec![start])];
        let mut visited = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for &next in graph.get(node).into_iter().flatten() {
                if next == start {
                    let mut circle = path.clone();
                    circle.push(start);
                    seen_in_circle.extend(circle.iter().copied());
                    found.push(circle);
                    stack.clear();
                    break;
                }
                if visited.insert(next) {
                    let mut p = path.clone();
                    p.push(next);
                    stack.push((next, p));
                }
            }
        }
    }
    found
}

/// Most lines a source file may hold before its `#[cfg(test)]` module.
const MAX_LINES: usize = 800;

/// Files of `src` longer than [`MAX_LINES`] before their tests, with their length.
fn long_files(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    files
        .iter()
        .filter_map(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            let code = text
                .lines()
                .take_while(|l| l.trim() != "#[cfg(test)]")
                .count();
            (code > MAX_LINES).then(|| {
                format!(
                    "src/{}: {code} lines before its tests",
                    file.strip_prefix(src).unwrap().display()
                )
            })
        })
        .collect()
}

#[test]
fn no_file_is_two_files() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let long = long_files(&src);
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines before their tests (split them):\n  {}",
        long.join("\n  ")
    );
}

#[test]
fn the_layers_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(
        bad.is_empty(),
        "layer rules broken (DESIGN.md, \"Layers\"):\n  {}",
        bad.join("\n  ")
    );
}

/// The check itself catches what it must: a copy of the tree with one forbidden import in
/// each rule's place.
#[test]
fn the_check_catches_forbidden_imports() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path();
    let write = |rel: &str, text: &str| {
        let path = src.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "pub mod sys; pub mod datapath; pub mod exec;");
    write("sys/mod.rs", "pub fn ring() {}");
    write("datapath/mod.rs", "use crate::sys::ring;");
    write("exec/mod.rs", "use crate::{datapath, sys::ring};");
    write(
        "bin/flanneld.rs",
        "use flannel_rs::daemon; use crate::anything;",
    );
    assert_eq!(violations(src), Vec::<String>::new());

    write("sys/uring.rs", "use crate::datapath::pipeline::Action;");
    write("exec/masq.rs", "use crate::{cli::Cli, config};");
    write("datapath/worker.rs", "fn f() { crate::exec::run(); }");
    write("ctl/run.rs", "use crate::{cli::EtcdFlags, daemon::run};");
    let bad = violations(src);
    let has = |needle: &str| bad.iter().any(|b| b.contains(needle));
    assert!(
        has("sys/uring.rs: sys/ is the ground floor but names crate::datapath"),
        "{bad:#?}"
    );
    assert!(
        has("exec/masq.rs: exec is below daemon but names crate::cli"),
        "{bad:#?}"
    );
    assert!(
        has("datapath/worker.rs: datapath names crate::exec, which is above it"),
        "{bad:#?}"
    );
    assert!(
        has("ctl/run.rs: ctl is the operator's tool beside daemon but names crate::daemon"),
        "{bad:#?}"
    );
    assert!(!has("ctl/run.rs: ctl is below daemon"), "{bad:#?}");
    assert!(has("module circle"), "{bad:#?}");
}

#[test]
fn references_are_found_in_use_groups_and_paths() {
    let text = "use crate::{a::b, c, d::{e, f}};\nfn x() { crate::g::h(); }\n// [`crate::i`]";
    let names: Vec<String> = named_modules(text).into_iter().collect();
    assert_eq!(names, ["a", "c", "d", "g", "i"]);
}
