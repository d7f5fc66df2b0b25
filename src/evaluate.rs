//! What the CLI subcommands do, as library functions (main.rs only parses flags).
use crate::analysis::results::{self, Results};
use crate::lm::Lm;
use crate::model::{LoadOptions, Model};
use crate::probe::{self, ProbeOptions, Sample};
use crate::recipe::{ProbeRecipe, WeightMode};
use crate::survey::{self, Survey};
use crate::util::error::{Error, Result};
use crate::util::io::{read_jsonl, write_json, write_jsonl};
use crate::util::manifest::{self, Manifest};
use crate::util::shard::Shard;
use std::path::{Path, PathBuf};

pub struct ProbeArgs {
    pub recipe: PathBuf,
    pub model: Option<PathBuf>,
    /// A served model in place of the recipe's: endpoint, served model name, local tokenizer.
    pub served: Option<(String, Option<String>, Option<PathBuf>)>,
    pub countries: Option<Vec<String>>,
    pub questions: Option<Vec<String>>,
    pub limit: Option<usize>,
    pub threads: usize,
    pub batch: Option<usize>,
    pub shard: Option<Shard>,
    pub out: PathBuf,
    pub cache: Option<PathBuf>,
    pub weights: Option<WeightMode>,
    pub adapter: Option<PathBuf>,
    /// No prefix reuse (same numbers; a check).
    pub whole_rows: bool,
    pub progress: bool,
    /// `--set section.key=value` recipe overrides.
    pub sets: Vec<String>,
}

/// Recipe plus command-line overrides, validated before any model is loaded.
pub fn resolve_recipe(a: &ProbeArgs, survey_check: bool) -> Result<(ProbeRecipe, Survey)> {
    let mut recipe = ProbeRecipe::load_with(&a.recipe, &a.sets)?;
    if let Some(m) = &a.model {
        recipe.model.path = Some(m.clone());
        recipe.model.endpoint = None;
    }
    if let Some((endpoint, name, tok)) = &a.served {
        recipe.model.path = None;
        recipe.model.endpoint = Some(endpoint.clone());
        recipe.model.served_model = name.clone().or(recipe.model.served_model.take());
        recipe.model.tokenizer = tok.clone().or(recipe.model.tokenizer.take());
        recipe.model.validate("--endpoint").map_err(Error::Invalid)?;
    }
    if let Some(w) = a.weights {
        recipe.model.weights = w;
    }
    if let Some(c) = &a.countries {
        recipe.survey.countries = c.clone();
    }
    if let Some(q) = &a.questions {
        recipe.survey.questions = q.clone();
    }
    if let Some(b) = a.batch {
        if b == 0 {
            return Err(Error::Invalid("--batch must be at least 1".into()));
        }
        recipe.scoring.batch = b;
    }
    let survey = Survey::load(&recipe.survey.data)?;
    if a.limit == Some(0) {
        return Err(Error::Invalid(
            "--limit 0 would probe no question: give at least 1, or leave it out for all".into(),
        ));
    }
    if let Some(limit) = a.limit {
        // First N scored questions in questionnaire order, the same for every country.
        if recipe.survey.questions.is_empty() {
            recipe.survey.questions =
                survey.questions.iter().filter(|q| q.is_scored()).take(limit).map(|q| q.id.clone()).collect();
        } else {
            recipe.survey.questions.truncate(limit);
        }
    }
    if survey_check {
        probe::select_pairs(&recipe, &survey)?;
        survey.category_groups(recipe.survey.category_groups.as_ref())?;
    }
    Ok((recipe, survey))
}

pub fn probe(a: &ProbeArgs) -> Result<Results> {
    let (recipe, survey) = resolve_recipe(a, true)?;
    if recipe.model.path.is_none() && recipe.model.endpoint.is_none() {
        return Err(Error::Recipe {
            path: a.recipe.clone(),
            msg: "no model: set [model] path or endpoint, or pass --model or --endpoint".into(),
        });
    }
    let run = ProbeRun {
        model: None,
        adapter: a.adapter.clone(),
        out: a.out.clone(),
        cache: a.cache.clone(),
        shard: a.shard,
        threads: a.threads,
        whole_rows: a.whole_rows,
        progress: a.progress,
    };
    probe_with(&recipe, &survey, &run)
}

