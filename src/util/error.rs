//! One error type for the library. Every variant names the thing that was wrong and, where there
//! is one, what the user can do about it: the CLI prints `error: {self}` on one line.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // `err`, not `source`: as an error source the CLI's `{e:#}` printed the OS message twice
    // ("x.jsonl: No such file or directory (os error 2): No such file or directory (os error 2)").
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },

    #[error("{path}:{line}: {msg}")]
    Data { path: PathBuf, line: usize, msg: String },

    #[error("unknown question id {0:?}: run `mores survey stats` to list the questions in the survey data")]
    UnknownQuestion(String),

    #[error("unknown country {0:?}: use an ISO 3166-1 alpha-3 code listed in data/wvs/countries.csv")]
    UnknownCountry(String),

    #[error("{path}: {msg}")]
    Model { path: PathBuf, msg: String },

    #[error("recipe {path}: {msg}")]
    Recipe { path: PathBuf, msg: String },

    #[error("{0}")]
    Invalid(String),

    #[error("{}", candle_line(.0))]
    Candle(candle_core::Error),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Candle(e)
    }
}

/// A candle error's message on one line, without the backtrace candle attaches when
/// RUST_BACKTRACE is set.
pub fn candle_line(e: &candle_core::Error) -> String {
    fn strip(e: &candle_core::Error) -> String {
        match e {
            candle_core::Error::WithBacktrace { inner, .. } => strip(inner),
            candle_core::Error::Context { inner, context } => format!("{context}: {}", strip(inner)),
            candle_core::Error::WithPath { inner, path } => format!("{}: {}", path.display(), strip(inner)),
            e => e.to_string(),
        }
    }
    strip(e).split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), err: source }
    }
    pub fn model(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Model { path: path.into(), msg: msg.into() }
    }
    pub fn data(path: impl Into<PathBuf>, line: usize, msg: impl Into<String>) -> Self {
        Error::Data { path: path.into(), line, msg: msg.into() }
    }
}

/// Tokenizers' errors are boxed trait objects; wrap them once here.
pub(crate) fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}
