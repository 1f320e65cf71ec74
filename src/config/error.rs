//! Errors of the process config: they name the file and the field.

use thiserror::Error;

/// A process config that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not YAML, or not the schema (unknown field, wrong type); carries line and column.
    #[error("{file}: invalid yaml: {message}")]
    Yaml {
        /// The file.
        file: String,
        /// serde_yaml's message, with the location.
        message: String,
    },
    /// A field with a value that cannot be used.
    #[error("{file}: field {field}: {problem}")]
    Field {
        /// The file.
        file: String,
        /// Dotted path of the field.
        field: String,
        /// What is wrong, with the bad value.
        problem: String,
    },
}
