//! `-o table|wide|json|yaml`: how a command prints what it got.
//!
//! JSON and YAML are the same value (a view struct of the command)
//! serialized two ways; `table` is the short human form and `wide` adds
//! columns. `--json` stays as a hidden alias of `-o json` for scripts
//! written against older versions.

use serde::Serialize;

use crate::out;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns for people.
    Table,
    /// The table with more columns.
    Wide,
    /// Pretty-printed JSON.
    Json,
    /// YAML: the same fields as JSON.
    Yaml,
}

impl Format {
    /// Whether this is one of the machine-readable formats.
    pub fn structured(self) -> bool {
        matches!(self, Format::Json | Format::Yaml)
    }
}

/// The `-o` flag (and its hidden `--json` alias) of a command that prints.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Output format: table, wide (more columns), json or yaml.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value_t = Format::Table,
        value_name = "FORMAT"
    )]
    output: Format,
    /// The same as `-o json` (kept for older scripts).
    #[arg(long, hide = true, conflicts_with = "output")]
    json: bool,
}

impl OutputArgs {
    /// The table format, for callers that print a table of their own accord.
    pub fn table() -> Self {
        OutputArgs {
            output: Format::Table,
            json: false,
        }
    }

    pub fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            self.output
        }
    }
}

/// Prints `value` as JSON or YAML.
pub fn print_structured<T: Serialize>(value: &T, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Yaml => out::print(&serde_yaml::to_string(value)?)?,
        // Table formats print their own text; a caller that gets here
        // wanted the data, which JSON holds.
        Format::Json | Format::Table | Format::Wide => {
            out::print(&(serde_json::to_string_pretty(value)? + "\n"))?
        }
    }
    Ok(())
}

/// Prints `value` as one line of JSON, or as one YAML document (for
/// streams: `watch -o json` is one object per line).
pub fn print_streamed<T: Serialize>(value: &T, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Yaml => out::print(&format!("---\n{}", serde_yaml::to_string(value)?))?,
        _ => out::print(&(serde_json::to_string(value)? + "\n"))?,
    }
    Ok(())
}
