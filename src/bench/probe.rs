//! `mores bench probe`: prompts/s and peak memory of the probe on a fixed prompt set, beside the
//! Python stack a user would otherwise run (transformers, llama.cpp via shared/peers scripts) on
//! the same prompts and threads, in the same run. Each measurement runs in its own process so
//! that peak memory belongs to it alone.
use crate::model::Model;
use crate::recipe::{ProbeRecipe, WeightMode};
use crate::score::{ScoreRequest, Scorer};
use crate::survey::Survey;
use crate::util::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Serialize, Deserialize)]
pub struct PromptLine {
    pub id: String,
    pub prompt: String,
    pub options: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Measurement {
    pub backend: String,
    pub n: usize,
    pub batch: usize,
    pub load_s: f64,
    pub score_s: f64,
    pub prompts_per_s: f64,
    pub peak_rss_mib: f64,
    #[serde(default)]
    pub probs: BTreeMap<String, Vec<f64>>,
}

/// The fixed prompt set: four countries from four continents x the first scored questions.
pub fn prompt_set(recipe: &ProbeRecipe, survey: &Survey, model: &Model, n: usize) -> Result<Vec<PromptLine>> {
    let countries = ["USA", "NGA", "DEU", "IND"];
    let per = n.div_ceil(countries.len());
    let qs: Vec<_> = survey.questions.iter().filter(|q| q.is_scored() && q.probeable()).take(per).collect();
    let mut out = Vec::new();
    for c in countries {
        let c = survey.country(c)?;
        for q in &qs {
            let p = crate::prompt::build(&recipe.prompt, q, c, model)?;
            out.push(PromptLine { id: p.id, prompt: p.text, options: p.labels });
        }
    }
    out.truncate(n);
    Ok(out)
}

pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// The child side: load, score every prompt once, report.
pub fn measure_one(model_path: &Path, prompts: &Path, batch: usize, weights: WeightMode) -> Result<Measurement> {
    let lines: Vec<PromptLine> = crate::util::io::read_jsonl(prompts)?;
    let t0 = std::time::Instant::now();
    let model = Model::load(model_path, &crate::model::LoadOptions::for_weights(weights))?;
    let load_s = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let mut probs = BTreeMap::new();
    for chunk in lines.chunks(batch.max(1)) {
        let reqs: Vec<ScoreRequest> =
            chunk.iter().map(|l| ScoreRequest { prompt: l.prompt.clone(), labels: l.options.clone() }).collect();
        for (l, s) in chunk.iter().zip(model.score_batch(&reqs)?) {
            probs.insert(l.id.clone(), s.probs);
        }
    }
    let score_s = t1.elapsed().as_secs_f64();
    Ok(Measurement {
        backend: format!("mores ({})", format!("{weights:?}").to_lowercase()),
        n: lines.len(),
        batch,
        load_s,
        score_s,
        prompts_per_s: lines.len() as f64 / score_s,
        peak_rss_mib: peak_rss_mib(),
        probs,
    })
}

pub struct BenchArgs {
    pub models: Vec<PathBuf>,
    pub n: usize,
    pub batch: usize,
    pub threads: usize,
    pub weights: Vec<WeightMode>,
    pub peers: Option<PathBuf>,
    pub python: String,
    pub recipe: PathBuf,
    pub work: PathBuf,
}

fn run_peer(
    a: &BenchArgs,
    peers: &Path,
    backend: &str,
    model: &Path,
    prompts: &Path,
    out: &Path,
) -> Result<Measurement> {
    let script = peers.join("probe_bench.py");
    let batch = a.batch.to_string();
    let mut cmd = Command::new(&a.python);
    cmd.arg(&script).args(["--backend", backend, "--model"]).arg(model).arg("--prompts").arg(prompts);
    cmd.args(["--n", &a.n.to_string(), "--threads", &a.threads.to_string(), "--out"]).arg(out);
    if backend == "hf" {
        cmd.args(["--batch", &batch]);
    }
    let o =
        cmd.output().map_err(|e| Error::Invalid(format!("cannot run {} with {}: {e}", script.display(), a.python)))?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let last = err.lines().last().unwrap_or("");
        return Err(Error::Invalid(format!("peer {backend} failed ({}): {last}", o.status)));
    }
    #[derive(Deserialize)]
    struct PeerOut {
        meta: serde_json::Value,
        results: BTreeMap<String, serde_json::Value>,
    }
    let text = std::fs::read_to_string(out).map_err(|e| Error::io(out, e))?;
    let p: PeerOut = serde_json::from_str(&text)?;
    let num = |k: &str| p.meta.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    Ok(Measurement {
        backend: if backend == "hf" { "transformers (f32)".into() } else { "llama.cpp (quantized)".into() },
        n: p.results.len(),
        batch: num("batch") as usize,
        load_s: num("load_s"),
        score_s: num("score_s"),
        prompts_per_s: num("prompts_per_s"),
        peak_rss_mib: num("peak_rss_mib"),
        probs: p
            .results
            .into_iter()
            .map(|(k, v)| (k, serde_json::from_value(v["probs"].clone()).unwrap_or_default()))
            .collect(),
    })
}

