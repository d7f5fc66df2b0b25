//! `mores survey import FILE.csv`: build the project's data files from the official
//! respondent-level WVS-7 CSV (one row per respondent; `B_COUNTRY_ALPHA` or `B_COUNTRY`, weight
//! `W_WEIGHT`, answers in columns named by question id, negative codes for missing answers).
//! Question texts, options and scores come from a template data folder (the shipped
//! `data/wvs`), since the CSV carries codes only.
use crate::survey::{Survey, COUNTRIES_FILE, DISTRIBUTIONS_FILE, QUESTIONS_FILE};
use crate::util::error::{Error, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImportSummary {
    pub rows: usize,
    pub weighted: bool,
    pub countries: Vec<String>,
    /// Country codes in the file that the countries table does not know (rows skipped).
    pub unknown_countries: Vec<String>,
    pub questions_matched: usize,
    pub questions_missing: Vec<String>,
    pub pairs_written: usize,
    /// Answers dropped: negative (missing, don't know, not asked) and codes that are not options.
    pub dropped_negative: usize,
    pub dropped_unknown_code: usize,
}

#[derive(Serialize)]
struct OutRecord<'a> {
    qid: &'a str,
    country: &'a str,
    distribution: BTreeMap<String, f64>,
    n: f64,
    weighted_n: f64,
    source: &'a str,
    weighted: bool,
}

/// ISO numeric -> ISO3, from the template's countries table.
fn numeric_codes(template: &Path) -> Result<BTreeMap<u32, String>> {
    let cpath = template.join(COUNTRIES_FILE);
    let mut numeric_to_iso3 = BTreeMap::new();
    let mut crdr = csv::Reader::from_reader(crate::util::io::open_input(&cpath, crate::util::io::Cap::Table)?);
    let ch = crdr.headers().map_err(|e| Error::data(&cpath, 1, e.to_string()))?.clone();
    let (ci, cn) = (ch.iter().position(|h| h == "iso3"), ch.iter().position(|h| h == "iso_numeric"));
    for rec in crdr.records().flatten() {
        if let (Some(i), Some(n)) = (ci, cn) {
            if let Ok(num) = rec[n].trim().parse::<u32>() {
                numeric_to_iso3.insert(num, rec[i].to_string());
            }
        }
    }
    Ok(numeric_to_iso3)
}

/// (question index, country) -> (weighted counts per option, unweighted n, weighted n)
type Acc = BTreeMap<(usize, String), (Vec<f64>, f64, f64)>;

/// Where the columns an import reads sit in the CSV.
struct Columns {
    alpha: Option<usize>,
    numeric: Option<usize>,
    weight: Option<usize>,
    /// (question index in the template, column)
    questions: Vec<(usize, usize)>,
}

struct Row<'a> {
    csv: &'a Path,
    line: usize,
    rec: &'a csv::StringRecord,
}

impl Row<'_> {
    fn country(&self, cols: &Columns, numeric_to_iso3: &BTreeMap<u32, String>) -> Result<String> {
        Ok(match (cols.alpha, cols.numeric) {
            (Some(a), _) => self.rec[a].trim().to_string(),
            (_, Some(n)) => {
                let num: u32 = self.rec[n]
                    .trim()
                    .parse()
                    .map_err(|_| Error::data(self.csv, self.line, "B_COUNTRY is not a number"))?;
                numeric_to_iso3.get(&num).cloned().unwrap_or_else(|| format!("#{num}"))
            }
            (None, None) => return Err(Error::data(self.csv, 1, "no country column")),
        })
    }

    fn weight(&self, cols: &Columns) -> Result<f64> {
        let Some(c) = cols.weight else { return Ok(1.0) };
        let w: f64 =
            self.rec[c].trim().parse().map_err(|_| Error::data(self.csv, self.line, "W_WEIGHT is not a number"))?;
        if !(w.is_finite() && w >= 0.0) {
            return Err(Error::data(self.csv, self.line, format!("W_WEIGHT {w} is not a non-negative number")));
        }
        Ok(w)
    }

    /// Adds the row's answers to `acc`; missing, negative and unknown codes are counted in `s`.
    fn add(
        &self,
        tmpl: &Survey,
        cols: &Columns,
        country: &str,
        w: f64,
        acc: &mut Acc,
        s: &mut ImportSummary,
    ) -> Result<()> {
        for &(qi, c) in &cols.questions {
            let cell = self.rec[c].trim();
            if cell.is_empty() {
                s.dropped_negative += 1;
                continue;
            }
            let code: i64 = match cell.parse::<f64>() {
                Ok(v) if v.fract() == 0.0 => v as i64,
                _ => {
                    return Err(Error::data(
                        self.csv,
                        self.line,
                        format!("{}: answer {cell:?} is not an integer code", tmpl.questions[qi].id),
                    ))
                }
            };
            if code < 0 {
                s.dropped_negative += 1;
                continue;
            }
            let q = &tmpl.questions[qi];
            let Some(oi) = q.option_index(code) else {
                s.dropped_unknown_code += 1;
                continue;
            };
            let e = acc.entry((qi, country.to_string())).or_insert_with(|| (vec![0.0; q.options.len()], 0.0, 0.0));
            e.0[oi] += w;
            e.1 += 1.0;
            e.2 += w;
        }
        Ok(())
    }
}

