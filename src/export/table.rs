//! Long-format tables from mores' JSON outputs: one row per observation, nested objects flattened
//! into `parent_child` columns, a 95% CI pair (`..._ci95: [lo, hi]`) into `..._lo` / `..._hi`.
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A cell: a number, a flag, text, or empty.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Num(f64),
    Bool(bool),
    Text(String),
    Empty,
}

impl Cell {
    pub fn of(v: &Value) -> Cell {
        match v {
            Value::Null => Cell::Empty,
            Value::Bool(b) => Cell::Bool(*b),
            Value::Number(n) => n.as_f64().map(Cell::Num).unwrap_or(Cell::Empty),
            Value::String(s) => Cell::Text(s.clone()),
            other => Cell::Text(other.to_string()),
        }
    }
}

/// One row: (column, cell) in column order.
pub type Row = Vec<(String, Cell)>;

/// A table: the union of its rows' columns in order of first appearance.
#[derive(Debug, Default)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<BTreeMap<String, Cell>>,
}

impl Table {
    pub fn push(&mut self, row: Row) {
        let mut map = BTreeMap::new();
        for (k, v) in row {
            if !self.columns.contains(&k) {
                self.columns.push(k.clone());
            }
            map.insert(k, v);
        }
        self.rows.push(map);
    }

    /// The cells of one column, `Empty` where a row lacks it.
    pub fn column(&self, name: &str) -> Vec<&Cell> {
        self.rows.iter().map(|r| r.get(name).unwrap_or(&Cell::Empty)).collect()
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else if key.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}_{key}")
    }
}

/// A 95% CI pair's column stem: `normalised_ci95` -> `normalised`, `ci95` under `change` -> `change`.
fn ci_stem(prefix: &str, key: &str) -> Option<String> {
    let stem = key.strip_suffix("ci95")?.trim_end_matches('_');
    Some(join(prefix, stem))
}

/// Flattens an object into `row`; arrays of objects are returned as (key path, items) for child
/// tables instead of being flattened.
pub fn flatten<'a>(
    prefix: &str,
    obj: &'a Map<String, Value>,
    row: &mut Row,
    children: &mut Vec<(String, &'a [Value])>,
) {
    for (k, v) in obj {
        match v {
            Value::Object(o) => flatten(&join(prefix, k), o, row, children),
            Value::Array(a) if a.len() == 2 && a.iter().all(Value::is_number) && ci_stem(prefix, k).is_some() => {
                let stem = ci_stem(prefix, k).expect("checked");
                row.push((format!("{stem}_lo"), Cell::of(&a[0])));
                row.push((format!("{stem}_hi"), Cell::of(&a[1])));
            }
            Value::Null if ci_stem(prefix, k).is_some() => {
                let stem = ci_stem(prefix, k).expect("checked");
                row.push((format!("{stem}_lo"), Cell::Empty));
                row.push((format!("{stem}_hi"), Cell::Empty));
            }
            Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_object) => children.push((join(prefix, k), a)),
            _ => row.push((join(prefix, k), Cell::of(v))),
        }
    }
}

/// Adds one row per item of `items` to table `name` in `tables` (each after the `keys` columns),
/// and their own arrays of objects as child tables `children_KEY`, recursively (`name_KEY` below).
pub fn add_rows(tables: &mut BTreeMap<String, Table>, name: &str, children_prefix: &str, keys: &Row, items: &[Value]) {
    for item in items {
        let Some(obj) = item.as_object() else { continue };
        let mut row = keys.clone();
        let mut children = Vec::new();
        flatten("", obj, &mut row, &mut children);
        tables.entry(name.to_string()).or_default().push(row);
        // A child row carries its parent's identifying text columns (id, name, iso3, ...).
        let ids: Row = keys
            .iter()
            .cloned()
            .chain(
                obj.iter()
                    .filter(|(k, v)| v.is_string() && is_id(k))
                    .map(|(k, v)| (join(name_stem(name), k), Cell::of(v))),
            )
            .collect();
        for (k, child) in children {
            let child_name = join(children_prefix, &k);
            add_rows(tables, &child_name, &child_name, &ids, child);
        }
    }
}

fn is_id(k: &str) -> bool {
    matches!(k, "id" | "name" | "iso3" | "question" | "country")
}

fn name_stem(table: &str) -> &str {
    table.rsplit('_').next().unwrap_or(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_flatten_and_ci_pairs_split_into_lo_and_hi() {
        let v = serde_json::json!([{"iso3": "NGA", "raw": {"r": 0.5, "n": 10}, "normalised_ci95": [0.1, 0.9],
            "delta": {"value": 0.2, "ci95": null}, "codes": [1, 2, 3],
            "groups": [{"name": "a", "r": 1.0}]}]);
        let mut t = BTreeMap::new();
        add_rows(
            &mut t,
            "countries",
            "countries",
            &vec![("run".into(), Cell::Text("x".into()))],
            v.as_array().unwrap(),
        );
        let c = &t["countries"];
        assert_eq!(
            c.columns,
            [
                "run",
                "codes",
                "delta_lo",
                "delta_hi",
                "delta_value",
                "iso3",
                "normalised_lo",
                "normalised_hi",
                "raw_n",
                "raw_r"
            ]
        );
        assert_eq!(c.column("normalised_hi"), [&Cell::Num(0.9)]);
        assert_eq!(c.column("codes"), [&Cell::Text("[1,2,3]".into())]);
        let g = &t["countries_groups"];
        assert_eq!(g.columns, ["run", "countries_iso3", "name", "r"]);
    }
}
