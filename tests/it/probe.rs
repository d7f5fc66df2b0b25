use crate::common::{mores, smollm2, stderr};
use mores::analysis::results::Results;
use mores::probe::Sample;
use mores::util::io::read_jsonl;

fn samples(dir: &std::path::Path) -> Vec<Sample> {
    read_jsonl(&dir.join("samples.jsonl")).unwrap()
}

#[test]
fn probe_end_to_end_resume_and_shards() {
    let dir = tempfile::tempdir().unwrap();
    let model = smollm2();
    let run = |out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args = vec!["probe", "--model", model.to_str().unwrap(), "--countries", "USA,NGA,DEU", "--limit", "5"];
        args.extend_from_slice(&["--out", out.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let o = mores(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        (out, o)
    };
    let (full, _) = run("full", &[]);
    let s = samples(&full);
    // The default recipe asks each of the 15 pairs in two option orders, and each of the 5
    // questions once more without a country (also in two orders).
    assert_eq!(s.len(), 15 * 2 + 5 * 2);
    for x in &s {
        assert!((x.probs.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(x.mass > 0.0 && x.mass <= 1.0 + 1e-9);
        assert_eq!(x.prompt_sha256, mores::util::io::sha256_hex(x.prompt.as_bytes()));
        assert!(x.prompt.starts_with("<|im_start|>system"), "chat model gets its template");
        assert_eq!(x.country.is_empty(), x.template == "blind");
        assert!(x.prompt.ends_with("Answer: "));
    }
    let res: Results = serde_json::from_str(&std::fs::read_to_string(full.join("results.json")).unwrap()).unwrap();
    assert_eq!(res.countries.len(), 3);
    assert!(res.countries.iter().all(|c| c.n == 5 && c.raw.is_some()));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["model"]["sha256"], "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53");
    assert!(std::fs::read_to_string(full.join("report.md")).unwrap().contains("| USA | United States |"));

    // Rerun into the same folder: everything comes from the scoring cache, results identical.
    let (_, o) = run("full", &[]);
    assert!(stderr(&o).contains("40 of 40 prompts found in the scoring cache"), "{}", stderr(&o));
    assert_eq!(samples(&full), s);

    // Two shards (with another batch size) merge to the same samples, bit for bit: a prompt's
    // numbers do not depend on the batch it was scored in.
    let (a, _) = run("a", &["--shard", "0/2", "--batch", "3"]);
    let (b, _) = run("b", &["--shard", "1/2", "--batch", "3"]);
    assert_eq!(samples(&a).len() + samples(&b).len(), 40);
    let merged = dir.path().join("merged");
    let o = mores(&["merge", "--out", merged.to_str().unwrap(), a.to_str().unwrap(), b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = samples(&merged);
    assert_eq!(m.len(), s.len());
    for (x, y) in s.iter().zip(&m) {
        assert_eq!(x, y, "{}: shards with batch 3 vs one run with batch 8", x.id);
    }
    let merged_res = std::fs::read_to_string(merged.join("results.json")).unwrap();
    assert_eq!(merged_res, std::fs::read_to_string(full.join("results.json")).unwrap());

    // Every row run whole, without prefix reuse: the same samples and results.json bytes.
    let (whole, _) = run("whole", &["--whole-rows"]);
    assert_eq!(samples(&whole), s);
    assert_eq!(std::fs::read_to_string(whole.join("results.json")).unwrap(), merged_res);
}

#[test]
fn killed_run_leaves_cache_readable() {
    // A kill mid-append leaves a partial last line; the cache reader drops it and carries on.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.jsonl");
    std::fs::write(&p, "{\"a\": 1}\n{\"a\": 2}\n{\"a\": ").unwrap();
    let rows: Vec<serde_json::Value> = read_jsonl(&p).unwrap();
    assert_eq!(rows.len(), 2);
    // A bad line in the middle is corruption, not a kill: an error.
    std::fs::write(&p, "{\"a\": 1}\n{\"a\n{\"a\": 2}\n").unwrap();
    assert!(read_jsonl::<serde_json::Value>(&p).is_err());
}
