//! `mores` command line: parses flags and calls the library.
mod cli;

use anyhow::Result;
use clap::Parser;
use cli::{list, slurm_shard, strict_list, AdapterCmd, BenchCmd, Cli, Cmd, DatasetCmd, SurveyCmd};
use mores::evaluate::{self, ProbeArgs};
use std::path::PathBuf;

// Caps single allocations while a model's chat template runs (see util::alloc).
#[global_allocator]
static ALLOC: mores::util::alloc::Guarded = mores::util::alloc::Guarded;

fn main() {
    if let Err(e) = check_cpu() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let cli = Cli::parse();
    // Before any thread exists. Not for training alone: its step measured no faster and its
    // peak 4% higher (2,094 -> 2,182 MiB in bench lora-one) with freed memory kept.
    if !training_only(&cli.cmd) {
        mores::util::alloc::keep_freed_memory();
    }
    let threads = cli.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    // Before any candle or rayon pool exists: both read these once.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", candle_threads(&cli.cmd, threads).to_string());
    if let Some(d) = cli.device {
        mores::model::device::set_override(d);
        // Benchmarks time their sides in child processes: they inherit it.
        std::env::set_var("MORES_DEVICE", d.to_string());
    }
    if let Err(e) = run(cli, threads) {
        // One line, whatever a lower layer put in its message.
        eprintln!("error: {}", format!("{e:#}").lines().map(str::trim).collect::<Vec<_>>().join(" "));
        std::process::exit(1);
    }
}

