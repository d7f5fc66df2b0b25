//! `mores bench generate`: greedy decoding speed of the teacher (prefill seconds, decode
//! tokens/s, peak memory), beside transformers and llama.cpp (the peer script gen_bench.py) on the
//! same prompt, number of new tokens and threads, in the same run. The setting is the peer
//! script's: one ~40-token prompt, 64 new tokens, end of sequence ignored so every run makes 64.
use crate::bench::probe::peak_rss_mib;
use crate::bench::{add_run, Series};
use crate::model::{LoadOptions, Model};
use crate::recipe::WeightMode;
use crate::util::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The peer script's prompt, word for word.
pub const PROMPT: &str = "Imagine you are a person from Kenya. Describe in a few sentences how important family, religion and work are in your daily life, and what you expect from the next ten years in your country.";

#[derive(Debug, Serialize, Deserialize)]
pub struct GenMeasurement {
    pub backend: String,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub load_s: f64,
    /// Medians over the repetitions.
    pub prefill_s: f64,
    pub total_s: f64,
    pub decode_tok_per_s: f64,
    pub peak_rss_mib: f64,
    #[serde(default)]
    pub first_tokens: Vec<u32>,
}

/// Greedy: prefill the prompt, then `new` argmax tokens, each fed back through the KV cache.
fn greedy(model: &Model, ids: &[u32], new: usize) -> Result<(f64, f64, Vec<u32>)> {
    let t0 = std::time::Instant::now();
    let (mut logits, mut kv) = model.prefill(ids)?;
    let pre = t0.elapsed().as_secs_f64();
    let mut out = Vec::with_capacity(new);
    for i in 0..new {
        let t = logits.argmax(0)?.to_scalar::<u32>()?;
        out.push(t);
        if i + 1 < new {
            logits = model.decode(&mut kv, t)?;
        }
    }
    Ok((pre, t0.elapsed().as_secs_f64(), out))
}

/// The child side: load, warm up, time `reps` greedy runs.
pub fn measure_one(model_path: &Path, weights: WeightMode, new: usize, reps: usize) -> Result<GenMeasurement> {
    if new == 0 || reps == 0 {
        return Err(Error::Invalid(format!("bench generate needs --new and --reps >= 1 (got {new}, {reps})")));
    }
    let t0 = std::time::Instant::now();
    let model = Model::load(model_path, &LoadOptions::for_weights(weights))?;
    let load_s = t0.elapsed().as_secs_f64();
    let ids = model.tok.encode_prompt(PROMPT)?;
    greedy(&model, &ids, 4)?;
    let (mut pre, mut tot, mut first) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let (p, t, out) = greedy(&model, &ids, new)?;
        pre.push(p);
        tot.push(t);
        first = out;
    }
    let (pre, tot) = (super::median(pre), super::median(tot));
    first.truncate(16);
    Ok(GenMeasurement {
        backend: format!("mores ({})", format!("{weights:?}").to_lowercase()),
        prompt_tokens: ids.len(),
        new_tokens: new,
        load_s,
        prefill_s: pre,
        total_s: tot,
        // The first token comes from the prefill; the other new - 1 from decoding steps.
        decode_tok_per_s: new as f64 / (tot - pre).max(1e-9),
        peak_rss_mib: peak_rss_mib(),
        first_tokens: first,
    })
}

pub struct GenBenchArgs {
    pub models: Vec<PathBuf>,
    pub weights: Vec<WeightMode>,
    pub new: usize,
    pub reps: usize,
    pub threads: usize,
    pub peers: Option<PathBuf>,
    pub python: String,
    pub work: PathBuf,
    /// Rounds: every backend once per round, in turn (A B C A B C ...).
    pub repeat: usize,
}

