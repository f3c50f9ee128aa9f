//! The proxy's modules form no import cycle: shared state (`state`), the accept loop
//! (`listen`), responses (`response`) and reservations (`funds`) sit below the modules that
//! use them. Read from the sources, since the compiler allows cycles inside a crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `module → modules it names as crate::module`, outside comments and unit tests.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            sources.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (name, text) in &sources {
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let mut deps = BTreeSet::new();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let dep: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if modules.contains(&dep) && dep != *name {
                    deps.insert(dep);
                }
            }
        }
        graph.insert(name.clone(), deps);
    }
    graph
}

fn cycle_from(
    graph: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|p| p == node) {
        let mut cycle = path[i..].to_vec();
        cycle.push(node.to_string());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_string());
    for dep in &graph[node] {
        if let Some(c) = cycle_from(graph, dep, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(node.to_string());
    None
}

#[test]
fn proxy_modules_import_no_cycle() {
    let graph = graph();
    assert!(
        graph.contains_key("state") && graph.contains_key("relay"),
        "{graph:?}"
    );
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, node, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
    // The shared state and the response helpers depend on no request-path module.
    for low in ["state", "response", "listen"] {
        for high in ["relay", "api", "admin", "workers", "server", "admission"] {
            assert!(!graph[low].contains(high), "{low} imports {high}");
        }
    }
}
