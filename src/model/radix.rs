//! Prefix-shared forward passes for scoring: a radix tree over a batch's token rows, and a cache
//! of prefix keys and values kept across batches.
//!
//! Probe prompts share most of their tokens: the chat header and system prompt, the persona
//! sentence of a country, the question asked in two option orders, and a multi-token label's
//! branch ("1" then "0") continues the whole prompt. Each distinct prefix is run once: the rows
//! become a radix tree, and all its nodes run in one forward pass, back to back in a single row
//! without padding: a node's queries attend to its path's keys (its ancestors' earlier in the
//! row, a cached prefix's from an earlier batch), see [`super::kernels::attend_tree`]. So the
//! weights stream through the cache once per batch, not once per tree level, and the output head
//! runs once over every read position. Across batches, [`PrefixCache`] keeps
//! the keys and values of inner nodes (bounded by memory, least recently used out first).
//!
//! The numbers do not change: every token's hidden state is computed by the same arithmetic
//! whether its prefix ran in this forward, an earlier one or an earlier batch (the kernels in
//! [`super::kernels`] are row- and prefix-invariant), so probabilities equal those of whole rows
//! bit for bit (`tests/it/batch.rs`).
use super::arch::batch::{Batch, Kv};
use super::kernels::{KeySource, TreeNode};
use super::mode::Mode;
use super::Model;
use crate::util::error::Result;
use candle_core::Tensor;
use std::sync::Arc;

/// How much prefix sharing saved: tokens in the rows asked for, tokens run through the model,
/// and tokens of rows whose keys and values came from the cache (counted per row).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReuseStats {
    pub row_tokens: u64,
    pub computed: u64,
    pub from_cache: u64,
    /// Positions run including left padding (rows x longest row, per forward pass).
    #[serde(default)]
    pub padded: u64,
}

/// Keys and values of prefixes seen in earlier batches, for one model, bounded by memory.
pub struct PrefixCache {
    entries: Vec<Entry>,
    bytes: usize,
    limit: usize,
    clock: u64,
    model: Option<String>,
    pub stats: ReuseStats,
}

struct Entry {
    tokens: Vec<u32>,
    kv: Arc<Kv>,
    bytes: usize,
    used: u64,
}

impl PrefixCache {
    pub fn new(limit_mib: usize) -> Self {
        Self {
            entries: Vec::new(),
            bytes: 0,
            limit: limit_mib << 20,
            clock: 0,
            model: None,
            stats: ReuseStats::default(),
        }
    }

    /// A cache serves one model (file, weight form and adapter): another model empties it.
    fn bind(&mut self, model_id: &str) {
        if self.model.as_deref() != Some(model_id) {
            self.entries.clear();
            self.bytes = 0;
            self.model = Some(model_id.to_string());
        }
    }

    /// The longest prefix of `row`, at most `max_len` tokens, that some cached entry begins
    /// with, and its keys and values. Any prefix of an entry serves: a position's keys and values
    /// depend only on the tokens up to it (causal attention), so the first L positions of a
    /// cached path are those of its first L tokens.
    fn lookup(&mut self, row: &[u32], max_len: usize) -> Option<(usize, Arc<Kv>)> {
        self.clock += 1;
        let clock = self.clock;
        let common = |e: &Entry| common_prefix(&e.tokens, row).min(max_len);
        let best = self.entries.iter_mut().max_by_key(|e| common(e))?;
        let len = common(best);
        if len == 0 {
            return None;
        }
        best.used = clock;
        if len == best.kv.len {
            return Some((len, best.kv.clone()));
        }
        let cut = |ts: &[Tensor]| ts.iter().map(|t| t.narrow(2, 0, len)).collect::<candle_core::Result<Vec<_>>>();
        let kv = Kv { k: cut(&best.kv.k).ok()?, v: cut(&best.kv.v).ok()?, len };
        Some((len, Arc::new(kv)))
    }

    fn offer(&mut self, tokens: Vec<u32>, kv: Arc<Kv>) {
        let bytes: usize = kv.k.iter().chain(&kv.v).map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum();
        // An entry that begins with these tokens already serves them.
        if bytes > self.limit || self.entries.iter().any(|e| e.tokens.starts_with(&tokens)) {
            return;
        }
        self.clock += 1;
        self.entries.push(Entry { tokens, kv, bytes, used: self.clock });
        self.bytes += bytes;
        while self.bytes > self.limit {
            let lru = (0..self.entries.len()).min_by_key(|&i| self.entries[i].used).expect("over the limit: not empty");
            self.bytes -= self.entries.swap_remove(lru).bytes;
        }
    }
}

