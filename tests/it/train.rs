//! `mores train`: resume replays the uninterrupted run; bad input fails before anything is
//! written; on the real SmolLM2 the loss falls on a tiny overfit set.
use crate::common::{assert_clean_error, mores, smollm2, stderr, tiny_model};
use std::path::Path;

fn write_data(path: &Path, n: usize) {
    let countries = ["Nigeria", "Japan", "Brazil", "Germany", "India", "Egypt"];
    let answers = ["Very important", "Rather important", "Not very important", "Not at all important"];
    let mut s = String::new();
    for i in 0..n {
        let c = countries[i % countries.len()];
        let rec = if i % 3 == 2 {
            let mut t = vec![0.1; 4];
            t[i % 4] = 0.7;
            serde_json::json!({"id": format!("r{i}"), "prompt": format!("How important is religion to a person in {c}?"),
                "answer_prefix": "Answer: ", "labels": ["1", "2", "3", "4"], "target": t})
        } else {
            serde_json::json!({"id": format!("r{i}"), "messages": [
                {"role": "user", "content": format!("How important is family to a person in {c}?")},
                {"role": "assistant", "content": format!("{}.", answers[i % 4])}]})
        };
        s.push_str(&rec.to_string());
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

fn write_recipe(path: &Path, model: &Path, extra: &str) {
    let text = format!(
        r#"name = "test"
[student]
path = "{}"
[lora]
rank = 4
alpha = 8
dropout = 0.1
targets = ["q_proj", "v_proj", "down_proj"]
[train]
lr = 5e-3
batch = 2
grad_accum = 2
warmup_steps = 2
max_steps = 6
save_every = 2
eval_every = 2
val_fraction = 0.2
seed = 3
{extra}
"#,
        model.display()
    );
    std::fs::write(path, text).unwrap();
}

fn run(args: &[&str]) -> std::process::Output {
    let o = mores(args);
    assert!(o.status.success(), "mores {args:?} failed: {}", stderr(&o));
    o
}

/// Loss curve without the timing column, which differs between runs.
fn curve(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("loss.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("tokens_per_s");
            v
        })
        .collect()
}

#[test]
fn resumed_training_replays_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(&dir.path().join("m"), "llama", 1);
    let (data, recipe) = (dir.path().join("d.jsonl"), dir.path().join("r.toml"));
    write_data(&data, 14);
    write_recipe(&recipe, &model, "");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run(&["train", "--recipe", &s(&recipe), "--data", &s(&data), "--out", &s(&a)]);
    run(&["train", "--recipe", &s(&recipe), "--data", &s(&data), "--out", &s(&b), "--stop-after", "3"]);
    assert_eq!(curve(&b).len(), 3);
    run(&["train", "--recipe", &s(&recipe), "--data", &s(&data), "--out", &s(&b), "--resume"]);
    let (ca, cb) = (curve(&a), curve(&b));
    assert_eq!(ca.len(), 6);
    assert_eq!(ca, cb, "resumed loss curve differs from the uninterrupted one");
    let w = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert!(w(&a) == w(&b), "final adapters differ");
    // Every step logged a finite loss, validation ran, and the plot exists.
    assert!(ca.iter().all(|v| v["loss"].as_f64().unwrap().is_finite()));
    assert!(ca.iter().any(|v| v.get("val_loss").is_some()));
    let svg = std::fs::read_to_string(a.join("loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("train loss") && svg.contains("<polyline"));
    // The trained adapter is usable by the probe path.
    let o =
        run(&["score", "--model", &s(&model), "--prompt", "How important is family?\nAnswer: ", "--adapter", &s(&a)]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("probs"));
}

#[test]
fn failed_run_never_touches_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(&dir.path().join("m"), "llama", 1);
    let (data, recipe, out) = (dir.path().join("d.jsonl"), dir.path().join("r.toml"), dir.path().join("out"));
    write_data(&data, 8);
    write_recipe(&recipe, &model, "");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    run(&["train", "--recipe", &s(&recipe), "--data", &s(&data), "--out", &s(&out), "--max-steps", "2"]);
    // Everything but the lock file, which holds the pid of the last process to take it (each run
    // takes it before any work, failing or not).
    let snapshot = |d: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = walk(d)
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n != ".mores.lock"))
            .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
            .collect();
        v.sort();
        v
    };
    let before = snapshot(&out);

    // A fresh run into a folder with a checkpoint.
    let o = mores(&["train", "--recipe", &s(&recipe), "--data", &s(&data), "--out", &s(&out)]);
    assert_clean_error(&o, "--resume");
    // Malformed data: a record with no prompt or messages, named by line.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"id\": \"a\", \"target\": \"x\"}\n").unwrap();
    let o = mores(&["train", "--recipe", &s(&recipe), "--data", &s(&bad), "--out", &s(&out), "--resume"]);
    assert_clean_error(&o, "bad.jsonl:1");
    // Empty dataset.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let o = mores(&["train", "--recipe", &s(&recipe), "--data", &s(&empty), "--out", &s(&dir.path().join("o2"))]);
    assert_clean_error(&o, "no records");
    // Resuming with other data.
    write_data(&dir.path().join("d2.jsonl"), 9);
    let o = mores(&[
        "train",
        "--recipe",
        &s(&recipe),
        "--data",
        &s(&dir.path().join("d2.jsonl")),
        "--out",
        &s(&out),
        "--resume",
    ]);
    assert_clean_error(&o, "data file differs");
    // A target module the model does not have.
    let r2 = dir.path().join("r2.toml");
    std::fs::write(&r2, std::fs::read_to_string(&recipe).unwrap().replace("\"down_proj\"", "\"dense_4h\"")).unwrap();
    let o = mores(&["train", "--recipe", &s(&r2), "--data", &s(&data), "--out", &s(&dir.path().join("o3"))]);
    assert_clean_error(&o, "dense_4h");
    // Unknown recipe field.
    let r3 = dir.path().join("r3.toml");
    std::fs::write(&r3, std::fs::read_to_string(&recipe).unwrap().replace("lr = 5e-3", "learning_rate = 5e-3"))
        .unwrap();
    let o = mores(&["train", "--recipe", &s(&r3), "--data", &s(&data), "--out", &s(&dir.path().join("o4"))]);
    assert_clean_error(&o, "learning_rate");
    // A quantized student cannot be trained.
    let r4 = dir.path().join("r4.toml");
    std::fs::write(&r4, std::fs::read_to_string(&recipe).unwrap().replace("[lora]", "weights = \"stored\"\n[lora]"))
        .unwrap();
    let o = mores(&["train", "--recipe", &s(&r4), "--data", &s(&data), "--out", &s(&dir.path().join("o5"))]);
    assert_clean_error(&o, "f32");
    // A family split with no survey to find the families in.
    let r5 = dir.path().join("r5.toml");
    std::fs::write(&r5, format!("{}val_split = \"family\"\n", std::fs::read_to_string(&recipe).unwrap())).unwrap();
    let o = mores(&["train", "--recipe", &s(&r5), "--data", &s(&data), "--out", &s(&dir.path().join("o6"))]);
    assert_clean_error(&o, "[generate]");

    assert_eq!(before, snapshot(&out), "a failed run changed the existing checkpoint");
}

fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn loss_falls_on_a_tiny_overfit_set_with_smollm2() {
    let dir = tempfile::tempdir().unwrap();
    let (data, recipe, out) = (dir.path().join("d.jsonl"), dir.path().join("r.toml"), dir.path().join("out"));
    let mut s = String::new();
    for (i, (c, a)) in [("Nigeria", "1"), ("Japan", "3"), ("Brazil", "2"), ("Sweden", "4")].iter().enumerate() {
        s.push_str(
            &serde_json::json!({"id": format!("r{i}"), "messages": [
                {"role": "user", "content": format!("How important is religion in {c}? Options: 1. Very 2. Rather 3. Not very 4. Not at all")},
                {"role": "assistant", "content": format!("Answer: {a}")}]})
            .to_string(),
        );
        s.push('\n');
    }
    std::fs::write(&data, s).unwrap();
    write_recipe(&recipe, &smollm2(), "");
    let text = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace("max_steps = 6", "max_steps = 8")
        .replace("val_fraction = 0.2", "val_fraction = 0.0")
        .replace("lr = 5e-3", "lr = 2e-3")
        .replace("dropout = 0.1", "dropout = 0.0")
        .replace("grad_accum = 2", "grad_accum = 1");
    std::fs::write(&recipe, text).unwrap();
    let p = |p: &Path| p.to_str().unwrap().to_string();
    run(&["train", "--recipe", &p(&recipe), "--data", &p(&data), "--out", &p(&out)]);
    let c = curve(&out);
    let first = c[0]["loss"].as_f64().unwrap();
    let last = c.last().unwrap()["loss"].as_f64().unwrap();
    assert!(last < 0.5 * first, "loss did not fall: {first} -> {last}");
}

