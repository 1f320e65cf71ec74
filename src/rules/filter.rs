//! Series filters: space-separated `label:glob` terms, ANDed, `!` negating a
//! term. Parsed once into a frozen [`Filter`]; plain values skip the glob engine.
//!
//! Globs (globset): `*` any run of characters (`/` included), `?` one byte,
//! `[a-z]` / `[!a-z]` one byte in / not in a set, `{a,b}` alternatives, `\`
//! escapes the next character (`\ ` puts a space in a glob). `?` and classes
//! work byte-wise: exact for ASCII, use `*` around non-ASCII characters.
//! A positive term needs the label present; a negated one passes when it is absent.
//!
//! ```
//! use tailfold::model::Labels;
//! use tailfold::rules::Filter;
//!
//! let filter = Filter::parse("__name__:http_* service:{api,web}-? !env:dev*").unwrap();
//! let labels = Labels::from_pairs([("__name__", "http_requests"), ("service", "api-1")]);
//! assert!(filter.matches(&labels));
//! assert!(!filter.matches(&labels.with("env", "dev-eu")));
//! assert!(Filter::parse("service=api").is_err());
//! ```

use std::fmt;

use globset::{GlobBuilder, GlobMatcher};
use thiserror::Error;

use crate::model::Labels;

/// Why a filter could not be parsed. Every variant names the offending term.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum FilterError {
    /// The filter has no terms at all.
    #[error("empty filter: expected space-separated label:glob terms, e.g. \"__name__:http_* service:api\"")]
    Empty,
    /// A term without the `:` between label and glob.
    #[error("term {term:?} has no ':': expected label:glob, e.g. \"service:api-*\"")]
    MissingColon {
        /// The whole term.
        term: String,
    },
    /// A term with nothing before the `:`.
    #[error("empty label name in term {term:?}")]
    EmptyLabel {
        /// The whole term.
        term: String,
    },
    /// A label name outside `[a-zA-Z_][a-zA-Z0-9_]*`.
    #[error("invalid label name {label:?} in term {term:?}: expected [a-zA-Z_][a-zA-Z0-9_]*")]
    InvalidLabel {
        /// The label name as written.
        label: String,
        /// The whole term.
        term: String,
    },
    /// A term with nothing after the `:`.
    #[error(
        "empty glob in term {term:?}: write \"label:*\" to require the label, \"!label:*\" to require its absence"
    )]
    EmptyGlob {
        /// The whole term.
        term: String,
    },
    /// The glob does not parse.
    #[error("invalid glob {glob:?} in term {term:?}: {reason}")]
    InvalidGlob {
        /// The glob as written.
        glob: String,
        /// The whole term.
        term: String,
        /// What the glob parser objected to.
        reason: String,
    },
}

/// How one term tests a label value. The plain variants exist because most
/// filters are exact names or prefixes, and those need no regex.
#[derive(Clone, Debug)]
enum ValuePattern {
    /// `*`: any value, as long as the label is present.
    Any,
    /// No metacharacters (escapes resolved): equality.
    Exact(Box<str>),
    /// `prefix*` with a plain prefix: `starts_with`.
    Prefix(Box<str>),
    /// Anything else, through globset.
    Glob(GlobMatcher),
}

impl ValuePattern {
    fn compile(glob: &str) -> Result<ValuePattern, globset::Error> {
        // Build through globset even for the fast paths, so that what globset
        // refuses is refused here too, whatever path would have matched.
        let matcher = GlobBuilder::new(glob)
            .literal_separator(false)
            .backslash_escape(true)
            .build()?
            .compile_matcher();
        Ok(match plain_glob(glob) {
            Some(PlainGlob::Any) => ValuePattern::Any,
            Some(PlainGlob::Exact(value)) => ValuePattern::Exact(value.into()),
            Some(PlainGlob::Prefix(prefix)) => ValuePattern::Prefix(prefix.into()),
            None => ValuePattern::Glob(matcher),
        })
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            ValuePattern::Any => true,
            ValuePattern::Exact(expected) => value == &**expected,
            ValuePattern::Prefix(prefix) => value.starts_with(&**prefix),
            ValuePattern::Glob(matcher) => matcher.is_match(value),
        }
    }

    /// Cheaper patterns are tested first: the terms are ANDed, so order is free.
    fn cost(&self) -> u8 {
        match self {
            ValuePattern::Any => 0,
            ValuePattern::Exact(_) => 1,
            ValuePattern::Prefix(_) => 2,
            ValuePattern::Glob(_) => 3,
        }
    }
}

/// A glob that needs no glob engine.
enum PlainGlob {
    Any,
    Exact(String),
    Prefix(String),
}

