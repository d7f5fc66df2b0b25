//! `mores export RUN... --format csv|parquet --out DIR`: the JSON outputs of probe and transfer
//! runs as long-format tables that load into pandas, R or DuckDB without reshaping. One row per
//! observation; every table starts with a `run` column (the run folder as given), so runs stack;
//! nested fields are flattened into `parent_child` columns and 95% CIs into `_lo` / `_hi` columns.
//!
//! From a probe run (`results.json`, `samples.jsonl`): `samples` (one row per prompt), `options`
//! (per prompt and option: label shown, position, raw and renormalised probability, human share),
//! `results` (one row per run: model, recipe, overall figures), `countries`, `questions`,
//! `categories`, `continents`, `groups`, and the other per-row sections of results.json.
//! From a transfer run (`transfer.json`): `transfer` (one row per subset, held-out and probed
//! training questions: both levels before, after and change, swap control, verdicts) and its
//! per-country, per-question, per-continent and per-reference tables (`transfer_...`); its probe
//! folders (`probe-before`, `probe-after`, `probe-teacher`) are exported as probe runs named
//! `RUN/probe-before` and so on.
pub mod table;
pub mod write;

use crate::util::error::{Error, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use table::{add_rows, Cell, Row, Table};
pub use write::Format;

/// One file written: its table name, rows and path.
#[derive(Debug, Clone)]
pub struct Exported {
    pub table: String,
    pub rows: usize,
    pub path: PathBuf,
}

fn read_json(path: &Path) -> Result<Value> {
    crate::util::io::read_json(path)
}

fn text(s: &str) -> Cell {
    Cell::Text(s.to_string())
}

/// The order an option was shown in, from a prompt id's suffix (`~rev`, `~cyc2`, ...).
fn order_name(id: &str) -> &str {
    id.rsplit_once('~').map(|(_, o)| o).unwrap_or("original")
}

fn probe_tables(tables: &mut BTreeMap<String, Table>, run: &str, dir: &Path) -> Result<()> {
    let key: Row = vec![("run".into(), text(run))];
    let results = read_json(&dir.join("results.json"))?;
    // The per-row sections (countries, questions, ...) are tables of their own names.
    add_rows(tables, "results", "", &key, std::slice::from_ref(&results));
    let samples: Vec<crate::probe::Sample> = crate::util::io::read_jsonl(&dir.join("samples.jsonl"))?;
    for s in &samples {
        let base: Row = vec![
            ("run".into(), text(run)),
            ("id".into(), text(&s.id)),
            ("question_id".into(), text(&s.question_id)),
            ("country".into(), text(&s.country)),
            ("template".into(), text(&s.template)),
            ("order".into(), text(order_name(&s.id))),
        ];
        let mut row = base.clone();
        let opt = |x: Option<f64>| x.map(Cell::Num).unwrap_or(Cell::Empty);
        row.extend([
            ("category".into(), text(&s.category)),
            ("prompt_sha256".into(), text(&s.prompt_sha256)),
            ("mass".into(), Cell::Num(s.mass)),
            ("unread_mass".into(), opt(s.unread_mass)),
            ("n_tokens".into(), Cell::Num(s.n_tokens as f64)),
            ("expected_score".into(), opt(s.expected_score)),
            ("human_mean".into(), opt(s.human_mean)),
        ]);
        tables.entry("samples".into()).or_default().push(row);
        for (k, code) in s.codes.iter().enumerate() {
            // Position shown: where `order` puts option k (the listed position when unordered).
            let pos = if s.order.is_empty() { Some(k) } else { s.order.iter().position(|&o| o == k) };
            let mut row = base.clone();
            row.extend([
                ("option".into(), Cell::Num(k as f64)),
                ("code".into(), Cell::Num(*code as f64)),
                ("label".into(), pos.and_then(|p| s.labels.get(p)).map(|l| text(l)).unwrap_or(Cell::Empty)),
                ("position".into(), pos.map(|p| Cell::Num(p as f64)).unwrap_or(Cell::Empty)),
                ("raw".into(), opt(s.raw.get(k).copied())),
                ("prob".into(), opt(s.probs.get(k).copied())),
                ("human".into(), opt(s.human_distribution.get(k).copied())),
            ]);
            tables.entry("options".into()).or_default().push(row);
        }
    }
    Ok(())
}

fn transfer_tables(tables: &mut BTreeMap<String, Table>, run: &str, report: &Value) -> Result<()> {
    let obj = report.as_object().ok_or_else(|| Error::Invalid(format!("{run}/transfer.json is not an object")))?;
    for subset in ["heldout", "train"] {
        let Some(s) = obj.get(subset).and_then(Value::as_object) else { continue };
        let mut key: Row = vec![("run".into(), text(run)), ("subset".into(), text(subset))];
        for (k, v) in obj {
            if !matches!(k.as_str(), "heldout" | "train") && !v.is_object() {
                key.push((k.clone(), Cell::of(v)));
            }
        }
        let mut row = key.clone();
        let mut children = Vec::new();
        table::flatten("", s, &mut row, &mut children);
        tables.entry("transfer".into()).or_default().push(row);
        let ids: Row = key[..2].to_vec();
        for (k, items) in children {
            let name = format!("transfer_{k}");
            add_rows(tables, &name, &name, &ids, items);
        }
    }
    Ok(())
}

/// Exports `runs` (probe or transfer run folders) into `out` as `TABLE.csv` or `TABLE.parquet`.
pub fn export(runs: &[PathBuf], format: Format, out: &Path) -> Result<Vec<Exported>> {
    if runs.is_empty() {
        return Err(Error::Invalid("export: name at least one run folder".into()));
    }
    let mut tables: BTreeMap<String, Table> = BTreeMap::new();
    for dir in runs {
        let run = dir.display().to_string();
        let transfer = dir.join("transfer.json");
        if transfer.exists() {
            transfer_tables(&mut tables, &run, &read_json(&transfer)?)?;
            for probe in ["probe-before", "probe-teacher", "probe-after"] {
                if dir.join(probe).join("results.json").exists() {
                    probe_tables(&mut tables, &format!("{run}/{probe}"), &dir.join(probe))?;
                }
            }
        } else if dir.join("results.json").exists() {
            probe_tables(&mut tables, &run, dir)?;
        } else {
            return Err(Error::Invalid(format!(
                "{run}: neither a probe run (results.json) nor a transfer run (transfer.json)"
            )));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut written = Vec::new();
    for (name, t) in &tables {
        let path = out.join(format!("{name}.{}", format.extension()));
        write::write(t, format, &path)?;
        written.push(Exported { table: name.clone(), rows: t.rows.len(), path });
    }
    Ok(written)
}
