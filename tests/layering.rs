//! The layer graph of `docs/design.md`, checked on the source: who may name whom.
//!
//! `docs/design.md` ("Layers") holds a table, one row per top-level module: its floor and the
//! modules it may name. This test reads that table and holds the code and the document to
//! each other:
//! - every `crate::x` a module names is an arrow the table draws;
//! - every arrow the table draws is one the code has (the document draws the real graph);
//! - every arrow goes down at least one floor, so there is no circle, and `sys` (floor 0)
//!   names nothing;
//! - no source file holds more than 800 lines before its `#[cfg(test)]` module: past that
//!   it is two files (split along pure and effect).
//!
//! A reference is any `crate::name` in a file (a `use`, a path in code, a doc link), so the
//! check agrees with `grep -rn 'crate::datapath' src/sys`. Pure file reading: no root needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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

/// The layer table of `docs/design.md`: each module's floor and the modules it may name.
#[derive(Debug, Default)]
struct Layers {
    floor: BTreeMap<String, u32>,
    may_name: BTreeMap<String, BTreeSet<String>>,
}

/// The backticked names in a table cell (`"`a`, `b`"` → a, b; "nothing" → none).
fn names_in(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Reads the rows `| `module`[, `module`] | floor | `name`, ... |` of the table under the
/// "## Layers" heading of `design` (the text of docs/design.md).
fn parse_layers(design: &str) -> Layers {
    let mut layers = Layers::default();
    let section = design
        .split("\n## ")
        .find(|s| s.starts_with("Layers"))
        .expect("docs/design.md has a \"## Layers\" section");
    for line in section.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        let [modules, floor, names] = cells[..] else {
            continue;
        };
        let Ok(floor) = floor.trim().parse::<u32>() else {
            continue; // the header and its rule
        };
        for module in names_in(modules) {
            layers.floor.insert(module.clone(), floor);
            layers
                .may_name
                .entry(module)
                .or_default()
                .extend(names_in(names));
        }
    }
    layers
}

/// The broken rules in `src` against `layers`, one line each (empty when code and table
/// agree).
fn violations(src: &Path, layers: &Layers) -> Vec<String> {
    let edges = edges(src);
    let mut bad = Vec::new();
    for e in &edges {
        let at = e.file.strip_prefix(src).unwrap().display();
        let drawn = layers.may_name.get(&e.from);
        if drawn.is_none() {
            bad.push(format!(
                "src/{at}: module {} has no row in docs/design.md's layer table",
                e.from
            ));
        } else if !drawn.is_some_and(|names| names.contains(&e.to)) {
            bad.push(format!(
                "src/{at}: {} names crate::{}, an arrow docs/design.md does not draw",
                e.from, e.to
            ));
        }
    }
    let in_code: BTreeSet<(&str, &str)> = edges
        .iter()
        .map(|e| (e.from.as_str(), e.to.as_str()))
        .collect();
    for (from, names) in &layers.may_name {
        let floor = layers.floor[from];
        for to in names {
            match layers.floor.get(to) {
                None => bad.push(format!(
                    "docs/design.md: {from} may name {to}, which has no row"
                )),
                Some(&f) if f >= floor => bad.push(format!(
                    "docs/design.md: {from} (floor {floor}) may name {to} (floor {f}): \
                     arrows go down"
                )),
                Some(_) => {}
            }
            if !in_code.contains(&(from.as_str(), to.as_str())) {
                bad.push(format!(
                    "docs/design.md draws {from} → {to}, which the code does not have"
                ));
            }
        }
    }
    if layers.floor.get("sys") != Some(&0) {
        bad.push("docs/design.md: sys must be the ground floor (floor 0)".to_owned());
    }
    bad
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
fn the_code_has_the_layers_docs_design_draws() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let design = std::fs::read_to_string(root.join("docs/design.md")).unwrap();
    let layers = parse_layers(&design);
    assert!(
        layers.floor.len() >= 10,
        "the layer table of docs/design.md was not found or is cut short: {layers:?}"
    );
    let bad = violations(&root.join("src"), &layers);
    assert!(
        bad.is_empty(),
        "code and docs/design.md (\"Layers\") disagree:\n  {}",
        bad.join("\n  ")
    );
}

/// The check itself catches what it must: a small tree and table, then one broken rule of
/// each kind.
#[test]
fn the_check_catches_forbidden_imports() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path();
    let write = |rel: &str, text: &str| {
        let path = src.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    let table = "# Design\n\n## Layers\n\n| module | floor | may name |\n| --- | --- | --- |\n\
        | `exec` | 2 | `datapath`, `sys` |\n| `datapath` | 1 | `sys` |\n\
        | `sys`, `compat` | 0 | nothing |\n\n## Next\n| `x` | 9 | `y` |\n";
    let layers = parse_layers(table);
    assert_eq!(layers.floor.len(), 4, "{layers:?}");
    write("lib.rs", "pub mod sys; pub mod datapath; pub mod exec;");
    write("sys/mod.rs", "pub fn ring() {}");
    write("datapath/mod.rs", "use crate::sys::ring;");
    write("exec/mod.rs", "use crate::{datapath, sys::ring};");
    write(
        "bin/flanneld.rs",
        "use flannel_rs::daemon; use crate::anything;",
    );
    assert_eq!(violations(src, &layers), Vec::<String>::new());

    write("sys/uring.rs", "use crate::datapath::pipeline::Action;");
    write("datapath/worker.rs", "fn f() { crate::exec::run(); }");
    write("ctl/run.rs", "use crate::sys;");
    let bad = violations(src, &layers);
    let has = |needle: &str| bad.iter().any(|b| b.contains(needle));
    assert!(
        has("sys/uring.rs: sys names crate::datapath, an arrow docs/design.md does not draw"),
        "{bad:#?}"
    );
    assert!(
        has("datapath/worker.rs: datapath names crate::exec, an arrow"),
        "{bad:#?}"
    );
    assert!(has("ctl/run.rs: module ctl has no row"), "{bad:#?}");

    // A table that draws an arrow upward, or one the code lacks, is wrong too.
    let upward = table.replace(
        "| `datapath` | 1 | `sys` |",
        "| `datapath` | 1 | `sys`, `exec` |",
    );
    let bad = violations(src, &parse_layers(&upward));
    assert!(
        bad.iter()
            .any(|b| b.contains("datapath (floor 1) may name exec (floor 2): arrows go down")),
        "{bad:#?}"
    );
    let stale = table.replace("`datapath`, `sys` |", "`datapath`, `sys`, `compat` |");
    let bad = violations(src, &parse_layers(&stale));
    assert!(
        bad.iter()
            .any(|b| b.contains("draws exec → compat, which the code does not have")),
        "{bad:#?}"
    );
}

#[test]
fn references_are_found_in_use_groups_and_paths() {
    let text = "use crate::{a::b, c, d::{e, f}};\nfn x() { crate::g::h(); }\n// [`crate::i`]";
    let names: Vec<String> = named_modules(text).into_iter().collect();
    assert_eq!(names, ["a", "c", "d", "g", "i"]);
}