/// Recognises `*`, `literal` and `literal*` (backslash escapes resolved); `None` for real globs.
fn plain_glob(glob: &str) -> Option<PlainGlob> {
    if glob == "*" {
        return Some(PlainGlob::Any);
    }
    let mut literal = String::with_capacity(glob.len());
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => literal.push(chars.next()?),
            '*' if chars.peek().is_none() => return Some(PlainGlob::Prefix(literal)),
            '*' | '?' | '[' | ']' | '{' | '}' => return None,
            _ => literal.push(c),
        }
    }
    Some(PlainGlob::Exact(literal))
}

/// One `[!]label:glob` term.
#[derive(Clone, Debug)]
struct Term {
    label: Box<str>,
    negated: bool,
    pattern: ValuePattern,
}

impl Term {
    fn matches(&self, labels: &Labels) -> bool {
        match labels.get(&self.label) {
            // An absent label fails a positive term and passes a negated one.
            None => self.negated,
            Some(value) => self.pattern.matches(value) != self.negated,
        }
    }
}

/// Collects terms, then freezes them into a [`Filter`] with [`FilterBuilder::build`].
#[derive(Clone, Debug, Default)]
pub struct FilterBuilder {
    terms: Vec<Term>,
    text: Vec<String>,
}

impl FilterBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one term as written in a filter: `label:glob` or `!label:glob`.
    pub fn term(&mut self, term: &str) -> Result<&mut Self, FilterError> {
        let (negated, body) = match term.strip_prefix('!') {
            Some(body) => (true, body),
            None => (false, term),
        };
        let (label, glob) = body
            .split_once(':')
            .ok_or_else(|| FilterError::MissingColon { term: term.into() })?;
        self.push(term, label, glob, negated)
    }

    /// Adds a term requiring `label` to be present with a value matching `glob`.
    pub fn include(&mut self, label: &str, glob: &str) -> Result<&mut Self, FilterError> {
        self.push(&format!("{label}:{glob}"), label, glob, false)
    }

    /// Adds a term requiring `label` to be absent or to have a value not matching `glob`.
    pub fn exclude(&mut self, label: &str, glob: &str) -> Result<&mut Self, FilterError> {
        self.push(&format!("!{label}:{glob}"), label, glob, true)
    }

    fn push(&mut self, term: &str, label: &str, glob: &str, negated: bool) -> Result<&mut Self, FilterError> {
        if label.is_empty() {
            return Err(FilterError::EmptyLabel { term: term.into() });
        }
        if !is_label_name(label) {
            return Err(FilterError::InvalidLabel {
                label: label.into(),
                term: term.into(),
            });
        }
        if glob.is_empty() {
            return Err(FilterError::EmptyGlob { term: term.into() });
        }
        let pattern = ValuePattern::compile(glob).map_err(|error| FilterError::InvalidGlob {
            glob: glob.into(),
            term: term.into(),
            reason: error.kind().to_string(),
        })?;
        self.terms.push(Term {
            label: label.into(),
            negated,
            pattern,
        });
        self.text.push(term.into());
        Ok(self)
    }

    /// Freezes the terms; a filter without terms is refused (it would match everything by accident).
    pub fn build(&self) -> Result<Filter, FilterError> {
        if self.terms.is_empty() {
            return Err(FilterError::Empty);
        }
        let mut terms = self.terms.clone();
        terms.sort_by_key(|term| term.pattern.cost());
        Ok(Filter {
            terms: terms.into(),
            text: self.text.join(" ").into(),
        })
    }
}

/// A frozen, thread-safe filter: all terms must match.
#[derive(Clone, Debug)]
pub struct Filter {
    terms: Box<[Term]>,
    text: Box<str>,
}

impl Filter {
    /// Parses space-separated terms (`\ ` puts a space inside a glob).
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let mut builder = FilterBuilder::new();
        for term in split_terms(text) {
            builder.term(term)?;
        }
        builder.build()
    }

    /// Whether every term matches `labels`.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.terms.iter().all(|term| term.matches(labels))
    }
}

impl fmt::Display for Filter {
    /// The terms as written, single-space separated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Splits on whitespace that is not backslash-escaped.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut start = None;
    let mut escaped = false;
    for (index, c) in text.char_indices() {
        if c.is_whitespace() && !escaped {
            if let Some(begin) = start.take() {
                terms.push(&text[begin..index]);
            }
        } else if start.is_none() {
            start = Some(index);
        }
        escaped = c == '\\' && !escaped;
    }
    if let Some(begin) = start {
        terms.push(&text[begin..]);
    }
    terms
}

