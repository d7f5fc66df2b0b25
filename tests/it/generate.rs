//! `mores generate` with the real Gemma teacher: each mode writes records and a card; the same
//! seed gives the same bytes; the leakage guard drops items close to held-out questions; a run
//! killed mid-record resumes without loss or duplicates.
use crate::common::{assert_clean_error, mores, root, stderr};
use mores::generate::leak::{Guard, Split};
use mores::survey::Survey;
use std::path::{Path, PathBuf};

fn recipe(dir: &Path, mode: &str, extra: &str) -> PathBuf {
    let p = dir.join(format!("{mode}.toml"));
    let text = format!(
        "include = \"{}\"\n[generate]\nmax_items = 4\ncountries = [\"NGA\", \"DEU\"]\n{extra}",
        root().join(format!("recipes/distill/{mode}.toml")).display()
    );
    std::fs::write(&p, text).unwrap();
    p
}

fn run(args: &[&str]) {
    let o = mores(args);
    assert!(o.status.success(), "mores {args:?} failed: {}", stderr(&o));
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn card(out: &Path) -> serde_json::Value {
    let p = out.with_extension("card.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn each_mode_writes_records_and_a_card() {
    let dir = tempfile::tempdir().unwrap();
    for mode in ["qa", "soft-labels", "survey-grounded"] {
        let out = dir.path().join(format!("{mode}.jsonl"));
        run(&["generate", "--recipe", &s(&recipe(dir.path(), mode, "")), "--out", &s(&out)]);
        let c = card(&out);
        let rejected: u64 = c["rejected"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(c["work_items"], 4, "{mode}");
        assert_eq!(c["kept"].as_u64().unwrap() + rejected + c["leakage_dropped"].as_u64().unwrap(), 4, "{mode}: {c}");
        assert_eq!(c["status"], "complete");
        let records = mores::generate::dataset::read(&out);
        if c["kept"].as_u64().unwrap() > 0 {
            let records = records.unwrap();
            for (r, _) in &records {
                assert_eq!(r.mode.as_deref(), Some(mode));
                assert_eq!(r.hash.as_deref(), Some(r.content_hash().as_str()), "content hash");
                assert!(r.teacher_sha256.is_some() && r.seed.is_some());
            }
        }
        let split: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(format!("{mode}.split.json"))).unwrap())
                .unwrap();
        assert!(!split["heldout"].as_array().unwrap().is_empty());
    }
}

#[test]
fn same_seed_gives_identical_bytes_and_a_killed_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "soft-labels", "");
    let (a, b) = (dir.path().join("a/d.jsonl"), dir.path().join("b/d.jsonl"));
    run(&["generate", "--recipe", &s(&r), "--out", &s(&a)]);
    run(&["generate", "--recipe", &s(&r), "--out", &s(&b)]);
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    assert!(bytes(&a) == bytes(&b), "same seed, different bytes");
    assert!(!bytes(&a).is_empty());
    // Simulate a kill in flight: the last record half written, its status line (and any
    // after it) never written.
    let full = bytes(&b);
    let last_id = String::from_utf8_lossy(&full).lines().last().unwrap().split('"').nth(3).unwrap().to_string();
    std::fs::write(&b, &full[..full.len() - 20]).unwrap();
    let log = b.with_extension("log.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let keep: Vec<&str> = text.lines().take_while(|l| !l.contains(&format!("\"{last_id}\""))).collect();
    assert!(keep.len() < text.lines().count());
    std::fs::write(&log, keep.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    run(&["generate", "--recipe", &s(&r), "--out", &s(&b)]);
    assert!(bytes(&a) == bytes(&b), "resumed dataset differs from the uninterrupted one");
    let ids: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    let mut uniq = ids.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(ids.len(), uniq.len(), "duplicate status lines after resume");
    assert_eq!(card(&b)["work_items"], 4);
}

