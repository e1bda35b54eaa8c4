//! Signal definitions: declared in configuration, compiled and checked once.
//!
//! A definition names the events it reads (types and attribute filters), the
//! value it extracts, how values aggregate and over which window. The same
//! compiled definition drives the speed layer, the batch layer and serving.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use signals_schemas::{Event, EventType, Millis};

use crate::aggregate::{set_members, SortedMarks, State};
use crate::session::SessionMeasure;

/// A signal definition as written in the configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Event types read; empty means every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// Field path → required value; every pair must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filter: BTreeMap<String, String>,
    /// One of [`AggregationKind::NAMES`].
    pub aggregation: String,
    /// Field path the aggregation reads: `item_id`, `query`, `event_type`
    /// or `attributes.<key>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Most values returned (`last_distinct`, `top_k`, optional for `set`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// `lifetime` (default) or a duration such as `1h`, `24h`, `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// For `set`: event types that add the value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    /// For `set`: event types that remove the value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// For session aggregations: consecutive events more than this apart
    /// start a new session (default `30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<String>,
}

/// Where a value comes from in an event.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    ItemId,
    Query,
    EventType,
    Attribute(String),
}

impl Field {
    pub fn parse(path: &str) -> Option<Field> {
        match path {
            "item_id" => Some(Field::ItemId),
            "query" => Some(Field::Query),
            "event_type" => Some(Field::EventType),
            _ => path
                .strip_prefix("attributes.")
                .filter(|key| !key.is_empty())
                .map(|key| Field::Attribute(key.to_owned())),
        }
    }

    /// The field's value in `event`, if the event has one.
    pub fn get<'e>(&self, event: &'e Event) -> Option<&'e str> {
        match self {
            Field::ItemId => event.item_id.as_deref(),
            Field::Query => event.query.as_deref(),
            Field::EventType => Some(event.event_type.as_str()),
            Field::Attribute(key) => event.attributes.get(key),
        }
    }
}

/// A set of event types, as a bit mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventTypes(u8);

impl EventTypes {
    pub const ALL: EventTypes = EventTypes(0b1_1111);

    fn bit(t: EventType) -> u8 {
        1 << (t as u8)
    }

    pub fn insert(&mut self, t: EventType) {
        self.0 |= Self::bit(t);
    }

    pub fn contains(self, t: EventType) -> bool {
        self.0 & Self::bit(t) != 0
    }

