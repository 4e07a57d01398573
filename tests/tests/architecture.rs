//! The shape of the code, as a newcomer relies on it: small files, no module import cycles in
//! the proxy, a `core` crate without pingora or tokio, and format knowledge only in `format/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The code before its `#[cfg(test)]` module, without comments (doc links are not imports).
fn non_test_code(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Unit-test files (`tests.rs` beside the module they test).
fn is_test_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "tests.rs")
}

#[test]
fn no_source_file_of_the_proxy_is_over_600_lines() {
    let long: Vec<String> = rust_files(&root().join("proxy/src"))
        .into_iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(&f).unwrap().lines().count();
            (lines > 600).then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these by concept: {long:?}");
}

/// `crate::<module>` references of each top-level module of the proxy library.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join("proxy/src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).unwrap();
        let module = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        if is_test_file(&file) {
            continue;
        }
        let text = non_test_code(&std::fs::read_to_string(&file).unwrap());
        let deps = graph.entry(module.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() && name != module {
                deps.insert(name);
            }
        }
    }
    graph
}

#[test]
fn the_proxys_modules_import_each_other_without_cycles() {
    let graph = module_graph();
    assert!(graph.len() > 10, "the graph was read: {graph:?}");
    assert!(graph["request"].contains("format"), "references are found: {:?}", graph["request"]);
    // Depth-first search for a back edge.
    fn visit(m: &str, graph: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|p| p == m) {
            let mut cycle = path[start..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for dep in graph.get(m).into_iter().flatten() {
            if let Some(cycle) = visit(dep, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!("module import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn core_links_neither_pingora_nor_tokio_and_only_proxy_links_pingora() {
    let manifest = |krate: &str| std::fs::read_to_string(root().join(krate).join("Cargo.toml")).unwrap();
    let deps = |text: &str| -> Vec<String> {
        let deps = text.split("[dependencies]").nth(1).unwrap_or("").split("\n[").next().unwrap_or("");
        deps.lines().filter_map(|l| l.split('=').next()).map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect()
    };
    let core = deps(&manifest("core"));
    assert!(core.contains(&"serde".to_string()), "dependencies were read: {core:?}");
    assert!(!core.iter().any(|d| d.starts_with("pingora") || d == "tokio"), "{core:?}");
    for krate in ["origin", "bench", "tests"] {
        assert!(!deps(&manifest(krate)).iter().any(|d| d.starts_with("pingora")), "{krate} links pingora");
    }
}

#[test]
fn only_format_modules_name_individual_formats() {
    let src = root().join("proxy/src");
    let variants = ["Generic", "Pypi", "Npm", "Cargo", "Maven", "Apt", "Gems", "Oci"];
    let mut found = Vec::new();
    let mut format_files = 0;
    for file in rust_files(&src).into_iter().filter(|f| !is_test_file(f)) {
        let in_format = file.starts_with(src.join("format"));
        let code = non_test_code(&std::fs::read_to_string(&file).unwrap());
        for v in variants {
            if code.contains(&format!("FormatKind::{v}")) {
                if in_format {
                    format_files += 1;
                } else {
                    found.push(format!("{}: FormatKind::{v}", file.display()));
                }
            }
        }
    }
    assert!(format_files >= variants.len(), "each format names itself in format/");
    assert!(found.is_empty(), "format knowledge outside format/: {found:?}");
}
