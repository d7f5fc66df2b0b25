//! `mores run`: the cultural-transfer experiment. Stages, in order: split questions -> probe the
//! student (before) -> probe the teacher (reference) -> generate -> train LoRA -> probe the
//! student with the adapter (after) -> transfer report. Each stage is keyed by the content
//! hashes of its inputs and skipped when they are unchanged; generate and train resume from
//! their own checkpoints, so a rerun after a crash continues where it stopped. `compare.rs`: the
//! variants table of several runs (`mores compare` over run folders); `dry.rs`: what a run would
//! do (`--dry-run`).
pub mod compare;
pub mod dry;
pub mod report;

use crate::evaluate::{probe_with, ProbeRun};
use crate::generate::leak::Split;
use crate::recipe::generate::GenerateSection;
use crate::recipe::{DistillRecipe, ModelSection, ProbeRecipe, ScoringSection, SurveySection, TransferSection};
use crate::survey::Survey;
use crate::util::error::{Error, Result};
use crate::util::io::{sha256_hex, write_json};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct RunArgs {
    pub recipe: PathBuf,
    pub out: Option<PathBuf>,
    pub threads: usize,
    pub progress: bool,
    /// `--set section.key=value` recipe overrides, applied to every stage.
    pub sets: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct StageRecord {
    pub key: String,
    pub seconds: f64,
    pub finished: bool,
}

type Stages = BTreeMap<String, StageRecord>;

/// sha256 of a model file, or of every file in a model folder.
fn path_sha256(p: &Path) -> Result<String> {
    if p.is_file() {
        return crate::util::io::sha256_file(p);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(p)
        .map_err(|e| Error::io(p, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.is_file())
        .collect();
    files.sort();
    let mut parts = Vec::new();
    for f in files {
        parts.push(format!(
            "{}:{}",
            f.file_name().unwrap_or_default().to_string_lossy(),
            crate::util::io::sha256_file(&f)?
        ));
    }
    Ok(sha256_hex(parts.join("\n").as_bytes()))
}

/// Version of what the report stage computes from its inputs: bump it when the report's numbers or
/// layout change, so that finished runs rewrite their report instead of keeping the old one.
/// 2: no bootstrap CI from fewer than 5 points (8 for a change in r).
/// 3: question-level and country-level verdicts apart, swap control, references, persona spread.
/// 4: references over the student's own training questions, k-neighbour references, each
///    reference's CI and difference from the student; transfer.json's schema field.
/// 5: the student's-questions pool leaves out questions training held out for validation.
const REPORT_SCHEMA: &str = "report/5";

fn key(parts: &[&str]) -> String {
    sha256_hex(parts.join("\u{1f}").as_bytes())
}

fn model_path(sec: &Option<ModelSection>, what: &str, recipe: &Path) -> Result<PathBuf> {
    let p = sec.as_ref().and_then(|s| s.path.clone()).ok_or_else(|| Error::Recipe {
        path: recipe.to_path_buf(),
        msg: format!("no {what} model: set [{what}] path"),
    })?;
    if !p.exists() {
        return Err(Error::model(&p, format!("{what} model not found (run scripts/fetch-models.sh for the defaults)")));
    }
    Ok(p)
}

struct Runner {
    out: PathBuf,
    stages: Stages,
    timings: Vec<(String, f64, bool)>,
}

impl Runner {
    /// Run `f` unless the stage's recorded key equals `key`. When the key changed, the stage's
    /// old outputs (`dirs`) are removed first so nothing stale is resumed.
    fn stage(&mut self, name: &str, key: &str, dirs: &[PathBuf], f: impl FnOnce() -> Result<()>) -> Result<()> {
        let rec = self.stages.get(name).cloned().unwrap_or_default();
        if rec.finished && rec.key == key && dirs.iter().all(|d| d.exists()) {
            eprintln!("stage {name}: up to date (skipped)");
            self.timings.push((name.into(), rec.seconds, true));
            return Ok(());
        }
        if rec.key != key {
            for d in dirs {
                if d.is_dir() {
                    std::fs::remove_dir_all(d).map_err(|e| Error::io(d, e))?;
                }
            }
        }
        eprintln!("stage {name}: running");
        self.stages.insert(name.into(), StageRecord { key: key.into(), seconds: 0.0, finished: false });
        self.save()?;
        let t0 = std::time::Instant::now();
        f()?;
        let secs = t0.elapsed().as_secs_f64();
        eprintln!("stage {name}: done in {secs:.1}s");
        self.stages.insert(name.into(), StageRecord { key: key.into(), seconds: secs, finished: true });
        self.timings.push((name.into(), secs, false));
        self.save()
    }

    fn save(&self) -> Result<()> {
        write_json(&self.out.join("stages.json"), &self.stages)
    }
}

/// Everything a run needs, checked before the first stage runs.
struct Plan {
    recipe: DistillRecipe,
    t: TransferSection,
    g: GenerateSection,
    student: PathBuf,
    /// The teacher's file or folder; `None` for a served teacher.
    teacher: Option<PathBuf>,
    teacher_sec: ModelSection,
    survey: Survey,
    countries: Vec<String>,
    out: PathBuf,
    split: Split,
    heldout: Vec<String>,
    train_probe: Vec<String>,
}

impl Plan {
    fn new(a: &RunArgs) -> Result<Self> {
        let recipe = DistillRecipe::load_with(&a.recipe, &a.sets)?;
        let rerr = |msg: String| Error::Recipe { path: a.recipe.clone(), msg };
        let t = recipe.transfer.clone().ok_or_else(|| rerr("no [transfer] section".into()))?;
        let g = recipe.generate.clone().ok_or_else(|| rerr("no [generate] section".into()))?;
        let student = model_path(&Some(recipe.student.clone()), "student", &a.recipe)?;
        let teacher_sec = recipe.teacher.clone().ok_or_else(|| rerr("no [teacher] section".into()))?;
        let teacher = match teacher_sec.endpoint {
            Some(_) => None,
            None => Some(model_path(&recipe.teacher, "teacher", &a.recipe)?),
        };
        let survey = Survey::load(&g.data)?;
        let countries: Vec<String> = if !t.countries.is_empty() {
            t.countries.clone()
        } else if !g.countries.is_empty() {
            g.countries.clone()
        } else {
            survey.countries_with(g.min_questions).iter().map(|c| c.iso3.clone()).collect()
        };
        for c in &countries {
            survey.country(c)?;
        }
        let out = a.out.clone().or(t.out.clone()).unwrap_or_else(|| PathBuf::from("runs").join(&recipe.name));
        let split = Split::draw(&survey, g.seed, g.heldout_fraction, g.leak_ngram, g.leak_threshold)?;
        let answered = |q: &String| countries.iter().any(|c| survey.answers(q, c).is_some());
        let mut heldout: Vec<String> = split.heldout.iter().filter(|q| answered(q)).cloned().collect();
        if heldout.is_empty() {
            return Err(rerr("the split has no held-out questions answered in these countries".into()));
        }
        if let Some(n) = t.max_heldout_questions {
            heldout = crate::util::seed::sample_in_order(&heldout, n, t.seed ^ 0x4E1D);
        }
        let train_probe = crate::util::seed::sample_in_order(
            &split.train.iter().filter(|q| answered(q)).cloned().collect::<Vec<_>>(),
            t.train_questions,
            t.seed ^ 0x7A1,
        );
        Ok(Plan { recipe, t, g, student, teacher, teacher_sec, survey, countries, out, split, heldout, train_probe })
    }

    /// The probe recipe of the before/after/teacher probes: the run's countries, held-out and
    /// probed training questions, the recipe's prompt.
    fn probe_recipe(&self, m: &ModelSection) -> ProbeRecipe {
        let mut questions = self.heldout.clone();
        questions.extend(self.train_probe.iter().cloned());
        ProbeRecipe {
            name: format!("{}-probe", self.recipe.name),
            model: m.clone(),
            survey: SurveySection {
                data: self.g.data.clone(),
                countries: self.countries.clone(),
                min_questions: 0,
                questions,
                categories: vec![],
                category_groups: None,
            },
            prompt: self.recipe.prompt.clone(),
            templates: vec![],
            blind: None,
            scoring: ScoringSection {
                batch: self.t.probe_batch,
                seed: self.t.seed,
                orders: self.t.probe_orders,
                ..Default::default()
            },
        }
    }

    fn probe(
        &self,
        a: &RunArgs,
        pr: &ProbeRecipe,
        model: Option<&Path>,
        adapter: Option<PathBuf>,
        dir: &Path,
    ) -> Result<()> {
        let run = ProbeRun {
            model: model.map(Path::to_path_buf),
            adapter,
            out: dir.to_path_buf(),
            cache: self.t.score_cache.clone(),
            shard: None,
            threads: a.threads,
            whole_rows: false,
            progress: a.progress,
        };
        probe_with(pr, &self.survey, &run).map(|_| ())
    }
}

/// Stage keys: each is the hash of everything its output depends on, including the keys of the
/// stages it reads from.
struct Keys {
    split: String,
    before: String,
    generate: String,
    train: String,
    after: String,
}

fn generate_stage(a: &RunArgs, p: &Plan, gen_dir: &Path, dataset: &Path, split_path: &Path) -> Result<()> {
    // The generator reuses the experiment's split, so evaluation and leakage guard agree.
    let (_, _, _, gen_split_path) = crate::generate::paths(dataset, None);
    std::fs::create_dir_all(gen_dir).map_err(|e| Error::io(gen_dir, e))?;
    std::fs::copy(split_path, &gen_split_path).map_err(|e| Error::io(&gen_split_path, e))?;
    let args = crate::generate::GenerateArgs {
        recipe: a.recipe.clone(),
        out: dataset.to_path_buf(),
        shard: None,
        progress: a.progress,
        countries: Some(p.countries.clone()),
        sets: a.sets.clone(),
    };
    let card = crate::generate::generate(&args)?;
    if card.kept == 0 {
        return Err(Error::Invalid(format!("{}: the teacher produced no usable records", dataset.display())));
    }
    Ok(())
}

fn train_stage(a: &RunArgs, dataset: &Path, adapter_dir: &Path) -> Result<()> {
    let args = crate::train::TrainArgs {
        recipe: a.recipe.clone(),
        data: dataset.to_path_buf(),
        out: adapter_dir.to_path_buf(),
        resume: adapter_dir.join(crate::train::CHECKPOINT).exists(),
        model: None,
        max_steps: None,
        stop_after: None,
        threads: a.threads,
        progress: a.progress,
        sets: a.sets.clone(),
    };
    crate::train::train(&args).map(|_| ())
}

pub fn run(a: &RunArgs) -> Result<report::TransferReport> {
    let p = Plan::new(a)?;
    let (out, t, g) = (&p.out, &p.t, &p.g);
    let _writer = crate::util::lock::OutputLock::dir(out)?;
    let gen_dir = out.join("generate");
    let dataset = gen_dir.join("dataset.jsonl");
    let split_path = out.join("split.json");
    let stages_path = out.join("stages.json");
    let stages: Stages = if stages_path.exists() { crate::util::io::read_json(&stages_path)? } else { Stages::new() };
    let mut r = Runner { out: out.clone(), stages, timings: Vec::new() };

    let survey_sha = crate::util::io::sha256_file(&p.survey.dir.join(crate::survey::QUESTIONS_FILE))?;
    let dist_sha = crate::util::io::sha256_file(&p.survey.dir.join(crate::survey::DISTRIBUTIONS_FILE))?;
    let student_sha = path_sha256(&p.student)?;
    let teacher_sha = match &p.teacher {
        Some(t) => path_sha256(t)?,
        // A served teacher is known by its name, tokenizer and request settings (not its address:
        // the same model served elsewhere keeps the finished stages).
        None => {
            sha256_hex(serde_json::to_string(&ModelSection { endpoint: None, ..p.teacher_sec.clone() })?.as_bytes())
        }
    };
    let json = |v: &dyn erased::Ser| v.json();
    let student_probe = p.probe_recipe(&p.recipe.student);
    let split = key(&["split", &json(&p.split), &survey_sha]);
    let before = key(&["probe-before", &split, &student_sha, &json(&student_probe), &dist_sha]);
    let generate =
        key(&["generate", &split, &teacher_sha, &json(g), &json(&p.recipe.prompt), &json(&p.countries), &dist_sha]);
    let train = key(&["train", &generate, &student_sha, &json(&p.recipe.lora), &json(&p.recipe.train)]);
    let after = key(&["probe-after", &train, &before]);
    let k = Keys { split, before, generate, train, after };

    r.stage("split", &k.split, std::slice::from_ref(&split_path), || write_json(&split_path, &p.split))?;
    let before = out.join("probe-before");
    r.stage("probe-before", &k.before, std::slice::from_ref(&before), || {
        p.probe(a, &student_probe, Some(&p.student), None, &before)
    })?;
    let teacher_dir = out.join("probe-teacher");
    if t.teacher_reference {
        // Probed in f32 like the student (the quantized form is for fast generation only).
        let tp = p.probe_recipe(&ModelSection { weights: crate::recipe::WeightMode::F32, ..p.teacher_sec.clone() });
        let kt = key(&["probe-teacher", &k.split, &teacher_sha, &json(&tp), &dist_sha]);
        r.stage("probe-teacher", &kt, std::slice::from_ref(&teacher_dir), || {
            p.probe(a, &tp, p.teacher.as_deref(), None, &teacher_dir)
        })?;
    }
    r.stage("generate", &k.generate, std::slice::from_ref(&gen_dir), || {
        generate_stage(a, &p, &gen_dir, &dataset, &split_path)
    })?;
    let adapter_dir = out.join("adapter");
    r.stage("train", &k.train, std::slice::from_ref(&adapter_dir), || train_stage(a, &dataset, &adapter_dir))?;
    let after = out.join("probe-after");
    r.stage("probe-after", &k.after, std::slice::from_ref(&after), || {
        p.probe(a, &student_probe, Some(&p.student), Some(adapter_dir.clone()), &after)
    })?;

    let mut rep = None;
    let k_report = key(&[REPORT_SCHEMA, &k.after, &json(t), &json(&p.heldout), &json(&p.train_probe)]);
    r.stage("report", &k_report, &[], || {
        let built = report::build(&report::Inputs {
            name: p.recipe.name.clone(),
            survey: &p.survey,
            before: &before,
            after: &after,
            teacher: t.teacher_reference.then_some(teacher_dir.as_path()),
            heldout: &p.heldout,
            train: &p.train_probe,
            train_split: &p.split.train,
            trained: &report::trained_questions(&dataset, &p.survey, &p.recipe)?,
            neighbours: t.neighbours,
            min_countries: t.min_countries,
            bootstrap: t.bootstrap,
            seed: t.seed,
            dataset: &dataset,
        })?;
        report::write(out, &built)?;
        rep = Some(built);
        Ok(())
    })?;
    let mut rep = match rep {
        Some(r) => r,
        None => crate::util::io::read_json(&out.join("transfer.json"))?,
    };
    rep.stage_seconds = r.timings.iter().map(|(n, s, skipped)| (n.clone(), (*s, *skipped))).collect();
    write_json(&out.join("transfer.json"), &rep)?;
    Ok(rep)
}

/// JSON of any serialisable value, for stage keys.
mod erased {
    pub trait Ser {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> String {
            serde_json::to_string(self).expect("serialisable")
        }
    }
}
