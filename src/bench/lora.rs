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
    /// The step's products that no implementation can skip (see [`Products`]); mores' side only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub products: Option<Products>,
}

/// The products every LoRA step on this setting must run, timed alone with mores' GEMM on the
/// step's shapes: each frozen projection's forward and its input gradient (rows = batch x seq)
/// and the output head's forward and input gradient at every position. The LoRA factors' own
/// products (rank 8) and attention's are left out: the figure is a floor for the whole step, and
/// the step's time minus it is what the step spends around its arithmetic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Products {
    pub gflop: f64,
    /// Seconds per step these products take alone, at the rates measured on their shapes.
    pub s: f64,
}

/// The (in, out) widths of every frozen projection and of the head, counted by shape.
fn product_shapes(model: &mut Model) -> Result<Vec<((usize, usize), usize)>> {
    let mut shapes: Vec<((usize, usize), usize)> = Vec::new();
    let mut add = |d: (usize, usize)| match shapes.iter_mut().find(|(s, _)| *s == d) {
        Some((_, n)) => *n += 1,
        None => shapes.push((d, 1)),
    };
    let mut hidden = 0;
    for slot in model.lora_slots() {
        let d = slot.linear.dims()?;
        if slot.layer == 0 && hidden == 0 {
            hidden = d.0;
        }
        add(d);
    }
    add((hidden, model.info.vocab_size));
    Ok(shapes)
}

/// Time `shapes` at `rows` rows: each forward (x [rows, in] times the packed weight) and input
/// gradient (g [rows, out] times the weight [out, in]), about `budget` seconds per product, with
/// `mores bench gemm`'s values and timer.
fn time_products(shapes: &[((usize, usize), usize)], rows: usize, budget: f64) -> Result<Products> {
    use super::gemm::{time, values};
    use crate::model::gemm::{matmul_nn, matmul_packed, Isa, Packed};
    let (mut gflop, mut s) = (0.0, 0.0);
    for &((inp, out), count) in shapes {
        let w = values(2, out * inp);
        let packed = Packed::new(&w, out, inp, Isa::best());
        let (x, g) = (values(1, rows * inp), values(3, rows * out));
        let (mut y, mut dx) = (vec![0f32; rows * out], vec![0f32; rows * inp]);
        let forward = time(budget, || {
            matmul_packed(&x, rows, &packed, &mut y);
            Ok(())
        })?;
        let input_grad = time(budget, || {
            matmul_nn(&g, rows, out, &w, inp, &mut dx);
            Ok(())
        })?;
        gflop += count as f64 * 4.0 * (rows * inp * out) as f64 / 1e9;
        s += count as f64 * (forward + input_grad);
    }
    Ok(Products { gflop, s })
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
    let shapes = product_shapes(&mut model)?;
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
    // Peak memory is the training's: read before the products' buffers are made.
    let peak = peak_rss_mib();
    let products =
        (model.spec == crate::model::DeviceSpec::Cpu).then(|| time_products(&shapes, batch * seq, 0.3)).transpose()?;
    Ok(LoraMeasurement {
        backend: "mores (candle, f32)".into(),
        steps,
        batch,
        seq,
        load_s,
        s_per_step: med,
        tokens_per_s: (batch * seq) as f64 / med,
        peak_rss_mib: peak,
        losses,
        products,
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
        products: None,
    })
}

/// Where the step goes: its unavoidable products alone, and everything else.
fn split_line(p: &Products, step: f64) -> String {
    let rest = step - p.s;
    format!(
        "split of mores' step: products {:.0} GFLOP in {:.3} s alone ({:.0} GFLOP/s, {:.0}% of the step); the rest {:.3} s ({:.0}%: the LoRA factors, attention, norms, activations, loss, optimizer, copies, allocation)",
        p.gflop,
        p.s,
        p.gflop / p.s,
        100.0 * p.s / step,
        rest,
        100.0 * rest / step
    )
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
    if let Some(p) = &ours.products {
        let _ = writeln!(out, "\n{}", split_line(p, ours.s_per_step));
    }
    if rows.len() > 1 {
        let _ = writeln!(
            out,
            "\nmores time per step = {:.2}x PEFT's (target <= 0.9x); peak memory = {:.2}x PEFT's (target <= 1x)",
            ours.s_per_step / rows[1].s_per_step,
            ours.peak_rss_mib / rows[1].peak_rss_mib
        );
        if let Some(p) = &ours.products {
            let _ = writeln!(
                out,
                "PEFT's step = {:.2}x the products' time alone ({:.0} GFLOP/s over its whole step)",
                rows[1].s_per_step / p.s,
                p.gflop / rows[1].s_per_step
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floor counts each shape's forward and input gradient (2 x 2 x rows x in x out FLOP
    /// per copy) and a split names both parts as shares of the step.
    #[test]
    fn products_count_forward_and_input_gradient_of_every_copy() {
        let shapes = [((3, 5), 2), ((4, 4), 1)];
        let p = time_products(&shapes, 7, 0.001).unwrap();
        let want = (2.0 * 4.0 * 7.0 * 15.0 + 4.0 * 7.0 * 16.0) / 1e9;
        assert!((p.gflop - want).abs() < 1e-15, "{} vs {want}", p.gflop);
        assert!(p.s > 0.0 && p.s.is_finite());
        let line = split_line(&Products { gflop: 275.0, s: 1.5 }, 2.0);
        assert!(line.contains("products 275 GFLOP in 1.500 s alone (183 GFLOP/s, 75% of the step)"), "{line}");
        assert!(line.contains("the rest 0.500 s (25%"), "{line}");
    }
}
