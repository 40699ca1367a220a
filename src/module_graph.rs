//! The crate's modules depend on each other without cycles, at every level: the top-level modules
//! of `src/` among themselves, and the files of each directory module among themselves. A
//! dependency is any `crate::…`, `super::…` or `self::…` path in a module's non-test code (`use`
//! lines, re-exports, paths in expressions); comments, strings and `#[cfg(test)]` items are left
//! out, and the module tree is read from the `mod` declarations, starting at `src/lib.rs`.
//!
//! Read from the source files, so it runs on the host only (the wasm test runner has no files).

// Test-only code (declared under `cfg(test)`), where the crate allows panics and indexing.
#![allow(clippy::indexing_slicing, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Directory modules whose files still form a cycle, each with the cycle and who removes it. A
/// test fails once an entry is no longer needed, so the list only shrinks.
/// (Empty: the last one, `host`'s filter ↔ root ↔ jwks ↔ dispatch, is gone.)
const KNOWN_CYCLES: &[(&str, &str)] = &[];

type ModPath = Vec<String>;

/// One module of the tree: its path and its code without comments, strings and test items.
struct Module {
    path: ModPath,
    code: String,
}

/// Comments, string and char literals removed (their braces and paths would mislead the scan).
fn strip_comments_and_literals(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (at(i + 1) == '"' || at(i + 1) == '#') && !ident_char(at_prev(&out)) {
            // Raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            if at(j) != '"' {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (1..=hashes).all(|k| at(j + k) == '#') {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{7b}'), or a lifetime ('a), which is kept.
            if at(i + 1) == '\\' {
                let mut j = i + 2;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            } else if at(i + 2) == '\'' {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn at_prev(s: &str) -> char {
    s.chars().next_back().unwrap_or(' ')
}

fn ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every item marked `#[cfg(test)]` removed (up to its `;` or its matching `}`).
fn strip_test_items(code: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut out = String::new();
    let mut rest = code;
    while let Some(start) = rest.find(MARK) {
        out.push_str(&rest[..start]);
        let item = &rest[start + MARK.len()..];
        let mut depth = 0usize;
        let mut end = item.len();
        for (k, c) in item.char_indices() {
            match c {
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// The identifier starting at byte `i` of `s`, if any.
fn ident_at(s: &str, i: usize) -> Option<&str> {
    let len = s[i..].find(|c: char| !ident_char(c)).unwrap_or(s.len() - i);
    (len > 0).then(|| &s[i..i + len])
}

fn skip_ws(s: &str, i: usize) -> usize {
    i + s[i..].len() - s[i..].trim_start().len()
}

/// Parses the path (or `use` tree) starting at byte `i`, pushing each full path into `out`.
/// Returns where it stopped.
fn parse_path(s: &str, mut i: usize, mut prefix: ModPath, out: &mut Vec<ModPath>) -> usize {
    loop {
        i = skip_ws(s, i);
        if s[i..].starts_with('{') {
            i += 1;
            loop {
                i = skip_ws(s, i);
                if i >= s.len() || s[i..].starts_with('}') {
                    return i + 1;
                }
                i = parse_path(s, i, prefix.clone(), out);
                // Skip a rename (`as x`) or anything else up to the next `,` or `}`.
                let mut depth = 0usize;
                while let Some(c) = s[i..].chars().next() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            i += 1;
                            break;
                        }
                        _ => {}
                    }
                    i += c.len_utf8();
                }
            }
        }
        let Some(name) = ident_at(s, i) else {
            out.push(prefix);
            return i;
        };
        i += name.len();
        if name == "self" && !prefix.is_empty() {
            out.push(prefix); // `a::{self, …}`: `a` itself
            return i;
        }
        prefix.push(name.to_string());
        let after = skip_ws(s, i);
        if s[after..].starts_with("::") {
            i = after + 2;
        } else {
            out.push(prefix);
            return i;
        }
    }
}

/// Every path in `code` that starts with `crate`, `super` or `self`, made absolute from `module`.
fn references(code: &str, module: &ModPath) -> Vec<ModPath> {
    let mut found = Vec::new();
    for (i, _) in code.char_indices() {
        let Some(word) = ident_at(code, i) else {
            continue;
        };
        if code[..i].ends_with(ident_char) || code[..i].trim_end().ends_with([':', '$']) {
            continue; // inside a word, or not the first segment of its path
        }
        if !matches!(word, "crate" | "super" | "self") {
            continue;
        }
        if !code[i + word.len()..].trim_start().starts_with("::") {
            continue;
        }
        let mut paths = Vec::new();
        parse_path(code, i, Vec::new(), &mut paths);
        for path in paths {
            let mut base = module.clone();
            let mut segments = path.into_iter().peekable();
            match segments.peek().map(String::as_str) {
                Some("crate") => {
                    base.clear();
                    segments.next();
                }
                Some("self") => {
                    segments.next();
                }
                _ => {}
            }
            while segments.peek().map(String::as_str) == Some("super") {
                base.pop();
                segments.next();
            }
            base.extend(segments);
            found.push(base);
        }
    }
    found
}

/// The modules declared (`mod x;`, not under `#[cfg(test)]`) in a module's code.
fn declared_modules(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (i, _) in code.match_indices("mod ") {
        if code[..i].ends_with(ident_char) {
            continue;
        }
        let at = skip_ws(code, i + 4);
        if let Some(name) = ident_at(code, at) {
            if code[at + name.len()..].trim_start().starts_with(';') {
                names.push(name.to_string());
            }
        }
    }
    names
}

/// The module tree from `src/lib.rs`, files only (inline modules count as their file).
fn read_tree(src: &Path) -> Vec<Module> {
    let mut modules = Vec::new();
    let mut queue: Vec<(PathBuf, ModPath, PathBuf)> =
        vec![(src.join("lib.rs"), Vec::new(), src.to_path_buf())];
    while let Some((file, path, children_dir)) = queue.pop() {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let code = strip_test_items(&strip_comments_and_literals(&text));
        for name in declared_modules(&code) {
            let mut child = path.clone();
            child.push(name.clone());
            let flat = children_dir.join(format!("{name}.rs"));
            let nested = children_dir.join(&name).join("mod.rs");
            let file = if flat.exists() { flat } else { nested };
            queue.push((file, child, children_dir.join(&name)));
        }
        modules.push(Module { path, code });
    }
    modules
}

/// Per directory module (`""` for the crate root): the dependencies among its direct children.
fn sibling_graphs(modules: &[Module]) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let known: BTreeSet<&ModPath> = modules.iter().map(|m| &m.path).collect();
    let mut graphs: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for m in modules {
        for mut target in references(&m.code, &m.path) {
            while !known.contains(&target) {
                target.pop(); // an item, not a module: its module is the target
            }
            let common = m
                .path
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common < m.path.len() && common < target.len() {
                graphs
                    .entry(m.path[..common].join("::"))
                    .or_default()
                    .entry(m.path[common].clone())
                    .or_default()
                    .insert(target[common].clone());
            }
        }
    }
    graphs
}

/// A cycle in `graph`, as the modules along it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

fn crate_graphs() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    sibling_graphs(&read_tree(&src))
}

#[test]
fn no_module_depends_on_itself_through_others() {
    let graphs = crate_graphs();
    let mut cycles = Vec::new();
    for (dir, graph) in &graphs {
        if KNOWN_CYCLES.iter().any(|(known, _)| known == dir) {
            continue;
        }
        if let Some(cycle) = find_cycle(graph) {
            let within = if dir.is_empty() { "src/" } else { dir };
            cycles.push(format!("in {within}: {}", cycle.join(" → ")));
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles (move the shared type to the side that owns it): {cycles:#?}"
    );
}

#[test]
fn known_cycles_are_still_there() {
    let graphs = crate_graphs();
    for (dir, why) in KNOWN_CYCLES {
        let graph = graphs.get(*dir).cloned().unwrap_or_default();
        assert!(
            find_cycle(&graph).is_some(),
            "{dir} has no cycle any more ({why}): remove it from KNOWN_CYCLES"
        );
    }
}

#[test]
fn the_scan_sees_the_dependencies_that_exist() {
    let graphs = crate_graphs();
    let edge = |dir: &str, from: &str, to: &str| {
        graphs
            .get(dir)
            .and_then(|g| g.get(from))
            .is_some_and(|targets| targets.contains(to))
    };
    // Written out here from the source, one per kind of path.
    assert!(edge("", "config", "jwt"), "use crate::jwt::…");
    assert!(edge("", "policy", "identity"), "pub use crate::identity::…");
    assert!(edge("jwt", "verify", "provider"), "use super::provider::…");
    assert!(
        edge("config", "routes", "ratelimits"),
        "super::ratelimits:: in a type"
    );
    assert!(
        !edge("", "jwt", "config"),
        "config depends on jwt, not back"
    );
}

#[test]
fn paths_in_use_trees_and_expressions_are_resolved() {
    let code = strip_test_items(&strip_comments_and_literals(
        "use super::{a::X, b as c, d::{self, e::Y}};\n\
         use crate::f::g;\n\
         // use crate::commented::out;\n\
         let s = \"crate::in_a_string::x\";\n\
         let c = '{';\n\
         fn h<'a>(x: &'a str) { super::super::i::j(x); self::k::l(); }\n\
         #[cfg(test)]\n\
         mod tests { use crate::only_in_tests::x; }\n\
         #[cfg(test)]\n\
         use crate::test_import;\n",
    ));
    let here: ModPath = vec!["m".into(), "n".into()];
    let found: BTreeSet<String> = references(&code, &here)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    let expected: BTreeSet<String> = [
        "m::a::X",
        "m::b",
        "m::d",
        "m::d::e::Y",
        "f::g",
        "i::j",
        "m::n::k::l",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(found, expected);
}

#[test]
fn a_cycle_is_found_and_named() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a", "d"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(n, to)| (n.to_string(), to.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let mut acyclic = graph.clone();
    acyclic.insert("c".into(), BTreeSet::from(["d".to_string()]));
    assert_eq!(find_cycle(&acyclic), None);
}