#[test]
fn leakage_guard_drops_near_duplicates_of_heldout_questions() {
    let survey = Survey::load(root().join("data/wvs")).unwrap();
    let split = Split::draw(&survey, 0, 0.3, 3, 0.5).unwrap();
    let guard = Guard::new(&survey, &split, 3, 0.5).unwrap();
    let held = survey.question(&split.heldout[0]).unwrap();
    // A planted near-duplicate: the held-out question with a word changed and a tail added.
    let planted = format!("{} Please answer honestly.", held.text.replacen(" you ", " you personally ", 1));
    let hit = guard.leaks(&planted).expect("a near-duplicate of a held-out question must be caught");
    assert_eq!(hit.0, held.id);
    // Training questions themselves mostly pass (batteries share some n-grams with held-out ones).
    let passed = split.train.iter().filter(|q| guard.leaks(&survey.question(q).unwrap().text).is_none()).count();
    assert!(passed * 10 > split.train.len() * 7, "guard too eager: {passed} of {}", split.train.len());
    // The split is stratified: every category with two or more questions has some held out.
    for cat in survey.categories() {
        let n = survey.questions.iter().filter(|q| q.category == cat && q.is_scored() && q.probeable()).count();
        if n >= 2 {
            assert!(split.heldout.iter().any(|id| survey.question(id).unwrap().category == cat), "{cat}");
        }
    }
    // And in the pipeline: a teacher prompted to answer every rewrite with the held-out question
    // (greedy decoding) plants near-duplicates; every one must be dropped, none kept.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sg.jsonl");
    let shots = format!(
        "Original: How old are you?\nRewrite: {t}\n\nOriginal: Are you married?\nRewrite: {t}\n\n",
        t = held.text
    );
    let extra = format!(
        "paraphrase_prompt = \"\"\"{shots}Original: {{question}}\nRewrite:\"\"\"\n[generate.sampling]\ntemperature = 0.0\n"
    );
    run(&["generate", "--recipe", &s(&recipe(dir.path(), "survey-grounded", &extra)), "--out", &s(&out)]);
    let c = card(&out);
    assert!(c["leakage_dropped"].as_u64().unwrap() >= 1, "{c}");
    if c["kept"].as_u64().unwrap() > 0 {
        for (r, _) in mores::generate::dataset::read(&out).unwrap() {
            assert!(guard.leaks(r.question.as_deref().unwrap()).is_none(), "kept a leaking item {}", r.id);
        }
    }
}

#[test]
fn bad_generate_input_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "qa", "few_shot = []\n");
    let o = mores(&["generate", "--recipe", &s(&r), "--out", &s(&dir.path().join("x.jsonl"))]);
    assert_clean_error(&o, "few_shot");
    let r = recipe(dir.path(), "soft-labels", "temperature = 0.5\n");
    let o = mores(&["generate", "--recipe", &s(&r), "--out", &s(&dir.path().join("y.jsonl"))]);
    assert_clean_error(&o, "temperature");
    let r = recipe(dir.path(), "soft-labels", "categories = [\"Cooking\"]\n");
    let o = mores(&["generate", "--recipe", &s(&r), "--out", &s(&dir.path().join("z.jsonl"))]);
    assert_clean_error(&o, "Cooking");
    assert!(!dir.path().join("x.jsonl").exists() && !dir.path().join("y.jsonl").exists());
}