/// The default build is portable (x86-64 baseline; the fast kernels pick AVX2 or AVX-512 at run
/// time). A binary built with `-C target-cpu=native` may use instructions its build machine had:
/// on a CPU without them, end with a line saying so instead of an illegal instruction later.
fn check_cpu() -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut missing = Vec::new();
        macro_rules! need {
            ($($f:tt),*) => {$(
                if cfg!(target_feature = $f) && !std::arch::is_x86_feature_detected!($f) {
                    missing.push($f);
                }
            )*};
        }
        need!(
            "sse4.2", "popcnt", "avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "avx512f", "avx512bw", "avx512vl",
            "avx512dq"
        );
        anyhow::ensure!(
            missing.is_empty(),
            "this mores binary was built for a CPU with {}, which this CPU lacks: build it on this machine, or without `-C target-cpu=native` (the default build runs everywhere)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Threads for candle's own pool. It serves candle's elementwise ops and its quantized products;
/// mores' f32 products run on rayon's threads. Training has no quantized product, and there the
/// pool's worker was a third thread spinning on 2 cores beside rayon's two, waited for at a
/// barrier after every large elementwise op of the backward pass: one thread (the caller's, no
/// barrier) measured 0.94x the step time of the LoRA bench, same losses bit for bit. Probing and
/// generation keep the pool (quantized weights need it; the f32 probe measured no difference).
fn candle_threads(cmd: &Cmd, threads: usize) -> usize {
    if training_only(cmd) {
        1
    } else {
        threads
    }
}

/// Commands that only train (`train` and the LoRA bench's child).
fn training_only(cmd: &Cmd) -> bool {
    matches!(cmd, Cmd::Train(_) | Cmd::Bench { cmd: BenchCmd::LoraOne { .. } })
}

fn run(cli: Cli, threads: usize) -> Result<()> {
    match cli.cmd {
        Cmd::Probe(cli::ProbeCmd { action: Some(cli::ProbeAction::Merge(m)), .. }) | Cmd::Merge(m) => {
            let cli::MergeArgs { out, shards, allow_partial } = m;
            let r = evaluate::merge(&shards, &out, allow_partial)?;
            print_summary(&r, &out);
        }
        Cmd::Probe(c) => probe(c, threads, !cli.quiet)?,
        Cmd::Compare { runs, out } => print!("{}", mores::transfer::compare::compare(&runs, out.as_deref())?),
        Cmd::Score(c) => score(c)?,
        Cmd::Export { runs, format, out } => {
            for e in mores::export::export(&runs, format, &out)? {
                println!("{:>8} rows  {}", e.rows, e.path.display());
            }
        }
        Cmd::Bench {
            cmd: BenchCmd::Probe { models, n, batch, weights, peers, python, recipe, work, repeat, endpoint },
        } => {
            let weights = weight_list(&weights)?;
            let args = mores::bench::probe::BenchArgs {
                models: list(&models).into_iter().map(|m| locate(PathBuf::from(m))).collect(),
                n,
                batch,
                threads,
                weights,
                peers,
                python,
                recipe: locate(recipe),
                work,
                repeat,
                endpoint,
            };
            print!("{}", mores::bench::probe::probe_bench(&args)?);
        }
        Cmd::Bench { cmd: BenchCmd::Generate { models, weights, new, reps, peers, python, work, repeat } } => {
            let weights = weight_list(&weights)?;
            let models = list(&models).into_iter().map(PathBuf::from).collect();
            let args = mores::bench::generate::GenBenchArgs {
                models,
                weights,
                new,
                reps,
                threads,
                peers,
                python,
                work,
                repeat,
            };
            print!("{}", mores::bench::generate::generate_bench(&args)?);
        }
        Cmd::Bench { cmd: BenchCmd::GenerateOne { model, weights, new, reps } } => {
            let w = weights.parse().map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string(&mores::bench::generate::measure_one(&model, w, new, reps)?)?);
        }
        Cmd::Bench { cmd: BenchCmd::Gemm { repeat, budget } } => {
            let rows = mores::bench::gemm::measure(&mores::bench::gemm::default_shapes(), repeat, budget)?;
            print!("{}", mores::bench::gemm::table(&rows, threads));
        }
        Cmd::Bench { cmd: BenchCmd::Lora { model, steps, batch, seq, peers, python, work } } => {
            let args = mores::bench::lora::LoraBenchArgs { model, steps, batch, seq, threads, peers, python, work };
            print!("{}", mores::bench::lora::lora_bench(&args)?);
        }
        Cmd::Bench { cmd: BenchCmd::LoraOne { model, steps, batch, seq } } => {
            println!("{}", serde_json::to_string(&mores::bench::lora::measure_one(&model, steps, batch, seq)?)?);
        }
        Cmd::Bench { cmd: BenchCmd::ProbeOne { model, prompts, batch, weights, whole_rows, warmup, endpoint } } => {
            let w = weights.parse().map_err(anyhow::Error::msg)?;
            let m = match endpoint {
                Some(e) => mores::bench::probe::measure_served(&e, &model, &prompts, batch, warmup)?,
                None => mores::bench::probe::measure_one(&model, &prompts, batch, w, whole_rows, warmup)?,
            };
            println!("{}", serde_json::to_string(&m)?);
        }
        Cmd::Train(c) => train(c, threads, !cli.quiet)?,
        Cmd::Run { recipe, recipe_arg, out, sets, dry_run } => {
            let recipe =
                locate(recipe.or(recipe_arg).unwrap_or_else(|| PathBuf::from("recipes/transfer/quickstart.toml")));
            let args = mores::transfer::RunArgs { recipe, out, threads, progress: !cli.quiet, sets };
            if dry_run {
                print!("{}", mores::plan::run(&args)?);
            } else {
                let r = mores::transfer::run(&args)?;
                println!("{}", r.verdict);
            }
        }
        Cmd::Generate { recipe, out, shard, sets, dry_run } => {
            let args = mores::generate::GenerateArgs {
                recipe: locate(recipe),
                out: out.unwrap_or_else(|| PathBuf::from("dataset.jsonl")),
                shard: shard.map_or_else(slurm_shard, |s| Ok(Some(s)))?,
                progress: !cli.quiet,
                countries: None,
                sets,
            };
            if dry_run {
                print!("{}", mores::plan::generate(&args, threads)?);
            } else {
                print_card(&mores::generate::generate(&args)?);
            }
        }
        Cmd::Dataset { cmd: DatasetCmd::Stats { file } } => print!("{}", mores::generate::stats(&file)?),
        Cmd::Dataset { cmd: DatasetCmd::Merge { out, shards } } => {
            let c = mores::generate::merge(&shards, &out)?;
            print_card(&c);
        }
        Cmd::Adapter { cmd: AdapterCmd::Merge { model, adapter, out } } => {
            let n = mores::model::export::merge_and_export(&model, &adapter, &out)?;
            println!("merged {n} LoRA modules; wrote {}", out.display());
        }
        Cmd::Survey { cmd: SurveyCmd::Import { file, out, template } } => {
            survey_import(&file, &locate(template), &out)?
        }
        Cmd::Survey { cmd: SurveyCmd::Stats { data } } => {
            print!("{}", mores::survey::Survey::load(locate(data))?.stats_table());
        }
    }
    Ok(())
}

