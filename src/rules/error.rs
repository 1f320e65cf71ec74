//! Errors of loading a rules file. Each names the file and, for semantic
//! errors, the section, index and name of the rule and the field at fault.

use std::fmt;

use thiserror::Error;

/// A rules file that could not be read, parsed or validated.
///
/// The message is for people (`rules.yaml: mapping_rules[1] "api": field
/// aggregations[2]: unknown aggregation "p9x": ...`); the fields are for code.
#[derive(Debug, Error)]
pub enum RulesError {
    /// The file could not be read.
    #[error("{file}: cannot read: {io}")]
    Read {
        /// The path as given.
        file: String,
        /// What the OS said.
        io: std::io::Error,
    },
    /// The text is not YAML of the rules schema (syntax, unknown field, wrong type).
    #[error("{file}: invalid yaml: {message}")]
    Yaml {
        /// The file name used in messages.
        file: String,
        /// The YAML parser's message, with the field path and position.
        message: String,
        /// 1-based line of the problem, when the parser knows it.
        line: Option<usize>,
        /// 1-based column of the problem, when the parser knows it.
        column: Option<usize>,
    },
    /// A well-formed file with a value that makes no sense.
    #[error("{file}: {location}: field {field}: {problem}")]
    Invalid {
        /// The file name used in messages.
        file: String,
        /// Where in the file: `defaults` or one rule.
        location: RuleLocation,
        /// The field path inside that location: `filter`, `aggregations[2]`, `rollup.name` ...
        field: String,
        /// What is wrong, quoting the bad value.
        problem: String,
    },
}

impl RulesError {
    /// The file name the error is about.
    pub fn file(&self) -> &str {
        match self {
            RulesError::Read { file, .. } | RulesError::Yaml { file, .. } | RulesError::Invalid { file, .. } => file,
        }
    }

    /// The rule (or `defaults`) at fault, for semantic errors.
    pub fn location(&self) -> Option<&RuleLocation> {
        match self {
            RulesError::Invalid { location, .. } => Some(location),
            _ => None,
        }
    }

    /// The field path at fault, for semantic errors.
    pub fn field(&self) -> Option<&str> {
        match self {
            RulesError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    pub(crate) fn yaml(file: &str, error: &serde_yaml::Error) -> RulesError {
        let position = error.location();
        RulesError::Yaml {
            file: file.into(),
            message: error.to_string(),
            line: position.as_ref().map(|p| p.line()),
            column: position.as_ref().map(|p| p.column()),
        }
    }
}

/// The section of the rules file a rule sits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleSection {
    /// `mapping_rules`
    MappingRules,
    /// `rollup_rules`
    RollupRules,
}

impl RuleSection {
    /// The YAML key of the section.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleSection::MappingRules => "mapping_rules",
            RuleSection::RollupRules => "rollup_rules",
        }
    }
}

impl fmt::Display for RuleSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a semantic error sits: the `defaults` section or one rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleLocation {
    /// The `defaults:` section.
    Defaults,
    /// One rule, by section and 0-based index; the name when it has a usable one.
    Rule {
        /// Which list.
        section: RuleSection,
        /// 0-based position in the list.
        index: usize,
        /// The rule's `name`, unless missing.
        name: Option<String>,
    },
}

impl fmt::Display for RuleLocation {
    /// `defaults`, `mapping_rules[1] "api-latency"`, or `rollup_rules[0]` for an unnamed rule.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleLocation::Defaults => f.write_str("defaults"),
            RuleLocation::Rule { section, index, name } => {
                write!(f, "{section}[{index}]")?;
                match name {
                    Some(name) => write!(f, " {name:?}"),
                    None => Ok(()),
                }
            }
        }
    }
}
