//! The persistence layer: whole files written atomically, JSON read with the file named in every
//! error, and append-only JSONL logs with one rule for a half-written last line.
use crate::util::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Replace `path` with `bytes` or leave it as it was: a uniquely named temporary file in the same
/// folder is written and fsynced, renamed over the target, and the folder fsynced so the rename
/// survives a crash. On failure the temporary file is removed.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    tmp.write_all(bytes).and_then(|_| tmp.as_file().sync_all()).map_err(|e| Error::io(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    // Durability of the rename itself; not every platform can open a folder for this.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Parse a JSON file, naming the file (and line and column) when it is malformed.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::data(path, e.line(), format!("malformed JSON: {e}")))
}

pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(value)?;
    s.push('\n');
    atomic_write(path, s.as_bytes())
}

pub fn write_jsonl<T: serde::Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut s = String::new();
    for r in rows {
        s.push_str(&serde_json::to_string(r)?);
        s.push('\n');
    }
    atomic_write(path, s.as_bytes())
}

/// Read a JSONL file. The one rule for every JSONL file mores reads or appends to: a last line
/// without its newline was cut short by a kill and does not count (readers skip it, [`JsonlLog`]
/// cuts it off on open); a malformed line anywhere else is corruption and an error naming the line.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(parse_jsonl(path, &bytes)?.0)
}

/// Rows of the complete lines, and the byte length those lines take.
fn parse_jsonl<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<(Vec<T>, usize)> {
    let complete = bytes.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
    let text = std::str::from_utf8(&bytes[..complete]).map_err(|e| Error::data(path, 0, format!("not UTF-8: {e}")))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(line).map_err(|e| Error::data(path, i + 1, format!("malformed line: {e}")))?);
    }
    Ok((out, complete))
}

/// An append-only JSONL log (scoring cache, generation output and status, training curve).
/// Opening reads the complete lines and cuts off a half-written last one; each append writes
/// whole lines and syncs them, so a kill loses at most the lines in flight.
#[derive(Debug)]
pub struct JsonlLog {
    path: PathBuf,
    file: std::fs::File,
}

impl JsonlLog {
    /// Open (creating it if missing) and return the rows already there.
    pub fn open<T: serde::de::DeserializeOwned>(path: &Path) -> Result<(Self, Vec<T>)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let bytes = if path.exists() { std::fs::read(path).map_err(|e| Error::io(path, e))? } else { Vec::new() };
        let (rows, keep) = parse_jsonl(path, &bytes)?;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
        if keep < bytes.len() {
            file.set_len(keep as u64).map_err(|e| Error::io(path, e))?;
        }
        Ok((Self { path: path.to_path_buf(), file }, rows))
    }

    /// Start the log afresh with `rows` (atomically), then append from there.
    pub fn create<T: serde::Serialize>(path: &Path, rows: &[T]) -> Result<Self> {
        write_jsonl(path, rows)?;
        let file = std::fs::OpenOptions::new().append(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    pub fn append<T: serde::Serialize>(&mut self, rows: &[T]) -> Result<()> {
        let mut buf = String::new();
        for r in rows {
            buf.push_str(&serde_json::to_string(r)?);
            buf.push('\n');
        }
        self.file.write_all(buf.as_bytes()).and_then(|_| self.file.sync_data()).map_err(|e| Error::io(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_log_repairs_a_cut_last_line_then_appends() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.jsonl");
        std::fs::write(&p, "{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        let (mut log, rows) = JsonlLog::open::<serde_json::Value>(&p).unwrap();
        assert_eq!(rows.len(), 2);
        log.append(&[serde_json::json!({"a": 3})]).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n");
        // A bad line that is not the last is corruption, named by its line.
        std::fs::write(&p, "{\"a\":1}\n{\"a\n{\"a\":2}\n").unwrap();
        let e = JsonlLog::open::<serde_json::Value>(&p).unwrap_err().to_string();
        assert!(e.contains("log.jsonl:2:"), "{e}");
    }

    #[test]
    fn atomic_write_replaces_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        // The target is a folder: the rename fails, the error names it, nothing is left over.
        let d = dir.path().join("sub");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("keep"), b"x").unwrap();
        assert!(atomic_write(&d, b"three").is_err());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        assert_eq!(std::fs::read(d.join("keep")).unwrap(), b"x");
    }

    #[test]
    fn read_json_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.json");
        std::fs::write(&p, "{\n  \"a\": 1,\n  oops\n}").unwrap();
        let e = read_json::<serde_json::Value>(&p).unwrap_err().to_string();
        assert!(e.contains("c.json:3:"), "{e}");
    }
}
