//! The server's modules layer one way: no module reaches, directly or through others, back
//! into one that uses it. A name two modules share goes down a floor, to a module both use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The crate's top-level modules, each with the top-level modules its source names as
/// `crate::<module>`.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let module = path.file_stem().unwrap().to_str().unwrap().to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let files: Vec<_> = if path.is_dir() {
            std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect()
        } else {
            vec![path]
        };
        let uses = graph.entry(module.clone()).or_default();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (at, _) in text.match_indices("crate::") {
                let used: String = text[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !used.is_empty() && used != module {
                    uses.insert(used);
                }
            }
        }
    }
    graph
}

/// A path from `from` back to `to`, if there is one.
fn path_between(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if from == to {
        return Some(vec![to.to_owned()]);
    }
    if !seen.insert(from.to_owned()) {
        return None;
    }
    graph.get(from)?.iter().find_map(|next| {
        path_between(graph, next, to, seen).map(|mut path| {
            path.insert(0, from.to_owned());
            path
        })
    })
}

#[test]
fn no_module_imports_one_that_imports_it() {
    let graph = module_graph();
    assert!(graph.contains_key("routes") && graph.contains_key("config"));
    let cycles: Vec<String> = graph
        .iter()
        .flat_map(|(module, uses)| uses.iter().map(move |used| (module, used)))
        .filter_map(|(module, used)| {
            path_between(&graph, used, module, &mut BTreeSet::new())
                .map(|back| format!("{module} -> {}", back.join(" -> ")))
        })
        .collect();
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

#[test]
fn the_access_layer_knows_no_front_end() {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/access.rs"))
            .unwrap();
    for front_end in ["axum", "tonic", "crate::routes", "crate::grpc"] {
        assert!(
            !source.contains(front_end),
            "access.rs names {front_end}: the HTTP and gRPC front ends translate, access decides"
        );
    }
}
