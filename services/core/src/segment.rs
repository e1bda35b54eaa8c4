//! Segments: named rules over signal values, declared in configuration.
//!
//! A rule compares numeric signals with numbers and combines comparisons
//! with `and`, `or`, `not` and parentheses:
//!
//! ```text
//! rule       := or
//! or         := and ("or" and)*
//! and        := unary ("and" unary)*
//! unary      := "not" unary | "(" or ")" | comparison
//! comparison := signal (">=" | ">" | "<=" | "<" | "==" | "!=") number
//! ```
//!
//! Rules are checked against the signal definitions once, at start-up: every
//! name must be a defined signal whose value is a number (`count`, `sum`,
//! `min`, `max`, `distinct_count`, `session_count`, `session_minutes`). A
//! signal without a value (`min`/`max` of no events: null) satisfies no
//! comparison.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use signals_schemas::Millis;

use crate::definition::{Aggregation, Definitions, SignalDefinition};
use crate::session::SessionMeasure;
use crate::view::UserView;

/// A segment as written in the configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// For example `views_24h >= 10 and not searches_24h < 3`.
    pub rule: String,
}

/// Why a segment was refused; names the segment and the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("segment `{segment}`: {problem}")]
pub struct SegmentError {
    pub segment: String,
    pub problem: String,
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    Ge,
    Gt,
    Le,
    Lt,
    Eq,
    Ne,
}

impl Comparison {
    const ALL: [(&'static str, Comparison); 6] = [
        (">=", Comparison::Ge),
        ("<=", Comparison::Le),
        ("==", Comparison::Eq),
        ("!=", Comparison::Ne),
        (">", Comparison::Gt),
        ("<", Comparison::Lt),
    ];

    fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Comparison::Ge => left >= right,
            Comparison::Gt => left > right,
            Comparison::Le => left <= right,
            Comparison::Lt => left < right,
            Comparison::Eq => left == right,
            Comparison::Ne => left != right,
        }
    }
}

/// A compiled rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    Compare {
        signal: String,
        op: Comparison,
        value: f64,
    },
    Not(Box<Rule>),
    And(Box<Rule>, Box<Rule>),
    Or(Box<Rule>, Box<Rule>),
}

impl Rule {
    /// Whether the rule holds for the signal values `value_of` gives.
    pub fn holds<'v>(&self, value_of: &impl Fn(&str) -> Option<&'v Value>) -> bool {
        match self {
            Rule::Compare { signal, op, value } => value_of(signal)
                .and_then(Value::as_f64)
                .is_some_and(|v| op.holds(v, *value)),
            Rule::Not(inner) => !inner.holds(value_of),
            Rule::And(a, b) => a.holds(value_of) && b.holds(value_of),
            Rule::Or(a, b) => a.holds(value_of) || b.holds(value_of),
        }
    }

    fn signals<'a>(&'a self, into: &mut BTreeSet<&'a str>) {
        match self {
            Rule::Compare { signal, .. } => {
                into.insert(signal);
            }
            Rule::Not(inner) => inner.signals(into),
            Rule::And(a, b) | Rule::Or(a, b) => {
                a.signals(into);
                b.signals(into);
            }
        }
    }
}

/// One checked segment.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub name: String,
    pub rule: Rule,
    pub spec: SegmentSpec,
}

/// Every segment in force, checked together against the definitions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Segments {
    segments: Vec<Segment>,
}

impl Segments {
    pub fn compile(
        specs: &[SegmentSpec],
        definitions: &Definitions,
    ) -> Result<Segments, SegmentError> {
        let mut seen = BTreeSet::new();
        let mut segments = Vec::with_capacity(specs.len());
        for spec in specs {
            let problem = |p: String| SegmentError {
                segment: spec.name.clone(),
                problem: p,
            };
            if !valid_name(&spec.name) {
                return Err(problem(
                    "`name` must be 1-64 characters of a-z, 0-9 and _".into(),
                ));
            }
            if !seen.insert(spec.name.clone()) {
                return Err(problem("defined more than once".into()));
            }
            let rule = Parser::new(&spec.rule)
                .rule()
                .map_err(|e| problem(format!("`rule` = `{}`: {e}", spec.rule)))?;
            let mut names = BTreeSet::new();
            rule.signals(&mut names);
            for name in names {
                check_numeric(name, definitions)
                    .map_err(|e| problem(format!("`rule` = `{}`: {e}", spec.rule)))?;
            }
            segments.push(Segment {
                name: spec.name.clone(),
                rule,
                spec: spec.clone(),
            });
        }
        segments.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Segments { segments })
    }

    /// Segments by name, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name == name)
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The signals any rule reads, sorted.
    pub fn signals(&self) -> Vec<&str> {
        let mut names = BTreeSet::new();
        for segment in &self.segments {
            segment.rule.signals(&mut names);
        }
        names.into_iter().collect()
    }

    /// The names of the segments whose rule holds, sorted.
    pub fn members<'v>(&self, value_of: impl Fn(&str) -> Option<&'v Value>) -> Vec<String> {
        self.segments
            .iter()
            .filter(|s| s.rule.holds(&value_of))
            .map(|s| s.name.clone())
            .collect()
    }
}

