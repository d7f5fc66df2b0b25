//! Option-order control, prompt variants, baselines, category groups, probe figures and compare.
use crate::common::{assert_clean_error, mores, root, smollm2, stderr};
use mores::analysis::baseline;
use mores::analysis::combine;
use mores::analysis::results::Results;
use mores::probe::Sample;
use mores::prompt::{orders, to_original};
use mores::recipe::OrderMode;
use mores::survey::Survey;
use mores::util::io::read_jsonl;
use std::collections::BTreeMap;

#[test]
fn option_orders_round_trip_and_balance_positions() {
    for k in 1..=7 {
        let os = orders(OrderMode::Cyclic, k, 5);
        assert_eq!(os[0].perm, (0..k).collect::<Vec<_>>(), "original first");
        assert_eq!(os[0].name, "", "the original keeps the old prompt id");
        for o in &os {
            // A permutation, and mapping position probabilities back is its inverse.
            let mut sorted = o.perm.clone();
            sorted.sort();
            assert_eq!(sorted, (0..k).collect::<Vec<_>>());
            let by_pos: Vec<f64> = (0..k).map(|p| p as f64 + 1.0).collect();
            let back = to_original(&o.perm, &by_pos);
            for (pos, &i) in o.perm.iter().enumerate() {
                assert_eq!(back[i], by_pos[pos]);
            }
        }
        if (2..=5).contains(&k) {
            // k shifts + the reversal; each option sits in each position exactly once over the shifts.
            assert_eq!(os.len(), if k == 2 { 2 } else { k + 1 }, "k = {k}");
            for opt in 0..k {
                for pos in 0..k {
                    let n = os
                        .iter()
                        .filter(|o| o.name.starts_with("shift") || o.name.is_empty())
                        .filter(|o| o.perm[pos] == opt)
                        .count();
                    assert_eq!(n, 1, "k = {k}: option {opt} at position {pos}");
                }
            }
        }
        if k > 5 {
            assert_eq!(os.len(), 2, "above cyclic_max only original + reversed");
            assert_eq!(os[1].perm, (0..k).rev().collect::<Vec<_>>());
        }
    }
    assert_eq!(orders(OrderMode::Original, 4, 5).len(), 1);
    assert_eq!(orders(OrderMode::Reversed, 4, 5).len(), 2);
}

fn sample(q: &str, country: &str, template: &str, order: Vec<usize>, by_pos: Vec<f64>, survey: &Survey) -> Sample {
    let question = survey.question(q).unwrap();
    let probs = to_original(&order, &by_pos);
    Sample {
        id: mores::prompt::prompt_id(q, Some(country), template, if order[0] == 0 { "" } else { "rev" }),
        question_id: q.into(),
        country: country.into(),
        category: question.category.clone(),
        template: template.into(),
        prompt: String::new(),
        prompt_sha256: String::new(),
        labels: (1..=order.len()).map(|i| i.to_string()).collect(),
        codes: question.options.iter().map(|o| o.code).collect(),
        expected_score: question.expected_score(&probs),
        raw: probs.clone(),
        probs,
        position_probs: by_pos,
        order,
        mass: 1.0,
        unread_mass: None,
        n_tokens: 10,
        human_mean: None,
        human_distribution: vec![],
    }
}

#[test]
fn averaging_orders_cancels_a_pure_position_preference() {
    // A "model" that puts 0.7 on whatever is shown first, whatever the options say. Q1 has 4
    // options; asked in original and reversed order the mapped-back average is symmetric, so
    // the expected score is the scale midpoint, and position bias reports the 0.7.
    let survey = Survey::load(root().join("data/wvs")).unwrap();
    let by_pos = vec![0.7, 0.1, 0.1, 0.1];
    let s = vec![
        sample("Q1", "USA", "persona", vec![0, 1, 2, 3], by_pos.clone(), &survey),
        sample("Q1", "USA", "persona", vec![3, 2, 1, 0], by_pos.clone(), &survey),
    ];
    let items = combine::items(&s, &survey, None);
    assert_eq!(items.len(), 1);
    let p = &items[0].probs;
    // Hand: original gives (0.7, 0.1, 0.1, 0.1), reversed maps back to (0.1, 0.1, 0.1, 0.7).
    for (got, want) in p.iter().zip([0.4, 0.1, 0.1, 0.4]) {
        assert!((got - want).abs() < 1e-12, "{p:?}");
    }
    let q = survey.question("Q1").unwrap();
    let (lo, hi) = q.score_range().unwrap();
    assert!((items[0].expected_score.unwrap() - (lo + hi) / 2.0).abs() < 1e-12);
    let bias = combine::position_bias(&s);
    assert_eq!(bias.len(), 1);
    assert_eq!(bias[0].k, 4);
    assert!((bias[0].mean_prob[0] - 0.7).abs() < 1e-12);
    // The expected score moves by the whole asymmetry between the two orders: hand value
    // |E_orig - E_rev| / (hi - lo) with E = sum p_k s_k.
    let spread = combine::order_spread(&s, &survey).unwrap();
    let e: Vec<f64> = s.iter().map(|x| q.normalise(x.expected_score.unwrap()).unwrap()).collect();
    assert!((spread.mean_range - (e[0] - e[1]).abs()).abs() < 1e-12);
    assert_eq!(spread.top_option_changes, 1.0);
    // Two templates: the ensemble weighs templates equally, however many orders each has.
    let mut s2 = s.clone();
    s2.push(sample("Q1", "USA", "other", vec![0, 1, 2, 3], vec![0.0, 0.0, 0.0, 1.0], &survey));
    let e = combine::items(&s2, &survey, None);
    assert_eq!(e[0].template, "ensemble");
    for (got, want) in e[0].probs.iter().zip([0.2, 0.05, 0.05, 0.7]) {
        assert!((got - want).abs() < 1e-12, "{:?}", e[0].probs);
    }
}

