//! `mores bench lora`: seconds per LoRA training step and peak memory, beside Python PEFT +
//! transformers (the peer script lora_bench.py) on the same model, threads and shapes, in the same
//! run. The setting is PEFT's: rank 8, alpha 16, q_proj and v_proj, AdamW lr 2e-4, causal-LM loss
//! on every position of batch x sequence tokens. Each side runs in its own process.
use crate::bench::probe::peak_rss_mib;
use crate::model::adapter::{Adapter, LoraSpec};
use crate::model::{LoadOptions, Model};
use crate::train::examples::{Example, Kind};
use crate::train::optim::AdamW;
use crate::util::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Serialize, Deserialize)]
pub struct LoraMeasurement {
    pub backend: String,
    pub steps: usize,
    pub batch: usize,
    pub seq: usize,
    pub load_s: f64,
    /// Median over steps 3..N (the first two include one-off allocation).
    pub s_per_step: f64,
    pub tokens_per_s: f64,
    pub peak_rss_mib: f64,
    pub losses: Vec<f64>,
}

/// Deterministic survey-flavoured text, like the peer script's (not byte-identical: only the
/// shapes matter for speed).
fn synthetic_text(n_chars: usize) -> String {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1234);
    let countries = ["Nigeria", "Germany", "Japan", "Brazil", "India", "Mexico", "Sweden", "Egypt"];
    let topics = ["family", "religion", "work", "friends", "politics", "leisure time", "tradition", "science"];
    let levels = ["very important", "rather important", "not very important", "not at all important"];
    let mut s = String::new();
    while s.len() < n_chars {
        let (c, t, l) = (
            countries[rng.random_range(0..countries.len())],
            topics[rng.random_range(0..topics.len())],
            levels[rng.random_range(0..levels.len())],
        );
        s.push_str(&format!(
            "A respondent from {c} was asked how important {t} is in their life. They answered that {t} is {l} to them, and explained why in a few words. "
        ));
    }
    s
}

/// The child side: train `steps` steps and report.
pub fn measure_one(model_path: &Path, steps: usize, batch: usize, seq: usize) -> Result<LoraMeasurement> {
    check_sizes(steps, batch, seq)?;
    let t0 = std::time::Instant::now();
    let mut model = Model::load(model_path, &LoadOptions::for_weights(crate::recipe::WeightMode::F32))?;
    let spec = LoraSpec {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        targets: vec!["q_proj".into(), "v_proj".into()],
        rslora: false,
        layers: None,
    };
    let adapter = Adapter::attach_new(&mut model, &spec, 0)?;
    let load_s = t0.elapsed().as_secs_f64();
    let need = steps * batch * seq;
    let ids = model.tok.encode(&synthetic_text(need * 6))?;
    if ids.len() < need {
        return Err(Error::Invalid("synthetic text too short".into()));
    }
    let mut opt = AdamW::new(adapter.vars(), (0.9, 0.999), 1e-8, 0.01)?;
    let (mut times, mut losses) = (Vec::new(), Vec::new());
    for step in 0..steps {
        let exs: Vec<Example> = (0..batch)
            .map(|b| {
                let start = (step * batch + b) * seq;
                let row = ids[start..start + seq].to_vec();
                Example {
                    question: None,
                    wording: None,
                    id: format!("{step}-{b}"),
                    reads: (0..seq - 1).map(|p| (0, p)).collect(),
                    kind: Kind::Tokens(row[1..].to_vec()),
                    rows: vec![row],
                }
            })
            .collect();
        let refs: Vec<&Example> = exs.iter().collect();
        let t = std::time::Instant::now();
        let (loss, grads) = crate::train::step_grads(&model, &adapter, &refs, batch, None)?;
        opt.step(&grads, 2e-4)?;
        times.push(t.elapsed().as_secs_f64());
        losses.push(loss);
        eprintln!("step {:3}  loss {loss:.4}  {:.3}s", step + 1, times[step]);
    }
    let mut steady: Vec<f64> = if times.len() > 2 { times[2..].to_vec() } else { times.clone() };
    steady.sort_by(f64::total_cmp);
    let med = steady[steady.len() / 2];
    Ok(LoraMeasurement {
        backend: "mores (candle, f32)".into(),
        steps,
        batch,
        seq,
        load_s,
        s_per_step: med,
        tokens_per_s: (batch * seq) as f64 / med,
        peak_rss_mib: peak_rss_mib(),
        losses,
    })
}