/// One prompt path: a training example built from a survey item reads exactly the
/// tokens the probe scores for that item, chat template and answer cue included.
#[test]
fn training_context_is_the_probe_prompt() {
    use mores::generate::dataset::Record;
    use mores::model::{LoadOptions, Model};
    use mores::train::examples::{build, Built};
    let m = Model::load(&smollm2(), &LoadOptions { dequantize: true, ..Default::default() }).unwrap();
    let survey = mores::survey::Survey::load(crate::common::root().join("data/wvs")).unwrap();
    let recipe =
        mores::recipe::DistillRecipe::load(&crate::common::root().join("recipes/distill/default.toml")).unwrap();
    let p = &recipe.prompt;
    let country = &survey.countries["NGA"];
    let q = survey.questions.iter().find(|q| survey.answers(&q.id, "NGA").is_some() && q.options.len() == 4).unwrap();
    let probe = mores::prompt::build(p, q, country, &m).unwrap();
    assert!(probe.text.starts_with("<|im_start|>system"), "chat = auto on a chat model");
    let labels: Vec<String> = (1..=4).map(|i| i.to_string()).collect();
    let rec: Record = serde_json::from_value(serde_json::json!({
        "id": "x", "prompt": mores::prompt::user_text(p, q, country), "answer_prefix": p.answer_cue,
        "labels": labels, "target": [0.1, 0.2, 0.3, 0.4]
    }))
    .unwrap();
    let Built::Ok(ex) = build(&m, &rec, &rec.lesson().unwrap(), mores::prompt::use_chat(p, &m), 512).unwrap() else {
        panic!("fits")
    };
    let ids = m.tok.encode_prompt(&probe.text).unwrap();
    for row in &ex.rows {
        assert_eq!(&row[..ids.len()], &ids[..], "training row starts with the probe's prompt tokens");
    }
}

/// Early stopping: validation on whole held-out questions measures the cross-country
/// r, training stops `patience` validations after the best one, the adapter at the top of OUT is
/// the best validated one (not the last), and a resume of the stopped run trains no further.
#[test]
fn early_stopping_keeps_the_best_validated_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(&dir.path().join("m"), "llama", 1);
    let (data, recipe, out) = (dir.path().join("d.jsonl"), dir.path().join("r.toml"), dir.path().join("out"));
    let countries = ["Nigeria", "Japan", "Brazil", "Germany", "India", "Egypt"];
    let mut s = String::new();
    for q in 0..8 {
        for (c, name) in countries.iter().enumerate() {
            let x = ((q * 7 + c * 3) % 10) as f64 / 10.0;
            let text = format!("Question {q}: how much do you agree?");
            let rec = serde_json::json!({"id": format!("q{q}-{c}"), "question_id": format!("Q{q}"), "question": text,
                "prompt": format!("You live in {name}. {text}"), "answer_prefix": "Answer: ", "labels": ["1", "2", "3"],
                "target": [0.1 + 0.8 * x, 0.05, 0.85 - 0.8 * x]});
            s.push_str(&rec.to_string());
            s.push('\n');
        }
    }
    std::fs::write(&data, s).unwrap();
    let extra = "group = \"question\"\nval_split = \"question\"\npatience = 2\nselect = \"country_r\"";
    write_recipe(&recipe, &model, extra);
    let text = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace("max_steps = 6", "max_steps = 40")
        .replace("lr = 5e-3", "lr = 5e-2")
        .replace("eval_every = 2", "eval_every = 1")
        .replace("val_fraction = 0.2", "val_fraction = 0.3");
    std::fs::write(&recipe, text).unwrap();
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let o = run(&["train", "--recipe", &p(&recipe), "--data", &p(&data), "--out", &p(&out)]);
    let c = curve(&out);
    let rs: Vec<f64> = c.iter().map(|v| v["val_country_r"].as_f64().expect("validated every step")).collect();
    // The best is the first strict maximum; training ran exactly `patience` steps past it.
    let best = rs.iter().enumerate().fold(0, |b, (i, r)| if *r > rs[b] { i } else { b });
    assert_eq!(c.len(), best + 1 + 2, "stopped 2 validations after the best: {rs:?}");
    assert!(c.len() < 40, "the seeded run stops early");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains(&format!("after step {}", best + 1)) && stdout.contains("stopped early"), "{stdout}");
    let w = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert!(w(&out) == w(&out.join("best")), "the top adapter is the best validated one");
    assert!(w(&out) != w(&out.join("checkpoint")), "the checkpoint keeps the last step's adapter");
    // Validation held out whole questions: every held-out record's question is absent from training.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint/trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["n_val"].as_u64().unwrap() % countries.len() as u64, 0, "{state}");
    assert!(state["n_val"].as_u64().unwrap() > 0);
    // Resuming the stopped run trains no further step and keeps the best adapter on top.
    run(&["train", "--recipe", &p(&recipe), "--data", &p(&data), "--out", &p(&out), "--resume"]);
    assert_eq!(curve(&out).len(), c.len());
    assert!(w(&out) == w(&out.join("best")));
}