#[test]
fn baselines_against_hand_computed_values() {
    let survey = Survey::load(root().join("data/wvs")).unwrap();
    let humans = baseline::human_scores(&survey);
    // A "model" that answers as Germany's humans do: own r is 1, Germany is its best match.
    let b = baseline::for_persona("DEU", &humans["DEU"], &humans);
    assert_eq!(b.best_match.as_deref(), Some("DEU"));
    assert_eq!(b.own_rank, Some(1));
    assert!((b.best_match_r.unwrap() - 1.0).abs() < 1e-12);
    // Shuffled: Fisher mean of r(DEU humans, Y humans) over every other Y, by hand.
    let mut zs = vec![];
    for (y, h) in &humans {
        if y == "DEU" {
            continue;
        }
        let (x, yy): (Vec<f64>, Vec<f64>) =
            humans["DEU"].iter().filter_map(|(q, v)| h.get(q).map(|w| (*v, *w))).unzip();
        // Candidates share at least half of the persona's questions.
        if x.len() >= baseline::MIN_COMMON.max(humans["DEU"].len().div_ceil(2)) {
            if let Some(r) = mores::analysis::correlate::pearson(&x, &yy) {
                zs.push(r.clamp(-0.999999, 0.999999).atanh());
            }
        }
    }
    let hand = (zs.iter().sum::<f64>() / zs.len() as f64).tanh();
    assert!((b.shuffled_r.unwrap() - hand).abs() < 1e-9, "{:?} vs {hand}", b.shuffled_r);
    assert_eq!(b.candidates, zs.len() + 1);
    // References: USA first, then one per continent; USA's column is r(USA humans, X humans).
    let countries: Vec<String> = vec!["DEU".into(), "NGA".into(), "USA".into()];
    let refs = baseline::references(&survey, &humans, &countries);
    assert_eq!(refs[0].iso3, "USA");
    assert!(!refs[0].per_country.contains_key("USA"), "a country is not its own reference");
    let r = baseline::r_common(&humans["USA"], &humans["NGA"]).unwrap();
    assert_eq!(refs[0].per_country["NGA"], r);
    let continents: Vec<String> = refs[1..].iter().map(|r| r.continent.clone()).collect();
    let mut dedup = continents.clone();
    dedup.dedup();
    assert_eq!(continents, dedup, "one reference per continent");
    // Western-bias table counts best matches per persona continent.
    let t = baseline::bias_table(&survey, &[("DEU".into(), b.clone()), ("NGA".into(), b)]);
    let africa = t.iter().find(|r| r.continent == "Africa").unwrap();
    assert_eq!((africa.personas, africa.own_best), (1, 0));
    assert_eq!(africa.best_matches, BTreeMap::from([("DEU".to_string(), 1)]));
}

#[test]
fn five_numbers_and_figures_are_svg_with_their_series() {
    use mores::report::svg::{bars, boxplots, five_numbers, Bar};
    // Hand: sorted 1,2,3,4,10; quartiles by linear interpolation at 1, 2, 3 of 4 gaps.
    assert_eq!(five_numbers(&[4.0, 1.0, 10.0, 3.0, 2.0]), Some([1.0, 2.0, 3.0, 4.0, 10.0]));
    assert_eq!(five_numbers(&[]), None);
    let dir = tempfile::tempdir().unwrap();
    let groups = vec!["Africa (2)".to_string(), "Europe (3)".to_string()];
    let series = vec!["chat model".to_string(), "base model".to_string()];
    let p = dir.path().join("b.svg");
    let vals = vec![
        vec![Bar { value: Some(0.2), ci: Some((0.1, 0.3)) }, Bar { value: Some(-0.1), ci: None }],
        vec![Bar { value: None, ci: None }, Bar { value: Some(0.4), ci: Some((0.35, 0.5)) }],
    ];
    bars(&p, "title", "r", &groups, &series, &vals).unwrap();
    let svg = std::fs::read_to_string(&p).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for s in groups.iter().chain(&series) {
        assert!(svg.contains(s.as_str()), "{s} missing");
    }
    // Three bars drawn (one value is missing): three rects more than the same chart with none.
    let empty: Vec<Vec<Bar>> = (0..2).map(|_| (0..2).map(|_| Bar { value: None, ci: None }).collect()).collect();
    let p0 = dir.path().join("b0.svg");
    bars(&p0, "title", "r", &groups, &series, &empty).unwrap();
    let base = std::fs::read_to_string(&p0).unwrap().matches("<rect").count();
    assert_eq!(svg.matches("<rect").count(), base + 3);
    let p = dir.path().join("box.svg");
    boxplots(&p, "t", "x", &groups, &series[..1], &[vec![vec![0.1, 0.2, 0.3], vec![0.5]]]).unwrap();
    let svg = std::fs::read_to_string(&p).unwrap();
    assert!(svg.contains("Africa (2)") && svg.trim_end().ends_with("</svg>"));
}

