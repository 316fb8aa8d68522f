//! The library's error type: every failure a user or the file system can cause is a variant that
//! names the file, key or byte it is about, so the command edge can print one clear line.

use std::path::{Path, PathBuf};

/// Errors of the charlab library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error, with the path it happened on.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A TOML file that does not parse or does not fit the schema.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// A value that parses but is out of range (key and reason).
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: String, message: String },
    /// A corpus that is not valid UTF-8.
    #[error("{path}: not valid UTF-8 at byte offset {offset}")]
    Utf8 { path: PathBuf, offset: usize },
    /// A corpus problem (missing, empty, too small, failed fetch or checksum).
    #[error("corpus: {0}")]
    Corpus(String),
    /// A checkpoint or run directory that cannot be used.
    #[error("{path}: {message}")]
    Run { path: PathBuf, message: String },
    /// A path given on the command line that is not what the command needs (missing, not a
    /// run, not a sweep), or a run that cannot be continued as asked.
    #[error("{path}: {message}")]
    Usage { path: PathBuf, message: String },
    /// A device that was asked for but is not available.
    #[error("device: {0}")]
    Device(String),
    /// A cluster scheduler could not be reached or refused a submission.
    #[error("slurm: {0}")]
    Launcher(String),
    /// Text given to the sampler that the model cannot take.
    #[error("sample: {0}")]
    Sample(String),
    /// A run that asks for more than the machine has (memory).
    #[error("too large: {0}")]
    Resources(String),
    /// An error from the tensor library.
    #[error("tensor: {0}")]
    Candle(candle_core::Error),
}

/// candle attaches a backtrace to its errors when `RUST_BACKTRACE` is set, and prints it as
/// part of the message: a user gets one line, so it is dropped here.
impl From<candle_core::Error> for Error {
    fn from(mut e: candle_core::Error) -> Self {
        while let candle_core::Error::WithBacktrace { inner, .. } = e {
            e = *inner;
        }
        Error::Candle(e)
    }
}

/// Result alias for the library.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A command-line path that does not fit the command (exit code 2).
    pub fn usage(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Usage {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    /// Another charlab process at work where a command would write (a sweep on its experiment,
    /// a trainer on its run): the command does not fit the state it found, a usage error (exit
    /// 2), in one shape whatever the command.
    pub fn busy(path: impl AsRef<Path>, what: &str, pid: Option<u32>) -> Self {
        let pid = pid.map_or(String::new(), |p| format!(" (pid {p})"));
        Error::usage(
            path,
            format!(
                "another charlab {what}{pid} is running on it: wait for it to end or stop it first"
            ),
        )
    }

    /// A value out of range for `key`.
    pub fn invalid(key: &str, message: impl Into<String>) -> Self {
        Error::Invalid {
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// True for errors caused by what the user gave (exit code 2 at the command edge).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::Config { .. }
                | Error::Invalid { .. }
                | Error::Utf8 { .. }
                | Error::Usage { .. }
                | Error::Corpus(_)
                | Error::Device(_)
                | Error::Sample(_)
                | Error::Resources(_)
        )
    }
}

/// Reads a file the user named (a run config, a sweep file): one that is not there, or is a
/// directory, is a usage error (exit 2), any other failure an I/O error.
pub fn read_named(path: &Path) -> Result<String> {
    if path.is_dir() {
        return Err(Error::usage(path, "is a directory, not a file"));
    }
    std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::usage(path, "no such file"),
        _ => Error::io(path, e),
    })
}

/// Adds the path to an `io::Result`.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
