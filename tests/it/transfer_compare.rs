//! `mores compare` over `mores run` folders: the variants table (variants.md, variants.csv and the
//! markdown on stdout), one row per run; a mix of probe and transfer runs is one error line.
use crate::common::{assert_clean_error, mores};
use crate::transfer_report::{probe_of, report, truth, world};
use mores::transfer::report::{write, TransferReport};
use std::path::{Path, PathBuf};

/// A finished run folder named `name`: held-out questions whose student after training has
/// `gain` of the humans' country differences; the other probed training split is Q1-Q3.
fn run_dir(root: &Path, name: &str, gain: f64) -> (PathBuf, TransferReport) {
    let work = root.join(format!("{name}-work"));
    std::fs::create_dir_all(&work).unwrap();
    let (t, s, heldout) = world(&work);
    let before = probe_of(&t, &s, |q, c| 0.5 + 0.05 * truth(q, c).2);
    let after = probe_of(&t, &s, |q, c| {
        let (_, dev, n) = truth(q, c);
        0.5 + gain * dev + 0.05 * n
    });
    let train_split: Vec<String> = (1..=3).map(|i| format!("Q{i}")).collect();
    let heldout: Vec<String> = heldout.into_iter().skip(3).collect();
    let mut r = report(&work, &s, &before, &after, None, &heldout, &train_split, 8);
    r.name = format!("recipe-{name}");
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir, &r).unwrap();
    (dir, r)
}

#[test]
fn compare_over_transfer_runs_writes_the_variants_table() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, ra) = run_dir(tmp.path(), "weak", 0.1);
    let (b, rb) = run_dir(tmp.path(), "strong", 0.8);
    let out = tmp.path().join("cmp");
    let o = mores(&["compare", a.to_str().unwrap(), b.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    let md = std::fs::read_to_string(out.join("variants.md")).unwrap();
    assert_eq!(stdout, md, "the table is printed too");

    // Markdown: a header, a rule, one row per run, the same number of cells in each.
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines.len(), 4, "{md}");
    let cells = |l: &str| l.trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect::<Vec<_>>();
    let head = cells(lines[0]);
    assert_eq!(
        head[..9],
        [
            "run",
            "recipe",
            "held-out scale",
            "within-country r: before -> after",
            "within-country change (95% CI)",
            "cross-country r: before -> after",
            "cross-country change (95% CI)",
            "questions up",
            "swap gap after (95% CI)"
        ]
    );
    // References with a cross-country r: the lexical neighbour and the k-neighbour profile of
    // the training split (the typical answer has none; no dataset, so no student's-question rows).
    assert_eq!(
        head[9..],
        [
            "lexical neighbour (training split): cross-country r; after - it (95% CI)",
            "3 neighbours z-scored (training split): cross-country r; after - it (95% CI)",
            "question level",
            "country level"
        ]
    );
    for (line, (name, r)) in lines[2..].iter().zip([("weak", &ra), ("strong", &rb)]) {
        let row = cells(line);
        assert_eq!(row.len(), head.len(), "{line}");
        assert_eq!((row[0].as_str(), row[1].as_str()), (name, r.name.as_str()));
        assert_eq!(row[2], "9 questions x 12 countries (108 pairs)");
        let c = &r.heldout.country_level;
        assert_eq!(row[5], format!("{:.3} -> {:.3}", c.r_before.unwrap(), c.r_after.unwrap()));
        let (lo, hi) = c.delta.ci95.unwrap();
        assert_eq!(row[6], format!("{:+.3} ({lo:+.3} to {hi:+.3})", c.delta.value.unwrap()));
        let lex = r.heldout.references.rows.iter().find(|x| x.name == "lexical neighbour (training split)").unwrap();
        assert!(row[9].starts_with(&format!("{:.3}; ", lex.profile.cross_r.unwrap())), "{}", row[9]);
    }
    assert_eq!(cells(lines[3]).last().unwrap(), "detected", "{md}");

    // The long table: one row per (run, measure), values at full precision.
    let mut rdr = csv::Reader::from_path(out.join("variants.csv")).unwrap();
    let head: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(head, ["run", "recipe", "measure", "reference", "value", "ci_lo", "ci_hi", "p", "label"]);
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    let find = |run: &str, measure: &str, reference: &str| {
        rows.iter()
            .find(|r| &r[0] == run && &r[2] == measure && &r[3] == reference)
            .unwrap_or_else(|| panic!("no {run} {measure} {reference}"))
    };
    for (name, r) in [("weak", &ra), ("strong", &rb)] {
        let c = &r.heldout.country_level;
        let x = find(name, "cross_r_change", "");
        assert_eq!(x[4].parse::<f64>().unwrap(), c.delta.value.unwrap());
        assert_eq!(x[5].parse::<f64>().unwrap(), c.delta.ci95.unwrap().0);
        assert_eq!(x[6].parse::<f64>().unwrap(), c.delta.ci95.unwrap().1);
        assert_eq!(find(name, "heldout_pairs", "")[4].to_string(), "108");
        let lex = r.heldout.references.rows.iter().find(|x| x.name == "lexical neighbour (training split)").unwrap();
        let x = find(name, "after_minus_reference", "lexical neighbour (training split)");
        assert_eq!(x[4].parse::<f64>().unwrap(), lex.after_minus_reference.as_ref().unwrap().value.unwrap());
        assert_eq!(&find(name, "verdict_country_level", "")[8], mores::transfer::report::country_level_short(c));
        assert_eq!(&find(name, "verdict_question_level", "")[4], "");
    }
    // Every run has the same measures.
    let per_run = |run: &str| rows.iter().filter(|r| &r[0] == run).count();
    assert_eq!(per_run("weak"), per_run("strong"));
    assert_eq!(rows.len(), 2 * per_run("weak"));
}

#[test]
fn compare_refuses_a_mix_of_probe_and_transfer_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _) = run_dir(tmp.path(), "transfer", 0.5);
    let probe = tmp.path().join("probe");
    std::fs::create_dir_all(&probe).unwrap();
    std::fs::write(probe.join("results.json"), "{}").unwrap();
    let o = mores(&["compare", a.to_str().unwrap(), probe.to_str().unwrap()]);
    assert_clean_error(&o, "one kind at a time");
    // Folders with neither file are probe runs, as before: the error names results.json.
    let o = mores(&["compare", tmp.path().join("nothing").to_str().unwrap()]);
    assert_clean_error(&o, "results.json");
}
