//! What makes an input unreadable (as opposed to readable but not expressible, which is a
//! [`super::Note`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    /// `line` is 1-based.
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("no iptables-save input: give at least one --iptables-save FILE")]
    NoRules,
}

impl ImportError {
    pub(super) fn at(file: &str, line: usize, message: impl Into<String>) -> Self {
        ImportError::Syntax {
            file: file.to_owned(),
            line,
            message: message.into(),
        }
    }
}