    pub fn union(self, other: EventTypes) -> EventTypes {
        EventTypes(self.0 | other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// How the extracted values of matching events combine.
#[derive(Clone, Debug, PartialEq)]
pub enum Aggregation {
    /// Number of matching events.
    Count,
    /// Sum of a numeric field.
    Sum(Field),
    /// Smallest value of a numeric field, or null.
    Min(Field),
    /// Largest value of a numeric field, or null.
    Max(Field),
    /// Distinct values, newest first, at most `limit`.
    LastDistinct { field: Field, limit: usize },
    /// Values whose latest event is of an `add` type, newest first.
    Set {
        field: Field,
        add: EventTypes,
        remove: EventTypes,
        limit: Option<usize>,
    },
    /// Most frequent values: count desc, then value asc, at most `limit`.
    TopK { field: Field, limit: usize },
    /// Number of distinct values.
    DistinctCount(Field),
    /// Earliest event time, or null.
    FirstSeen,
    /// Latest event time, or null.
    LastSeen,
    /// Sessions of the matching events (split where consecutive events are
    /// more than `gap` apart), measured at `at`.
    Sessions {
        gap: Millis,
        measure: SessionMeasure,
    },
}

/// The session gap when a definition names none, as the contract fixes it.
pub const DEFAULT_SESSION_GAP: Millis = 30 * 60_000;

/// The aggregation names accepted in configuration.
pub struct AggregationKind;

impl AggregationKind {
    pub const NAMES: [&'static str; 13] = [
        "count",
        "sum",
        "min",
        "max",
        "last_distinct",
        "set",
        "top_k",
        "distinct_count",
        "first_seen",
        "last_seen",
        "session_count",
        "session_minutes",
        "current_session",
    ];
}

/// Which events, by time, a signal covers when evaluated at `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// Every event before `at`.
    Lifetime,
    /// Events in `[at - duration, at)`.
    Sliding(Millis),
}

impl Window {
    /// Whether an event at `time` counts when evaluating at `at`.
    pub fn covers(self, time: Millis, at: Millis) -> bool {
        match self {
            Window::Lifetime => time < at,
            Window::Sliding(width) => time < at && time >= at.saturating_sub(width),
        }
    }
}

/// A checked definition, ready to evaluate.
#[derive(Clone, Debug, PartialEq)]
pub struct SignalDefinition {
    pub name: String,
    /// Its position among the definitions compiled with it: tables of
    /// per-signal values index by it rather than look names up.
    pub index: usize,
    pub events: EventTypes,
    pub filter: Vec<(Field, String)>,
    pub aggregation: Aggregation,
    pub window: Window,
    /// The definition as configured, for display and fingerprints.
    pub spec: SignalSpec,
}

impl SignalDefinition {
    /// Whether `event` feeds this signal at all (type and filters; not time).
    pub fn matches(&self, event: &Event) -> bool {
        self.events.contains(event.event_type)
            && self
                .filter
                .iter()
                .all(|(field, value)| field.get(event) == Some(value.as_str()))
    }

    /// Whether an event at `time` is read when evaluating at `at`. Session
    /// signals read every event before `at`: whether a session starts in
    /// the window depends on the events just before it.
    pub fn reads(&self, time: Millis, at: Millis) -> bool {
        let (from, until) = self.read_range(at);
        from <= time && time < until
    }

    /// The event times [`SignalDefinition::reads`] at `at`: `[from, until)`.
    pub fn read_range(&self, at: Millis) -> (Millis, Millis) {
        match (&self.aggregation, self.window) {
            (Aggregation::Sessions { .. }, _) | (_, Window::Lifetime) => (Millis::MIN, at),
            (_, Window::Sliding(width)) => (at.saturating_sub(width), at),
        }
    }

    /// Whether a batch record keeps pre-aggregated state of this signal
    /// over the events older than its horizon: lifetime signals, and
    /// sessions (the last session before the horizon, which events after it
    /// can join).
    pub fn keeps_base_state(&self) -> bool {
        self.window == Window::Lifetime || matches!(self.aggregation, Aggregation::Sessions { .. })
    }

    /// Adds one event before the horizon (in any order) to the state a
    /// batch record keeps of them: see [`SignalDefinition::keeps_base_state`].
    pub fn add_old(&self, state: &mut State, event: &Event) {
        if self.matches(event) {
            state.add(&self.aggregation, event);
        }
    }

    /// The base state kept of what [`SignalDefinition::add_old`] built.
    pub fn finish_base(&self, state: State) -> State {
        match &state {
            // Sessions counted at any `at` within retention start at or
            // after the horizon (session windows count in the widest
            // window); only the last old session can reach them.
            State::Sessions(sessions) => State::Sessions(sessions.last_only()),
            _ => state,
        }
    }

    /// The signal's value at `at` from the state of the events it read.
    pub fn value(&self, state: &State, at: Millis) -> Value {
        match (&self.aggregation, state) {
            (Aggregation::Sessions { gap, measure }, State::Sessions(sessions)) => {
                sessions.value(*measure, self.window, at, *gap)
            }
            _ => state.finish(&self.aggregation),
        }
    }

    /// The value at `at` of `state` and a set's running state `marks`
    /// (of a disjoint set of events), as if merged.
    pub fn value_over(&self, state: &State, marks: Option<&SortedMarks>, at: Millis) -> Value {
        match (marks, &self.aggregation, state) {
            (None, ..) => self.value(state, at),
            (Some(marks), Aggregation::Set { limit, .. }, State::Set(newer)) => {
                Value::from_iter(marks.members_with(newer, *limit))
            }
            (Some(marks), ..) => {
                let mut merged = state.clone();
                marks.merge_into(&mut merged);
                self.value(&merged, at)
            }
        }
    }

    /// [`SignalDefinition::value_over`]'s JSON. A set's members (a heavy
    /// user's wishlist: thousands) are written straight from the state,
    /// never built as a [`Value`] first.
    pub fn encode_over(
        &self,
        state: &State,
        marks: Option<&SortedMarks>,
        at: Millis,
    ) -> Box<RawValue> {
        let encoded = match (marks, &self.aggregation, state) {
            (Some(marks), Aggregation::Set { limit, .. }, State::Set(newer)) => {
                serde_json::value::to_raw_value(&marks.members_with(newer, *limit))
            }
            (None, Aggregation::Set { limit, .. }, State::Set(set)) => {
                serde_json::value::to_raw_value(&set_members(set, *limit))
            }
            _ => serde_json::value::to_raw_value(&self.value_over(state, marks, at)),
        };
        // Strings, numbers and JSON values always encode.
        encoded.expect("a value always encodes")
    }

    /// A stable digest of the definition, so stored state can tell which
    /// version of a definition produced it.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::to_string(&self.spec).unwrap_or_default();
        format!("{:016x}", fnv1a64(canonical.as_bytes()))
    }
}

/// FNV-1a (64 bit): a digest stable across builds, platforms and
/// processes, for fingerprints, storage buckets and samples.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Why a definition was refused; names the definition and the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("signal `{signal}`: {problem}")]
pub struct DefinitionError {
    pub signal: String,
    pub problem: String,
}

/// Every definition in force, checked together (names are unique).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Definitions {
    signals: Vec<SignalDefinition>,
}

