//! `mores` command line: parses flags and calls the library.
use anyhow::Result;
use clap::{Parser, Subcommand};
use mores::evaluate::{self, ProbeArgs};
use mores::util::shard::Shard;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "mores",
    version,
    about = "Measure how language models judge cultural values across countries (WVS-7)"
)]
struct Cli {
    /// CPU threads for the model (sets RAYON_NUM_THREADS and CANDLE_NUM_THREADS).
    #[arg(long, global = true, env = "MORES_THREADS")]
    threads: Option<usize>,
    /// No progress bar.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

fn list(s: &str) -> Vec<String> {
    s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect()
}

/// A comma-separated list where every entry counts: an empty or repeated entry is an error
/// (`--countries ""` once meant "every country", `USA,USA` scored each sample twice).
fn strict_list(flag: &str, s: &str) -> anyhow::Result<Vec<String>> {
    let items: Vec<String> = s.split(',').map(|x| x.trim().to_string()).collect();
    if items.iter().any(|x| x.is_empty()) {
        anyhow::bail!("{flag} {s:?} has an empty entry: give comma-separated values, or leave {flag} out for all");
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(d) = items.iter().find(|x| !seen.insert(x.as_str())) {
        anyhow::bail!("{flag} {s:?} names {d:?} twice");
    }
    Ok(items)
}

#[derive(Subcommand)]
enum Cmd {
    /// Probe a model on WVS questions and correlate with human answers.
    Probe {
        #[arg(long, default_value = "recipes/probe/wvs.toml")]
        recipe: PathBuf,
        /// GGUF file or Hugging Face model folder (overrides the recipe).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Comma-separated ISO3 codes (overrides the recipe).
        #[arg(long)]
        countries: Option<String>,
        /// Comma-separated question ids (overrides the recipe).
        #[arg(long, conflicts_with = "limit")]
        questions: Option<String>,
        /// First N scored questions.
        #[arg(long)]
        limit: Option<usize>,
        /// Prompts per forward pass (results do not depend on it beyond float noise).
        #[arg(long)]
        batch: Option<usize>,
        /// Do slice I of N (0-based); defaults to SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT.
        #[arg(long)]
        shard: Option<Shard>,
        /// stored | q8 | f32 (overrides the recipe's [model] weights).
        #[arg(long)]
        weights: Option<String>,
        /// Scoring cache folder (default OUT/cache).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// LoRA adapter folder (PEFT format, e.g. a `mores train` output).
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Run a transfer experiment end to end: split, probe before, probe teacher, generate, train,
    /// probe after, report. Unchanged stages are skipped; a rerun continues after a crash.
    Run {
        /// recipes/transfer/NAME.toml
        recipe: PathBuf,
        /// Output folder (default: the recipe's [transfer] out, else runs/NAME).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Fine-tune a LoRA adapter on a synthetic dataset.
    Train {
        #[arg(long, default_value = "recipes/distill/default.toml")]
        recipe: PathBuf,
        /// Dataset (JSONL records, see `mores generate`).
        #[arg(long)]
        data: PathBuf,
        /// Output folder: adapter (PEFT format), checkpoint, loss.jsonl, loss.svg, manifest.json.
        #[arg(long)]
        out: PathBuf,
        /// Continue the checkpoint in OUT.
        #[arg(long)]
        resume: bool,
        /// Student model (overrides the recipe's [student] path).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Total optimizer steps (overrides the recipe).
        #[arg(long)]
        max_steps: Option<usize>,
        /// Checkpoint and stop after N steps of this invocation; continue later with --resume.
        #[arg(long)]
        stop_after: Option<usize>,
    },
    /// Have the teacher write a synthetic dataset (JSONL + card + split).
    Generate {
        #[arg(long)]
        recipe: PathBuf,
        /// Dataset path (NAME.jsonl); NAME.card.json, NAME.log.jsonl and NAME.split.json go beside it.
        #[arg(long)]
        out: PathBuf,
        /// Do slice I of N (0-based) into NAME.shard-I-of-N.jsonl; defaults to
        /// SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT. Join with `mores dataset merge`.
        #[arg(long)]
        shard: Option<Shard>,
    },
    /// Dataset tools.
    Dataset {
        #[command(subcommand)]
        cmd: DatasetCmd,
    },
    /// LoRA adapter tools.
    Adapter {
        #[command(subcommand)]
        cmd: AdapterCmd,
    },
    /// Join the output folders of sharded probe runs.
    Merge {
        #[arg(long)]
        out: PathBuf,
        shards: Vec<PathBuf>,
        /// Merge even when shards of the split are missing (results then cover only some prompts).
        #[arg(long)]
        allow_partial: bool,
    },
    /// Side-by-side table of probe runs with CIs; with --out also compare.md and figures
    /// (per continent and per category group, runs side by side).
    Compare {
        runs: Vec<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Score one prompt: next-token probabilities of option labels.
    Score {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        /// Comma-separated option labels.
        #[arg(long, default_value = "1,2,3,4")]
        labels: String,
        /// Wrap the prompt in the model's chat template.
        #[arg(long)]
        chat: bool,
        /// Run the model dequantized to f32.
        #[arg(long)]
        f32: bool,
        /// LoRA adapter folder.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Also write the prompt's token ids and full next-token logits (JSON) here, to compare
        /// with another implementation.
        #[arg(long)]
        logits: Option<PathBuf>,
    },
    /// Benchmarks against the Python reference stack, measured in the same run.
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
    /// Survey data commands.
    Survey {
        #[command(subcommand)]
        cmd: SurveyCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Probe throughput (prompts/s) and peak memory per model, beside transformers and llama.cpp.
    Probe {
        /// Models to measure (comma-separated).
        #[arg(
            long,
            default_value = "checkpoints/SmolLM2-135M-Instruct.Q4_1.gguf,checkpoints/gemma-3-270m-q4_k_m.gguf"
        )]
        models: String,
        #[arg(long, default_value_t = 40)]
        n: usize,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// mores weight modes to measure (comma-separated: stored, q8, f32).
        #[arg(long, default_value = "f32,stored")]
        weights: String,
        /// Folder with the reference scripts (probe_bench.py); omitted: mores rows only.
        #[arg(long, env = "MORES_PEERS")]
        peers: Option<PathBuf>,
        /// Python with torch, transformers, gguf and llama-cpp-python installed.
        #[arg(long, env = "MORES_PEERS_PYTHON", default_value = "python3")]
        python: String,
        #[arg(long, default_value = "recipes/probe/wvs.toml")]
        recipe: PathBuf,
        #[arg(long, default_value = "runs/bench")]
        work: PathBuf,
    },
    /// LoRA training: seconds per step and peak memory, beside Python PEFT + transformers.
    Lora {
        #[arg(long, default_value = "checkpoints/SmolLM2-135M-Instruct.Q4_1.gguf")]
        model: PathBuf,
        #[arg(long, default_value_t = 12)]
        steps: usize,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// Folder with the reference scripts (lora_bench.py); omitted: the mores row only.
        #[arg(long, env = "MORES_PEERS")]
        peers: Option<PathBuf>,
        /// Python with torch, transformers, peft and gguf installed.
        #[arg(long, env = "MORES_PEERS_PYTHON", default_value = "python3")]
        python: String,
        #[arg(long, default_value = "runs/bench")]
        work: PathBuf,
    },
    /// (internal) one LoRA measurement in a fresh process, printed as JSON.
    #[command(hide = true)]
    LoraOne {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        steps: usize,
        #[arg(long)]
        batch: usize,
        #[arg(long)]
        seq: usize,
    },
    /// (internal) one measurement in a fresh process, printed as JSON.
    #[command(hide = true)]
    ProbeOne {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompts: PathBuf,
        #[arg(long)]
        batch: usize,
        #[arg(long)]
        weights: String,
    },
}

#[derive(Subcommand)]
enum DatasetCmd {
    /// Record counts by mode, target kind, country and category; checks every line.
    Stats { file: PathBuf },
    /// Join `mores generate --shard` outputs.
    Merge {
        #[arg(long)]
        out: PathBuf,
        shards: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AdapterCmd {
    /// Fold an adapter into its base model and write a Hugging Face folder (config.json,
    /// model.safetensors, tokenizer.json) that needs no LoRA at inference.
    Merge {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        adapter: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum SurveyCmd {
    /// Coverage per country and category.
    Stats {
        #[arg(long, default_value = "data/wvs")]
        data: PathBuf,
    },
    /// Build data files from the official respondent-level WVS-7 CSV (weighted by W_WEIGHT).
    Import {
        /// The CSV downloaded from the WVS site.
        file: PathBuf,
        /// Output data folder (use it with `[survey] data = ...` or `--data`).
        #[arg(long)]
        out: PathBuf,
        /// Folder whose questions and countries tables give texts, options and scores.
        #[arg(long, default_value = "data/wvs")]
        template: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    let threads = cli.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    // Before any candle or rayon pool exists: both read these once.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
    if let Err(e) = run(cli, threads) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The shard of a SLURM array task. Both variables or neither; a value that is not a number or
/// an ID outside 0..COUNT is an error (a 1-based `--array=1-4` once made one task do everything
/// while shard 0 was never done).
fn slurm_shard() -> anyhow::Result<Option<Shard>> {
    let (id, n) = (std::env::var("SLURM_ARRAY_TASK_ID").ok(), std::env::var("SLURM_ARRAY_TASK_COUNT").ok());
    let (id, n) = match (id, n) {
        (None, None) => return Ok(None),
        (Some(id), Some(n)) => (id, n),
        (id, n) => anyhow::bail!(
            "SLURM_ARRAY_TASK_ID={} and SLURM_ARRAY_TASK_COUNT={}: both are needed to pick a shard (or pass --shard I/N)",
            id.unwrap_or_else(|| "(unset)".into()),
            n.unwrap_or_else(|| "(unset)".into())
        ),
    };
    let shard: Shard = format!("{}/{}", id.trim(), n.trim()).parse().map_err(|e: String| {
        anyhow::anyhow!(
            "SLURM_ARRAY_TASK_ID={id} with SLURM_ARRAY_TASK_COUNT={n}: {e} (shards are 0-based: submit with --array=0-{})",
            n.trim().parse::<usize>().map(|c| c.saturating_sub(1)).unwrap_or(0)
        )
    })?;
    Ok(Some(shard))
}

fn run(cli: Cli, threads: usize) -> Result<()> {
    match cli.cmd {
        Cmd::Probe { recipe, model, countries, questions, limit, batch, shard, weights, cache, adapter, out } => {
            let args = ProbeArgs {
                recipe,
                model,
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
                progress: !cli.quiet,
            };
            let r = evaluate::probe(&args)?;
            print_summary(&r, &out);
        }
        Cmd::Merge { out, shards, allow_partial } => {
            let r = evaluate::merge(&shards, &out, allow_partial)?;
            print_summary(&r, &out);
        }
        Cmd::Compare { runs, out } => print!("{}", evaluate::compare(&runs, out.as_deref())?),
        Cmd::Score { model, prompt, labels, chat, f32, adapter, logits } => {
            let opts = mores::model::LoadOptions { dequantize: f32, ..Default::default() };
            let mut m = mores::model::Model::load(&model, &opts)?;
            if let Some(dir) = adapter {
                mores::model::adapter::Adapter::load(&mut m, &dir)?;
            }
            let text = if chat { m.render_chat(&prompt)? } else { prompt };
            if let Some(path) = logits {
                let ids = m.tok.encode_prompt(&text)?;
                let read = [(0, ids.len() - 1)];
                let l = m.logits_rows(std::slice::from_ref(&ids), &read, mores::model::mode::Mode::INFER)?;
                let l: Vec<f32> = l.flatten_all()?.to_vec1()?;
                mores::util::io::write_json(&path, &serde_json::json!({"ids": ids, "logits": l}))?;
            }
            let req =
                mores::score::ScoreRequest { prompt: text, labels: labels.split(',').map(String::from).collect() };
            let s = mores::score::Scorer::score_batch(&m, &[req])?;
            println!("{}", serde_json::to_string_pretty(&s[0])?);
        }
        Cmd::Bench { cmd: BenchCmd::Probe { models, n, batch, weights, peers, python, recipe, work } } => {
            let weights =
                list(&weights).iter().map(|w| w.parse()).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
            let args = mores::bench::probe::BenchArgs {
                models: list(&models).into_iter().map(PathBuf::from).collect(),
                n,
                batch,
                threads,
                weights,
                peers,
                python,
                recipe,
                work,
            };
            print!("{}", mores::bench::probe::probe_bench(&args)?);
        }
        Cmd::Bench { cmd: BenchCmd::Lora { model, steps, batch, seq, peers, python, work } } => {
            let args = mores::bench::lora::LoraBenchArgs { model, steps, batch, seq, threads, peers, python, work };
            print!("{}", mores::bench::lora::lora_bench(&args)?);
        }
        Cmd::Bench { cmd: BenchCmd::LoraOne { model, steps, batch, seq } } => {
            println!("{}", serde_json::to_string(&mores::bench::lora::measure_one(&model, steps, batch, seq)?)?);
        }
        Cmd::Bench { cmd: BenchCmd::ProbeOne { model, prompts, batch, weights } } => {
            let w = weights.parse().map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string(&mores::bench::probe::measure_one(&model, &prompts, batch, w)?)?);
        }
        Cmd::Train { recipe, data, out, resume, model, max_steps, stop_after } => {
            let args = mores::train::TrainArgs {
                recipe,
                data,
                out: out.clone(),
                resume,
                model,
                max_steps,
                stop_after,
                threads,
                progress: !cli.quiet,
            };
            let s = mores::train::train(&args)?;
            let f = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
            println!(
                "trained {} steps: loss {} -> {}, validation loss {}",
                s.steps,
                f(s.first_loss),
                f(s.last_loss),
                f(s.val_loss)
            );
            println!(
                "wrote {}/{{adapter_model.safetensors,adapter_config.json,loss.jsonl,loss.svg,checkpoint/}}",
                out.display()
            );
        }
        Cmd::Run { recipe, out } => {
            let args = mores::transfer::RunArgs { recipe, out, threads, progress: !cli.quiet };
            let r = mores::transfer::run(&args)?;
            println!("{}", r.verdict);
        }
        Cmd::Generate { recipe, out, shard } => {
            let args = mores::generate::GenerateArgs {
                recipe,
                out: out.clone(),
                shard: shard.map_or_else(slurm_shard, |s| Ok(Some(s)))?,
                progress: !cli.quiet,
                countries: None,
            };
            let c = mores::generate::generate(&args)?;
            print_card(&c);
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
            let s = mores::survey::import::import(&file, &template, &out)?;
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
        }
        Cmd::Survey { cmd: SurveyCmd::Stats { data } } => {
            print!("{}", mores::survey::Survey::load(&data)?.stats_table());
        }
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