pub struct LoraBenchArgs {
    pub model: PathBuf,
    pub steps: usize,
    pub batch: usize,
    pub seq: usize,
    pub threads: usize,
    pub peers: Option<PathBuf>,
    pub python: String,
    pub work: PathBuf,
}

fn run_peer(a: &LoraBenchArgs, peers: &Path) -> Result<LoraMeasurement> {
    let script = peers.join("lora_bench.py");
    let out = a.work.join("peft-lora.json");
    let mut cmd = Command::new(&a.python);
    cmd.arg(&script).arg("--model").arg(&a.model);
    cmd.args(["--steps", &a.steps.to_string(), "--threads", &a.threads.to_string()]);
    cmd.args(["--batch", &a.batch.to_string(), "--seq", &a.seq.to_string(), "--out"]).arg(&out);
    super::peer(&mut cmd, &script, &a.python, "PEFT peer")?;
    let text = std::fs::read_to_string(&out).map_err(|e| Error::io(&out, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let num = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
    Ok(LoraMeasurement {
        backend: "PEFT + transformers (torch, f32)".into(),
        steps: a.steps,
        batch: a.batch,
        seq: a.seq,
        load_s: num("load_s"),
        s_per_step: num("median_s_per_step_3_to_N"),
        tokens_per_s: num("tokens_per_s"),
        peak_rss_mib: num("peak_rss_mib"),
        losses: serde_json::from_value(v["loss_curve"].clone()).unwrap_or_default(),
    })
}

/// `--steps`, `--batch` and `--seq` of 0 panicked (an empty median, a negative read range).
fn check_sizes(steps: usize, batch: usize, seq: usize) -> Result<()> {
    if steps == 0 || batch == 0 || seq < 2 {
        return Err(Error::Invalid(format!(
            "bench lora needs --steps >= 1, --batch >= 1 and --seq >= 2 (got {steps}, {batch}, {seq})"
        )));
    }
    Ok(())
}

pub fn lora_bench(a: &LoraBenchArgs) -> Result<String> {
    use std::fmt::Write;
    check_sizes(a.steps, a.batch, a.seq)?;
    std::fs::create_dir_all(&a.work).map_err(|e| Error::io(&a.work, e))?;
    let exe = std::env::current_exe().map_err(|e| Error::io("mores", e))?;
    let mut cmd = Command::new(&exe);
    cmd.args(["--threads", &a.threads.to_string(), "bench", "lora-one", "--model"]).arg(&a.model);
    cmd.args(["--steps", &a.steps.to_string(), "--batch", &a.batch.to_string(), "--seq", &a.seq.to_string()]);
    let mut rows: Vec<LoraMeasurement> = vec![super::child(&mut cmd, &exe)?];
    if let Some(peers) = &a.peers {
        match run_peer(a, peers) {
            Ok(m) => rows.push(m),
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    let ours = &rows[0];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "LoRA r=8 alpha=16 on q_proj,v_proj, AdamW, batch {} x seq {}, {} threads, {} steps (median of steps 3..N)\n",
        a.batch, a.seq, a.threads, a.steps
    );
    let _ =
        writeln!(out, "| backend | load s | s/step | tokens/s | peak RSS MiB | this time / mores | mores RSS / this |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for m in &rows {
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.3} | {:.0} | {:.0} | {:.2}x | {:.2}x |",
            m.backend,
            m.load_s,
            m.s_per_step,
            m.tokens_per_s,
            m.peak_rss_mib,
            m.s_per_step / ours.s_per_step,
            ours.peak_rss_mib / m.peak_rss_mib
        );
    }
    if rows.len() > 1 {
        let _ = writeln!(
            out,
            "\nmores time per step = {:.2}x PEFT's (target <= 0.7x); peak memory = {:.2}x PEFT's (target <= 1x)",
            ours.s_per_step / rows[1].s_per_step,
            ours.peak_rss_mib / rows[1].peak_rss_mib
        );
    }
    Ok(out)
}
