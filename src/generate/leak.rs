//! The leakage guard: a seeded train/held-out split of survey questions, stratified by category,
//! stored beside each dataset and reused by evaluation; and an n-gram containment check that
//! drops generated items too close to a held-out question.
use crate::survey::Survey;
use crate::util::error::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Split {
    pub seed: u64,
    pub heldout_fraction: f64,
    /// Questions this close (n-gram containment, as the guard measures) are one family.
    pub group_ngram: usize,
    pub group_threshold: f64,
    /// sha256 of the questions file the split was drawn from.
    pub questions_sha256: String,
    pub train: Vec<String>,
    pub heldout: Vec<String>,
}

impl Split {
    /// Held-out questions are drawn as whole families: WVS batteries ("How much confidence do you
    /// have in the police / the courts / ...") differ by a word, so splitting a battery would
    /// put near-copies of held-out questions in training. Families are found with the guard's
    /// own measure; per category, a seeded shuffle of its families is held out until about
    /// `fraction` of its scored, probeable questions are (at least one family when it has two).
    pub fn draw(survey: &Survey, seed: u64, fraction: f64, n: usize, threshold: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&fraction) || fraction <= 0.0 {
            return Err(Error::Invalid(format!("heldout_fraction {fraction} must be in (0, 1)")));
        }
        let qs = candidates(survey);
        let mut by_cat: BTreeMap<&str, Vec<Vec<usize>>> = BTreeMap::new();
        for members in family_indices(&qs, n, threshold) {
            by_cat.entry(qs[members[0]].category.as_str()).or_default().push(members);
        }
        let (mut train, mut heldout) = (Vec::new(), Vec::new());
        for (i, (_, mut families)) in by_cat.into_iter().enumerate() {
            families.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
                seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ));
            let total: usize = families.iter().map(|f| f.len()).sum();
            let want = (fraction * total as f64).round() as usize;
            let mut held = 0;
            for (k, f) in families.iter().enumerate() {
                let last_family = k + 1 == families.len();
                let take = families.len() >= 2 && !last_family && (held == 0 || held + f.len() <= want);
                let ids = f.iter().map(|&m| qs[m].id.clone());
                if take && held < want.max(1) {
                    held += f.len();
                    heldout.extend(ids);
                } else {
                    train.extend(ids);
                }
            }
        }
        let key = |s: &String| crate::survey::question_sort_key(s);
        train.sort_by_key(key);
        heldout.sort_by_key(key);
        let questions_sha256 = crate::util::io::sha256_file(&survey.dir.join(crate::survey::QUESTIONS_FILE))?;
        Ok(Self {
            seed,
            heldout_fraction: fraction,
            group_ngram: n,
            group_threshold: threshold,
            questions_sha256,
            train,
            heldout,
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
        crate::util::io::read_json(path)
    }
}

/// The questions a split and its families are drawn from: scored and probeable ones, in survey
/// order (one definition, so `families` groups exactly what `Split::draw` splits).
fn candidates(survey: &Survey) -> Vec<&crate::survey::Question> {
    survey.questions.iter().filter(|q| q.is_scored() && q.probeable()).collect()
}

/// Families of `qs` (indices, each family in `qs` order): questions are joined when one's word
/// n-grams are `threshold`-contained in the other's, transitively, so a WVS battery is one family.
fn family_indices(qs: &[&crate::survey::Question], n: usize, threshold: f64) -> Vec<Vec<usize>> {
    let grams: Vec<HashSet<Vec<String>>> = qs.iter().map(|q| ngrams(&q.text, n)).collect();
    let mut parent: Vec<usize> = (0..qs.len()).collect();
    fn find(p: &mut [usize], i: usize) -> usize {
        let mut r = i;
        while p[r] != r {
            r = p[r];
        }
        p[i] = r;
        r
    }
    for i in 0..qs.len() {
        for j in i + 1..qs.len() {
            if containment(&grams[i], &grams[j]) >= threshold {
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                parent[b] = a;
            }
        }
    }
    let mut fams: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..qs.len() {
        let r = find(&mut parent, i);
        fams.entry(r).or_default().push(i);
    }
    // In order of the union-find roots, as the split has always been drawn: another order would
    // shuffle differently and move every stored split.
    fams.into_values().collect()
}

/// Each scored, probeable question's family, named by its first member in survey order: the
/// grouping `Split::draw` holds out whole, for other stages that must not split a battery
/// (training's validation split).
pub fn families(survey: &Survey, n: usize, threshold: f64) -> BTreeMap<String, String> {
    let qs = candidates(survey);
    let mut out = BTreeMap::new();
    for f in family_indices(&qs, n, threshold) {
        for &m in &f {
            out.insert(qs[m].id.clone(), qs[f[0]].id.clone());
        }
    }
    out
}

/// Lower-case word tokens (letters and digits).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(|w| w.to_lowercase()).collect()
}

fn ngrams(text: &str, n: usize) -> HashSet<Vec<String>> {
    let w = words(text);
    if w.len() < n {
        return if w.is_empty() { HashSet::new() } else { HashSet::from([w]) };
    }
    w.windows(n).map(|g| g.to_vec()).collect()
}

/// Share of the smaller set's n-grams found in the other: a long item that embeds a short
/// held-out question verbatim leaks as much as a short copy does.
fn containment(a: &HashSet<Vec<String>>, b: &HashSet<Vec<String>>) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let inter = a.intersection(b).count() as f64;
    (inter / a.len() as f64).max(inter / b.len() as f64)
}

pub struct Guard {
    n: usize,
    threshold: f64,
    heldout: Vec<(String, HashSet<Vec<String>>)>,
}

impl Guard {
    pub fn new(survey: &Survey, split: &Split, n: usize, threshold: f64) -> Result<Self> {
        let mut heldout = Vec::new();
        for id in &split.heldout {
            let q = survey.question(id)?;
            heldout.push((id.clone(), ngrams(&q.text, n)));
        }
        Ok(Self { n, threshold, heldout })
    }

    /// The held-out question this text overlaps most, and the share of the text's n-grams
    /// found in it (containment), when that share reaches the threshold.
    pub fn leaks(&self, text: &str) -> Option<(String, f64)> {
        let g = ngrams(text, self.n);
        if g.is_empty() {
            return None;
        }
        self.heldout
            .iter()
            .map(|(id, h)| (id.clone(), containment(&g, h)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .filter(|(_, c)| *c >= self.threshold)
    }
}