/// Contrast-amplified survey-grounded targets: each record's target is the humans'
/// cross-country mean over the generated countries plus 3x the country's deviation from it.
#[test]
fn contrast_targets_amplify_country_deviations() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c.jsonl");
    let r = recipe(dir.path(), "survey-grounded", "paraphrase = false\ncontrast = 3.0\n");
    run(&["generate", "--recipe", &s(&r), "--out", &s(&out)]);
    let survey = Survey::load(root().join("data/wvs")).unwrap();
    let records = mores::generate::dataset::read(&out).unwrap();
    assert!(!records.is_empty());
    for (rec, _) in &records {
        let q = rec.question_id.as_deref().unwrap();
        let country = rec.country.as_deref().unwrap();
        let own = &survey.answers(q, country).unwrap().distribution;
        let all: Vec<&Vec<f64>> =
            ["NGA", "DEU"].iter().filter_map(|c| survey.answers(q, c).map(|a| &a.distribution)).collect();
        let mean: Vec<f64> = (0..own.len()).map(|k| all.iter().map(|d| d[k]).sum::<f64>() / all.len() as f64).collect();
        let want = mores::generate::contrast::target(own, &mean, 3.0);
        let Some(mores::generate::dataset::Target::Distribution(got)) = &rec.target else { panic!("{rec:?}") };
        assert_eq!(got, &want, "{q} {country}");
        if all.len() == 2 {
            assert_ne!(got, own, "{q}: two countries differ, so the target is not the humans' own");
        }
    }
    for (mode, extra, want) in [
        ("survey-grounded", "contrast = -1.0\n", "contrast"),
        ("soft-labels", "contrast = 2.0\n", "survey-grounded mode only"),
    ] {
        let r = recipe(dir.path(), mode, extra);
        let o = mores(&["generate", "--recipe", &s(&r), "--out", &s(&dir.path().join("bad.jsonl"))]);
        assert_clean_error(&o, want);
    }
    assert!(!dir.path().join("bad.jsonl").exists());
}

/// `generate --shard` on two shards, then `dataset merge`: the same records as one unsharded run
/// (merge sorts by id), each item in exactly one shard, one card with every work item counted.
#[test]
fn sharded_generation_merges_to_the_whole_run() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "survey-grounded", "paraphrase = false\n");
    let whole = dir.path().join("whole.jsonl");
    run(&["generate", "--recipe", &s(&r), "--out", &s(&whole)]);
    let part = dir.path().join("part.jsonl");
    for i in 0..2 {
        run(&["generate", "--recipe", &s(&r), "--out", &s(&part), "--shard", &format!("{i}/2")]);
    }
    let shards: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("part.shard-{i}-of-2.jsonl"))).collect();
    let ids = |p: &Path| -> Vec<String> {
        mores::generate::dataset::read(p).unwrap().into_iter().map(|(r, _)| r.id).collect()
    };
    let (a, b) = (ids(&shards[0]), ids(&shards[1]));
    assert!(!a.is_empty() && !b.is_empty() && a.iter().all(|x| !b.contains(x)), "disjoint shards: {a:?} {b:?}");
    let merged = dir.path().join("merged.jsonl");
    let mut args = vec!["dataset".to_string(), "merge".into(), "--out".into(), s(&merged)];
    args.extend(shards.iter().map(|p| s(p)));
    run(&args.iter().map(|x| x.as_str()).collect::<Vec<_>>());
    let mut want: Vec<String> = std::fs::read_to_string(&whole).unwrap().lines().map(String::from).collect();
    want.sort_by_key(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string());
    let got: Vec<String> = std::fs::read_to_string(&merged).unwrap().lines().map(String::from).collect();
    assert_eq!(got, want, "merged shards == the whole run, record by record");
    assert_eq!(card(&merged)["work_items"], card(&whole)["work_items"]);
}