/// How many leading tokens `a` and `b` share.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

const ROOT: usize = 0;

struct Node {
    /// Position of the node's first token in every row through it.
    start: usize,
    tokens: Vec<u32>,
    parent: usize,
    children: Vec<usize>,
    /// Keys and values of the whole path from the root through this node, once known.
    kv: Option<Arc<Kv>>,
    cached: bool,
}

impl Node {
    fn end(&self) -> usize {
        self.start + self.tokens.len()
    }
}

/// A radix tree (compressed trie) of token rows.
struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    fn new() -> Self {
        let root = Node { start: 0, tokens: Vec::new(), parent: ROOT, children: Vec::new(), kv: None, cached: true };
        Self { nodes: vec![root] }
    }

    fn child(&self, n: usize, tok: u32) -> Option<usize> {
        self.nodes[n].children.iter().copied().find(|&c| self.nodes[c].tokens[0] == tok)
    }

    /// Cut node `c` after its first `at` tokens; returns the new upper part.
    fn split(&mut self, c: usize, at: usize) -> usize {
        let m = self.nodes.len();
        let parent = self.nodes[c].parent;
        let upper = Node {
            start: self.nodes[c].start,
            tokens: self.nodes[c].tokens[..at].to_vec(),
            parent,
            children: vec![c],
            kv: None,
            cached: false,
        };
        self.nodes.push(upper);
        let lower = &mut self.nodes[c];
        lower.tokens.drain(..at);
        lower.start += at;
        lower.parent = m;
        for x in self.nodes[parent].children.iter_mut() {
            if *x == c {
                *x = m;
            }
        }
        m
    }

    fn insert(&mut self, row: &[u32]) {
        let (mut cur, mut pos) = (ROOT, 0);
        while pos < row.len() {
            let Some(c) = self.child(cur, row[pos]) else {
                let n = self.nodes.len();
                self.nodes.push(Node {
                    start: pos,
                    tokens: row[pos..].to_vec(),
                    parent: cur,
                    children: Vec::new(),
                    kv: None,
                    cached: false,
                });
                self.nodes[cur].children.push(n);
                return;
            };
            let common = common_prefix(&self.nodes[c].tokens, &row[pos..]);
            if common == self.nodes[c].tokens.len() {
                (cur, pos) = (c, pos + common);
            } else if pos + common == row.len() {
                return; // the row ends inside c
            } else {
                (cur, pos) = (self.split(c, common), pos + common);
            }
        }
    }

    /// The node on `row`'s path that ends at position `at` (0 < at <= row length), splitting one.
    fn boundary(&mut self, row: &[u32], at: usize) -> usize {
        let (mut cur, mut pos) = (ROOT, 0);
        while pos < at {
            let c = self.child(cur, row[pos]).expect("row inserted");
            let end = self.nodes[c].end();
            if end <= at {
                (cur, pos) = (c, end);
            } else {
                return self.split(c, at - pos);
            }
        }
        cur
    }

    /// The node holding position `pos` of `row`, and the offset in it: one walk from the root.
    fn locate(&self, row: &[u32], pos: usize) -> (usize, usize) {
        let (mut cur, mut at) = (ROOT, 0);
        loop {
            let c = self.child(cur, row[at]).expect("row inserted");
            if pos < self.nodes[c].end() {
                return (c, pos - self.nodes[c].start);
            }
            (cur, at) = (c, self.nodes[c].end());
        }
    }
}

/// Keys and values of a node's whole path: its parent's, then rows `row` of this batch's own.
fn path_kv(parent: &Kv, own: &Kv, row: usize, pad: usize, len: usize) -> Result<Kv> {
    let mut kv = Kv { len: parent.len + len, ..Kv::new() };
    for (dst, src, up) in [(&mut kv.k, &own.k, &parent.k), (&mut kv.v, &own.v, &parent.v)] {
        for (i, t) in src.iter().enumerate() {
            let mine = t.narrow(0, row, 1)?.narrow(2, pad, len)?;
            dst.push(if parent.len > 0 { Tensor::cat(&[&up[i], &mine], 2)? } else { mine.contiguous()? });
        }
    }
    Ok(kv)
}