/// Prometheus label names: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub(crate) fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied())
    }

    fn matches(filter: &str, pairs: &[(&str, &str)]) -> bool {
        Filter::parse(filter).unwrap().matches(&labels(pairs))
    }

    #[test]
    fn each_glob_feature_matches_and_refuses() {
        let cases: &[(&str, &str, bool)] = &[
            ("svc:api", "api", true),
            ("svc:api", "api2", false),
            ("svc:api-*", "api-eu/1", true),
            ("svc:api-*", "web-eu", false),
            ("svc:*-eu", "api-eu", true),
            ("svc:*-eu", "api-us", false),
            ("svc:a?i", "api", true),
            ("svc:a?i", "aapi", false),
            ("svc:[a-c]pi", "bpi", true),
            ("svc:[a-c]pi", "dpi", false),
            ("svc:[!a-c]pi", "dpi", true),
            ("svc:[!a-c]pi", "api", false),
            ("svc:{api,web}", "web", true),
            ("svc:{api,web}", "db", false),
            ("svc:a\\*", "a*", true),
            ("svc:a\\*", "ab", false),
            ("svc:*", "", true),
            ("svc:a\\ b", "a b", true),
            ("svc:*é*", "café-1", true),
            ("svc:*é*", "cafe", false),
        ];
        for (filter, value, expected) in cases {
            assert_eq!(matches(filter, &[("svc", value)]), *expected, "{filter} on {value:?}");
        }
    }

    #[test]
    fn terms_are_anded() {
        let filter = "__name__:http_* svc:api";
        assert!(matches(filter, &[("__name__", "http_x"), ("svc", "api")]));
        assert!(!matches(filter, &[("__name__", "http_x"), ("svc", "web")]));
        assert!(!matches(filter, &[("__name__", "grpc_x"), ("svc", "api")]));
    }

    #[test]
    fn absent_labels_fail_positive_terms_and_pass_negated_ones() {
        assert!(!matches("svc:*", &[("env", "prod")]));
        assert!(matches("!svc:*", &[("env", "prod")]));
        assert!(!matches("!svc:*", &[("svc", "")]));
        assert!(matches("!env:dev*", &[("env", "prod")]));
        assert!(!matches("!env:dev*", &[("env", "dev-1")]));
        assert!(matches("!env:{dev,test}", &[("env", "prod")]));
        assert!(!matches("!env:{dev,test}", &[("env", "test")]));
    }

    #[test]
    fn fast_paths_agree_with_globset() {
        let globs = ["api", "api-*", "*", "a\\*b", "a\\*", "a\\ b", "x.y", "a,b", "é*"];
        let values = [
            "", "api", "api-", "api-1", "a*b", "a*", "ab", "a b", "x.y", "xzy", "a,b", "éa",
        ];
        for glob in globs {
            let pattern = ValuePattern::compile(glob).unwrap();
            assert!(
                !matches!(pattern, ValuePattern::Glob(_)),
                "{glob} should take a fast path"
            );
            let reference = GlobBuilder::new(glob)
                .literal_separator(false)
                .backslash_escape(true)
                .build()
                .unwrap()
                .compile_matcher();
            for value in values {
                assert_eq!(pattern.matches(value), reference.is_match(value), "{glob} on {value:?}");
            }
        }
        assert!(matches!(ValuePattern::compile("a*b").unwrap(), ValuePattern::Glob(_)));
        assert!(matches!(ValuePattern::compile("a**").unwrap(), ValuePattern::Glob(_)));
    }

    #[test]
    fn broken_filters_name_the_term() {
        let error = |text: &str| Filter::parse(text).unwrap_err().to_string();
        assert!(error("").starts_with("empty filter"));
        assert!(error("   ").starts_with("empty filter"));
        assert_eq!(
            error("__name__:x service=api"),
            "term \"service=api\" has no ':': expected label:glob, e.g. \"service:api-*\""
        );
        assert_eq!(error("!:x"), "empty label name in term \"!:x\"");
        assert!(error("se-rvice:x").starts_with("invalid label name \"se-rvice\" in term \"se-rvice:x\""));
        assert!(error("svc:").starts_with("empty glob in term \"svc:\""));
        assert_eq!(
            error("svc:[a-"),
            "invalid glob \"[a-\" in term \"svc:[a-\": unclosed character class; missing ']'"
        );
        assert!(error("svc:{a,b").starts_with("invalid glob \"{a,b\" in term \"svc:{a,b\""));
        assert!(error("svc:a\\").starts_with("invalid glob \"a\\\\\""));
    }

    #[test]
    fn builder_terms_and_display() {
        let mut builder = FilterBuilder::new();
        builder.include("svc", "api").unwrap().exclude("env", "dev").unwrap();
        let filter = builder.build().unwrap();
        assert_eq!(filter.to_string(), "svc:api !env:dev");
        assert!(filter.matches(&labels(&[("svc", "api")])));
        assert!(!filter.matches(&labels(&[("svc", "api"), ("env", "dev")])));
        assert_eq!(FilterBuilder::new().build().unwrap_err(), FilterError::Empty);
        assert_eq!(split_terms(" a:b\tc:d\\ e  "), vec!["a:b", "c:d\\ e"]);
    }
}