/// A user's segments followed through time: see [`Segments::walk`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Walk {
    /// (instant, segment, entered) in time order; within an instant,
    /// by segment name.
    pub transitions: Vec<(Millis, String, bool)>,
    /// The segments at the walk's end.
    pub segments: Vec<String>,
    /// The instant the walk ended at: `until`, or the last instant visited
    /// when cut short.
    pub at: Millis,
    /// The next instant at which time alone may change them.
    pub next_due: Option<Millis>,
}

impl Segments {
    /// Follows one user's membership from `before` (their segments as last
    /// recorded) to `until`: the segments are evaluated at every instant
    /// from `due` on at which time alone may change a signal the rules read
    /// ([`UserView::next_change`]), then at `until`, and each difference is
    /// a transition at that instant. At most `max_steps` instants are
    /// visited; a walk cut short ends at the last one visited and is due
    /// again at the next.
    pub fn walk(
        &self,
        view: &UserView,
        definitions: &[&SignalDefinition],
        before: &[String],
        due: Option<Millis>,
        until: Millis,
        max_steps: usize,
    ) -> Walk {
        let mut walk = Walk {
            transitions: Vec::new(),
            segments: before.to_vec(),
            at: until,
            next_due: due,
        };
        let mut steps = 0;
        loop {
            let at = match walk.next_due {
                Some(due) if due <= until && steps < max_steps => due,
                Some(due) if due <= until => return walk,
                _ => until,
            };
            steps += 1;
            let (values, _) = view.evaluate(definitions, at);
            let members = self.members(|name| {
                definitions
                    .iter()
                    .position(|d| d.name == name)
                    .and_then(|i| values.get(i))
            });
            for segment in self.iter().map(|s| &s.name) {
                let was = walk.segments.contains(segment);
                let is = members.contains(segment);
                if was != is {
                    walk.transitions.push((at, segment.clone(), is));
                }
            }
            walk.segments = members;
            walk.at = at;
            walk.next_due = view.next_change(definitions, at);
            if at == until {
                return walk;
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn check_numeric(name: &str, definitions: &Definitions) -> Result<(), String> {
    let definition = definitions
        .get(name)
        .ok_or_else(|| format!("`{name}` is not a defined signal"))?;
    match definition.aggregation {
        Aggregation::Count
        | Aggregation::Sum(_)
        | Aggregation::Min(_)
        | Aggregation::Max(_)
        | Aggregation::DistinctCount(_)
        | Aggregation::Sessions {
            measure: SessionMeasure::Count | SessionMeasure::Minutes,
            ..
        } => Ok(()),
        _ => Err(format!(
            "`{name}` is a `{}` signal, not a number (rules compare count, sum, min, max, distinct_count, session_count and session_minutes signals)",
            definition.spec.aggregation
        )),
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token<'a> {
    Name(&'a str),
    Number(f64),
    Op(Comparison),
    Open,
    Close,
}

impl fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Name(n) => write!(f, "`{n}`"),
            Token::Number(n) => write!(f, "`{n}`"),
            Token::Op(op) => {
                let text = Comparison::ALL
                    .iter()
                    .find(|(_, o)| o == op)
                    .map_or("?", |(t, _)| *t);
                write!(f, "`{text}`")
            }
            Token::Open => f.write_str("`(`"),
            Token::Close => f.write_str("`)`"),
        }
    }
}

/// A recursive-descent parser over the rule's tokens; errors name the
/// column (1-based) where the rule stops making sense.
struct Parser<'a> {
    tokens: Vec<(usize, Token<'a>)>,
    next: usize,
    lex_error: Option<String>,
    len: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Parser<'a> {
        let mut tokens = Vec::new();
        let mut lex_error = None;
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            if c.is_ascii_whitespace() {
                i += 1;
            } else if c == b'(' || c == b')' {
                tokens.push((i, if c == b'(' { Token::Open } else { Token::Close }));
                i += 1;
            } else if let Some((op_text, op)) = Comparison::ALL
                .iter()
                .find(|(t, _)| text[i..].starts_with(t))
            {
                tokens.push((i, Token::Op(*op)));
                i += op_text.len();
            } else if c.is_ascii_alphabetic() || c == b'_' {
                let end = text[i..]
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                    .map_or(text.len(), |n| i + n);
                tokens.push((i, Token::Name(&text[i..end])));
                i = end;
            } else if c.is_ascii_digit() || c == b'-' || c == b'.' {
                let end = text[i + 1..]
                    .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
                    .map_or(text.len(), |n| i + 1 + n);
                match text[i..end].parse::<f64>() {
                    Ok(n) if n.is_finite() => tokens.push((i, Token::Number(n))),
                    _ => {
                        lex_error = Some(format!(
                            "`{}` at column {} is not a number",
                            &text[i..end],
                            i + 1
                        ));
                        break;
                    }
                }
                i = end;
            } else {
                let ch = text[i..].chars().next().unwrap_or('?');
                lex_error = Some(format!("unexpected `{ch}` at column {}", i + 1));
                break;
            }
        }
        Parser {
            tokens,
            next: 0,
            lex_error,
            len: text.len(),
        }
    }

    fn rule(mut self) -> Result<Rule, String> {
        if let Some(e) = self.lex_error.take() {
            return Err(e);
        }
        let rule = self.or()?;
        match self.tokens.get(self.next) {
            None => Ok(rule),
            Some((at, token)) => Err(format!(
                "expected `and`, `or` or the end at column {}, found {token}",
                at + 1
            )),
        }
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        matches!(self.tokens.get(self.next), Some((_, Token::Name(n))) if *n == keyword)
    }

    fn or(&mut self) -> Result<Rule, String> {
        let mut rule = self.and()?;
        while self.peek_keyword("or") {
            self.next += 1;
            rule = Rule::Or(Box::new(rule), Box::new(self.and()?));
        }
        Ok(rule)
    }

    fn and(&mut self) -> Result<Rule, String> {
        let mut rule = self.unary()?;
        while self.peek_keyword("and") {
            self.next += 1;
            rule = Rule::And(Box::new(rule), Box::new(self.unary()?));
        }
        Ok(rule)
    }

    fn unary(&mut self) -> Result<Rule, String> {
        if self.peek_keyword("not") {
            self.next += 1;
            return Ok(Rule::Not(Box::new(self.unary()?)));
        }
        match self.take() {
            Some((_, Token::Open)) => {
                let rule = self.or()?;
                match self.take() {
                    Some((_, Token::Close)) => Ok(rule),
                    other => Err(self.expected("`)`", other)),
                }
            }
            Some((_, Token::Name(signal))) if !matches!(signal, "and" | "or" | "not") => {
                let op = match self.take() {
                    Some((_, Token::Op(op))) => op,
                    other => {
                        return Err(self.expected("a comparison (>=, >, <=, <, ==, !=)", other))
                    }
                };
                match self.take() {
                    Some((_, Token::Number(value))) => Ok(Rule::Compare {
                        signal: signal.to_owned(),
                        op,
                        value,
                    }),
                    other => Err(self.expected("a number", other)),
                }
            }
            other => Err(self.expected("a signal name, `not` or `(`", other)),
        }
    }

    fn take(&mut self) -> Option<(usize, Token<'a>)> {
        let token = self.tokens.get(self.next).cloned();
        if token.is_some() {
            self.next += 1;
        }
        token
    }

    fn expected(&self, what: &str, found: Option<(usize, Token<'a>)>) -> String {
        match found {
            Some((at, token)) => format!("expected {what} at column {}, found {token}", at + 1),
            None => format!("expected {what} at column {}, found the end", self.len + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::SignalSpec;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn definitions() -> Definitions {
        let spec = |name: &str, aggregation: &str, window: Option<&str>| SignalSpec {
            name: name.into(),
            description: None,
            events: vec![],
            filter: BTreeMap::new(),
            aggregation: aggregation.into(),
            field: None,
            limit: None,
            window: window.map(str::to_owned),
            add: vec![],
            remove: vec![],
            gap: None,
        };
        Definitions::compile(&[
            spec("views_24h", "count", Some("24h")),
            spec("searches_24h", "count", Some("24h")),
            spec("sessions_7d", "session_count", Some("7d")),
            spec("last_active", "last_seen", None),
        ])
        .expect("valid")
    }

    fn segment(name: &str, rule: &str) -> SegmentSpec {
        SegmentSpec {
            name: name.into(),
            description: None,
            rule: rule.into(),
        }
    }

    fn error(rule: &str) -> String {
        Segments::compile(&[segment("s", rule)], &definitions())
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn rules_evaluate_with_precedence_and_nulls() {
        let segments = Segments::compile(
            &[
                segment("engaged", "sessions_7d >= 3"),
                segment("both", "views_24h >= 10 and searches_24h > 2"),
                segment(
                    "either_not",
                    "not (views_24h < 10) or searches_24h == 3 and views_24h != 0",
                ),
            ],
            &definitions(),
        )
        .expect("valid");
        let values: BTreeMap<&str, Value> = [
            ("views_24h", json!(10)),
            ("searches_24h", json!(2)),
            ("sessions_7d", Value::Null),
        ]
        .into();
        assert_eq!(segments.members(|n| values.get(n)), vec!["either_not"]);
        let values: BTreeMap<&str, Value> = [
            ("views_24h", json!(1)),
            ("searches_24h", json!(3)),
            ("sessions_7d", json!(3)),
        ]
        .into();
        assert_eq!(
            segments.members(|n| values.get(n)),
            vec!["either_not", "engaged"]
        );
        assert_eq!(
            segments.signals(),
            vec!["searches_24h", "sessions_7d", "views_24h"]
        );
    }

    #[test]
    fn a_walk_finds_the_transitions_time_alone_makes() {
        use crate::testing::event;
        use signals_schemas::EventType::{Search, View};
        let text = r#"
            [[signals]]
            name = "views_100"
            events = ["view"]
            aggregation = "count"
            window = "100ms"
            [[signals]]
            name = "searches_100"
            events = ["search"]
            aggregation = "count"
            window = "100ms"
        "#;
        let defs = crate::testing::compile_definitions(text);
        let segments = Segments::compile(
            &[
                segment("viewer", "views_100 >= 2"),
                segment("quiet", "views_100 == 0 and searches_100 == 0"),
            ],
            &defs,
        )
        .expect("valid");
        let all: Vec<&SignalDefinition> = defs.iter().collect();
        let events = vec![
            event("e1", View, "a", 10),
            event("e2", View, "b", 30),
            event("e3", Search, "q", 50),
        ];
        let record = crate::view::UserRecord::compact(&defs, events, Millis::MIN);
        let view = UserView::merge(Some(std::sync::Arc::new(record)), []);
        // From nothing recorded, walked from 0 through 200: quiet until the
        // first view, viewer once the second view counts (at 31), not
        // viewer when the first leaves (at 111), quiet once every event has
        // left (at 151).
        let walk = segments.walk(&view, &all, &[], Some(0), 200, 100);
        assert_eq!(
            walk.transitions,
            vec![
                (0, "quiet".to_owned(), true),
                (11, "quiet".to_owned(), false),
                (31, "viewer".to_owned(), true),
                (111, "viewer".to_owned(), false),
                (151, "quiet".to_owned(), true),
            ]
        );
        assert_eq!(walk.segments, vec!["quiet"]);
        assert_eq!(walk.next_due, None);
        // Cut short, the walk stops at the last instant it visited.
        let short = segments.walk(&view, &all, &[], Some(0), 200, 3);
        assert_eq!(short.transitions.len(), 3);
        assert_eq!((short.at, short.next_due), (31, Some(51)));
    }

    #[test]
    fn errors_name_the_segment_the_rule_and_the_place() {
        assert_eq!(
            error("views_1h >= 3"),
            "segment `s`: `rule` = `views_1h >= 3`: `views_1h` is not a defined signal"
        );
        assert_eq!(
            error("last_active > 0"),
            "segment `s`: `rule` = `last_active > 0`: `last_active` is a `last_seen` signal, not a number (rules compare count, sum, min, max, distinct_count, session_count and session_minutes signals)"
        );
        assert_eq!(
            error("views_24h >= "),
            "segment `s`: `rule` = `views_24h >= `: expected a number at column 14, found the end"
        );
        assert_eq!(
            error("views_24h => 3"),
            "segment `s`: `rule` = `views_24h => 3`: unexpected `=` at column 11"
        );
        assert_eq!(
            error("(views_24h > 3"),
            "segment `s`: `rule` = `(views_24h > 3`: expected `)` at column 15, found the end"
        );
        assert_eq!(
            error("views_24h > 3 searches_24h > 1"),
            "segment `s`: `rule` = `views_24h > 3 searches_24h > 1`: expected `and`, `or` or the end at column 15, found `searches_24h`"
        );
        assert_eq!(
            error("views_24h ~ 3"),
            "segment `s`: `rule` = `views_24h ~ 3`: unexpected `~` at column 11"
        );
        let dup = Segments::compile(
            &[segment("a", "views_24h > 1"), segment("a", "views_24h > 2")],
            &definitions(),
        )
        .expect_err("duplicate");
        assert_eq!(dup.to_string(), "segment `a`: defined more than once");
    }
}