/// A family validation split holds out whole WVS batteries, grouped exactly as the test split
/// groups them: every family lies on one side of both splits, and a record naming a question the
/// survey lacks is an error naming it.
#[test]
fn family_validation_never_splits_a_battery() {
    use mores::generate::dataset::Record;
    use mores::generate::leak::{families, Split};
    use mores::train::validate::ValKeys;
    let data = crate::common::root().join("data/wvs");
    let survey = mores::survey::Survey::load(&data).unwrap();
    let fam = families(&survey, 3, 0.5);
    let mut members: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (q, f) in &fam {
        members.entry(f.as_str()).or_default().push(q.as_str());
    }
    assert!(members.values().any(|m| m.len() >= 5), "WVS has batteries of five or more questions");
    let split = Split::draw(&survey, 0, 0.3, 3, 0.5).unwrap();
    for m in members.values() {
        let held = m.iter().filter(|q| split.heldout.iter().any(|h| h == *q)).count();
        assert!(held == 0 || held == m.len(), "the test split cut family {m:?}");
    }
    let keys = ValKeys::families(&data, 3, 0.5).unwrap();
    let record = |id: String, q: &str| -> Record {
        serde_json::from_value(
            serde_json::json!({"id": id, "question_id": q, "prompt": "p", "labels": ["1", "2"], "target": [0.5, 0.5]}),
        )
        .unwrap()
    };
    let side: std::collections::BTreeMap<&str, bool> = split
        .train
        .iter()
        .map(|q| {
            let sides: Vec<bool> =
                (0..3).map(|c| keys.held_out(7, &record(format!("{q}-{c}"), q), 0.2).unwrap()).collect();
            assert!(sides.iter().all(|&s| s == sides[0]), "{q}: one question on both sides");
            (q.as_str(), sides[0])
        })
        .collect();
    for m in members.values() {
        let s: Vec<bool> = m.iter().filter_map(|q| side.get(q).copied()).collect();
        assert!(s.iter().all(|&x| x == s[0]), "validation cut family {m:?}: {s:?}");
    }
    let held = side.values().filter(|&&s| s).count();
    assert!(held > 0 && held < side.len(), "{held} of {}", side.len());
    let err = keys.held_out(7, &record("x".into(), "Q99999"), 0.2).unwrap_err().to_string();
    assert!(err.contains("Q99999") && err.contains("val_split"), "{err}");
}

/// The student's-questions pool of the transfer report's references leaves out the questions a
/// family (or question) split holds out whole for validation: the student never took a gradient
/// on them. A record split leaves every question in.
#[test]
fn trained_questions_leave_out_the_validation_batteries() {
    use mores::generate::dataset::Record;
    use mores::recipe::DistillRecipe;
    let root = crate::common::root();
    let survey = mores::survey::Survey::load(root.join("data/wvs")).unwrap();
    // Two records for every scored question (those the batteries are drawn over).
    let scored = mores::generate::leak::families(&survey, 3, 0.5);
    let records: Vec<Record> = scored
        .keys()
        .flat_map(|q| (0..2).map(move |c| (q.clone(), c)))
        .map(|(q, c)| {
            serde_json::from_value(serde_json::json!({"id": format!("{q}-{c}"), "question_id": q, "prompt": "p"}))
                .unwrap()
        })
        .collect();
    let recipe_path = root.join("recipes/transfer/country-sg-full-long.toml");
    let recipe = DistillRecipe::load(&recipe_path).unwrap();
    let trained = mores::train::trained_questions(&recipe, &records).unwrap();
    let g = recipe.generate.as_ref().unwrap();
    let keys = mores::train::validate::ValKeys::families(&g.data, g.leak_ngram, g.leak_threshold).unwrap();
    let (seed, fraction) = (recipe.train.seed, recipe.train.val_fraction);
    let mut held = 0;
    for r in &records {
        let q = r.question_id.as_deref().unwrap();
        let out = keys.held_out(seed, r, fraction).unwrap();
        assert_eq!(trained.contains(q), !out, "{q}: trained unless validation holds it out");
        held += usize::from(out);
    }
    assert!(held > 0 && trained.len() < scored.len(), "validation held out nothing");
    // A record split: a question is out only if each of its records fell into validation.
    let by_record = DistillRecipe::load_with(&recipe_path, &["train.val_split=\"record\"".into()]).unwrap();
    let trained = mores::train::trained_questions(&by_record, &records).unwrap();
    let keys = mores::train::validate::ValKeys::new(mores::recipe::ValSplit::Record);
    for pair in records.chunks(2) {
        let q = pair[0].question_id.as_deref().unwrap();
        let out = pair.iter().all(|r| keys.held_out(seed, r, fraction).unwrap());
        assert_eq!(trained.contains(q), !out, "{q} under a record split");
    }
    assert!(trained.len() > scored.len() * 9 / 10, "a record split keeps most questions");
}