/// `--weights a,b`: at least one weight form, each known.
/// A default or relative input path, found from outside the checkout too (see util::paths).
fn locate(p: PathBuf) -> PathBuf {
    mores::util::paths::locate(&p)
}

fn weight_list(weights: &str) -> Result<Vec<mores::recipe::WeightMode>> {
    let w = list(weights).iter().map(|w| w.parse()).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(!w.is_empty(), "--weights names no weight form: give one or more of stored, q8, f32");
    Ok(w)
}

fn probe(c: cli::ProbeCmd, threads: usize, progress: bool) -> Result<()> {
    let cli::ProbeCmd {
        action: _,
        recipe,
        model,
        endpoint,
        served_model,
        tokenizer,
        countries,
        questions,
        limit,
        batch,
        shard,
        weights,
        cache,
        adapter,
        whole_rows,
        out,
        sets,
        dry_run,
    } = c;
    let out = match (out, dry_run) {
        (Some(o), _) => o,
        (None, true) => PathBuf::new(),
        (None, false) => anyhow::bail!("mores probe needs --out DIR"),
    };
    let args = ProbeArgs {
        recipe: locate(recipe),
        model,
        served: endpoint.map(|e| (e, served_model, tokenizer)),
        countries: countries.as_deref().map(|c| strict_list("--countries", c)).transpose()?,
        questions: questions.as_deref().map(|q| strict_list("--questions", q)).transpose()?,
        limit,
        threads,
        batch,
        shard: shard.map_or_else(slurm_shard, |s| Ok(Some(s)))?,
        out: out.clone(),
        cache,
        adapter,
        weights: weights.map(|w| w.parse()).transpose().map_err(anyhow::Error::msg)?,
        whole_rows,
        progress,
        sets,
    };
    if dry_run {
        print!("{}", mores::plan::probe(&args)?);
        return Ok(());
    }
    let r = evaluate::probe(&args)?;
    print_summary(&r, &out);
    Ok(())
}

fn score(c: cli::ScoreCmd) -> Result<()> {
    let cli::ScoreCmd { model, prompt, labels, chat, weights, f32, adapter, logits } = c;
    let weights: mores::recipe::WeightMode =
        if f32 { mores::recipe::WeightMode::F32 } else { weights.parse().map_err(anyhow::Error::msg)? };
    let opts = mores::model::LoadOptions::for_weights(weights);
    let mut m = mores::model::Model::load(&model, &opts)?;
    if let Some(dir) = adapter {
        mores::model::adapter::Adapter::load(&mut m, &dir)?;
    }
    let text = if chat { m.render_chat(&prompt)? } else { prompt };
    if let Some(path) = logits {
        let ids = m.tok.encode_prompt(&text)?;
        anyhow::ensure!(!ids.is_empty(), "--prompt is empty after tokenizing: give some text to score");
        let read = [(0, ids.len() - 1)];
        let l = m.logits_rows(std::slice::from_ref(&ids), &read, mores::model::mode::Mode::INFER)?;
        let l: Vec<f32> = l.flatten_all()?.to_vec1()?;
        mores::util::io::write_json(&path, &serde_json::json!({"ids": ids, "logits": l}))?;
    }
    let req = mores::score::ScoreRequest { prompt: text, labels: labels.split(',').map(String::from).collect() };
    let s = mores::score::Scorer::score_batch(&m, &[req])?;
    println!("{}", serde_json::to_string_pretty(&s[0])?);
    Ok(())
}