impl Definitions {
    pub fn compile(specs: &[SignalSpec]) -> Result<Definitions, DefinitionError> {
        let mut seen = BTreeSet::new();
        let mut signals = Vec::with_capacity(specs.len());
        for spec in specs {
            let mut definition = compile(spec)?;
            definition.index = signals.len();
            if !seen.insert(definition.name.clone()) {
                return Err(problem(spec, "defined more than once"));
            }
            signals.push(definition);
        }
        Ok(Definitions { signals })
    }

    pub fn iter(&self) -> impl Iterator<Item = &SignalDefinition> {
        self.signals.iter()
    }

    pub fn get(&self, name: &str) -> Option<&SignalDefinition> {
        self.signals.iter().find(|s| s.name == name)
    }

    /// The definition at [`SignalDefinition::index`] `index`.
    pub fn by_index(&self, index: usize) -> Option<&SignalDefinition> {
        self.signals.get(index)
    }

    pub fn len(&self) -> usize {
        self.signals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.signals.is_empty()
    }

    /// The widest sliding window, which bounds how much raw history serving needs.
    pub fn max_window(&self) -> Millis {
        self.signals
            .iter()
            .filter_map(|s| match s.window {
                Window::Sliding(width) => Some(width),
                Window::Lifetime => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// Looks up names, in order; the first unknown name is the error.
    pub fn select<'a, S: AsRef<str>>(
        &'a self,
        names: &[S],
    ) -> Result<Vec<&'a SignalDefinition>, String> {
        names
            .iter()
            .map(|n| self.get(n.as_ref()).ok_or_else(|| n.as_ref().to_owned()))
            .collect()
    }
}

impl<'a> IntoIterator for &'a Definitions {
    type Item = &'a SignalDefinition;
    type IntoIter = std::slice::Iter<'a, SignalDefinition>;
    fn into_iter(self) -> Self::IntoIter {
        self.signals.iter()
    }
}

fn problem(spec: &SignalSpec, message: impl fmt::Display) -> DefinitionError {
    DefinitionError {
        signal: spec.name.clone(),
        problem: message.to_string(),
    }
}

fn event_types(
    spec: &SignalSpec,
    key: &str,
    names: &[String],
) -> Result<EventTypes, DefinitionError> {
    let mut types = EventTypes::default();
    for name in names {
        let t = EventType::parse(name).ok_or_else(|| {
            problem(
                spec,
                format_args!(
                    "`{key}` names unknown event type `{name}` (known: {})",
                    EventType::ALL.map(EventType::as_str).join(", ")
                ),
            )
        })?;
        types.insert(t);
    }
    Ok(types)
}

/// A positive duration in milliseconds, or the problem with `key`.
fn duration(spec: &SignalSpec, key: &str, text: &str) -> Result<Millis, DefinitionError> {
    let parsed = humantime::parse_duration(text).map_err(|e| {
        problem(
            spec,
            format_args!("`{key}` = `{text}` is not a duration like 30m, 1h, 7d: {e}"),
        )
    })?;
    Millis::try_from(parsed.as_millis())
        .ok()
        .filter(|ms| *ms > 0)
        .ok_or_else(|| problem(spec, format_args!("`{key}` = `{text}` is out of range")))
}

fn session_gap(spec: &SignalSpec) -> Result<Millis, DefinitionError> {
    match spec.gap.as_deref() {
        None => Ok(DEFAULT_SESSION_GAP),
        Some(text) => duration(spec, "gap", text),
    }
}

fn compile(spec: &SignalSpec) -> Result<SignalDefinition, DefinitionError> {
    let name_ok = !spec.name.is_empty()
        && spec.name.len() <= 64
        && spec
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !name_ok {
        return Err(problem(
            spec,
            "`name` must be 1-64 characters of a-z, 0-9 and _",
        ));
    }

    let field = || -> Result<Field, DefinitionError> {
        let path = spec.field.as_deref().ok_or_else(|| {
            problem(
                spec,
                format_args!("`field` is required for `{}`", spec.aggregation),
            )
        })?;
        Field::parse(path).ok_or_else(|| {
            problem(
                spec,
                format_args!(
                    "`field` = `{path}` is not a field (use item_id, query, event_type or attributes.<key>)"
                ),
            )
        })
    };
    let limit = || -> Result<usize, DefinitionError> {
        match spec.limit {
            Some(0) => Err(problem(spec, "`limit` must be at least 1")),
            Some(n) => Ok(n),
            None => Err(problem(
                spec,
                format_args!("`limit` is required for `{}`", spec.aggregation),
            )),
        }
    };
    let no_field = || {
        if spec.field.is_some() {
            Err(problem(
                spec,
                format_args!("`field` has no meaning for `{}`", spec.aggregation),
            ))
        } else {
            Ok(())
        }
    };

    let mut events = if spec.events.is_empty() {
        EventTypes::ALL
    } else {
        event_types(spec, "events", &spec.events)?
    };
    if spec.aggregation != "set" && !(spec.add.is_empty() && spec.remove.is_empty()) {
        return Err(problem(spec, "`add` and `remove` only apply to `set`"));
    }
    let session_measure = match spec.aggregation.as_str() {
        "session_count" => Some(SessionMeasure::Count),
        "session_minutes" => Some(SessionMeasure::Minutes),
        "current_session" => Some(SessionMeasure::Current),
        _ => None,
    };
    if spec.gap.is_some() && session_measure.is_none() {
        return Err(problem(
            spec,
            format_args!("`gap` has no meaning for `{}`", spec.aggregation),
        ));
    }
    if spec.limit.is_some()
        && !matches!(spec.aggregation.as_str(), "last_distinct" | "top_k" | "set")
    {
        return Err(problem(
            spec,
            format_args!("`limit` has no meaning for `{}`", spec.aggregation),
        ));
    }

    let aggregation = match spec.aggregation.as_str() {
        "count" => no_field().map(|()| Aggregation::Count)?,
        "sum" => Aggregation::Sum(field()?),
        "min" => Aggregation::Min(field()?),
        "max" => Aggregation::Max(field()?),
        "last_distinct" => Aggregation::LastDistinct {
            field: field()?,
            limit: limit()?,
        },
        "top_k" => Aggregation::TopK {
            field: field()?,
            limit: limit()?,
        },
        "distinct_count" => Aggregation::DistinctCount(field()?),
        "first_seen" => no_field().map(|()| Aggregation::FirstSeen)?,
        "last_seen" => no_field().map(|()| Aggregation::LastSeen)?,
        "session_count" | "session_minutes" | "current_session" => {
            no_field()?;
            let measure = session_measure.unwrap_or(SessionMeasure::Count);
            match (measure, spec.window.as_deref()) {
                (SessionMeasure::Current, Some(_)) => {
                    return Err(problem(
                        spec,
                        "`window` has no meaning for `current_session` (it is the session holding the last event before `at`)",
                    ))
                }
                (SessionMeasure::Count | SessionMeasure::Minutes, None | Some("lifetime")) => {
                    return Err(problem(
                        spec,
                        format_args!(
                            "`{}` needs a sliding `window` such as 7d (it counts the sessions starting in [at - window, at))",
                            spec.aggregation
                        ),
                    ))
                }
                _ => {}
            }
            Aggregation::Sessions {
                gap: session_gap(spec)?,
                measure,
            }
        }
        "set" => {
            if !spec.events.is_empty() {
                return Err(problem(
                    spec,
                    "`set` reads the event types of `add` and `remove`; leave `events` out",
                ));
            }
            let add = event_types(spec, "add", &spec.add)?;
            let remove = event_types(spec, "remove", &spec.remove)?;
            if add.is_empty() {
                return Err(problem(spec, "`add` is required for `set`"));
            }
            if add.union(remove) != EventTypes(add.0 ^ remove.0) {
                return Err(problem(spec, "an event type cannot both add and remove"));
            }
            events = add.union(remove);
            Aggregation::Set {
                field: field()?,
                add,
                remove,
                limit: match spec.limit {
                    Some(0) => return Err(problem(spec, "`limit` must be at least 1")),
                    other => other,
                },
            }
        }
        other => {
            return Err(problem(
                spec,
                format_args!(
                    "unknown aggregation `{other}` (known: {})",
                    AggregationKind::NAMES.join(", ")
                ),
            ))
        }
    };

    let window = match spec.window.as_deref() {
        None | Some("lifetime") => Window::Lifetime,
        Some(text) => {
            let duration = humantime::parse_duration(text).map_err(|e| {
                problem(
                    spec,
                    format_args!(
                        "`window` = `{text}` is not `lifetime` or a duration like 1h, 7d: {e}"
                    ),
                )
            })?;
            let millis = Millis::try_from(duration.as_millis())
                .ok()
                .filter(|ms| *ms > 0)
                .ok_or_else(|| {
                    problem(spec, format_args!("`window` = `{text}` is out of range"))
                })?;
            Window::Sliding(millis)
        }
    };

    let filter = spec
        .filter
        .iter()
        .map(|(path, value)| {
            Field::parse(path)
                .map(|f| (f, value.clone()))
                .ok_or_else(|| {
                    problem(
                        spec,
                        format_args!("`filter` key `{path}` is not a field (use item_id, query, event_type or attributes.<key>)"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;

    Ok(SignalDefinition {
        name: spec.name.clone(),
        index: 0,
        events,
        filter,
        aggregation,
        window,
        spec: spec.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml_text: &str) -> SignalSpec {
        toml::from_str(toml_text).expect("test spec parses")
    }

    fn error(toml_text: &str) -> String {
        match Definitions::compile(&[spec(toml_text)]) {
            Ok(_) => panic!("expected an error for {toml_text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn compiles_a_windowed_count() {
        let defs = Definitions::compile(&[spec(
            "name = \"views_1h\"\nevents = [\"view\"]\naggregation = \"count\"\nwindow = \"1h\"",
        )])
        .expect("valid");
        let d = defs.get("views_1h").expect("present");
        assert_eq!(d.window, Window::Sliding(3_600_000));
        assert!(d.events.contains(EventType::View));
        assert!(!d.events.contains(EventType::Click));
        assert_eq!(defs.max_window(), 3_600_000);
    }

    #[test]
    fn errors_name_the_signal_and_the_problem() {
        assert_eq!(
            error("name = \"x\"\naggregation = \"avg\""),
            "signal `x`: unknown aggregation `avg` (known: count, sum, min, max, last_distinct, set, top_k, distinct_count, first_seen, last_seen, session_count, session_minutes, current_session)"
        );
        assert_eq!(
            error("name = \"x\"\naggregation = \"top_k\"\nfield = \"item_id\""),
            "signal `x`: `limit` is required for `top_k`"
        );
        assert_eq!(
            error("name = \"x\"\naggregation = \"count\"\nevents = [\"purchase\"]"),
            "signal `x`: `events` names unknown event type `purchase` (known: view, click, search, wishlist_add, wishlist_remove)"
        );
        assert_eq!(
            error("name = \"x\"\naggregation = \"count\"\nwindow = \"soon\""),
            "signal `x`: `window` = `soon` is not `lifetime` or a duration like 1h, 7d: expected number at 0"
        );
        assert_eq!(
            error("name = \"x\"\naggregation = \"sum\"\nfield = \"price\""),
            "signal `x`: `field` = `price` is not a field (use item_id, query, event_type or attributes.<key>)"
        );
        assert_eq!(
            error("name = \"x\"\naggregation = \"set\"\nfield = \"item_id\"\nadd = [\"view\"]\nremove = [\"view\"]"),
            "signal `x`: an event type cannot both add and remove"
        );
        assert_eq!(
            error("name = \"Bad-Name\"\naggregation = \"count\""),
            "signal `Bad-Name`: `name` must be 1-64 characters of a-z, 0-9 and _"
        );
    }

    #[test]
    fn session_definitions_compile_and_their_errors_are_precise() {
        let defs = Definitions::compile(&[
            spec("name = \"s\"\naggregation = \"session_count\"\nwindow = \"7d\""),
            spec("name = \"c\"\naggregation = \"current_session\"\ngap = \"10m\""),
        ])
        .expect("valid");
        let s = defs.get("s").expect("present");
        assert_eq!(
            s.aggregation,
            Aggregation::Sessions {
                gap: DEFAULT_SESSION_GAP,
                measure: SessionMeasure::Count
            }
        );
        assert!(s.keeps_base_state());
        assert!(
            s.reads(0, 7 * 86_400_000 + 1),
            "sessions read before the window"
        );
        assert_eq!(defs.max_window(), 7 * 86_400_000);
        assert_eq!(
            defs.get("c").map(|c| c.aggregation.clone()),
            Some(Aggregation::Sessions {
                gap: 600_000,
                measure: SessionMeasure::Current
            })
        );
        assert_eq!(
            error("name = \"x\"\naggregation = \"session_minutes\""),
            "signal `x`: `session_minutes` needs a sliding `window` such as 7d (it counts the sessions starting in [at - window, at))"
        );
        assert_eq!(
            error("name = \"x\"\naggregation = \"current_session\"\nwindow = \"1h\""),
            "signal `x`: `window` has no meaning for `current_session` (it is the session holding the last event before `at`)"
        );
        assert_eq!(
            error("name = \"x\"\naggregation = \"count\"\ngap = \"1h\""),
            "signal `x`: `gap` has no meaning for `count`"
        );
        assert_eq!(
            error("name = \"x\"\naggregation = \"current_session\"\ngap = \"0s\""),
            "signal `x`: `gap` = `0s` is out of range"
        );
    }

    #[test]
    fn duplicate_names_are_refused() {
        let one = spec("name = \"x\"\naggregation = \"count\"");
        let err = Definitions::compile(&[one.clone(), one]).expect_err("duplicate");
        assert_eq!(err.to_string(), "signal `x`: defined more than once");
    }

    #[test]
    fn unknown_keys_are_refused_by_the_parser() {
        let parsed: Result<SignalSpec, _> =
            toml::from_str("name = \"x\"\naggregation = \"count\"\nwindw = \"1h\"");
        let message = parsed.expect_err("unknown key").to_string();
        assert!(message.contains("unknown field `windw`"), "{message}");
    }

    #[test]
    fn fingerprint_follows_the_definition() {
        let a = compile(&spec(
            "name = \"x\"\naggregation = \"count\"\nwindow = \"1h\"",
        ))
        .expect("valid");
        let b = compile(&spec(
            "name = \"x\"\naggregation = \"count\"\nwindow = \"2h\"",
        ))
        .expect("valid");
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }

    #[test]
    fn sliding_window_is_half_open() {
        let w = Window::Sliding(10);
        assert!(!w.covers(100, 100));
        assert!(w.covers(99, 100));
        assert!(w.covers(90, 100));
        assert!(!w.covers(89, 100));
        assert!(Window::Lifetime.covers(i64::MIN, 100));
        assert!(!Window::Lifetime.covers(100, 100));
    }
}
