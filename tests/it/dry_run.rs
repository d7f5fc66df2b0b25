//! `--dry-run` and `--set` on probe, generate, train and run: the resolved recipe and the work
//! counted without loading a model or writing a file; and the binary run from outside the
//! checkout finds the shipped recipes and data (`MORES_HOME`, else the folder it was built from).
use crate::common::{assert_clean_error, mores, root, stderr};
use std::path::Path;
use std::process::Command;

fn ok(args: &[&str]) -> String {
    let o = mores(args);
    assert!(o.status.success(), "mores {args:?} failed: {}", stderr(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// The number just before `word` on the line starting with `prefix`.
fn count(out: &str, prefix: &str, word: &str) -> usize {
    let line =
        out.lines().find(|l| l.trim_start().starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in {out}"));
    let before = &line[..line.find(word).unwrap_or_else(|| panic!("no {word} in {line}"))];
    before.trim_end().rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("no number before {word}: {line}"))
}

#[test]
fn run_dry_run_counts_the_stages_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let both = ok(&["run", "--dry-run", "--out", o, "--set", "transfer.max_heldout_questions=3"]);
    assert!(both.contains("max_heldout_questions = 3"), "{both}");
    assert!(both.contains("probe_orders = \"reversed\""), "both orders by default: {both}");
    let one = ok(&[
        "run",
        "--dry-run",
        "--out",
        o,
        "--set",
        "transfer.max_heldout_questions=3",
        "--set",
        "transfer.probe_orders=\"original\"",
    ]);
    let (p2, p1) = (count(&both, "probe before", "prompts"), count(&one, "probe before", "prompts"));
    // 3 held-out and 5 training questions in 19 countries that answered (nearly) all of them.
    assert!((140..=152).contains(&p1), "{one}");
    assert_eq!(p2, 2 * p1, "the reversed order doubles the prompts");
    assert!(one.contains("estimated time: about"), "{one}");
    assert!(!out.exists(), "a dry run wrote {}", out.display());
    assert_clean_error(&mores(&["run", "--dry-run", "--set", "transfer.probe_order=original"]), "probe_order");
}

#[test]
fn probe_and_generate_dry_runs_need_no_output_folder() {
    let p = ok(&["probe", "--dry-run"]);
    assert_eq!(count(&p, "probe:", "prompts"), 11_058, "the default probe: {p}");
    let p = ok(&["probe", "--dry-run", "--countries", "USA,DEU", "--set", "scoring.orders=original"]);
    assert!(p.contains("x 2 countries)"), "{p}");
    let g = ok(&[
        "generate",
        "--dry-run",
        "--recipe",
        "recipes/distill/recommended.toml",
        "--set",
        "generate.max_questions=4",
    ]);
    assert_eq!(count(&g, "generate:", "texts"), 4, "one paraphrase per question beside the original: {g}");
}

#[test]
fn train_dry_run_counts_steps_by_wording_or_by_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    let mut s = String::new();
    for (i, (q, wording)) in [("Q1", "a"), ("Q1", "b"), ("Q2", "c"), ("Q2", "d")].iter().enumerate() {
        for c in ["Nigeria", "Japan", "Brazil"] {
            let rec = serde_json::json!({"id": format!("r{i}-{c}"), "question_id": q, "question": wording,
                "prompt": format!("{wording} in {c}?"), "answer_prefix": "Answer: ",
                "labels": ["1", "2"], "target": [0.5, 0.5]});
            s.push_str(&format!("{rec}\n"));
        }
    }
    std::fs::write(&data, s).unwrap();
    let d = data.to_str().unwrap();
    let base = ["train", "--dry-run", "--data", d, "--set", "train.val_fraction=0", "--set", "train.epochs=3"];
    let by_wording = ok(&base);
    assert_eq!(count(&by_wording, "train:", "optimizer"), 12, "3 epochs x 4 wordings: {by_wording}");
    let mut flat = base.to_vec();
    flat.extend(["--set", "train.group=\"none\"", "--set", "train.batch=2", "--set", "train.grad_accum=2"]);
    let by_batch = ok(&flat);
    assert_eq!(count(&by_batch, "train:", "optimizer"), 9, "3 epochs x 12 records / 4: {by_batch}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "a dry run wrote a file");
}

/// A copy of the binary, as `cargo install` leaves it, run from an empty folder.
fn installed(dir: &Path) -> Command {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("mores");
    if !exe.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_mores"), &exe).unwrap();
    }
    let cwd = dir.join("elsewhere");
    std::fs::create_dir_all(&cwd).unwrap();
    let mut c = Command::new(exe);
    c.current_dir(cwd).env("MORES_THREADS", "2").env_remove("MORES_HOME");
    c
}

#[test]
fn the_installed_binary_finds_recipes_and_data_from_another_folder() {
    let dir = tempfile::tempdir().unwrap();
    // Found in the folder it was built from.
    let o = installed(dir.path()).args(["survey", "stats"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = installed(dir.path()).args(["run", "--dry-run"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("name = \"quickstart\""));
    // MORES_HOME comes first.
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join("recipes/probe")).unwrap();
    let text = std::fs::read_to_string(root().join("recipes/probe/wvs.toml")).unwrap();
    std::fs::write(home.join("recipes/probe/wvs.toml"), text.replace("name = \"wvs\"", "name = \"from-home\""))
        .unwrap();
    let o = installed(dir.path()).env("MORES_HOME", &home).args(["probe", "--dry-run"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("name = \"from-home\""));
    // Outputs stay where they were asked for: nothing was written beside the inputs.
    assert!(!home.join("runs").exists() && !dir.path().join("elsewhere/runs").exists());
}