fn train(c: cli::TrainCmd, threads: usize, progress: bool) -> Result<()> {
    let cli::TrainCmd { recipe, data, out, resume, model, max_steps, stop_after, sets, dry_run } = c;
    let out = out.unwrap_or_default();
    let args = mores::train::TrainArgs {
        recipe: locate(recipe),
        data,
        out: out.clone(),
        resume,
        model,
        max_steps,
        stop_after,
        threads,
        progress,
        sets,
    };
    if dry_run {
        print!("{}", mores::plan::train(&args)?);
        return Ok(());
    }
    let s = mores::train::train(&args)?;
    let f = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    println!(
        "trained {} steps: loss {} -> {}, validation loss {}",
        s.steps,
        f(s.first_loss),
        f(s.last_loss),
        f(s.val_loss)
    );
    if let Some(b) = s.best_step {
        println!(
            "kept the best validated adapter, after step {b}{}",
            if s.stopped_early { " (stopped early: no improvement within train.patience validations)" } else { "" }
        );
    }
    println!(
        "wrote {}/{{adapter_model.safetensors,adapter_config.json,loss.jsonl,loss.svg,checkpoint/}}",
        out.display()
    );
    Ok(())
}

fn survey_import(file: &std::path::Path, template: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let s = mores::survey::import::import(file, template, out)?;
    println!(
        "imported {} rows: {} countries, {} questions, {} (question, country) pairs ({}); dropped {} missing/negative and {} unknown codes; wrote {}",
        s.rows,
        s.countries.len(),
        s.questions_matched,
        s.pairs_written,
        if s.weighted { "W_WEIGHT-weighted" } else { "unweighted" },
        s.dropped_negative,
        s.dropped_unknown_code,
        out.display()
    );
    if !s.unknown_countries.is_empty() {
        println!("skipped countries not in countries.csv: {}", s.unknown_countries.join(", "));
    }
    Ok(())
}

fn print_summary(r: &mores::analysis::results::Results, out: &std::path::Path) {
    let o = &r.overall;
    let f = mores::util::fmt::f;
    println!(
        "{}: {} prompts, {} countries, label mass {:.3}; mean r raw {} (uniform baseline {}), normalised {} (95% CI {}; shuffled-country baseline {}), cross-country {}",
        r.model.name,
        o.n_samples,
        o.n_countries,
        o.mean_mass,
        f(o.mean_r_raw),
        f(o.uniform_mean_r_raw),
        f(o.mean_r_normalised),
        mores::util::fmt::ci(o.mean_r_normalised_ci95),
        f(o.shuffled_r),
        f(o.cross_country_r)
    );
    println!("wrote {}/{{results.json,samples.jsonl,report.md,manifest.json,plots/}}", out.display());
}

fn print_card(c: &mores::generate::Card) {
    let rejected: usize = c.rejected.values().sum();
    println!(
        "{} ({}): {} of {} items kept, {} rejected, {} dropped by the leakage guard; {} tokens generated in {:.0}s",
        c.name, c.mode, c.kept, c.work_items, rejected, c.leakage_dropped, c.tokens_generated, c.seconds
    );
    for (why, n) in &c.rejected {
        println!("  rejected {n}: {why}");
    }
}
