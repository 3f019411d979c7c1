//! Errors of the configuration contract: every one names the file and the field.

use std::fmt;

/// One invalid value: which file, which field (a dotted path such as `users[2].home`), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub file: String,
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(file: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.field, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML could not be parsed into the schema (syntax, unknown field, wrong type).
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    /// The YAML parsed but one or more values are invalid.
    #[error("{}", render_fields(.0))]
    Invalid(Vec<FieldError>),
    /// The file could not be read.
    #[error("{file}: cannot read: {message}")]
    Read { file: String, message: String },
}

impl ConfigError {
    /// The field-level errors, if this is a validation error.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ConfigError::Invalid(errors) => errors,
            _ => &[],
        }
    }
}

fn render_fields(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
