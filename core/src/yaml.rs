//! The one place that parses YAML.
//!
//! serde_yaml is archived upstream; keeping every call here means a
//! maintained drop-in (serde_yaml_ng) can replace it in one line.

use serde::de::DeserializeOwned;

use crate::error::SpecError;

/// Parses `text` as a YAML document of type `T`.
///
/// A syntax error, an unknown field or a value of the wrong type becomes a
/// [`SpecError`] whose field is the path serde_yaml reports (or `<document>`
/// when it has none) and whose reason carries the line and column.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, SpecError> {
    serde_yaml::from_str(text).map_err(|e| {
        let message = e.to_string();
        // serde_yaml 0.9 prefixes errors inside a value with "path: ".
        match message.split_once(": ") {
            Some((path, reason))
                if !path.contains(' ') && (path.contains('.') || path.contains('[')) =>
            {
                SpecError::new(path, reason)
            }
            _ => SpecError::new("<document>", message),
        }
    })
}

/// Serializes `value` as YAML.
pub fn to_string<T: serde::Serialize>(value: &T) -> String {
    // Serializing plain data structs (no maps with non-string keys) cannot fail.
    serde_yaml::to_string(value).unwrap_or_else(|e| format!("# cannot serialize: {e}\n"))
}