impl Model {
    /// Logits [n, vocab] at `read` = (row, position) pairs, each distinct prefix of the rows run
    /// once (CPU, dense weights): see the module doc. `cache` carries prefixes across calls.
    pub fn logits_radix(&self, rows: &[Vec<u32>], read: &[(usize, usize)], cache: &mut PrefixCache) -> Result<Tensor> {
        cache.bind(&self.scoring_id());
        let mut tree = Tree::new();
        tree.nodes[ROOT].kv = Some(Arc::new(Kv::new()));
        for r in rows {
            tree.insert(r);
        }
        cache.stats.row_tokens += rows.iter().map(|r| r.len() as u64).sum::<u64>();
        // A cached prefix may cover a row up to its first read position (that token must run),
        // and no further than any read of another row that shares those tokens: its read would
        // fall inside the cached node, which does not run.
        let mut first_read = vec![usize::MAX; rows.len()];
        for &(r, p) in read {
            first_read[r] = first_read[r].min(p);
        }
        for (i, row) in rows.iter().enumerate() {
            let bound = (0..rows.len())
                .filter(|&j| j != i && common_prefix(row, &rows[j]) > first_read[j])
                .map(|j| first_read[j])
                .fold(first_read[i].min(row.len()), usize::min);
            if let Some((len, kv)) = cache.lookup(row, bound) {
                cache.stats.from_cache += len as u64;
                let n = tree.boundary(row, len);
                tree.nodes[n].kv = Some(kv);
                tree.nodes[n].cached = true;
            }
        }
        // Per node, the reads it holds: (index into `read`, offset in the node).
        let mut reads_of: Vec<Vec<(usize, usize)>> = vec![Vec::new(); tree.nodes.len()];
        for (ri, &(r, p)) in read.iter().enumerate() {
            let (n, off) = tree.locate(&rows[r], p);
            reads_of[n].push((ri, off));
        }
        let need = needed(&tree, &reads_of);
        // Every node that runs, parents first, back to back in one row; a node's earlier keys
        // are its running ancestors' (same row) after the nearest cached one's (external).
        let run = run_order(&tree, &need);
        let mut flat = vec![usize::MAX; tree.nodes.len()];
        let (mut ids, mut positions) = (Vec::new(), Vec::new());
        for &n in &run {
            let node = &tree.nodes[n];
            flat[n] = ids.len();
            ids.extend_from_slice(&node.tokens);
            positions.extend(node.start as u32..node.end() as u32);
        }
        let mut ext: Vec<Arc<Kv>> = Vec::new();
        let mut ext_of: Vec<Option<usize>> = vec![None; tree.nodes.len()];
        let mut layout = Vec::with_capacity(run.len());
        for &n in &run {
            let mut before = Vec::new();
            let mut p = tree.nodes[n].parent;
            while p != ROOT {
                let up = &tree.nodes[p];
                if need[p] {
                    before.push((KeySource::Own, flat[p], up.tokens.len()));
                } else {
                    // Not run here, so cached: its keys and values hold its whole path.
                    let kv = up.kv.clone().expect("an ancestor that does not run is cached");
                    let i = *ext_of[p].get_or_insert_with(|| {
                        ext.push(kv.clone());
                        ext.len() - 1
                    });
                    before.push((KeySource::Ext(i), 0, kv.len));
                    break;
                }
                p = up.parent;
            }
            before.reverse();
            let node = &tree.nodes[n];
            layout.push(TreeNode { start: flat[n], len: node.tokens.len(), pos: node.start, before });
        }
        let total = ids.len();
        cache.stats.computed += total as u64;
        cache.stats.padded += total as u64;
        let (mut idx, mut order) = (Vec::with_capacity(read.len()), Vec::with_capacity(read.len()));
        for &n in &run {
            for &(ri, off) in &reads_of[n] {
                idx.push((flat[n] + off) as u32);
                order.push(ri);
            }
        }
        if order.len() != read.len() {
            return Err(crate::util::error::Error::Invalid(format!(
                "internal: prefix-shared scoring produced {} of {} read positions",
                order.len(),
                read.len()
            )));
        }
        let inner: Vec<bool> = (0..tree.nodes.len()).map(|n| tree.nodes[n].children.iter().any(|&c| need[c])).collect();
        let record = run.iter().any(|&n| inner[n]);
        let batch = Batch::tree(ids, positions, layout, &self.device)?;
        let prefix: Vec<&Kv> = ext.iter().map(|p| &**p).collect();
        let idx = Tensor::from_vec(idx, order.len(), &self.device)?;
        let (logits, own) = self.forward(&batch, &prefix, Some(&idx), record, Mode::INFER)?;
        let logits = logits.expect("read positions given");
        for &n in &run {
            if inner[n] {
                let parent = tree.nodes[tree.nodes[n].parent].kv.clone().expect("parent known");
                let kv = path_kv(&parent, &own, 0, flat[n], tree.nodes[n].tokens.len())?;
                tree.nodes[n].kv = Some(Arc::new(kv));
            }
        }
        // Inner nodes computed here serve later batches (the chat header, a country's persona).
        for n in 1..tree.nodes.len() {
            if !tree.nodes[n].cached && !tree.nodes[n].children.is_empty() {
                if let Some(kv) = tree.nodes[n].kv.clone() {
                    cache.offer(path_tokens(&tree, n), kv);
                }
            }
        }
        let mut inverse = vec![0u32; order.len()];
        for (pos, &ri) in order.iter().enumerate() {
            inverse[ri] = pos as u32;
        }
        Ok(logits.index_select(&Tensor::from_vec(inverse, order.len(), &self.device)?, 0)?)
    }
}

