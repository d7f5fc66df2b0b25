//! `mores` command line: a thin layer over the library.
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "mores", version, about = "Measure how language models judge cultural values across countries (WVS-7)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Score one prompt: next-token probabilities of option labels.
    Score {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        /// Comma-separated option labels.
        #[arg(long, default_value = "1,2,3,4")]
        labels: String,
        #[arg(long)]
        chat: bool,
    },
    /// Survey data commands.
    Survey {
        #[command(subcommand)]
        cmd: SurveyCmd,
    },
}

#[derive(Subcommand)]
enum SurveyCmd {
    /// Coverage per country and category.
    Stats {
        #[arg(long, default_value = "data/wvs")]
        data: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Score { model, prompt, labels, chat } => {
            let m = mores::model::Model::load(&model, &Default::default())?;
            let text = if chat { m.render_chat(&prompt)? } else { prompt };
            let req = mores::score::ScoreRequest { prompt: text.clone(), labels: labels.split(',').map(String::from).collect() };
            let ids = m.tok.encode_prompt(&text)?;
            eprintln!("{} tokens: {:?}", ids.len(), ids);
            let s = mores::score::Scorer::score_batch(&m, &[req])?;
            println!("{}", serde_json::to_string_pretty(&s[0])?);
        }
        Cmd::Survey { cmd: SurveyCmd::Stats { data } } => {
            let s = mores::survey::Survey::load(&data)?;
            print!("{}", s.stats_table());
        }
    }
    Ok(())
}
