//! One writer per output. Cluster arrays and impatient users start a second run on the same
//! `--out`; without a lock both did all the work and every generated record came out twice. An
//! advisory lock (released by the OS when the process ends, even on kill -9) is taken on a lock
//! file beside the output, holding the writer's pid for the message.
use crate::util::error::{Error, Result};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Held while a process writes an output; dropping it releases the lock. The lock file itself
/// stays: deleting it would let a third process lock a new file while the second still holds
/// the old one.
#[derive(Debug)]
pub struct OutputLock {
    _file: std::fs::File,
    pub path: PathBuf,
}

impl OutputLock {
    /// Lock output folder `dir` (lock file `dir/.mores.lock`).
    pub fn dir(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Self::take(&dir.join(".mores.lock"), dir)
    }

    /// Lock output file `file` (lock file `.NAME.lock` beside it).
    pub fn file(file: &Path) -> Result<Self> {
        let name = file.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Self::take(&dir.join(format!(".{name}.lock")), file)
    }

    fn take(lock: &Path, what: &Path) -> Result<Self> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(lock)
            .map_err(|e| Error::io(lock, e))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = f.read_to_string(&mut pid);
                let pid = pid.trim();
                let who = if pid.is_empty() { String::new() } else { format!(" (pid {pid})") };
                return Err(Error::Invalid(format!(
                    "another mores process{who} is writing {}: wait for it to finish, or choose another --out",
                    what.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(lock, e)),
        }
        f.set_len(0)
            .and_then(|_| f.rewind())
            .and_then(|_| writeln!(f, "{}", std::process::id()))
            .map_err(|e| Error::io(lock, e))?;
        Ok(Self { _file: f, path: lock.to_path_buf() })
    }
}