/// The nodes that run, each after its parent (depth-first, children in insertion order). A
/// needed node's parent is needed, cached or the root, so its keys are known or run before it.
fn run_order(tree: &Tree, need: &[bool]) -> Vec<usize> {
    fn visit(tree: &Tree, n: usize, need: &[bool], out: &mut Vec<usize>) {
        for &c in &tree.nodes[n].children {
            if need[c] {
                out.push(c);
            }
            visit(tree, c, need, out);
        }
    }
    let mut out = Vec::new();
    visit(tree, ROOT, need, &mut out);
    out
}

/// Nodes that must run: not cached, and read from or a parent of one that must run.
fn needed(tree: &Tree, reads_of: &[Vec<(usize, usize)>]) -> Vec<bool> {
    fn visit(tree: &Tree, n: usize, reads_of: &[Vec<(usize, usize)>], need: &mut [bool]) -> bool {
        let mut below = false;
        for &c in &tree.nodes[n].children {
            below |= visit(tree, c, reads_of, need);
        }
        need[n] = n != ROOT && !tree.nodes[n].cached && (!reads_of[n].is_empty() || below);
        need[n]
    }
    let mut need = vec![false; tree.nodes.len()];
    visit(tree, ROOT, reads_of, &mut need);
    need
}

/// The tokens from the root through node `n`.
fn path_tokens(tree: &Tree, mut n: usize) -> Vec<u32> {
    let mut parts = Vec::new();
    while n != ROOT {
        parts.push(&tree.nodes[n].tokens);
        n = tree.nodes[n].parent;
    }
    parts.into_iter().rev().flatten().copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radix_tree_splits_shared_prefixes_and_locates_positions() {
        let rows: Vec<Vec<u32>> = vec![vec![1, 2, 3, 4], vec![1, 2, 5], vec![1, 2, 3, 6, 7], vec![9], vec![1, 2]];
        let mut t = Tree::new();
        for r in &rows {
            t.insert(r);
        }
        // [1,2] -> {[3] -> {[4], [6,7]}, [5]}, [9]
        let (n, off) = t.locate(&rows[2], 4);
        assert_eq!((t.nodes[n].tokens.clone(), t.nodes[n].start, off), (vec![6, 7], 3, 1));
        let (n, off) = t.locate(&rows[4], 1);
        assert_eq!((t.nodes[n].tokens.clone(), off), (vec![1, 2], 1));
        assert_eq!(path_tokens(&t, t.locate(&rows[0], 3).0), vec![1, 2, 3, 4]);
        // A boundary inside [6, 7] splits it; positions still resolve.
        let b = t.boundary(&rows[2], 4);
        assert_eq!(path_tokens(&t, b), vec![1, 2, 3, 6]);
        assert_eq!(t.locate(&rows[2], 4).0, t.nodes[b].children[0]);
        let tokens: usize = t.nodes.iter().map(|n| n.tokens.len()).sum();
        assert_eq!(tokens, 8, "each distinct token position once: [1 2] [3] [4] [6] [7] [5] [9]");
        // Every node runs after its parent; a node that does not run (cached) is skipped but its
        // children still run.
        let mut need = vec![true; t.nodes.len()];
        need[ROOT] = false;
        let up = t.nodes[b].parent; // [3]
        need[up] = false;
        let order = run_order(&t, &need);
        assert_eq!(order.len(), t.nodes.len() - 2);
        for (i, &n) in order.iter().enumerate() {
            let p = t.nodes[n].parent;
            assert!(!need[p] || order[..i].contains(&p), "node {n} before its parent {p}");
        }
    }
}
