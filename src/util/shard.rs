//! A slice of a work list: `--shard I/N`, or a cluster array task.
use serde::{Deserialize, Serialize};

/// Which slice of the work this process does: `index` of `count` (from `--shard I/N`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or_else(|| format!("shard {s:?}: expected I/N, e.g. 0/4"))?;
        let (index, count): (usize, usize) = (
            i.parse().map_err(|_| format!("shard {s:?}: I is not a number"))?,
            n.parse().map_err(|_| format!("shard {s:?}: N is not a number"))?,
        );
        if count == 0 || index >= count {
            return Err(format!("shard {s:?}: need 0 <= I < N"));
        }
        Ok(Shard { index, count })
    }
}