/// The probed model: served (the recipe's endpoint), or loaded in process with its adapter.
fn open_probed(recipe: &ProbeRecipe, a: &ProbeRun) -> Result<Box<dyn Lm>> {
    if recipe.model.endpoint.is_some() && a.model.is_none() {
        if a.adapter.is_some() {
            return Err(Error::Invalid(
                "--adapter applies to a model in process: serve the adapter with the model (vLLM --lora-modules) instead".into(),
            ));
        }
        return Ok(Box::new(crate::lm::served::Served::connect(&recipe.model)?));
    }
    let path =
        a.model.as_ref().or(recipe.model.path.as_ref()).ok_or_else(|| Error::Invalid("no model to probe".into()))?;
    let mut model = Model::load(path, &LoadOptions::for_section(&recipe.model)?)?;
    model.prefix_reuse = !a.whole_rows;
    if let Some(dir) = &a.adapter {
        let ad = crate::model::adapter::Adapter::load(&mut model, dir)?;
        eprintln!("adapter {} (rank {}, {} modules)", dir.display(), ad.spec.rank, ad.params.len());
    }
    Ok(Box::new(model))
}

/// Where and how one probe runs (the recipe says what is probed).
pub struct ProbeRun {
    /// A local model file or folder in place of the recipe's [model] (which may name a served one).
    pub model: Option<PathBuf>,
    pub adapter: Option<PathBuf>,
    pub out: PathBuf,
    pub cache: Option<PathBuf>,
    pub shard: Option<crate::util::shard::Shard>,
    pub threads: usize,
    /// Every row runs whole, without prefix reuse (the same numbers).
    pub whole_rows: bool,
    pub progress: bool,
}

pub fn probe_with(recipe: &ProbeRecipe, survey: &Survey, a: &ProbeRun) -> Result<Results> {
    let recipe = recipe.clone();
    // Before the model is loaded and hashed: a second process on the same --out stops at once.
    let _writer = crate::util::lock::OutputLock::dir(&a.out)?;
    let model = open_probed(&recipe, a)?;
    eprintln!("{}", crate::lm::describe(model.as_ref()));
    let popts = ProbeOptions {
        batch: recipe.scoring.batch,
        shard: a.shard,
        cache_dir: a.cache.clone().unwrap_or_else(|| a.out.join("cache")),
        progress: a.progress,
    };
    let started = manifest::now_utc();
    let t0 = std::time::Instant::now();
    let samples = probe::run(&recipe, survey, model.as_ref(), &popts)?;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!("scored {} prompts in {secs:.1}s", samples.len());
    let (git_commit, git_dirty) = manifest::git();
    let data = &recipe.survey.data;
    let inputs = manifest::hash_inputs(&[
        &data.join(survey::QUESTIONS_FILE),
        &data.join(survey::DISTRIBUTIONS_FILE),
        &data.join(survey::COUNTRIES_FILE),
    ])?;
    let recipe_json = serde_json::to_value(&recipe)?;
    let m = Manifest {
        command: std::env::args().collect(),
        mores_version: env!("CARGO_PKG_VERSION").into(),
        crates: manifest::crate_versions(),
        git_commit,
        git_dirty,
        recipe_sha256: crate::util::io::sha256_hex(serde_json::to_string(&recipe_json)?.as_bytes()),
        recipe: recipe_json,
        model: model.info().clone(),
        inputs,
        seed: recipe.scoring.seed,
        threads: a.threads,
        batch: recipe.scoring.batch,
        shard: a.shard,
        device: if model.info().served.is_some() { "server" } else { "cpu" }.into(),
        dtype: format!("{:?}", recipe.model.weights).to_lowercase(),
        started,
    };
    write_outputs(&a.out, &samples, survey, &recipe, &m)
}

pub fn write_outputs(
    out: &Path,
    samples: &[Sample],
    survey: &Survey,
    recipe: &ProbeRecipe,
    m: &Manifest,
) -> Result<Results> {
    let items = crate::analysis::combine::items(samples, survey, None);
    let res = crate::analysis::compute::compute(samples, &items, survey, m.model.clone(), recipe)?;
    write_jsonl(&out.join("samples.jsonl"), samples)?;
    write_json(&out.join("results.json"), &res)?;
    crate::report::plots::write(out, &res, &items, survey)?;
    crate::util::io::atomic_write(&out.join("report.md"), crate::report::markdown(&res).as_bytes())?;
    write_json(&out.join("manifest.json"), m)?;
    Ok(res)
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    crate::util::io::read_json(&dir.join("manifest.json"))
}