fn max_diff(a: &Measurement, b: &Measurement) -> Option<f64> {
    let mut m: Option<f64> = None;
    for (k, pa) in &a.probs {
        if let Some(pb) = b.probs.get(k) {
            for (x, y) in pa.iter().zip(pb) {
                m = Some(m.unwrap_or(0.0).max((x - y).abs()));
            }
        }
    }
    m
}

/// Run the benchmark and return a markdown table.
pub fn probe_bench(a: &BenchArgs) -> Result<String> {
    use std::fmt::Write;
    if a.n == 0 || a.batch == 0 {
        return Err(Error::Invalid(format!("bench probe needs --n >= 1 and --batch >= 1 (got {}, {})", a.n, a.batch)));
    }
    let recipe = ProbeRecipe::load(&a.recipe)?;
    let survey = Survey::load(&recipe.survey.data)?;
    std::fs::create_dir_all(&a.work).map_err(|e| Error::io(&a.work, e))?;
    let exe = std::env::current_exe().map_err(|e| Error::io("mores", e))?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| model | backend | batch | prompts | load s | prompts/s | peak RSS MiB | mores speed / this | this RSS / mores | max abs dp vs mores |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for model_path in &a.models {
        let model = Model::load(model_path, &crate::model::LoadOptions::for_weights(WeightMode::Stored))?;
        let prompts = prompt_set(&recipe, &survey, &model, a.n)?;
        drop(model);
        let pfile =
            a.work.join(format!("prompts-{}.jsonl", model_path.file_stem().unwrap_or_default().to_string_lossy()));
        crate::util::io::write_jsonl(&pfile, &prompts)?;
        let mut rows: Vec<Measurement> = Vec::new();
        for w in &a.weights {
            let o = Command::new(&exe)
                .args(["--threads", &a.threads.to_string(), "bench", "probe-one", "--model"])
                .arg(model_path)
                .arg("--prompts")
                .arg(&pfile)
                .args(["--batch", &a.batch.to_string(), "--weights", &format!("{w:?}").to_lowercase()])
                .output()
                .map_err(|e| Error::io(&exe, e))?;
            if !o.status.success() {
                return Err(Error::Invalid(format!("bench child failed: {}", String::from_utf8_lossy(&o.stderr))));
            }
            rows.push(serde_json::from_slice(&o.stdout)?);
        }
        if let Some(peers) = &a.peers {
            for backend in ["hf", "llamacpp"] {
                let f =
                    a.work.join(format!("{backend}-{}.json", pfile.file_stem().unwrap_or_default().to_string_lossy()));
                match run_peer(a, peers, backend, model_path, &pfile, &f) {
                    Ok(m) => rows.push(m),
                    Err(e) => eprintln!("warning: {e}"),
                }
            }
        }
        let best = rows
            .iter()
            .filter(|m| m.backend.starts_with("mores"))
            .max_by(|x, y| x.prompts_per_s.total_cmp(&y.prompts_per_s))
            .expect("at least one mores row");
        let name = model_path.file_name().unwrap_or_default().to_string_lossy();
        for m in &rows {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {:.1} | {:.2} | {:.0} | {:.2}x | {:.2}x | {} |",
                m.backend,
                m.batch,
                m.n,
                m.load_s,
                m.prompts_per_s,
                m.peak_rss_mib,
                best.prompts_per_s / m.prompts_per_s,
                m.peak_rss_mib / best.peak_rss_mib,
                max_diff(best, m).map(|d| format!("{d:.1e}")).unwrap_or_else(|| "–".into())
            );
        }
    }
    Ok(out)
}
