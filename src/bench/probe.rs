//! `mores bench probe`: prompts/s and peak memory of the probe on a fixed prompt set, beside the
//! Python stack a user would otherwise run (transformers, llama.cpp via the peer scripts) on
//! the same prompts and threads, in the same run. Each measurement runs in its own process so
//! that peak memory belongs to it alone.
use crate::model::Model;
use crate::recipe::{ProbeRecipe, WeightMode};
use crate::score::ScoreRequest;
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
    /// Tokens in the scored rows (prompt plus label branches), tokens run through the model and
    /// from the prefix cache (mores only).
    #[serde(default)]
    pub reuse: Option<crate::model::radix::ReuseStats>,
}

/// The fixed prompt set: a slice of the recipe as the probe really runs it. Four countries from
/// four continents x the first scored questions that all four answered, in every template and
/// option order the recipe asks for, plus its country-blind prompts, in the probe's scoring
/// order; enough questions for at least `n` prompts.
pub fn prompt_set(recipe: &ProbeRecipe, survey: &Survey, model: &Model, n: usize) -> Result<Vec<PromptLine>> {
    let countries = ["USA", "NGA", "DEU", "IND"];
    let answered = |q: &crate::survey::Question| countries.iter().all(|c| survey.answers(&q.id, c).is_some());
    let qs: Vec<_> = survey.questions.iter().filter(|q| q.is_scored() && q.probeable() && answered(q)).collect();
    let mut slice = recipe.clone();
    slice.survey.countries = countries.iter().map(|c| c.to_string()).collect();
    slice.survey.categories.clear();
    let mut k = 0;
    let prompts = loop {
        k += 1;
        slice.survey.questions = qs.iter().take(k).map(|q| q.id.clone()).collect();
        let vars = crate::probe::variants(&slice, survey)?;
        if vars.len() >= n || k >= qs.len() {
            break crate::probe::build_prompts(&vars, model)?;
        }
    };
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    crate::probe::scoring_order(&prompts, &mut order);
    Ok(order
        .into_iter()
        .map(|i| PromptLine {
            id: prompts[i].id.clone(),
            prompt: prompts[i].text.clone(),
            options: prompts[i].labels.clone(),
        })
        .collect())
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

/// The child side: load, score `warmup` untimed batches, then every prompt once, report.
/// `whole_rows`: no prefix reuse (the reference for what the reuse saves). The warm-up is the
/// peers' protocol (`probe_bench.py --warmup 1`: the first batch, scored and discarded before the
/// clock starts); here it also packs the weights for mores' GEMM, which happens on first use. Its
/// prefix cache is thrown away, so the timed run starts as cold as the peers' (they keep no KV
/// between batches).
pub fn measure_one(
    model_path: &Path,
    prompts: &Path,
    batch: usize,
    weights: WeightMode,
    whole_rows: bool,
    warmup: usize,
) -> Result<Measurement> {
    let lines: Vec<PromptLine> = crate::util::io::read_jsonl(prompts)?;
    let t0 = std::time::Instant::now();
    let mut model = Model::load(model_path, &crate::model::LoadOptions::for_weights(weights))?;
    model.prefix_reuse = !whole_rows;
    let load_s = t0.elapsed().as_secs_f64();
    let size = batch.max(1);
    let (score_s, probs, cache) = time_scoring(&model, &lines, size, warmup, crate::recipe::DEFAULT_PREFIX_CACHE_MIB)?;
    let st = cache.stats;
    let form = format!("{weights:?}").to_lowercase();
    Ok(Measurement {
        backend: if whole_rows { format!("mores ({form}, whole rows)") } else { format!("mores ({form})") },
        reuse: (st.row_tokens > 0).then_some(st),
        n: lines.len(),
        batch,
        load_s,
        score_s,
        prompts_per_s: lines.len() as f64 / score_s,
        peak_rss_mib: peak_rss_mib(),
        probs,
    })
}

/// The child side for a served model: the same prompts sent to the server at `endpoint` (which
/// serves `model`, whose GGUF gives the tokenizer), `batch` prompts at a time with the server's
/// requests in flight, after the same warm-up.
/// Scores `lines` through `lm` in chunks of `size`, after `warmup` passes over the first chunk
/// (with a cache of their own): the seconds taken, the probabilities by prompt id and the prefix
/// cache the timed pass used.
fn time_scoring(
    lm: &dyn crate::lm::Lm,
    lines: &[PromptLine],
    size: usize,
    warmup: usize,
    cache_mib: usize,
) -> Result<(f64, BTreeMap<String, Vec<f64>>, crate::model::radix::PrefixCache)> {
    let requests = |chunk: &[PromptLine]| -> Vec<ScoreRequest> {
        chunk.iter().map(|l| ScoreRequest { prompt: l.prompt.clone(), labels: l.options.clone() }).collect()
    };
    if let Some(first) = lines.chunks(size).next() {
        let mut scratch = crate::model::radix::PrefixCache::new(cache_mib);
        for _ in 0..warmup {
            lm.score(&requests(first), &mut scratch)?;
        }
    }
    let t = std::time::Instant::now();
    let mut probs = BTreeMap::new();
    let mut cache = crate::model::radix::PrefixCache::new(cache_mib);
    for chunk in lines.chunks(size) {
        for (l, s) in chunk.iter().zip(lm.score(&requests(chunk), &mut cache)?) {
            probs.insert(l.id.clone(), s.probs);
        }
    }
    Ok((t.elapsed().as_secs_f64(), probs, cache))
}

pub fn measure_served(
    endpoint: &str,
    model_path: &Path,
    prompts: &Path,
    batch: usize,
    warmup: usize,
) -> Result<Measurement> {
    use crate::lm::Lm;
    let lines: Vec<PromptLine> = crate::util::io::read_jsonl(prompts)?;
    let section = crate::recipe::ModelSection {
        endpoint: Some(endpoint.to_string()),
        tokenizer: Some(model_path.to_path_buf()),
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let served = crate::lm::served::Served::connect(&section)?;
    let load_s = t0.elapsed().as_secs_f64();
    let size = batch.max(served.parallelism()).max(1);
    let (score_s, probs, _) = time_scoring(&served, &lines, size, warmup, 0)?;
    Ok(Measurement {
        backend: "mores via the server".into(),
        reuse: None,
        n: lines.len(),
        batch: size,
        load_s,
        score_s,
        prompts_per_s: lines.len() as f64 / score_s,
        peak_rss_mib: peak_rss_mib(),
        probs,
    })
}

/// Untimed warm-up batches, the same on every side (mores' children and the peers' scripts).
const WARMUP: usize = 1;

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
    /// Rounds: every backend once per round, in turn.
    pub repeat: usize,
    /// An OpenAI-compatible server serving the (one) model: adds a row scored through it.
    pub endpoint: Option<String>,
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
    cmd.args(["--n", &a.n.to_string(), "--threads", &a.threads.to_string(), "--warmup", &WARMUP.to_string()]);
    cmd.arg("--out").arg(out);
    if backend == "hf" {
        cmd.args(["--batch", &batch]);
    }
    super::peer(&mut cmd, &script, &a.python, &format!("peer {backend}"))?;
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
        reuse: None,
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

type Series = super::Series<Measurement>;

/// One mores child process: load, score the prompt file, print its [`Measurement`].
fn mores_child(
    a: &BenchArgs,
    exe: &Path,
    model: &Path,
    pfile: &Path,
    w: WeightMode,
    whole: bool,
) -> Result<Measurement> {
    let mut cmd = Command::new(exe);
    cmd.args(["--threads", &a.threads.to_string(), "bench", "probe-one", "--model"]).arg(model).arg("--prompts");
    cmd.arg(pfile).args(["--batch", &a.batch.to_string(), "--weights", &format!("{w:?}").to_lowercase()]);
    cmd.args(["--warmup", &WARMUP.to_string()]);
    if whole {
        cmd.arg("--whole-rows");
    }
    super::child(&mut cmd, exe)
}

/// The served row's child process.
fn served_child(a: &BenchArgs, exe: &Path, endpoint: &str, model: &Path, pfile: &Path) -> Result<Measurement> {
    let mut cmd = Command::new(exe);
    cmd.args(["--threads", &a.threads.to_string(), "bench", "probe-one", "--model"]).arg(model).arg("--prompts");
    cmd.arg(pfile).args(["--batch", &a.batch.to_string(), "--weights", "stored", "--endpoint", endpoint]);
    cmd.args(["--warmup", &WARMUP.to_string()]);
    super::child(&mut cmd, exe)
}

/// Run the benchmark and return a markdown table. Every backend runs `repeat` times, the
/// backends taking turns (A B C A B C ...), so a drift of the machine's speed hits them alike;
/// the table gives the median and the range of prompts/s.
pub fn probe_bench(a: &BenchArgs) -> Result<String> {
    use std::fmt::Write;
    if a.n == 0 || a.batch == 0 || a.repeat == 0 {
        return Err(Error::Invalid(format!(
            "bench probe needs --n, --batch and --repeat >= 1 (got {}, {}, {})",
            a.n, a.batch, a.repeat
        )));
    }
    if a.endpoint.is_some() && a.models.len() != 1 {
        return Err(Error::Invalid(
            "bench probe --endpoint measures the one model the server serves: give it with --models".into(),
        ));
    }
    let recipe = ProbeRecipe::load(&a.recipe)?;
    let survey = Survey::load(&recipe.survey.data)?;
    std::fs::create_dir_all(&a.work).map_err(|e| Error::io(&a.work, e))?;
    let exe = std::env::current_exe().map_err(|e| Error::io("mores", e))?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| model | backend | batch | prompts | tokens computed / in rows | prompts/s median (min-max) | peak RSS MiB | mores speed / this | this RSS / mores | max abs dp vs mores |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for model_path in &a.models {
        let model = Model::load(model_path, &crate::model::LoadOptions::for_weights(WeightMode::Stored))?;
        let prompts = prompt_set(&recipe, &survey, &model, a.n)?;
        drop(model);
        let pfile =
            a.work.join(format!("prompts-{}.jsonl", model_path.file_stem().unwrap_or_default().to_string_lossy()));
        crate::util::io::write_jsonl(&pfile, &prompts)?;
        // (weights, whole rows) per mores backend: each weight form, and f32 without prefix reuse.
        let mut sides: Vec<(WeightMode, bool)> = a.weights.iter().map(|&w| (w, false)).collect();
        if a.weights.contains(&WeightMode::F32) {
            sides.push((WeightMode::F32, true));
        }
        let mut series: Vec<Series> = Vec::new();
        let mut peer_names: Vec<&str> = Vec::new();
        for round in 0..a.repeat {
            for &(w, whole) in &sides {
                push(&mut series, mores_child(a, &exe, model_path, &pfile, w, whole)?);
            }
            if let Some(e) = &a.endpoint {
                push(&mut series, served_child(a, &exe, e, model_path, &pfile)?);
            }
            if let Some(peers) = &a.peers {
                for backend in ["hf", "llamacpp"] {
                    if round > 0 && !peer_names.contains(&backend) {
                        continue; // it failed in the first round
                    }
                    let stem = pfile.file_stem().unwrap_or_default().to_string_lossy();
                    let f = a.work.join(format!("{backend}-{stem}.json"));
                    match run_peer(a, peers, backend, model_path, &pfile, &f) {
                        Ok(m) => {
                            if round == 0 {
                                peer_names.push(backend);
                            }
                            push(&mut series, m);
                        }
                        Err(e) => eprintln!("warning: {e}"),
                    }
                }
            }
        }
        let speed = |s: &Series| s.spread(|m| m.prompts_per_s);
        let best = series
            .iter()
            .filter(|s| s.last().backend.starts_with("mores"))
            .max_by(|x, y| speed(x).0.total_cmp(&speed(y).0))
            .expect("at least one mores row");
        let name = model_path.file_name().unwrap_or_default().to_string_lossy();
        for s in &series {
            let m = s.last();
            let (med, lo, hi) = speed(s);
            let rss = s.spread(|m| m.peak_rss_mib).0;
            let tokens = m.reuse.map(|r| format!("{} / {}", r.computed, r.row_tokens)).unwrap_or_else(|| "–".into());
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {tokens} | {med:.2} ({lo:.2}-{hi:.2}) | {rss:.0} | {:.2}x | {:.2}x | {} |",
                m.backend,
                m.batch,
                m.n,
                speed(best).0 / med,
                rss / best.spread(|m| m.peak_rss_mib).0,
                max_diff(best.last(), m).map(|d| format!("{d:.1e}")).unwrap_or_else(|| "–".into())
            );
        }
        // Through the server against llama.cpp in process (the same engine, no HTTP): the
        // client's overhead.
        let row = |b: &str| series.iter().find(|s| s.last().backend == b).map(speed);
        if let (Some(via), Some(direct)) = (row("mores via the server"), row("llama.cpp (quantized)")) {
            let _ = writeln!(
                out,
                "\n{name}: through the server {:.2} prompts/s, llama.cpp in process {:.2}: the server path takes {:.2}x the time (medians).",
                via.0,
                direct.0,
                direct.0 / via.0
            );
        }
    }
    let _ = writeln!(out, "\n{} round(s), backends in turn; threads {}.", a.repeat, a.threads);
    Ok(out)
}

fn push(series: &mut Vec<Series>, m: Measurement) {
    super::add_run(series, m, |m| &m.backend);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(backend: &str, pps: f64) -> Measurement {
        Measurement {
            backend: backend.into(),
            n: 1,
            batch: 1,
            load_s: 0.0,
            score_s: 1.0,
            prompts_per_s: pps,
            peak_rss_mib: 1.0,
            probs: BTreeMap::new(),
            reuse: None,
        }
    }

    /// A peer that fails in the second round (transformers here) must not move llama.cpp's run
    /// into transformers' row.
    #[test]
    fn a_peer_failing_in_a_later_round_shifts_no_other_row() {
        let mut series = Vec::new();
        for m in [run("mores", 10.0), run("hf", 5.0), run("llamacpp", 3.0), run("mores", 11.0), run("llamacpp", 4.0)] {
            push(&mut series, m);
        }
        let rows: Vec<(String, Vec<f64>)> = series
            .iter()
            .map(|s| (s.last().backend.clone(), s.runs.iter().map(|m| m.prompts_per_s).collect()))
            .collect();
        assert_eq!(
            rows,
            vec![("mores".into(), vec![10.0, 11.0]), ("hf".into(), vec![5.0]), ("llamacpp".into(), vec![3.0, 4.0])]
        );
    }
}
