//! The crate's layout holds: the layering drawn in `src/lib.rs`'s module doc is the one
//! the code has (no module imports from a higher floor), the imports between files form
//! no circle, and no file holds more than 600 lines of non-test code.
//!
//! Imports are read as text: every `crate::…` and `super::…` path, and a parent file's
//! `use child::…` of a child module it declares. A path names the deepest module file it
//! reaches (`crate::keys::cache::KeyCache` is `src/keys/cache.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The most lines of non-test code one file may hold.
const MAX_CODE_LINES: usize = 600;

/// A source file as a module path: `src/keys/cache.rs` is `["keys", "cache"]`.
type Module = Vec<String>;

struct Source {
    module: Module,
    /// The file's code without its comments and its test module.
    code: String,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files
        .into_iter()
        .filter(|path| path.file_name().is_some_and(|n| n != "tests.rs"))
        .map(|path| {
            let relative = path.strip_prefix(&root).unwrap().with_extension("");
            let module: Module = relative.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            let text = std::fs::read_to_string(&path).unwrap();
            Source { module, code: code_of(&text) }
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The lines before the test module (`#[cfg(test)]` followed by `mod tests`), without
/// comment lines.
fn code_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod tests"))
        .unwrap_or(lines.len());
    lines[..end].iter().filter(|l| !l.trim_start().starts_with("//")).copied().collect::<Vec<_>>().join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths that follow `prefix::` in `code`: `crate::a::b::C` gives `[a, b, C]`, and a
/// group `crate::{a, b::c}` gives `[a]` and `[b, c]`.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let needle = format!("{prefix}::");
    let mut from = 0;
    while let Some(found) = code[from..].find(&needle) {
        let start = from + found;
        from = start + needle.len();
        if code[..start].chars().next_back().is_some_and(is_ident) {
            continue; // `mycrate::`, `self::super::`…
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in inner.split(',') {
                let item = item.trim();
                if !item.is_empty() && item != "self" {
                    out.push(segments(item));
                }
            }
        } else {
            out.push(segments(rest));
        }
    }
    out
}

fn segments(text: &str) -> Vec<String> {
    let mut segments = Vec::new();
    let mut rest = text;
    loop {
        let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        segments.push(rest[..end].to_string());
        match rest[end..].strip_prefix("::") {
            Some(next) if next.starts_with(is_ident) => rest = next,
            _ => break,
        }
    }
    segments
}

/// The deepest module among `known` that `path` (from the crate root) reaches.
fn resolve(path: &[String], known: &BTreeSet<Module>) -> Option<Module> {
    (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|m| known.contains(m))
}

/// Every file's imports of other files.
fn imports(sources: &[Source]) -> BTreeMap<Module, BTreeSet<Module>> {
    let known: BTreeSet<Module> = sources.iter().map(|s| s.module.clone()).collect();
    let mut graph = BTreeMap::new();
    for source in sources {
        let mut targets = BTreeSet::new();
        for path in paths_after(&source.code, "crate") {
            targets.extend(resolve(&path, &known));
        }
        let parent = &source.module[..source.module.len() - 1];
        for path in paths_after(&source.code, "super") {
            let absolute: Vec<String> = parent.iter().cloned().chain(path).collect();
            targets.extend(resolve(&absolute, &known));
        }
        // A parent's `use child::…` / `pub use child::…` of a module it declares.
        for line in source.code.lines() {
            let line = line.trim_start().trim_start_matches("pub ").trim_start_matches("pub(crate) ");
            if let Some(rest) = line.strip_prefix("use ") {
                let first = segments(rest);
                if let Some(child) = first.first() {
                    let mut module = source.module.clone();
                    module.push(child.clone());
                    if known.contains(&module) {
                        targets.extend(resolve(&module, &known));
                    }
                }
            }
        }
        targets.remove(&source.module);
        graph.insert(source.module.clone(), targets);
    }
    graph
}

/// The floors of `src/lib.rs`'s layering drawing: lines `floor N  name: a b c`.
fn floors() -> BTreeMap<String, u32> {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let mut floors = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.trim_start_matches("//!").trim().strip_prefix("floor ") else { continue };
        let (number, modules) = rest.split_once(' ').expect("`floor N  name: modules`");
        let floor: u32 = number.parse().expect("a floor number");
        let modules = modules.split_once(':').map_or(modules, |(_, m)| m);
        for module in modules.split_whitespace() {
            assert!(floors.insert(module.to_string(), floor).is_none(), "{module} is on two floors");
        }
    }
    floors
}

#[test]
fn every_module_is_on_a_floor_and_imports_only_from_its_floor_or_below() {
    let floors = floors();
    assert!(floors.len() > 20, "the drawing in src/lib.rs was not found: {floors:?}");
    let sources = sources();
    let mut wrong = Vec::new();
    for source in &sources {
        let top = &source.module[0];
        if top == "lib" || top == "main" {
            continue;
        }
        assert!(floors.contains_key(top), "src/lib.rs's drawing has no floor for `{top}`");
    }
    for (from, targets) in imports(&sources) {
        let Some(&from_floor) = floors.get(&from[0]) else { continue };
        for to in targets {
            let to_floor = floors[&to[0]];
            if to_floor > from_floor {
                wrong.push(format!(
                    "{} (floor {from_floor}) imports {} (floor {to_floor})",
                    from.join("::"),
                    to.join("::")
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that run back up:\n{}", wrong.join("\n"));
}

#[test]
fn the_imports_between_files_form_no_circle() {
    let graph = imports(&sources());
    // Depth-first search; a grey node met again closes a circle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Grey,
        Black,
    }
    fn visit(
        node: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
        circles: &mut Vec<String>,
    ) {
        marks.insert(node.clone(), Mark::Grey);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next) {
                Some(Mark::Grey) => {
                    let from = stack.iter().position(|m| m == next).unwrap();
                    let circle: Vec<String> = stack[from..].iter().chain([next]).map(|m| m.join("::")).collect();
                    circles.push(circle.join(" -> "));
                }
                Some(Mark::Black) => {}
                None => visit(next, graph, marks, stack, circles),
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Black);
    }
    let mut marks = BTreeMap::new();
    let mut circles = Vec::new();
    for node in graph.keys() {
        if !marks.contains_key(node) {
            visit(node, &graph, &mut marks, &mut Vec::new(), &mut circles);
        }
    }
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}

#[test]
fn no_file_holds_more_than_600_lines_of_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &mut files);
    let mut long = Vec::new();
    for path in files.iter().filter(|p| p.file_name().is_some_and(|n| n != "tests.rs")) {
        let text = std::fs::read_to_string(path).unwrap();
        let lines = code_of(&text).lines().filter(|l| !l.trim().is_empty()).count();
        if lines > MAX_CODE_LINES {
            long.push(format!("{}: {lines} lines of code", path.strip_prefix(&root).unwrap().display()));
        }
    }
    assert!(long.is_empty(), "files over {MAX_CODE_LINES} lines of non-test code:\n{}", long.join("\n"));
}

#[test]
fn the_import_reader_reads_paths_groups_and_parents() {
    let code = "use crate::keys::cache::KeyCache;\nuse crate::{admin, admin_api};\nlet x = super::Decision;";
    assert_eq!(paths_after(code, "crate"), vec![vec!["keys", "cache", "KeyCache"], vec!["admin"], vec!["admin_api"]]);
    assert_eq!(paths_after(code, "super"), vec![vec!["Decision"]]);
    let known: BTreeSet<Module> = [vec!["keys".to_string()], vec!["keys".to_string(), "cache".to_string()]].into();
    let path: Vec<String> = ["keys", "cache", "KeyCache"].map(String::from).to_vec();
    assert_eq!(resolve(&path, &known), Some(vec!["keys".to_string(), "cache".to_string()]));
    assert_eq!(code_of("a\n// c\nb\n#[cfg(test)]\nmod tests {\nx\n}\n"), "a\nb");
}