/// Several paraphrases per question: each is drawn once with its own seed and shared by
/// every country; the first keeps the ids and seed of a one-paraphrase run; asking for more than
/// one without paraphrasing is refused before any work.
#[test]
fn paraphrases_are_per_question_and_shared_by_every_country() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, extra: &str| {
        let p = dir.path().join(name);
        let text = format!(
            "include = \"{}\"\n[generate]\nmax_questions = 6\ncountries = [\"NGA\", \"DEU\"]\n{extra}",
            root().join("recipes/distill/survey-grounded.toml").display()
        );
        std::fs::write(&p, text).unwrap();
        p
    };
    let (one, two) = (dir.path().join("one.jsonl"), dir.path().join("two.jsonl"));
    run(&["generate", "--recipe", &s(&write("one.toml", "")), "--out", &s(&one)]);
    run(&["generate", "--recipe", &s(&write("two.toml", "paraphrases = 2\n")), "--out", &s(&two)]);
    assert_eq!(card(&two)["work_items"], 24);
    let recs: Vec<_> = mores::generate::dataset::read(&two).unwrap().into_iter().map(|r| r.0).collect();
    let firsts: Vec<_> = mores::generate::dataset::read(&one).unwrap().into_iter().map(|r| r.0).collect();
    // The first paraphrase is the one-paraphrase run's record, byte for byte.
    for r in &firsts {
        let same = recs.iter().find(|x| x.id == r.id).expect("first paraphrase kept in both");
        assert_eq!(same.hash, r.hash, "{}", r.id);
    }
    let mut by_wording: std::collections::HashMap<(String, bool), Vec<String>> = Default::default();
    for r in &recs {
        let second = r.id.contains("-p1-");
        by_wording.entry((r.question_id.clone().unwrap(), second)).or_default().push(r.question.clone().unwrap());
    }
    for ((q, second), texts) in &by_wording {
        assert!(texts.windows(2).all(|w| w[0] == w[1]), "{q} (second: {second}): countries got different wordings");
    }
    let o = mores(&[
        "generate",
        "--recipe",
        &s(&write("bad.toml", "paraphrases = 2\nparaphrase = false\n")),
        "--out",
        &s(&dir.path().join("bad.jsonl")),
    ]);
    assert_clean_error(&o, "paraphrases = 2 needs paraphrase = true");

    // original = true: the first copy is the survey's own wording, the second the same
    // paraphrase as the two-paraphrase run's second, byte for byte.
    let orig = dir.path().join("orig.jsonl");
    run(&["generate", "--recipe", &s(&write("orig.toml", "paraphrases = 2\noriginal = true\n")), "--out", &s(&orig)]);
    let survey = mores::survey::Survey::load(root().join("data/wvs")).unwrap();
    let kept: Vec<_> = mores::generate::dataset::read(&orig).unwrap().into_iter().map(|r| r.0).collect();
    assert_eq!(kept.iter().filter(|r| !r.id.contains("-p1-")).count(), 12, "no survey wording is rejected");
    let mut compared = 0;
    for r in &kept {
        if r.id.contains("-p1-") {
            // (A second paraphrase equal to the two-paraphrase run's first is rejected there.)
            if let Some(same) = recs.iter().find(|x| x.id == r.id) {
                assert_eq!(same.hash, r.hash, "{}", r.id);
                compared += 1;
            }
        } else {
            let q = survey.question(r.question_id.as_deref().unwrap()).unwrap();
            assert_eq!(r.question.as_deref(), Some(q.text.as_str()), "{}", r.id);
        }
    }
    assert!(compared > 0, "no second paraphrase kept in both runs");
    let o = mores(&[
        "generate",
        "--recipe",
        &s(&write("bad2.toml", "original = true\nparaphrase = false\n")),
        "--out",
        &s(&dir.path().join("bad2.jsonl")),
    ]);
    assert_clean_error(&o, "original = true needs paraphrase = true");
}