fn run_peer(a: &GenBenchArgs, peers: &Path, backend: &str, model: &Path, out: &Path) -> Result<GenMeasurement> {
    let script = peers.join("gen_bench.py");
    let mut cmd = Command::new(&a.python);
    cmd.arg(&script).args(["--backend", backend, "--model"]).arg(model);
    cmd.args(["--threads", &a.threads.to_string(), "--new", &a.new.to_string(), "--reps", &a.reps.to_string()]);
    cmd.arg("--out").arg(out);
    super::peer(&mut cmd, &script, &a.python, &format!("peer {backend}"))?;
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(out).map_err(|e| Error::io(out, e))?)?;
    let num = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
    Ok(GenMeasurement {
        backend: if backend == "hf" { "transformers (f32)".into() } else { "llama.cpp (quantized)".into() },
        prompt_tokens: num("prompt_tokens") as usize,
        new_tokens: num("new_tokens") as usize,
        load_s: num("load_s"),
        prefill_s: num("prefill_s"),
        total_s: num("total_s"),
        decode_tok_per_s: num("decode_tok_per_s"),
        peak_rss_mib: num("peak_rss_mib"),
        first_tokens: serde_json::from_value(v["first_tokens"].clone()).unwrap_or_default(),
    })
}

/// Run the benchmark and return a markdown table. Every backend runs `repeat` times, the
/// backends taking turns, so a drift of the machine's speed hits them alike; the table gives the
/// median and range of decode tokens/s, and the ratio of the medians.
pub fn generate_bench(a: &GenBenchArgs) -> Result<String> {
    use std::fmt::Write;
    if a.new == 0 || a.reps == 0 || a.repeat == 0 {
        return Err(Error::Invalid(format!(
            "bench generate needs --new, --reps and --repeat >= 1 (got {}, {}, {})",
            a.new, a.reps, a.repeat
        )));
    }
    std::fs::create_dir_all(&a.work).map_err(|e| Error::io(&a.work, e))?;
    let exe = std::env::current_exe().map_err(|e| Error::io("mores", e))?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| model | backend | prompt tokens | prefill s | decode tokens/s median (min-max) | peak RSS MiB | best mores speed / this | same first tokens as mores f32 |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---|");
    for model_path in &a.models {
        let stem = model_path.file_stem().unwrap_or_default().to_string_lossy().to_string();
        // One list of runs per backend, in the order the backends first ran.
        let mut series: Vec<Series<GenMeasurement>> = Vec::new();
        let mut failed: Vec<&str> = Vec::new();
        for _ in 0..a.repeat {
            for w in &a.weights {
                let mut cmd = Command::new(&exe);
                cmd.args(["--threads", &a.threads.to_string(), "bench", "generate-one", "--model"]).arg(model_path);
                cmd.args(["--weights", &format!("{w:?}").to_lowercase()]);
                cmd.args(["--new", &a.new.to_string(), "--reps", &a.reps.to_string()]);
                add_run(&mut series, super::child(&mut cmd, &exe)?, |m| &m.backend);
            }
            if let Some(peers) = &a.peers {
                for backend in ["hf", "llamacpp"] {
                    if failed.contains(&backend) {
                        continue;
                    }
                    match run_peer(a, peers, backend, model_path, &a.work.join(format!("gen-{backend}-{stem}.json"))) {
                        Ok(m) => add_run(&mut series, m, |m| &m.backend),
                        Err(e) => {
                            eprintln!("warning: {e}");
                            failed.push(backend);
                        }
                    }
                }
            }
        }
        let speed = |s: &Series<GenMeasurement>| s.spread(|m| m.decode_tok_per_s);
        let best = series
            .iter()
            .filter(|s| s.last().backend.starts_with("mores"))
            .map(|s| speed(s).0)
            .fold(f64::NAN, f64::max);
        let reference =
            series.iter().find(|s| s.last().backend == "mores (f32)").map(|s| s.last().first_tokens.clone());
        let name = model_path.file_name().unwrap_or_default().to_string_lossy();
        for s in &series {
            let m = s.last();
            let same = match &reference {
                Some(r) if !m.first_tokens.is_empty() => {
                    let n = r.len().min(m.first_tokens.len());
                    let agree = r.iter().zip(&m.first_tokens).take_while(|(x, y)| x == y).count();
                    format!("{agree} of {n}")
                }
                _ => "–".into(),
            };
            let (med, lo, hi) = speed(s);
            let prefill = s.spread(|m| m.prefill_s).0;
            let rss = s.spread(|m| m.peak_rss_mib).0;
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {prefill:.3} | {med:.1} ({lo:.1}-{hi:.1}) | {rss:.0} | {:.2}x | {same} |",
                m.backend,
                m.prompt_tokens,
                best / med,
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{} new tokens, greedy, median of {} decodes per run; {} round(s), backends in turn; threads {}.",
        a.new, a.reps, a.repeat, a.threads
    );
    Ok(out)
}
