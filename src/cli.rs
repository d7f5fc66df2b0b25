//! The command line's shape: every subcommand and flag (clap derive), and the few parsing rules
//! that are stricter than clap's (lists, SLURM array variables). `main.rs` maps each command to
//! the library.
use clap::{Parser, Subcommand};
use mores::util::shard::Shard;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "mores",
    version,
    about = "Measure how language models judge cultural values across countries (WVS-7)"
)]
pub struct Cli {
    /// CPU threads for the model (sets RAYON_NUM_THREADS, and CANDLE_NUM_THREADS except in training, which gives candle one).
    #[arg(long, global = true, env = "MORES_THREADS")]
    pub threads: Option<usize>,
    /// No progress bar.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Where models run in process: cpu (mores' kernels), cpu-generic (candle's ops on the CPU:
    /// the path a GPU takes), cuda or cuda:N (a build with --features cuda). Overrides the
    /// recipes' [model], [student] and [teacher] device.
    #[arg(long, global = true, env = "MORES_DEVICE", value_name = "DEVICE")]
    pub device: Option<mores::model::DeviceSpec>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

pub fn list(s: &str) -> Vec<String> {
    s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect()
}

/// A comma-separated list where every entry counts: an empty or repeated entry is an error
/// (`--countries ""` once meant "every country", `USA,USA` scored each sample twice).
pub fn strict_list(flag: &str, s: &str) -> anyhow::Result<Vec<String>> {
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

// Parsed once per process: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Cmd {
    /// Probe a model on WVS questions and correlate with human answers.
    Probe(ProbeCmd),
    /// Run a transfer experiment end to end: split, probe before, probe teacher, generate, train,
    /// probe after, report. Unchanged stages are skipped; a rerun continues after a crash.
    Run {
        /// Transfer recipe (recipes/transfer/NAME.toml); also accepted without the flag.
        #[arg(long = "recipe", value_name = "RECIPE", conflicts_with = "recipe_arg")]
        recipe: Option<PathBuf>,
        /// The recipe as a positional argument (the short form of --recipe).
        #[arg(value_name = "RECIPE", hide = true)]
        recipe_arg: Option<PathBuf>,
        /// Output folder (default: the recipe's [transfer] out, else runs/NAME).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override a recipe key: SECTION.KEY=VALUE (a TOML value; repeatable; recorded in the
        /// manifest's command and resolved recipe), e.g. --set train.epochs=5.
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        sets: Vec<String>,
        /// Print the resolved recipe, the work each stage would do and an estimated time; load
        /// no model, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Fine-tune a LoRA adapter on a synthetic dataset.
    Train(TrainCmd),
    /// Have the teacher write a synthetic dataset (JSONL + card + split).
    Generate {
        /// Distill recipe with [teacher] and [generate] (recipes/distill/MODE.toml).
        #[arg(long)]
        recipe: PathBuf,
        /// Dataset path (NAME.jsonl); NAME.card.json, NAME.log.jsonl and NAME.split.json go beside it.
        #[arg(long, required_unless_present = "dry_run")]
        out: Option<PathBuf>,
        /// Do slice I of N (0-based) into NAME.shard-I-of-N.jsonl; defaults to
        /// SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT. Join with `mores dataset merge`.
        #[arg(long)]
        shard: Option<Shard>,
        /// Override a recipe key: SECTION.KEY=VALUE (a TOML value; repeatable; recorded in the
        /// manifest's command and resolved recipe), e.g. --set train.epochs=5.
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        sets: Vec<String>,
        /// Print the resolved recipe, the work each stage would do and an estimated time; load
        /// no model, write nothing.
        #[arg(long)]
        dry_run: bool,
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
    /// Join the output folders of sharded probe runs (`mores probe merge`; kept as an alias).
    #[command(hide = true)]
    Merge(MergeArgs),
    /// Side-by-side table of probe runs with CIs (--out: also compare.md, figures per continent and
    /// category group), or of `mores run` folders: the variants table (--out: variants.md, .csv).
    Compare {
        /// Probe run folders (the first is the reference) or `mores run` folders, one kind at a time.
        runs: Vec<PathBuf>,
        /// Folder for compare.md and the figures.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write probe and transfer runs as long-format tables (CSV or Parquet) for pandas, R or
    /// DuckDB: one row per observation, CIs as _lo/_hi columns.
    Export {
        /// Run folders: probe outputs (results.json) or transfer outputs (transfer.json).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// File format of the tables.
        #[arg(long, value_enum, default_value = "csv")]
        format: mores::export::Format,
        /// Folder for the tables (TABLE.csv or TABLE.parquet).
        #[arg(long)]
        out: PathBuf,
    },
    /// Score one prompt: next-token probabilities of option labels.
    Score(ScoreCmd),
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
pub enum BenchCmd {
    /// Probe throughput (prompts/s) and peak memory per model, beside transformers and llama.cpp.
    Probe {
        /// Models to measure (comma-separated).
        #[arg(
            long,
            default_value = "checkpoints/SmolLM2-135M-Instruct.Q4_1.gguf,checkpoints/gemma-3-270m-q4_k_m.gguf"
        )]
        models: String,
        /// Prompts per model (the first N of the default probe's prompts).
        #[arg(long, default_value_t = 40)]
        n: usize,
        /// Prompts per forward pass, on both sides.
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
        /// Probe recipe whose prompts are measured.
        #[arg(long, default_value = "recipes/probe/wvs.toml")]
        recipe: PathBuf,
        /// Scratch folder for the prompts and the peers' outputs.
        #[arg(long, default_value = "runs/bench")]
        work: PathBuf,
        /// Rounds: each backend runs once per round, the backends in turn; the table gives the
        /// median and range.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Also score the prompts through an OpenAI-compatible server serving the (one) model of
        /// --models, e.g. llama.cpp's server started with the same threads; with --peers the table
        /// ends with the server path's time against llama.cpp in process.
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Greedy decoding (the teacher's generation): prefill seconds and decode tokens/s, beside
    /// transformers and llama.cpp.
    Generate {
        #[arg(
            long,
            default_value = "checkpoints/gemma-3-270m-q4_k_m.gguf,checkpoints/SmolLM2-135M-Instruct.Q4_1.gguf"
        )]
        /// Models to measure (comma-separated).
        models: String,
        /// mores weight modes to measure (comma-separated: stored, q8, f32).
        #[arg(long, default_value = "f32,q8")]
        weights: String,
        /// New tokens per run.
        #[arg(long, default_value_t = 64)]
        new: usize,
        /// Timed runs inside one measurement (its median is the measurement); --repeat sets the rounds.
        #[arg(long, default_value_t = 3, hide = true)]
        reps: usize,
        /// Folder with the reference scripts (gen_bench.py); omitted: mores rows only.
        #[arg(long, env = "MORES_PEERS")]
        peers: Option<PathBuf>,
        /// Python with torch, transformers, gguf and llama-cpp-python installed.
        #[arg(long, env = "MORES_PEERS_PYTHON", default_value = "python3")]
        python: String,
        /// Scratch folder for the peers' outputs.
        #[arg(long, default_value = "runs/bench")]
        work: PathBuf,
        /// Rounds: each backend runs once per round, the backends in turn; the table gives the
        /// median and range.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
    /// (internal) one decoding measurement in a fresh process, printed as JSON.
    #[command(hide = true)]
    GenerateOne {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        weights: String,
        #[arg(long)]
        new: usize,
        #[arg(long)]
        reps: usize,
    },
    /// f32 products: mores' GEMM beside candle's matmul (GFLOP/s) on the default student's shapes.
    Gemm {
        /// Rounds: each side runs once per round per shape, in turn; median and range printed.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Seconds per timing (calls are repeated to fill it).
        #[arg(long, default_value_t = 0.5)]
        budget: f64,
    },
    /// LoRA training: seconds per step and peak memory, beside Python PEFT + transformers.
    Lora {
        /// The student model.
        #[arg(long, default_value = "checkpoints/SmolLM2-135M-Instruct.Q4_1.gguf")]
        model: PathBuf,
        /// Timed optimizer steps (after warm-up).
        #[arg(long, default_value_t = 12)]
        steps: usize,
        /// Rows per step.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Tokens per row.
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// Folder with the reference scripts (lora_bench.py); omitted: the mores row only.
        #[arg(long, env = "MORES_PEERS")]
        peers: Option<PathBuf>,
        /// Python with torch, transformers, peft and gguf installed.
        #[arg(long, env = "MORES_PEERS_PYTHON", default_value = "python3")]
        python: String,
        /// Scratch folder for the peers' outputs.
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
        /// No prefix reuse: every row runs whole.
        #[arg(long)]
        whole_rows: bool,
        /// Untimed warm-up batches before the clock starts (the peers' scripts default to 1).
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Score through this OpenAI-compatible server instead (the model gives the tokenizer).
        #[arg(long)]
        endpoint: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum DatasetCmd {
    /// Record counts by mode, target kind, country and category; checks every line.
    Stats {
        /// The dataset (JSONL).
        file: PathBuf,
    },
    /// Join `mores generate --shard` outputs.
    Merge {
        /// The joined dataset (NAME.jsonl; its card and log beside it).
        #[arg(long)]
        out: PathBuf,
        /// The shards' datasets (NAME.shard-I-of-N.jsonl).
        shards: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum AdapterCmd {
    /// Fold an adapter into its base model and write a Hugging Face folder (config.json,
    /// model.safetensors, tokenizer.json) that needs no LoRA at inference.
    Merge {
        /// The base model (GGUF file or Hugging Face folder).
        #[arg(long)]
        model: PathBuf,
        /// The adapter folder (PEFT format).
        #[arg(long)]
        adapter: PathBuf,
        /// The Hugging Face folder to write.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum SurveyCmd {
    /// Coverage per country and category.
    Stats {
        /// Survey data folder.
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

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ProbeCmd {
    #[command(subcommand)]
    pub action: Option<ProbeAction>,
    /// Probe recipe (prompt, survey selection, scoring).
    #[arg(long, default_value = "recipes/probe/wvs.toml")]
    pub recipe: PathBuf,
    /// GGUF file or Hugging Face model folder (overrides the recipe).
    #[arg(long, conflicts_with = "endpoint")]
    pub model: Option<PathBuf>,
    /// A served model instead: an OpenAI-compatible server's base URL, e.g. http://HOST:8000/v1
    /// (overrides the recipe's [model]).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// The served model's name (`/v1/models`); default: the server's only model.
    #[arg(long, requires = "endpoint")]
    pub served_model: Option<String>,
    /// Local copy of the served model's tokenizer (GGUF file or Hugging Face folder) whose chat
    /// template renders the prompts.
    #[arg(long, requires = "endpoint")]
    pub tokenizer: Option<PathBuf>,
    /// Comma-separated ISO3 codes (overrides the recipe).
    #[arg(long)]
    pub countries: Option<String>,
    /// Comma-separated question ids (overrides the recipe).
    #[arg(long, conflicts_with = "limit")]
    pub questions: Option<String>,
    /// First N scored questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Prompts per forward pass (results do not depend on it beyond float noise).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Do slice I of N (0-based); defaults to SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT.
    #[arg(long)]
    pub shard: Option<Shard>,
    /// stored | q8 | f32 (overrides the recipe's [model] weights).
    #[arg(long)]
    pub weights: Option<String>,
    /// Scoring cache folder (default OUT/cache).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// LoRA adapter folder (PEFT format, e.g. a `mores train` output).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Run every prompt row whole, without prefix reuse: the same numbers, slower (a check).
    #[arg(long)]
    pub whole_rows: bool,
    /// Output folder: results.json, samples.jsonl, report.md, plots/, manifest.json, cache/.
    #[arg(long, required_unless_present = "dry_run")]
    pub out: Option<PathBuf>,
    /// Override a recipe key: SECTION.KEY=VALUE (a TOML value; repeatable; recorded in the
    /// manifest's command and resolved recipe), e.g. --set train.epochs=5.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub sets: Vec<String>,
    /// Print the resolved recipe, the work each stage would do and an estimated time; load
    /// no model, write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Subcommand)]
pub enum ProbeAction {
    /// Join the output folders of sharded probe runs (`--shard I/N`).
    Merge(MergeArgs),
}

#[derive(clap::Args)]
pub struct MergeArgs {
    /// Output folder for the joined results.
    #[arg(long)]
    pub out: PathBuf,
    /// The shards' output folders.
    pub shards: Vec<PathBuf>,
    /// Merge even when shards of the split are missing (results then cover only some prompts).
    #[arg(long)]
    pub allow_partial: bool,
}

#[derive(clap::Args)]
pub struct ScoreCmd {
    /// GGUF file or Hugging Face model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// The prompt, exactly as the model should read it (the labels follow it).
    #[arg(long)]
    pub prompt: String,
    /// Comma-separated option labels.
    #[arg(long, default_value = "1,2,3,4")]
    pub labels: String,
    /// Wrap the prompt in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// stored | q8 | f32: how GGUF weights are held (default stored: llama.cpp's numerics).
    #[arg(long, default_value = "stored")]
    pub weights: String,
    /// The same as --weights f32 (older spelling).
    #[arg(long, hide = true)]
    pub f32: bool,
    /// LoRA adapter folder.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Also write the prompt's token ids and full next-token logits (JSON) here, to compare
    /// with another implementation.
    #[arg(long)]
    pub logits: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct TrainCmd {
    /// Distill recipe ([student], [lora], [train]).
    #[arg(long, default_value = "recipes/distill/recommended.toml")]
    pub recipe: PathBuf,
    /// Dataset (JSONL records, see `mores generate`).
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder: adapter (PEFT format), checkpoint, loss.jsonl, loss.svg, manifest.json.
    #[arg(long, required_unless_present = "dry_run")]
    pub out: Option<PathBuf>,
    /// Continue the checkpoint in OUT.
    #[arg(long)]
    pub resume: bool,
    /// Student model (overrides the recipe's [student] path).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Total optimizer steps (overrides the recipe).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Checkpoint and stop after N steps of this invocation; continue later with --resume.
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Override a recipe key: SECTION.KEY=VALUE (a TOML value; repeatable; recorded in the
    /// manifest's command and resolved recipe), e.g. --set train.epochs=5.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub sets: Vec<String>,
    /// Print the resolved recipe, the work each stage would do and an estimated time; load
    /// no model, write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The shard of a SLURM array task. Both variables or neither; a value that is not a number or
/// an ID outside 0..COUNT is an error (a 1-based `--array=1-4` once made one task do everything
/// while shard 0 was never done).
pub fn slurm_shard() -> anyhow::Result<Option<Shard>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every argument of every command says what it is for in `--help`.
    #[test]
    fn every_argument_has_a_help_line() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" || a.is_hide_set() {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for s in c.get_subcommands() {
                if !s.is_hide_set() {
                    walk(s, &format!("{path} {}", s.get_name()), missing);
                }
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "mores", &mut missing);
        assert!(missing.is_empty(), "arguments without a help line: {missing:?}");
        Cli::command().debug_assert();
    }
}
