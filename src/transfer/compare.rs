//! `mores compare` over `mores run` folders: the variants table. A folder holding transfer.json
//! (and no probe results.json) is a transfer run; probe runs go to the probe comparison unchanged,
//! and a mix of the two kinds is refused. For transfer runs, one row per run of the held-out
//! numbers (scale, within-country and cross-country r before -> after with the change and its
//! CI, share of questions up, swap gap after, each reference's cross-country r and the student
//! after minus it, the two verdicts), as markdown (variants.md, also returned for stdout) and as a
//! long table (variants.csv: one row per run and measure).
use super::report::{country_level_short, question_level_short, Delta, TransferReport};
use crate::util::error::{Error, Result};
use crate::util::fmt::f;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// The student's own rows, which are not references.
const STUDENT_ROWS: [&str; 2] = ["student before", "student after"];

fn is_transfer(dir: &Path) -> bool {
    !dir.join("results.json").exists() && dir.join("transfer.json").exists()
}

/// Compares probe runs (`evaluate::compare`) or transfer runs (the variants table), whichever the
/// folders hold; with `out`, the files go there. Returns the markdown table.
pub fn compare(runs: &[PathBuf], out: Option<&Path>) -> Result<String> {
    let transfer: Vec<&PathBuf> = runs.iter().filter(|d| is_transfer(d)).collect();
    if transfer.is_empty() {
        return crate::evaluate::compare(runs, out);
    }
    if let Some(other) = runs.iter().find(|d| !is_transfer(d)) {
        return Err(Error::Invalid(format!(
            "compare: {} holds a transfer run (transfer.json) but {} does not: compare probe runs or transfer runs, one kind at a time",
            transfer[0].display(),
            other.display()
        )));
    }
    let mut reports = Vec::new();
    for dir in runs {
        let r: TransferReport = crate::util::io::read_json(&dir.join("transfer.json"))?;
        reports.push((run_name(dir), r));
    }
    let md = markdown(&reports);
    if let Some(out) = out {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        crate::util::io::atomic_write(&out.join("variants.md"), md.as_bytes())?;
        crate::util::io::atomic_write(&out.join("variants.csv"), csv(&reports)?.as_bytes())?;
    }
    Ok(md)
}

/// A run's name: its folder's name.
fn run_name(dir: &Path) -> String {
    let canon = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    canon.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| dir.display().to_string())
}

/// The reference rows of any run with a cross-country r or a difference, in order of first
/// appearance.
fn reference_names(reports: &[(String, TransferReport)]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (_, r) in reports {
        for row in &r.heldout.references.rows {
            let any = row.profile.cross_r.is_some() || row.after_minus_reference.is_some();
            if any && !STUDENT_ROWS.contains(&row.name.as_str()) && !names.contains(&row.name) {
                names.push(row.name.clone());
            }
        }
    }
    names
}

