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

/// The most bytes mores reads from one input file of each kind. Inputs are read only from regular
/// files (a device such as `/dev/zero` or a FIFO never ends, or blocks), and never beyond their cap,
/// so a hostile or mistaken path ends in one error line instead of unbounded reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// TOML recipes and their includes: 1 MiB.
    Recipe,
    /// JSON files (configs, manifests, results, cards, splits, checkpoints' state): 256 MiB.
    Json,
    /// `tokenizer.json`: 512 MiB.
    Tokenizer,
    /// JSONL datasets, logs, caches and samples; survey tables: 4 GiB.
    Table,
    /// Adapter weights read whole: 16 GiB.
    Weights,
    /// Streamed inputs (model weights, the respondent-level survey CSV, hashed files): any size,
    /// regular files only.
    Stream,
}

impl Cap {
    pub fn bytes(self) -> u64 {
        match self {
            Cap::Recipe => 1 << 20,
            Cap::Json => 256 << 20,
            Cap::Tokenizer => 512 << 20,
            Cap::Table => 4 << 30,
            Cap::Weights => 16 << 30,
            Cap::Stream => u64::MAX,
        }
    }
    fn what(self) -> &'static str {
        match self {
            Cap::Recipe => "a recipe",
            Cap::Json => "a JSON file",
            Cap::Tokenizer => "a tokenizer",
            Cap::Table => "a JSONL or table file",
            Cap::Weights => "an adapter's weights",
            Cap::Stream => "an input",
        }
    }
}

/// Human form of a byte count for error lines (`1 MiB`, `4 GiB`, `1234 bytes`).
pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n => format!("{n} bytes"),
    }
}

/// The length of input file `path` if it is a regular file within `cap`; otherwise an error
/// naming the path and what to give instead. Looks at the file without opening it, so a FIFO
/// does not block.
pub fn check_input(path: &Path, cap: Cap) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        let kind = if meta.is_dir() { "a folder" } else { "not a regular file (a device, FIFO or socket never ends)" };
        return Err(Error::Invalid(format!("{}: {kind}; give a regular file", path.display())));
    }
    if meta.len() > cap.bytes() {
        return Err(Error::Invalid(format!(
            "{}: {} bytes, over the {} cap on {}; is this the right file?",
            path.display(),
            meta.len(),
            human_bytes(cap.bytes()),
            cap.what()
        )));
    }
    Ok(meta.len())
}

/// Open input file `path` for reading after [`check_input`].
pub fn open_input(path: &Path, cap: Cap) -> Result<std::fs::File> {
    check_input(path, cap)?;
    std::fs::File::open(path).map_err(|e| Error::io(path, e))
}

/// The bytes of input file `path`, a regular file within `cap`. Reads at most `cap` bytes even if
/// the file grows while it is read.
pub fn read_input(path: &Path, cap: Cap) -> Result<Vec<u8>> {
    use std::io::Read;
    let len = check_input(path, cap)?;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = Vec::with_capacity(len.min(cap.bytes()) as usize);
    f.take(cap.bytes()).read_to_end(&mut buf).map_err(|e| Error::io(path, e))?;
    Ok(buf)
}

/// [`read_input`] as UTF-8 text, naming the file when it is not.
pub fn read_input_text(path: &Path, cap: Cap) -> Result<String> {
    String::from_utf8(read_input(path, cap)?).map_err(|e| Error::data(path, 0, format!("not UTF-8: {e}")))
}

/// Parse a JSON file, naming the file (and line and column) when it is malformed.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_input_text(path, Cap::Json)?;
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
    let bytes = read_input(path, Cap::Table)?;
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
        let bytes = if path.exists() { read_input(path, Cap::Table)? } else { Vec::new() };
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

/// The sha256 of regular file `path` (streamed: any size).
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = open_input(path, Cap::Stream)?;
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
