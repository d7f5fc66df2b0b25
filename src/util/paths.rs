//! Where the shipped inputs (recipes, survey data, fetched models) are found when a relative path
//! does not exist from the working directory: a binary installed with `cargo install` and run from
//! another folder still finds `recipes/probe/wvs.toml` or `data/wvs`. Outputs are never moved: only
//! paths that are read go through [`locate`].
use std::path::{Path, PathBuf};

/// The environment variable naming a mores folder (one with `recipes/`, `data/`, `checkpoints/`).
pub const HOME_VAR: &str = "MORES_HOME";

/// Folders a relative input path is looked up in, in order, after the working directory:
/// `$MORES_HOME`; the folders above the running binary (a `target/release/mores` inside a
/// checkout finds the checkout); the folder the binary was built from, if it still exists.
pub fn search_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(h) = std::env::var_os(HOME_VAR).filter(|h| !h.is_empty()) {
        roots.push(PathBuf::from(h));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(3).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    roots
}

/// `path` itself when it is absolute or exists from the working directory; else the first of
/// [`search_roots`] under which it exists; else `path` unchanged (the reader then names it in its
/// error).
pub fn locate(path: &Path) -> PathBuf {
    if path.as_os_str().is_empty() || path.is_absolute() || path.exists() {
        return path.to_path_buf();
    }
    search_roots().into_iter().map(|r| r.join(path)).find(|p| p.exists()).unwrap_or_else(|| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_and_absolute_paths_stay_as_given() {
        assert_eq!(locate(Path::new("Cargo.toml")), PathBuf::from("Cargo.toml"));
        assert_eq!(locate(Path::new("/no/such/file")), PathBuf::from("/no/such/file"));
        assert_eq!(locate(Path::new("no-such-file-anywhere.toml")), PathBuf::from("no-such-file-anywhere.toml"));
    }

    #[test]
    fn the_build_folder_is_a_search_root() {
        assert!(search_roots().contains(&PathBuf::from(env!("CARGO_MANIFEST_DIR"))));
    }
}
