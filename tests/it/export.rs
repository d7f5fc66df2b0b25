//! `mores export`: a transfer run on tiny models (with its three probes) written as CSV and as
//! Parquet, every file read back by pandas (CSV) and pyarrow (Parquet) with the expected columns
//! and as many rows as mores says it wrote.
use crate::common::{assert_clean_error, mores, root, stderr};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The Python with pandas and pyarrow.
fn python() -> PathBuf {
    let p = std::env::var_os("MORES_TABLES_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv-tables/bin/python"));
    assert!(p.exists(), "{} missing: run scripts/setup-table-readers.sh (scripts/test.sh does)", p.display());
    p
}

/// Every table in `dir` as pandas or pyarrow reads it: name -> (columns, rows).
fn read_back(dir: &Path, format: &str) -> BTreeMap<String, (Vec<String>, usize)> {
    let script = r#"
import json, pathlib, sys
import pandas as pd
import pyarrow.parquet as pq
out = {}
for p in sorted(pathlib.Path(sys.argv[1]).glob("*." + sys.argv[2])):
    if sys.argv[2] == "csv":
        df = pd.read_csv(p)
        out[p.stem] = [list(df.columns), len(df)]
    else:
        t = pq.read_table(p)
        out[p.stem] = [t.column_names, t.num_rows]
print(json.dumps(out))
"#;
    let o = std::process::Command::new(python()).args(["-c", script, dir.to_str().unwrap(), format]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn has(cols: &[String], want: &[&str], table: &str) {
    for w in want {
        assert!(cols.iter().any(|c| c == w), "{table} lacks column {w}: {cols:?}");
    }
}

#[test]
fn export_writes_tables_that_pandas_and_pyarrow_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let r = crate::transfer::recipe(dir.path(), "");
    let run = dir.path().join("run");
    let o = mores(&["run", "--recipe", r.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for format in ["csv", "parquet"] {
        let out = dir.path().join(format!("tables-{format}"));
        let o = mores(&["export", run.to_str().unwrap(), "--format", format, "--out", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        // "   ROWS rows  PATH" per file.
        let said: BTreeMap<String, usize> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| {
                let mut w = l.split_whitespace();
                let n = w.next().unwrap().parse().unwrap();
                let path = PathBuf::from(w.nth(1).unwrap());
                (path.file_stem().unwrap().to_string_lossy().to_string(), n)
            })
            .collect();
        let got = read_back(&out, format);
        assert_eq!(got.keys().collect::<Vec<_>>(), said.keys().collect::<Vec<_>>());
        for (t, (_, rows)) in &got {
            assert_eq!(*rows, said[t], "{format} {t}: rows read back");
        }
        let cols = |t: &str| &got.get(t).unwrap_or_else(|| panic!("no {t} table in {:?}", got.keys())).0;
        has(
            cols("samples"),
            &["run", "id", "question_id", "country", "template", "order", "mass", "expected_score"],
            "samples",
        );
        has(cols("options"), &["run", "id", "option", "code", "label", "position", "prob", "human"], "options");
        has(
            cols("countries"),
            &["run", "iso3", "normalised_r", "normalised_lo", "normalised_hi", "uniform_raw_r"],
            "countries",
        );
        has(cols("questions"), &["run", "id", "n_countries", "cross_country_r"], "questions");
        has(cols("results"), &["run", "schema", "overall_fisher_r_normalised"], "results");
        has(cols("transfer"), &["run", "subset", "verdict_country_level", "n_pairs"], "transfer");
        assert!(cols("transfer").iter().any(|c| c.ends_with("_lo")), "transfer CIs: {:?}", cols("transfer"));
        assert!(got.keys().any(|k| k.starts_with("transfer_") && k.contains("references")), "{:?}", got.keys());
        // Each probe of the run is its own run in the tables: 2 subsets, 3 probes' rows.
        assert_eq!(got["transfer"].1, 2);
        assert_eq!(got["results"].1, 3);
    }
    assert_clean_error(&mores(&["export", dir.path().to_str().unwrap(), "--out", "x"]), "neither a probe run");
}