/// "+0.123 (+0.045 to +0.201)", "+0.123" without a CI, "–" without a value.
fn change(d: &Delta, digits: usize) -> String {
    match (d.value, d.ci95) {
        (Some(v), Some((lo, hi))) => format!("{v:+.digits$} ({lo:+.digits$} to {hi:+.digits$})"),
        (Some(v), None) => format!("{v:+.digits$}"),
        _ => "–".into(),
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

fn markdown(reports: &[(String, TransferReport)]) -> String {
    let refs = reference_names(reports);
    let mut s = String::new();
    let mut head = vec![
        "run".to_string(),
        "recipe".into(),
        "held-out scale".into(),
        "within-country r: before -> after".into(),
        "within-country change (95% CI)".into(),
        "cross-country r: before -> after".into(),
        "cross-country change (95% CI)".into(),
        "questions up".into(),
        "swap gap after (95% CI)".into(),
    ];
    head.extend(refs.iter().map(|n| format!("{}: cross-country r; after - it (95% CI)", cell(n))));
    head.extend(["question level".into(), "country level".into()]);
    let _ = writeln!(s, "| {} |", head.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(head.len()));
    for (name, r) in reports {
        let (h, q, c) = (&r.heldout, &r.heldout.question_level, &r.heldout.country_level);
        let mut row = vec![
            cell(name),
            cell(&r.name),
            format!("{} questions x {} countries ({} pairs)", h.n_questions, h.n_countries, h.n_pairs),
            format!("{} -> {}", f(q.mean_r_before), f(q.mean_r_after)),
            change(&q.mean_delta, 3),
            format!("{} -> {}", f(c.r_before), f(c.r_after)),
            change(&c.delta, 3),
            c.share_improved.map(|v| format!("{:.0}%", 100.0 * v)).unwrap_or_else(|| "–".into()),
            change(&c.swap.gap_after, 4),
        ];
        for n in &refs {
            let x = h.references.rows.iter().find(|x| &x.name == n);
            row.push(match x {
                Some(x) => format!(
                    "{}; {}",
                    f(x.profile.cross_r),
                    x.after_minus_reference.as_ref().map(|d| change(d, 3)).unwrap_or_else(|| "–".into())
                ),
                None => "–".into(),
            });
        }
        row.push(question_level_short(q).into());
        row.push(country_level_short(c).into());
        let _ = writeln!(s, "| {} |", row.join(" | "));
    }
    s
}

/// One row of variants.csv.
struct Measure<'a> {
    measure: &'a str,
    reference: &'a str,
    value: Option<f64>,
    ci: Option<(f64, f64)>,
    p: Option<f64>,
    label: &'a str,
}

fn num(x: Option<f64>) -> String {
    x.map(|v| v.to_string()).unwrap_or_default()
}

/// The long table: columns run, recipe, measure, reference, value, ci_lo, ci_hi, p, label (the
/// verdicts' words); empty where a measure has no such part.
fn csv(reports: &[(String, TransferReport)]) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let io = |e: csv::Error| Error::Invalid(format!("variants.csv: {e}"));
    w.write_record(["run", "recipe", "measure", "reference", "value", "ci_lo", "ci_hi", "p", "label"]).map_err(io)?;
    for (name, r) in reports {
        let (h, q, c) = (&r.heldout, &r.heldout.question_level, &r.heldout.country_level);
        let m = |measure, value: Option<f64>| Measure { measure, reference: "", value, ci: None, p: None, label: "" };
        let d = |measure, d: &Delta| Measure { measure, reference: "", value: d.value, ci: d.ci95, p: d.p, label: "" };
        let mut rows = vec![
            m("heldout_questions", Some(h.n_questions as f64)),
            m("heldout_countries", Some(h.n_countries as f64)),
            m("heldout_pairs", Some(h.n_pairs as f64)),
            m("within_r_before", q.mean_r_before),
            m("within_r_after", q.mean_r_after),
            d("within_r_change", &q.mean_delta),
            m("cross_r_before", c.r_before),
            m("cross_r_after", c.r_after),
            d("cross_r_change", &c.delta),
            m("cross_share_up", c.share_improved),
            d("swap_gap_after", &c.swap.gap_after),
        ];
        for x in h.references.rows.iter().filter(|x| !STUDENT_ROWS.contains(&x.name.as_str())) {
            rows.push(Measure {
                measure: "reference_cross_r",
                reference: &x.name,
                value: x.profile.cross_r,
                ci: x.cross_r_ci95,
                p: None,
                label: "",
            });
            if let Some(diff) = &x.after_minus_reference {
                rows.push(Measure { reference: &x.name, ..d("after_minus_reference", diff) });
            }
        }
        rows.push(Measure { label: question_level_short(q), ..m("verdict_question_level", None) });
        rows.push(Measure { label: country_level_short(c), ..m("verdict_country_level", None) });
        for x in rows {
            w.write_record([
                name.as_str(),
                r.name.as_str(),
                x.measure,
                x.reference,
                &num(x.value),
                &num(x.ci.map(|c| c.0)),
                &num(x.ci.map(|c| c.1)),
                &num(x.p),
                x.label,
            ])
            .map_err(io)?;
        }
    }
    let bytes = w.into_inner().map_err(|e| Error::Invalid(format!("variants.csv: {e}")))?;
    String::from_utf8(bytes).map_err(|e| Error::Invalid(format!("variants.csv: {e}")))
}
