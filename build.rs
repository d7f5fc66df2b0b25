// Record the resolved versions of the crates that determine numbers, for run manifests.
fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let wanted = [
        "candle-core",
        "candle-nn",
        "candle-transformers",
        "tokenizers",
        "minijinja",
        "statrs",
        "rand_chacha",
        "safetensors",
    ];
    let mut found = Vec::new();
    let mut name = String::new();
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = n.trim_matches('"').to_string();
        } else if let Some(v) = line.strip_prefix("version = ") {
            if wanted.contains(&name.as_str()) {
                // A crate locked at two versions is recorded as "a+b".
                let v = v.trim_matches('"').to_string();
                match found.iter_mut().find(|(n, _): &&mut (String, String)| n == &name) {
                    Some((_, old)) => *old = format!("{old}+{v}"),
                    None => found.push((name.clone(), v)),
                }
            }
        }
    }
    let s: Vec<String> = found.iter().map(|(n, v)| format!("{n}={v}")).collect();
    println!("cargo:rustc-env=MORES_DEP_VERSIONS={}", s.join(","));
}
