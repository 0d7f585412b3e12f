//! Writing to standard output without panicking when the reader is gone.
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe (`schedctl get jobs |
//! head -1`) fails with `BrokenPipe`, on which `println!` panics. Every
//! command prints through [`outln!`]/[`print`], which return the error, and
//! `main` ends quietly with exit 0 when [`is_broken_pipe`] says that is
//! what stopped the command: the reader has all it wanted.

use std::fmt;
use std::io::{self, Write};

/// Writes `text` to stdout (flushed: the pipe error shows up here, not at
/// exit).
pub fn print(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Writes raw bytes (a task's output) to stdout.
pub fn write_bytes(data: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(data)?;
    out.flush()
}

/// Writes one formatted line to stdout.
pub fn line(args: fmt::Arguments<'_>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// `println!` that returns the write error instead of panicking on it.
macro_rules! outln {
    () => { $crate::out::print("\n") };
    ($($arg:tt)*) => { $crate::out::line(format_args!($($arg)*)) };
}
pub(crate) use outln;

/// Whether `e` comes from writing to a pipe whose reader has gone.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
