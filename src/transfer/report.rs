//! The transfer report: did the student's answers move toward the humans' on questions it never
//! trained on? Per country, r before and after (raw and scale-normalised), the change with a
//! paired bootstrap 95% CI over questions and its p-value, the same for 1 - JSD, cross-country
//! alignment per question, the teacher's r as a reference, and the same numbers on training
//! questions so memorising can be told from transferring.
use crate::analysis::correlate::{bootstrap, bootstrap_p, fisher_mean, js_similarity, mean, pearson};
use crate::probe::Sample;
use crate::survey::Survey;
use crate::util::error::{Error, Result};
use crate::util::fmt::f;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::Path;

pub struct Inputs<'a> {
    pub name: String,
    pub survey: &'a Survey,
    pub before: &'a Path,
    pub after: &'a Path,
    pub teacher: Option<&'a Path>,
    pub heldout: &'a [String],
    pub train: &'a [String],
    pub bootstrap: usize,
    pub seed: u64,
    pub dataset: &'a Path,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Delta {
    pub value: Option<f64>,
    pub ci95: Option<(f64, f64)>,
    pub p: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CountryDelta {
    pub iso3: String,
    pub continent: String,
    pub n_questions: usize,
    pub r_before_raw: Option<f64>,
    pub r_after_raw: Option<f64>,
    pub r_before: Option<f64>,
    pub r_after: Option<f64>,
    /// Change in scale-normalised r.
    pub delta: Delta,
    pub js_before: Option<f64>,
    pub js_after: Option<f64>,
    pub delta_js: Delta,
    pub r_teacher: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupDelta {
    pub name: String,
    pub n: usize,
    pub r_before: Option<f64>,
    pub r_after: Option<f64>,
    pub delta: Delta,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubsetReport {
    pub n_questions: usize,
    pub n_countries: usize,
    pub mean_r_before_raw: Option<f64>,
    pub mean_r_after_raw: Option<f64>,
    pub mean_r_before: Option<f64>,
    pub mean_r_after: Option<f64>,
    pub mean_r_teacher: Option<f64>,
    /// Mean over countries of the change in normalised r; CI from a bootstrap over countries.
    pub mean_delta: Delta,
    pub mean_delta_raw: Delta,
    pub mean_delta_js: Delta,
    pub share_improved: Option<f64>,
    pub cross_country_before: Option<f64>,
    pub cross_country_after: Option<f64>,
    /// Change in mean cross-country r per question; CI from a bootstrap over questions.
    pub cross_country_delta: Delta,
    pub countries: Vec<CountryDelta>,
    pub continents: Vec<GroupDelta>,
    pub categories: Vec<GroupDelta>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TransferReport {
    pub name: String,
    pub dataset: String,
    pub dataset_records: usize,
    pub heldout: SubsetReport,
    pub train: Option<SubsetReport>,
    pub verdict: String,
    #[serde(default)]
    pub stage_seconds: BTreeMap<String, (f64, bool)>,
}

/// One averaged sample per (question, country), whatever orders and templates the probe used.
fn load(dir: &Path, survey: &Survey) -> Result<HashMap<(String, String), Sample>> {
    let p = dir.join("samples.jsonl");
    let rows: Vec<Sample> = crate::util::io::read_jsonl(&p)?;
    let items = crate::analysis::combine::items(&rows, survey, None);
    Ok(items.into_iter().map(|s| ((s.question_id.clone(), s.country.clone()), s)).collect())
}

/// One (question, country) with everything the statistics need.
struct Pair {
    q: String,
    c: String,
    b: f64,
    a: f64,
    h: f64,
    b_raw: f64,
    a_raw: f64,
    h_raw: f64,
    js_b: f64,
    js_a: f64,
    t: Option<f64>,
}

fn seed_of(seed: u64, what: &str) -> u64 {
    crate::util::seed::from_text(&format!("{seed}:{what}"))
}

/// Fewest paired points a bootstrap CI is printed from: below it the resamples repeat a handful
/// of points and the interval says more about the resampling than about the data.
const MIN_CI_POINTS: usize = 5;
/// Fewest pairs for the CI of a change in a correlation: resampling 5 pairs of an r swings it
/// between -1 and +1, and the quickstart's category table printed "-2.000 to +2.000".
const MIN_R_CI_POINTS: usize = 8;

fn delta_boot(n: usize, min: usize, reps: usize, seed: u64, stat: impl Fn(&[usize]) -> Option<f64>) -> Delta {
    let all: Vec<usize> = (0..n).collect();
    let value = stat(&all);
    if n < min.max(MIN_CI_POINTS) {
        return Delta { value, ci95: None, p: None };
    }
    let (ci95, vals) = bootstrap(n, reps, seed, stat);
    Delta { value, ci95, p: bootstrap_p(&vals) }
}

fn r_of(pairs: &[&Pair], idx: &[usize], x: impl Fn(&Pair) -> f64, y: impl Fn(&Pair) -> f64) -> Option<f64> {
    let xs: Vec<f64> = idx.iter().map(|&i| x(pairs[i])).collect();
    let ys: Vec<f64> = idx.iter().map(|&i| y(pairs[i])).collect();
    pearson(&xs, &ys)
}

fn subset(
    inp: &Inputs,
    qs: &[String],
    before: &HashMap<(String, String), Sample>,
    after: &HashMap<(String, String), Sample>,
    teacher: &Option<HashMap<(String, String), Sample>>,
    tag: &str,
) -> Result<SubsetReport> {
    let s = inp.survey;
    let mut pairs: Vec<Pair> = Vec::new();
    for ((q, c), sb) in before {
        if !qs.contains(q) {
            continue;
        }
        let Some(sa) = after.get(&(q.clone(), c.clone())) else { continue };
        let question = s.question(q)?;
        let (Some(b_raw), Some(a_raw), Some(h_raw)) = (sb.expected_score, sa.expected_score, sb.human_mean) else {
            continue;
        };
        let (Some(b), Some(a), Some(h)) =
            (question.normalise(b_raw), question.normalise(a_raw), question.normalise(h_raw))
        else {
            continue;
        };
        let t = teacher
            .as_ref()
            .and_then(|t| t.get(&(q.clone(), c.clone())))
            .and_then(|x| x.expected_score)
            .and_then(|x| question.normalise(x));
        pairs.push(Pair {
            q: q.clone(),
            c: c.clone(),
            b,
            a,
            h,
            b_raw,
            a_raw,
            h_raw,
            js_b: js_similarity(&sb.probs, &sb.human_distribution).unwrap_or(f64::NAN),
            js_a: js_similarity(&sa.probs, &sb.human_distribution).unwrap_or(f64::NAN),
            t,
        });
    }
    pairs.sort_by(|x, y| {
        (&x.c, crate::survey::question_sort_key(&x.q)).cmp(&(&y.c, crate::survey::question_sort_key(&y.q)))
    });
    let reps = inp.bootstrap;
    let mut by_country: BTreeMap<&str, Vec<&Pair>> = BTreeMap::new();
    for p in &pairs {
        by_country.entry(p.c.as_str()).or_default().push(p);
    }
    let mut countries = Vec::new();
    for (c, ps) in &by_country {
        let n = ps.len();
        let all: Vec<usize> = (0..n).collect();
        let d = delta_boot(n, MIN_R_CI_POINTS, reps, seed_of(inp.seed, &format!("{tag}-{c}")), |idx| {
            Some(r_of(ps, idx, |p| p.a, |p| p.h)? - r_of(ps, idx, |p| p.b, |p| p.h)?)
        });
        let djs = delta_boot(n, MIN_CI_POINTS, reps, seed_of(inp.seed, &format!("{tag}-js-{c}")), |idx| {
            let a: Vec<f64> = idx.iter().map(|&i| ps[i].js_a).collect();
            let b: Vec<f64> = idx.iter().map(|&i| ps[i].js_b).collect();
            Some(mean(&a)? - mean(&b)?)
        });
        let teach: Vec<&Pair> = ps.iter().copied().filter(|p| p.t.is_some()).collect();
        let tall: Vec<usize> = (0..teach.len()).collect();
        countries.push(CountryDelta {
            iso3: c.to_string(),
            continent: s.country(c).map(|x| x.continent.clone()).unwrap_or_default(),
            n_questions: n,
            r_before_raw: r_of(ps, &all, |p| p.b_raw, |p| p.h_raw),
            r_after_raw: r_of(ps, &all, |p| p.a_raw, |p| p.h_raw),
            r_before: r_of(ps, &all, |p| p.b, |p| p.h),
            r_after: r_of(ps, &all, |p| p.a, |p| p.h),
            delta: d,
            js_before: mean(&ps.iter().map(|p| p.js_b).collect::<Vec<_>>()),
            js_after: mean(&ps.iter().map(|p| p.js_a).collect::<Vec<_>>()),
            delta_js: djs,
            r_teacher: r_of(&teach, &tall, |p| p.t.unwrap_or(f64::NAN), |p| p.h),
        });
    }
    let vals = |g: &dyn Fn(&CountryDelta) -> Option<f64>| -> Vec<f64> { countries.iter().filter_map(g).collect() };
    let over_countries = |g: &dyn Fn(&CountryDelta) -> Option<f64>, what: &str| -> Delta {
        let v = vals(g);
        delta_boot(v.len(), MIN_CI_POINTS, reps, seed_of(inp.seed, &format!("{tag}-mean-{what}")), |idx| {
            mean(&idx.iter().map(|&i| v[i]).collect::<Vec<_>>())
        })
    };
    let mean_delta = over_countries(&|c| c.delta.value, "norm");
    let mean_delta_raw = over_countries(&|c| Some(c.r_after_raw? - c.r_before_raw?), "raw");
    let mean_delta_js = over_countries(&|c| c.delta_js.value, "js");
    let improved = vals(&|c| c.delta.value);
    let share_improved =
        (!improved.is_empty()).then(|| improved.iter().filter(|d| **d > 0.0).count() as f64 / improved.len() as f64);

    // Cross-country alignment, one r per question across countries.
    let mut by_q: BTreeMap<&str, Vec<&Pair>> = BTreeMap::new();
    for p in &pairs {
        by_q.entry(p.q.as_str()).or_default().push(p);
    }
    let per_q: Vec<(f64, f64)> = by_q
        .values()
        .filter_map(|ps| {
            let all: Vec<usize> = (0..ps.len()).collect();
            Some((r_of(ps, &all, |p| p.b, |p| p.h)?, r_of(ps, &all, |p| p.a, |p| p.h)?))
        })
        .collect();
    let cross_country_delta =
        delta_boot(per_q.len(), MIN_CI_POINTS, reps, seed_of(inp.seed, &format!("{tag}-cross")), |idx| {
            let a: Vec<f64> = idx.iter().map(|&i| per_q[i].1).collect();
            let b: Vec<f64> = idx.iter().map(|&i| per_q[i].0).collect();
            Some(fisher_mean(&a)? - fisher_mean(&b)?)
        });

    let mut continents: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for c in &countries {
        if let Some(d) = c.delta.value {
            continents.entry(c.continent.clone()).or_default().push(d);
        }
    }
    let continents = continents
        .into_iter()
        .map(|(name, ds)| {
            let n = ds.len();
            let d = delta_boot(n, MIN_CI_POINTS, reps, seed_of(inp.seed, &format!("{tag}-cont-{name}")), |idx| {
                mean(&idx.iter().map(|&i| ds[i]).collect::<Vec<_>>())
            });
            let members: Vec<&CountryDelta> = countries.iter().filter(|c| c.continent == name).collect();
            GroupDelta {
                name,
                n,
                r_before: fisher_mean(&members.iter().filter_map(|c| c.r_before).collect::<Vec<_>>()),
                r_after: fisher_mean(&members.iter().filter_map(|c| c.r_after).collect::<Vec<_>>()),
                delta: d,
            }
        })
        .collect();

    // Per category: (country, question) pairs pooled, normalised scores against human means.
    let mut by_cat: BTreeMap<String, Vec<&Pair>> = BTreeMap::new();
    for p in &pairs {
        by_cat.entry(s.question(&p.q)?.category.clone()).or_default().push(p);
    }
    let categories = by_cat
        .into_iter()
        .map(|(name, ps)| {
            let all: Vec<usize> = (0..ps.len()).collect();
            let d =
                delta_boot(ps.len(), MIN_R_CI_POINTS, reps, seed_of(inp.seed, &format!("{tag}-cat-{name}")), |idx| {
                    Some(r_of(&ps, idx, |p| p.a, |p| p.h)? - r_of(&ps, idx, |p| p.b, |p| p.h)?)
                });
            GroupDelta {
                name,
                n: ps.len(),
                r_before: r_of(&ps, &all, |p| p.b, |p| p.h),
                r_after: r_of(&ps, &all, |p| p.a, |p| p.h),
                delta: d,
            }
        })
        .collect();

    Ok(SubsetReport {
        n_questions: by_q.len(),
        n_countries: countries.len(),
        mean_r_before_raw: fisher_mean(&vals(&|c| c.r_before_raw)),
        mean_r_after_raw: fisher_mean(&vals(&|c| c.r_after_raw)),
        mean_r_before: fisher_mean(&vals(&|c| c.r_before)),
        mean_r_after: fisher_mean(&vals(&|c| c.r_after)),
        mean_r_teacher: fisher_mean(&vals(&|c| c.r_teacher)),
        mean_delta,
        mean_delta_raw,
        mean_delta_js,
        share_improved,
        cross_country_before: fisher_mean(&per_q.iter().map(|x| x.0).collect::<Vec<_>>()),
        cross_country_after: fisher_mean(&per_q.iter().map(|x| x.1).collect::<Vec<_>>()),
        cross_country_delta,
        countries,
        continents,
        categories,
    })
}

pub fn build(inp: &Inputs) -> Result<TransferReport> {
    let before = load(inp.before, inp.survey)?;
    let after = load(inp.after, inp.survey)?;
    let teacher = inp.teacher.map(|d| load(d, inp.survey)).transpose()?;
    let heldout = subset(inp, inp.heldout, &before, &after, &teacher, "heldout")?;
    if heldout.n_countries == 0 {
        return Err(Error::Invalid(
            "transfer report: no held-out (question, country) pair was probed before and after".into(),
        ));
    }
    let train =
        (!inp.train.is_empty()).then(|| subset(inp, inp.train, &before, &after, &teacher, "train")).transpose()?;
    let records =
        crate::util::io::read_jsonl::<crate::generate::dataset::Record>(inp.dataset).map(|r| r.len()).unwrap_or(0);
    let verdict = verdict(&heldout, train.as_ref());
    Ok(TransferReport {
        name: inp.name.clone(),
        dataset: inp.dataset.display().to_string(),
        dataset_records: records,
        heldout,
        train,
        verdict,
        stage_seconds: BTreeMap::new(),
    })
}

fn describe(d: &Delta) -> String {
    match (d.value, d.ci95, d.p) {
        // A bootstrap p of 0 means no resample crossed zero: below what the resamples resolve.
        (Some(v), Some((lo, hi)), Some(p)) if p < 0.001 => format!("{v:+.3} (95% CI {lo:+.3} to {hi:+.3}, p < 0.001)"),
        (Some(v), Some((lo, hi)), Some(p)) => format!("{v:+.3} (95% CI {lo:+.3} to {hi:+.3}, p = {p:.3})"),
        (Some(v), _, _) => format!("{v:+.3} (no CI: too few points)"),
        _ => "n/a".into(),
    }
}

fn significant_up(d: &Delta) -> bool {
    d.ci95.is_some_and(|(lo, _)| lo > 0.0)
}

fn verdict(h: &SubsetReport, t: Option<&SubsetReport>) -> String {
    let held = if significant_up(&h.mean_delta) {
        format!("Held-out questions: normalised r rose by {}: transfer detected.", describe(&h.mean_delta))
    } else if h.mean_delta.ci95.is_some_and(|(_, hi)| hi < 0.0) {
        format!(
            "Held-out questions: normalised r fell by {}: the fine-tune moved the student away from the humans.",
            describe(&h.mean_delta)
        )
    } else {
        format!("Held-out questions: no measurable transfer; change in normalised r {}.", describe(&h.mean_delta))
    };
    match t {
        Some(t) => format!("{held} Training questions: change {}.", describe(&t.mean_delta)),
        None => held,
    }
}

pub fn markdown(r: &TransferReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Transfer report: {}\n", r.name);
    let _ = writeln!(s, "{}\n", r.verdict);
    let _ = writeln!(
        s,
        "Dataset: `{}` ({} records). r is Pearson's r between the student's expected scores and human mean scores across questions, per country; \"normalised\" maps each question's scale to [0, 1] first (raw r on WVS means is inflated by question scales: a uniform-answer model already scores about 0.72). Changes carry a paired bootstrap 95% CI over questions (per country) or over countries (means), and a bootstrap p-value. Mean r before and after are Fisher-z means over countries; the mean change is the plain mean of the per-country changes, so it need not equal their difference.\n",
        r.dataset, r.dataset_records
    );
    let mut part = |title: &str, x: &SubsetReport| {
        let _ = writeln!(s, "## {title}: {} questions x {} countries\n", x.n_questions, x.n_countries);
        let _ = writeln!(s, "| metric | before | after | change |");
        let _ = writeln!(s, "|---|---:|---:|---|");
        let _ = writeln!(
            s,
            "| mean r, normalised | {} | {} | {} |",
            f(x.mean_r_before),
            f(x.mean_r_after),
            describe(&x.mean_delta)
        );
        let _ = writeln!(
            s,
            "| mean r, raw (paper) | {} | {} | {} |",
            f(x.mean_r_before_raw),
            f(x.mean_r_after_raw),
            describe(&x.mean_delta_raw)
        );
        let _ = writeln!(
            s,
            "| cross-country r per question | {} | {} | {} |",
            f(x.cross_country_before),
            f(x.cross_country_after),
            describe(&x.cross_country_delta)
        );
        let js_b = mean(&x.countries.iter().filter_map(|c| c.js_before).collect::<Vec<_>>());
        let js_a = mean(&x.countries.iter().filter_map(|c| c.js_after).collect::<Vec<_>>());
        let _ = writeln!(
            s,
            "| 1 - JSD to human distribution | {} | {} | {} |",
            f(js_b),
            f(js_a),
            describe(&x.mean_delta_js)
        );
        let _ = writeln!(s, "| teacher (reference), normalised r | {} | | |", f(x.mean_r_teacher));
        let _ = writeln!(
            s,
            "| countries improved | | | {} |\n",
            x.share_improved.map(|v| format!("{:.0}%", 100.0 * v)).unwrap_or_else(|| "n/a".into())
        );
        let _ = writeln!(s, "| country | continent | questions | r before | r after | change (95% CI) | p | 1-JSD before | after | teacher r |");
        let _ = writeln!(s, "|---|---|---:|---:|---:|---|---:|---:|---:|---:|");
        for c in &x.countries {
            let ci = c.delta.ci95.map(|(lo, hi)| format!(" ({lo:+.3}, {hi:+.3})")).unwrap_or_default();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {}{} | {} | {} | {} | {} |",
                c.iso3,
                c.continent,
                c.n_questions,
                f(c.r_before),
                f(c.r_after),
                c.delta.value.map(|v| format!("{v:+.3}")).unwrap_or_else(|| "n/a".into()),
                ci,
                c.delta.p.map(|p| format!("{p:.3}")).unwrap_or_else(|| "n/a".into()),
                f(c.js_before),
                f(c.js_after),
                f(c.r_teacher)
            );
        }
        let _ = writeln!(s, "\n| continent | countries | r before | r after | mean change (95% CI) |");
        let _ = writeln!(s, "|---|---:|---:|---:|---|");
        for g in &x.continents {
            let _ =
                writeln!(s, "| {} | {} | {} | {} | {} |", g.name, g.n, f(g.r_before), f(g.r_after), describe(&g.delta));
        }
        let _ = writeln!(s, "\n| category | pairs | r before (pooled) | r after | change (95% CI) |");
        let _ = writeln!(s, "|---|---:|---:|---:|---|");
        for g in &x.categories {
            let _ =
                writeln!(s, "| {} | {} | {} | {} | {} |", g.name, g.n, f(g.r_before), f(g.r_after), describe(&g.delta));
        }
        let _ = writeln!(s);
    };
    part("Held-out questions (never seen in training)", &r.heldout);
    if let Some(t) = &r.train {
        part("Training questions (seen, paraphrased, in training)", t);
    }
    let _ = writeln!(s, "![before and after per country](transfer.svg)\n");
    let _ = writeln!(s, "![before, after and change per continent](transfer-continents.svg)\n");
    if !r.stage_seconds.is_empty() {
        let _ = writeln!(s, "| stage | seconds | |\n|---|---:|---|");
        for (k, (secs, skipped)) in &r.stage_seconds {
            let _ = writeln!(s, "| {k} | {secs:.1} | {} |", if *skipped { "skipped (up to date)" } else { "" });
        }
    }
    s
}

pub fn write(out: &Path, r: &TransferReport) -> Result<()> {
    crate::util::io::write_json(&out.join("transfer.json"), r)?;
    crate::util::io::atomic_write(&out.join("report.md"), markdown(r).as_bytes())?;
    let rows: Vec<(String, f64, f64)> =
        r.heldout.countries.iter().filter_map(|c| Some((c.iso3.clone(), c.r_before?, c.r_after?))).collect();
    crate::report::svg::dumbbell(
        &out.join("transfer.svg"),
        "Held-out questions: normalised r per country, before -> after",
        "Pearson r (scale-normalised)",
        ("before", "after"),
        &rows,
    )?;
    let h = &r.heldout;
    let groups: Vec<String> = h.continents.iter().map(|c| format!("{} ({})", c.name, c.n)).collect();
    let bar = |v: Option<f64>, ci: Option<(f64, f64)>| crate::report::svg::Bar { value: v, ci };
    crate::report::svg::bars(
        &out.join("transfer-continents.svg"),
        "Held-out questions per continent: normalised r before, after, and the change (95% CI)",
        "Pearson r (scale-normalised)",
        &groups,
        &["before".to_string(), "after".to_string(), "change".to_string()],
        &[
            h.continents.iter().map(|c| bar(c.r_before, None)).collect(),
            h.continents.iter().map(|c| bar(c.r_after, None)).collect(),
            h.continents.iter().map(|c| bar(c.delta.value, c.delta.ci95)).collect(),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 12, item 5): a change in r resampled from 5 pairs printed "-2.000 to
    /// +2.000". No CI below 5 points, nor below 8 for a change in r.
    #[test]
    fn no_interval_from_too_few_points() {
        let stat = |idx: &[usize]| Some(idx.iter().map(|&i| i as f64).sum::<f64>() / idx.len() as f64);
        assert!(delta_boot(4, MIN_CI_POINTS, 200, 1, stat).ci95.is_none());
        assert!(delta_boot(5, MIN_CI_POINTS, 200, 1, stat).ci95.is_some());
        assert!(delta_boot(7, MIN_R_CI_POINTS, 200, 1, stat).ci95.is_none());
        let d = delta_boot(8, MIN_R_CI_POINTS, 200, 1, stat);
        assert!(d.ci95.is_some() && d.value == Some(3.5));
        assert!(describe(&delta_boot(4, MIN_CI_POINTS, 200, 1, stat)).contains("no CI: too few points"));
    }
}