/// `[generate] orders = "reversed"`: every record has a copy with the options listed in reverse,
/// its labels renumbered and its target reversed with them, in the same wording; `cyclic` and
/// qa mode are refused.
#[test]
fn reversed_order_records_list_the_options_backwards_with_their_targets() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.jsonl");
    let r = dir.path().join("rev.toml");
    let text = format!(
        "include = \"{}\"\n[generate]\ncountries = [\"NGA\", \"DEU\"]\nmax_questions = 2\nparaphrase = false\norders = \"reversed\"\n",
        root().join("recipes/distill/survey-grounded.toml").display()
    );
    std::fs::write(&r, text).unwrap();
    run(&["generate", "--recipe", &s(&r), "--out", &s(&out)]);
    let survey = Survey::load(root().join("data/wvs")).unwrap();
    let records = mores::generate::dataset::read(&out).unwrap();
    let by_id: std::collections::BTreeMap<&str, &mores::generate::dataset::Record> =
        records.iter().map(|(r, _)| (r.id.as_str(), r)).collect();
    let rev: Vec<_> = records.iter().filter(|(r, _)| r.id.ends_with("~rev")).collect();
    assert!(!rev.is_empty() && rev.len() * 2 == records.len(), "{} of {}", rev.len(), records.len());
    for (r, _) in rev {
        let orig = by_id[r.id.trim_end_matches("~rev")];
        let q = survey.question(r.question_id.as_deref().unwrap()).unwrap();
        let human = &survey.answers(&q.id, r.country.as_deref().unwrap()).unwrap().distribution;
        let target = |rec: &mores::generate::dataset::Record| match &rec.target {
            Some(mores::generate::dataset::Target::Distribution(d)) => d.clone(),
            t => panic!("{t:?}"),
        };
        assert_eq!(&target(orig), human);
        assert_eq!(target(r), human.iter().rev().copied().collect::<Vec<_>>());
        assert_eq!(r.question, orig.question, "one wording for both orders");
        // The first option shown in the reversed record is the question's last.
        let (first, last) = (&q.options[0].label, &q.options[q.options.len() - 1].label);
        let p = r.prompt.as_deref().unwrap();
        let listed = &p[p.find("Options:").unwrap()..];
        assert!(listed.find(last.as_str()).unwrap() < listed.find(first.as_str()).unwrap(), "{p}");
    }
    for (mode, extra, want) in [
        ("survey-grounded", "orders = \"cyclic\"\n", "not a training order"),
        ("qa", "orders = \"reversed\"\n", "qa writes its own options"),
    ] {
        let r = recipe(dir.path(), mode, extra);
        assert_clean_error(&mores(&["generate", "--recipe", &s(&r), "--out", &s(&dir.path().join("bad.jsonl"))]), want);
    }
}

/// `[generate] sample_seed` draws other teacher samples for the same split and items: the split
/// and the record ids stay, the paraphrases change; unset, it is `seed`.
#[test]
fn sample_seed_redraws_the_teacher_but_keeps_the_split() {
    let dir = tempfile::tempdir().unwrap();
    let gen = |name: &str, extra: &str| {
        let r = dir.path().join(format!("{name}.toml"));
        let text = format!(
            "include = \"{}\"\n[generate]\nmax_questions = 6\ncountries = [\"NGA\", \"DEU\"]\n{extra}",
            root().join("recipes/distill/survey-grounded.toml").display()
        );
        std::fs::write(&r, text).unwrap();
        let out = dir.path().join(format!("{name}.jsonl"));
        run(&["generate", "--recipe", &s(&r), "--out", &s(&out)]);
        let recs: Vec<_> = mores::generate::dataset::read(&out).unwrap().into_iter().map(|r| r.0).collect();
        // Every work item, kept or rejected, has a line in the status log.
        let mut items: Vec<String> = std::fs::read_to_string(out.with_extension("log.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string())
            .collect();
        items.sort();
        (std::fs::read(out.with_extension("split.json")).unwrap(), items, recs)
    };
    let (split0, items0, a) = gen("a", "");
    let (split1, items1, b) = gen("b", "sample_seed = 1\n");
    assert_eq!(split0, split1, "the split does not depend on the teacher's seed");
    assert_eq!(items0, items1, "the same work items");
    assert!(a.iter().all(|r| r.seed == Some(0)) && b.iter().all(|r| r.seed == Some(1)), "records name their draw seed");
    let text = |r: &[mores::generate::dataset::Record]| r.iter().map(|x| x.question.clone()).collect::<Vec<_>>();
    assert_ne!(text(&a), text(&b), "another seed, other paraphrases");
}
