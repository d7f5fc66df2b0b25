//! `mores run` end to end on tiny random-weight models: every stage runs and writes the report;
//! a rerun skips unchanged stages; a killed stage is redone and nothing before it; a changed
//! setting reruns only what depends on it; a bad recipe fails before any work.
use crate::common::{assert_clean_error, mores, stderr, tiny_model};
use std::path::Path;

pub(crate) fn recipe(dir: &Path, extra_train: &str) -> std::path::PathBuf {
    let student = tiny_model(&dir.join("student"), "llama", 1);
    let teacher = tiny_model(&dir.join("teacher"), "gemma3", 2);
    let data = crate::common::root().join("data/wvs");
    let text = format!(
        r#"name = "tiny"
[student]
path = "{s}"
[teacher]
path = "{t}"
[lora]
rank = 2
alpha = 4
targets = ["q_proj", "v_proj"]
[train]
epochs = 1
batch = 4
lr = 1e-2
val_fraction = 0.2
{extra_train}
[generate]
mode = "survey-grounded"
data = "{d}"
paraphrase = false
max_questions = 6
heldout_fraction = 0.3
[transfer]
countries = ["USA", "DEU", "NGA"]
max_heldout_questions = 8
train_questions = 4
bootstrap = 100
"#,
        s = student.display(),
        t = teacher.display(),
        d = data.display()
    );
    let p = dir.join("r.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn run(r: &Path, out: &Path) -> String {
    let o = mores(&["run", r.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "mores run failed: {}", stderr(&o));
    stderr(&o)
}

fn ran(log: &str) -> Vec<String> {
    log.lines().filter_map(|l| l.strip_prefix("stage ")?.strip_suffix(": running").map(String::from)).collect()
}

#[test]
fn pipeline_runs_skips_and_resumes_on_tiny_models() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "");
    let out = dir.path().join("out");
    let all = ["split", "probe-before", "probe-teacher", "generate", "train", "probe-after", "report"];
    assert_eq!(ran(&run(&r, &out)), all);
    for f in ["report.md", "transfer.json", "transfer.svg", "stages.json", "adapter/adapter_model.safetensors"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("transfer.json")).unwrap()).unwrap();
    assert!(rep["heldout"]["n_countries"].as_u64().unwrap() >= 2, "{rep}");
    assert!(rep["heldout"]["question_level"]["countries"][0]["delta"]["ci95"].is_array(), "per-country CI: {rep}");
    // Both levels reported apart, with the swap control and the references on the same pairs.
    for k in ["verdict_question_level", "verdict_country_level"] {
        assert!(rep[k].as_str().is_some_and(|v| v.contains("level")), "{k}: {rep}");
    }
    assert!(rep["heldout"]["country_level"]["swap"]["n_pairs"].is_u64(), "{rep}");
    let refs: Vec<&str> =
        rep["heldout"]["references"]["rows"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        refs,
        [
            "student before",
            "student after",
            "typical answer",
            "lexical neighbour (training split)",
            "3 neighbours z-scored (training split)",
            "lexical neighbour (student's questions)",
            "3 neighbours z-scored (student's questions)",
            "teacher"
        ]
    );
    assert_eq!(rep["schema"], "mores.transfer/2", "{rep}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("Held-out questions") && md.contains("Training questions") && md.contains("teacher"));
    assert!(md.contains("### Country level") && md.contains("swap gap") && md.contains("lexical neighbour"), "{md}");
    let svg = std::fs::read_to_string(out.join("transfer.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("before") && svg.contains("after"));
    let svg = std::fs::read_to_string(out.join("transfer-continents.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("change") && md.contains("(transfer-continents.svg)"));

    // Unchanged inputs: nothing runs, the numbers stay.
    assert!(ran(&run(&r, &out)).is_empty());
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("transfer.json")).unwrap()).unwrap();
    assert_eq!(rep["heldout"], again["heldout"]);

    // A stage killed mid-way (recorded as started, output incomplete) is redone, and only what follows it.
    let stages_path = out.join("stages.json");
    let mut stages: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stages_path).unwrap()).unwrap();
    stages["probe-after"]["finished"] = false.into();
    std::fs::write(&stages_path, stages.to_string()).unwrap();
    std::fs::remove_file(out.join("probe-after/results.json")).unwrap();
    assert_eq!(ran(&run(&r, &out)), ["probe-after"]);
    assert!(out.join("probe-after/results.json").exists());

    // A changed training setting reruns training and what depends on it, not the probes before it.
    let r2 = recipe(dir.path(), "weight_decay = 0.0");
    assert_eq!(ran(&run(&r2, &out)), ["train", "probe-after", "report"]);

    // The probes ask both option orders by default; the report averages them per item.
    let s: Vec<mores::probe::Sample> = mores::util::io::read_jsonl(&out.join("probe-after/samples.jsonl")).unwrap();
    assert_eq!(s.iter().filter(|x| x.id.ends_with("~rev")).count() * 2, s.len());
    // The option-order setting reruns the probes only.
    let text =
        std::fs::read_to_string(&r2).unwrap().replace("[transfer]\n", "[transfer]\nprobe_orders = \"original\"\n");
    std::fs::write(&r2, text).unwrap();
    assert_eq!(ran(&run(&r2, &out)), ["probe-before", "probe-teacher", "probe-after", "report"]);
    let s: Vec<mores::probe::Sample> = mores::util::io::read_jsonl(&out.join("probe-after/samples.jsonl")).unwrap();
    assert!(!s.is_empty() && s.iter().all(|x| !x.id.ends_with("~rev")));
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("transfer.json")).unwrap()).unwrap();
    assert_eq!(rep["heldout"]["n_countries"], again["heldout"]["n_countries"]);
}

#[test]
fn bad_transfer_recipe_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "");
    let text = std::fs::read_to_string(&r).unwrap();
    let out = dir.path().join("out");
    let bad = |name: &str, body: String, msg: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        let o = mores(&["run", p.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert_clean_error(&o, msg);
        assert!(!out.exists(), "{name}: work started before the error");
    };
    bad("unknown.toml", text.replace("bootstrap = 100", "bootstrap = 100\nbootstraps = 5"), "bootstraps");
    bad("model.toml", text.replace("student\"", "no-such-student\""), "student model not found");
    bad("split.toml", text.replace("heldout_fraction = 0.3", "heldout_fraction = 0.0"), "heldout_fraction");
    bad("country.toml", text.replace("\"NGA\"]", "\"XXX\"]"), "XXX");
}
