//! The source tree's shape: imports point one way down the pipeline, and no files import each
//! other through any chain. Reads `crate::` and `super::` paths in `src/`, resolves
//! each to the file that defines it, and checks the resulting graph.
use crate::common::root;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Stages from the bottom up: a file may import its own stage and those before it, never after.
const STAGES: [&str; 17] = [
    "util", "recipe", "survey", "model", "score", "lm", "prompt", "probe", "analysis", "report", "evaluate",
    "generate", "train", "transfer", "plan", "export", "bench",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Module path of a file: src/model/mod.rs -> [model], src/model/llama.rs -> [model, llama].
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().to_string()).collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib" || l == "main") {
        parts.pop();
    }
    parts
}

/// The file defining the longest prefix of `path` that is a module.
fn resolve(src: &Path, path: &[String]) -> Option<PathBuf> {
    (1..=path.len()).rev().find_map(|k| {
        let base = path[..k].iter().fold(src.to_path_buf(), |p, s| p.join(s));
        [base.with_extension("rs"), base.join("mod.rs")].into_iter().find(|c| c.exists())
    })
}

/// Every `crate::a::b` / `super::a` path in a file (groups `{x, y}` expanded one level).
fn imported_paths(text: &str, here: &[String]) -> Vec<Vec<String>> {
    let code: String = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
    let mut out = Vec::new();
    for (start, word) in [("crate::", "crate"), ("super::", "super")] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(start) {
            let prev = rest[..i].chars().last();
            rest = &rest[i + start.len()..];
            if prev.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let base: Vec<String> = if word == "crate" {
                Vec::new()
            } else {
                // The parent module (a mod.rs file is already named by its folder).
                here[..here.len().saturating_sub(1)].to_vec()
            };
            let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
            let mut segs: Vec<String> = base;
            segs.extend(rest[..end].split("::").filter(|s| !s.is_empty()).map(String::from));
            if rest[end..].starts_with('{') {
                let close = rest[end..].find('}').map(|j| end + j).unwrap_or(rest.len());
                for item in rest[end + 1..close].split(',') {
                    let first = item.trim().split("::").next().unwrap_or("").trim().to_string();
                    if !first.is_empty() && first != "self" {
                        let mut s = segs.clone();
                        s.push(first);
                        out.push(s);
                    }
                }
            }
            out.push(segs);
        }
    }
    out
}

fn import_graph() -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = BTreeMap::new();
    for f in &files {
        let here = module_of(&src, f);
        let text = std::fs::read_to_string(f).unwrap();
        let deps: BTreeSet<PathBuf> =
            imported_paths(&text, &here).iter().filter_map(|p| resolve(&src, p)).filter(|t| t != f).collect();
        graph.insert(f.clone(), deps);
    }
    graph
}

fn stage_of(src: &Path, f: &Path) -> Option<usize> {
    let first = f.strip_prefix(src).ok()?.iter().next()?.to_string_lossy().trim_end_matches(".rs").to_string();
    STAGES.iter().position(|s| *s == first)
}

#[test]
fn no_import_cycles() {
    let graph = import_graph();
    // Depth-first search with colours: meeting a grey node again closes a cycle.
    fn visit(
        n: &PathBuf,
        g: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        colour: &mut BTreeMap<PathBuf, u8>,
        stack: &mut Vec<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        colour.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in g.get(n).into_iter().flatten() {
            match colour.get(m).copied().unwrap_or(0) {
                1 => {
                    let i = stack.iter().position(|x| x == m).unwrap();
                    let mut cycle = stack[i..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, g, colour, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        colour.insert(n.clone(), 2);
        None
    }
    let mut colour = BTreeMap::new();
    for n in graph.keys() {
        if colour.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, &graph, &mut colour, &mut Vec::new()) {
                let src = root().join("src");
                let names: Vec<String> =
                    c.iter().map(|p| p.strip_prefix(&src).unwrap().display().to_string()).collect();
                panic!("import cycle: {}", names.join(" -> "));
            }
        }
    }
    assert!(graph.len() > 40, "the walk found the source files");
}

#[test]
fn imports_point_down_the_pipeline() {
    let src = root().join("src");
    let mut wrong = Vec::new();
    for (f, deps) in import_graph() {
        let Some(from) = stage_of(&src, &f) else { continue };
        for d in deps {
            if let Some(to) = stage_of(&src, &d) {
                if to > from {
                    wrong.push(format!(
                        "{} imports {} ({} is above {})",
                        f.strip_prefix(&src).unwrap().display(),
                        d.strip_prefix(&src).unwrap().display(),
                        STAGES[to],
                        STAGES[from]
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports that climb back up:\n{}", wrong.join("\n"));
}

#[test]
fn the_layout_check_sees_a_planted_cycle() {
    // The parser itself: a file importing its own importer is found.
    let here = vec!["probe".to_string()];
    let paths = imported_paths("use crate::analysis::results::{self, Results};\nuse super::{a, b};", &here);
    assert!(paths.contains(&vec!["analysis".into(), "results".into(), "Results".into()]));
    assert!(paths.contains(&vec!["a".to_string()]));
}