/// Join the outputs of `--shard I/N` runs into one run.
pub fn merge(shards: &[PathBuf], out: &Path, allow_partial: bool) -> Result<Results> {
    let mut manifests = Vec::new();
    let mut samples: Vec<Sample> = Vec::new();
    for dir in shards {
        let m = read_manifest(dir)?;
        if let Some(first) = manifests.first() {
            let first: &Manifest = first;
            if first.model.sha256 != m.model.sha256 || first.recipe_sha256 != m.recipe_sha256 {
                return Err(Error::Invalid(format!(
                    "{}: shard was run with a different model or recipe than {}",
                    dir.display(),
                    shards[0].display()
                )));
            }
        }
        samples.extend(read_jsonl::<Sample>(&dir.join("samples.jsonl"))?);
        manifests.push(m);
    }
    let Some(mut m) = manifests.first().cloned() else {
        return Err(Error::Invalid("merge needs at least one shard directory".into()));
    };
    let mut seen = std::collections::HashSet::new();
    samples.retain(|s| seen.insert(s.id.clone()));
    let recipe: ProbeRecipe = serde_json::from_value(m.recipe.clone())?;
    let survey = Survey::load(&recipe.survey.data)?;
    // Same order as a single unsharded run.
    let order: std::collections::HashMap<String, usize> =
        probe::variants(&recipe, &survey)?.into_iter().enumerate().map(|(i, v)| (v.id, i)).collect();
    samples.sort_by_key(|s| order.get(&s.id).copied().unwrap_or(usize::MAX));
    let count = manifests.iter().filter_map(|m| m.shard).map(|s| s.count).max().unwrap_or(1);
    let have: std::collections::BTreeSet<usize> = manifests.iter().filter_map(|m| m.shard).map(|s| s.index).collect();
    let missing: Vec<String> = (0..count).filter(|i| !have.contains(i)).map(|i| format!("{i}/{count}")).collect();
    if samples.len() < order.len() {
        let what = format!(
            "merged {} of {} prompts{}",
            samples.len(),
            order.len(),
            if missing.is_empty() { String::new() } else { format!("; missing shards {}", missing.join(", ")) }
        );
        if !allow_partial {
            return Err(Error::Invalid(format!("{what}: run them, or pass --allow-partial")));
        }
        eprintln!("warning: {what}");
    }
    m.shard = None;
    m.command = std::env::args().collect();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_outputs(out, &samples, &survey, &recipe, &m)
}

pub fn compare(runs: &[PathBuf], out: Option<&Path>) -> Result<String> {
    if runs.is_empty() {
        return Err(Error::Invalid("compare needs at least one run directory".into()));
    }
    let mut rs = Vec::new();
    for dir in runs {
        let r: Results = crate::util::io::read_json(&dir.join("results.json"))?;
        rs.push((dir.display().to_string(), r));
    }
    let md = crate::report::compare(&rs);
    if let Some(out) = out {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let names: Vec<String> = rs.iter().map(|(_, r)| r.model.name.clone()).collect();
        let figure = |file: &str, title: &str, pick: &dyn Fn(&Results) -> &Vec<results::GroupResult>| {
            let mut groups: Vec<String> = Vec::new();
            for (_, r) in &rs {
                for g in pick(r) {
                    if !groups.contains(&g.name) {
                        groups.push(g.name.clone());
                    }
                }
            }
            let values: Vec<Vec<crate::report::svg::Bar>> = rs
                .iter()
                .map(|(_, r)| {
                    groups
                        .iter()
                        .map(|name| {
                            let g = pick(r).iter().find(|g| &g.name == name);
                            crate::report::svg::Bar {
                                value: g.and_then(|g| g.mean_r_normalised),
                                ci: g.and_then(|g| g.normalised_ci95),
                            }
                        })
                        .collect()
                })
                .collect();
            crate::report::svg::bars(
                &out.join(file),
                title,
                "mean normalised r (95% CI over countries)",
                &groups,
                &names,
                &values,
            )
        };
        figure("compare-continents.svg", "Normalised r per continent", &|r| &r.continents)?;
        figure("compare-categories.svg", "Normalised r per WVS category", &|r| &r.categories)?;
        if rs.iter().any(|(_, r)| !r.groups.is_empty()) {
            figure("compare-groups.svg", "Normalised r per category group", &|r| &r.groups)?;
        }
        crate::util::io::atomic_write(&out.join("compare.md"), md.as_bytes())?;
    }
    Ok(md)
}