/// The distributions file's lines, one per (question, country) with a positive weight.
fn distribution_lines(tmpl: &Survey, acc: &Acc, source: &str, s: &mut ImportSummary) -> Result<String> {
    let mut lines = String::new();
    let mut countries = std::collections::BTreeSet::new();
    for ((qi, country), (counts, n, wn)) in acc {
        if *wn <= 0.0 {
            continue;
        }
        let q = &tmpl.questions[*qi];
        let distribution: BTreeMap<String, f64> =
            q.options.iter().zip(counts).map(|(o, c)| (o.code.to_string(), c / wn)).collect();
        let r = OutRecord { qid: &q.id, country, distribution, n: *n, weighted_n: *wn, source, weighted: s.weighted };
        lines.push_str(&serde_json::to_string(&r)?);
        lines.push('\n');
        countries.insert(country.clone());
        s.pairs_written += 1;
    }
    s.countries = countries.into_iter().collect();
    Ok(lines)
}

fn write_outputs(csv_path: &Path, template: &Path, out: &Path, lines: &str, s: &ImportSummary) -> Result<()> {
    let file_name = csv_path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    for f in [QUESTIONS_FILE, COUNTRIES_FILE] {
        let bytes = crate::util::io::read_input(&template.join(f), crate::util::io::Cap::Table)?;
        crate::util::io::atomic_write(&out.join(f), &bytes)?;
    }
    crate::util::io::atomic_write(&out.join(DISTRIBUTIONS_FILE), lines.as_bytes())?;
    let sha = crate::util::io::sha256_file(csv_path)?;
    let note = format!(
        "# Provenance\n\nBuilt by `mores survey import` from `{file_name}` (sha256 {sha}), a respondent-level WVS-7 CSV supplied by the user (obtain it from https://www.worldvaluessurvey.org under the WVS terms of use).\n\n- Distributions: {} share of respondents per answer code, per country and question; negative codes (missing, don't know, no answer, not asked) dropped ({} answers); codes that are not options of the question dropped ({}).\n- Question texts, options, scores and the countries table are copied from the template `{}`.\n- {} rows, {} countries, {} questions matched, {} (question, country) pairs.\n",
        if s.weighted { "W_WEIGHT-weighted" } else { "unweighted (no W_WEIGHT column)" },
        s.dropped_negative,
        s.dropped_unknown_code,
        template.display(),
        s.rows,
        s.countries.len(),
        s.questions_matched,
        s.pairs_written
    );
    crate::util::io::atomic_write(&out.join("PROVENANCE.md"), note.as_bytes())?;
    crate::util::io::write_json(&out.join("import_summary.json"), s)
}

pub fn import(csv_path: &Path, template: &Path, out: &Path) -> Result<ImportSummary> {
    let tmpl = Survey::load(template)?;
    let file_name = csv_path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(crate::util::io::open_input(csv_path, crate::util::io::Cap::Stream)?);
    let headers = rdr.headers().map_err(|e| Error::data(csv_path, 1, format!("no header row: {e}")))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim().eq_ignore_ascii_case(name));
    let cols = Columns {
        alpha: col("B_COUNTRY_ALPHA"),
        numeric: col("B_COUNTRY"),
        weight: col("W_WEIGHT"),
        questions: tmpl.questions.iter().enumerate().filter_map(|(qi, q)| col(&q.id).map(|c| (qi, c))).collect(),
    };
    if cols.alpha.is_none() && cols.numeric.is_none() {
        return Err(Error::data(
            csv_path,
            1,
            "no country column: expected B_COUNTRY_ALPHA (ISO3) or B_COUNTRY (ISO numeric), as in the official WVS-7 CSV",
        ));
    }
    let numeric_to_iso3 = numeric_codes(template)?;
    let questions_missing: Vec<String> =
        tmpl.questions.iter().filter(|q| col(&q.id).is_none()).map(|q| q.id.clone()).collect();
    if cols.questions.is_empty() {
        return Err(Error::data(csv_path, 1, "no column matches a question id of the template (Q1, Q2, ...)"));
    }
    let mut acc: Acc = BTreeMap::new();
    let mut s = ImportSummary {
        rows: 0,
        weighted: cols.weight.is_some(),
        countries: vec![],
        unknown_countries: vec![],
        questions_matched: cols.questions.len(),
        questions_missing,
        pairs_written: 0,
        dropped_negative: 0,
        dropped_unknown_code: 0,
    };
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| Error::data(csv_path, line, format!("malformed row: {e}")))?;
        s.rows += 1;
        let row = Row { csv: csv_path, line, rec: &rec };
        let country = row.country(&cols, &numeric_to_iso3)?;
        if !tmpl.countries.contains_key(&country) {
            if !s.unknown_countries.contains(&country) {
                s.unknown_countries.push(country);
            }
            continue;
        }
        let w = row.weight(&cols)?;
        row.add(&tmpl, &cols, &country, w, &mut acc, &mut s)?;
    }
    let source = format!("official WVS-7 CSV {file_name}{}", if s.weighted { " (W_WEIGHT)" } else { " (unweighted)" });
    let lines = distribution_lines(&tmpl, &acc, &source, &mut s)?;
    if s.pairs_written == 0 {
        return Err(Error::data(csv_path, 0, "no usable answers: every row was skipped"));
    }
    write_outputs(csv_path, template, out, &lines, &s)?;
    // The result must load like the shipped data.
    Survey::load(out)?;
    Ok(s)
}