#[test]
fn probe_orders_blind_prompts_figures_and_compare_on_smollm2() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let model = smollm2();
    let o = mores(&[
        "probe",
        "--model",
        model.to_str().unwrap(),
        "--countries",
        "USA,NGA",
        "--limit",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: Vec<Sample> = read_jsonl(&out.join("samples.jsonl")).unwrap();
    let survey = Survey::load(root().join("data/wvs")).unwrap();
    let rev: Vec<&Sample> = s.iter().filter(|x| x.id.ends_with("~rev")).collect();
    assert_eq!(rev.len(), 8 + 4, "every pair and every blind question reversed once");
    for x in &rev {
        let q = survey.question(&x.question_id).unwrap();
        // The prompt shows the options reversed, and probs are the position probs mapped back.
        let first = x.prompt.find(&format!("1. {}", q.options.last().unwrap().label));
        assert!(first.is_some(), "{}", x.prompt);
        for (pos, &i) in x.order.iter().enumerate() {
            assert_eq!(x.probs[i], x.position_probs[pos]);
        }
    }
    let blind: Vec<&Sample> = s.iter().filter(|x| x.template == "blind").collect();
    assert!(blind.iter().all(|x| x.country.is_empty() && !x.prompt.contains("living in")));
    let r: Results = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(r.orders, "reversed");
    assert!(r.position_bias.iter().all(|b| (b.mean_prob.iter().sum::<f64>() - 1.0).abs() < 1e-9));
    assert!(r.order_spread.as_ref().unwrap().items == 8);
    assert!(r.countries.iter().all(|c| c.blind_r.is_some() && c.persona_effect.is_some()));
    assert_eq!(r.groups.len(), 1, "four Q1-Q4 questions fall in one category group");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for f in mores::report::plots::files(&r) {
        let svg = std::fs::read_to_string(out.join("plots").join(&f.0)).unwrap();
        assert!(svg.starts_with("<svg"), "{}", f.0);
        assert!(md.contains(&format!("(plots/{})", f.0)));
    }
    // compare: a run against itself differs by exactly 0 over both countries.
    let cmp = dir.path().join("cmp");
    let o = mores(&["compare", out.to_str().unwrap(), out.to_str().unwrap(), "--out", cmp.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(table.contains("| 2 | 0.000 | 0.000 to 0.000 |"), "{table}");
    for f in ["compare.md", "compare-continents.svg", "compare-categories.svg", "compare-groups.svg"] {
        assert!(cmp.join(f).exists(), "{f}");
    }
}

#[test]
fn bad_templates_and_groups_fail_before_any_model_work() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, extra: &str| {
        let p = dir.path().join(name);
        let base = root().join("recipes/probe/wvs.toml");
        std::fs::write(&p, format!("include = {:?}\n{extra}", base.to_str().unwrap())).unwrap();
        p
    };
    let out = dir.path().join("out");
    let run = |recipe: &std::path::Path| {
        mores(&[
            "probe",
            "--recipe",
            recipe.to_str().unwrap(),
            "--model",
            "no-such-model.gguf",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let r =
        write("dup.toml", "[[templates]]\ntemplate_name = \"persona\"\nuser = \"{country} {question} {options}\"\n");
    assert_clean_error(&run(&r), "used twice");
    let r = write("blind.toml", "[blind]\nuser = \"In {country}: {question} {options}\"\n");
    assert_clean_error(&run(&r), "blind.user");
    let r = write("groups.toml", "[survey.category_groups]\nG = [\"Economic Values\", \"Astrology\"]\n");
    assert_clean_error(&run(&r), "Astrology");
    let r = write("orders.toml", "[scoring]\norders = \"shuffled\"\n");
    assert_clean_error(&run(&r), "shuffled");
    assert!(!out.exists(), "nothing written for a bad recipe");
}
