use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::testing::arb_event;

fn one(value: Value) -> Result<Event, String> {
    event_from_json(value).map_err(|e| e.0)
}

fn view() -> Value {
    json!({"event_id": "e-1", "user_id": "u-42", "event_type": "view", "item_id": "listing-9",
           "query": null, "event_time": "2026-11-23T10:00:00.123Z", "attributes": {"city": "Paris"}})
}

fn search() -> Value {
    json!({"event_id": "e-2", "user_id": "u-42", "event_type": "search", "query": "lofts",
           "event_time": 1_795_428_000_000_i64})
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().map(|o| o.remove(key));
    base
}

fn body_error(body: &str, content_type: Option<&str>) -> String {
    parse_events(body.as_bytes(), content_type)
        .expect_err("refused whole")
        .0
}

fn retraction_error(body: &str) -> String {
    parse_retraction(body.as_bytes()).expect_err("refused").0
}

#[test]
fn the_contract_example_parses() {
    let event = one(view()).expect("valid");
    assert_eq!(
        event,
        Event {
            event_id: "e-1".into(),
            user_id: "u-42".into(),
            event_type: EventType::View,
            item_id: Some("listing-9".into()),
            query: None,
            event_time: 1_795_428_000_123,
            attributes: Attributes::from([("city", "Paris")]),
        }
    );
    let millis = one(with(view(), "event_time", json!(1_795_428_000_123_i64)));
    assert_eq!(millis, Ok(event.clone()));
    let offset = one(with(
        view(),
        "event_time",
        json!("2026-11-23T11:00:00.123+01:00"),
    ));
    assert_eq!(offset, Ok(event));
}

#[test]
fn null_is_absent_for_optional_fields() {
    let event = one(with(
        with(search(), "item_id", Value::Null),
        "attributes",
        Value::Null,
    ))
    .expect("valid");
    assert_eq!(event.item_id, None);
    assert!(event.attributes.is_empty());
    let event = one(with(view(), "query", json!("q"))).expect("a view may carry a query");
    assert_eq!(event.query.as_deref(), Some("q"));
}

#[test]
fn every_refusal_names_the_field() {
    let search = search;
    let cases = [
        (without(view(), "event_id"), "missing `event_id`"),
        (without(view(), "user_id"), "missing `user_id`"),
        (without(view(), "event_type"), "missing `event_type`"),
        (without(view(), "event_time"), "missing `event_time`"),
        (with(view(), "event_id", Value::Null), "`event_id` must be a string, not null"),
        (with(view(), "user_id", json!(42)), "`user_id` must be a string, not a number"),
        (with(view(), "event_type", json!(["view"])), "`event_type` must be a string, not an array"),
        (with(view(), "item_id", json!({"id": 9})), "`item_id` must be a string, not an object"),
        (with(search(), "query", json!(true)), "`query` must be a string, not a boolean"),
        (
            with(view(), "event_type", json!("purchase")),
            "unknown `event_type` `purchase` (expected one of view, click, search, wishlist_add, wishlist_remove)",
        ),
        (without(view(), "item_id"), "`item_id` is required for view events"),
        (with(with(view(), "event_type", json!("click")), "item_id", Value::Null), "`item_id` is required for click events"),
        (without(with(view(), "event_type", json!("wishlist_add")), "item_id"), "`item_id` is required for wishlist_add events"),
        (without(search(), "query"), "`query` is required for search events"),
        (with(search(), "query", Value::Null), "`query` is required for search events"),
        (with(search(), "query", json!("  ")), "`query` must not be blank for search events"),
        (with(search(), "query", json!("q".repeat(1025))), "`query` is longer than 1024 bytes"),
        (
            with(view(), "event_time", json!("yesterday")),
            "`event_time` must be an RFC 3339 string or integer epoch milliseconds, not \"yesterday\"",
        ),
        (
            with(view(), "event_time", json!(1.5e12)),
            "`event_time` must be an RFC 3339 string or integer epoch milliseconds, not 1500000000000.0",
        ),
        (
            with(view(), "event_time", Value::Null),
            "`event_time` must be an RFC 3339 string or integer epoch milliseconds, not null",
        ),
        (
            with(view(), "event_time", json!(5)),
            "`event_time` 1970-01-01T00:00:00.005Z is outside the years 2000 to 2100",
        ),
        (
            with(view(), "event_time", json!("2101-01-01T00:00:00Z")),
            "`event_time` 2101-01-01T00:00:00.000Z is outside the years 2000 to 2100",
        ),
        (
            with(view(), "colour", json!("red")),
            "unknown field `colour` (expected event_id, user_id, event_type, item_id, query, event_time, attributes)",
        ),
        (with(view(), "attributes", json!(["city"])), "`attributes` must be an object, not an array"),
        (
            with(view(), "attributes", json!({"tags": ["a"]})),
            "`attributes.tags` must be a string, number or boolean, not an array",
        ),
        (
            with(view(), "attributes", json!({"geo": {"lat": 1}})),
            "`attributes.geo` must be a string, number or boolean, not an object",
        ),
        (
            with(view(), "attributes", json!({"city": null})),
            "`attributes.city` must be a string, number or boolean, not null",
        ),
        (
            with(view(), "attributes", Value::Object((0..65).map(|i| (format!("k{i}"), json!("v"))).collect())),
            "`attributes` has 65 entries; at most 64",
        ),
        (with(view(), "attributes", json!({"": "v"})), "attribute keys must not be empty"),
        (
            with(view(), "attributes", json!({"k".repeat(129): "v"})),
            "attribute key `kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk…` is longer than 128 bytes",
        ),
        (
            with(view(), "attributes", json!({"city": "p".repeat(1025)})),
            "`attributes.city` is longer than 1024 bytes",
        ),
        (with(view(), "event_id", json!("")), "`event_id` must not be empty"),
        (with(view(), "event_id", json!("x".repeat(257))), "`event_id` is longer than 256 bytes"),
        (with(view(), "user_id", json!("a\nb")), "`user_id` must not contain control characters"),
        (with(view(), "item_id", json!("")), "`item_id` must not be empty"),
        (json!([1]), "an event must be a JSON object, not an array"),
        (json!("e-1"), "an event must be a JSON object, not a string"),
    ];
    for (input, expected) in cases {
        assert_eq!(one(input.clone()), Err(expected.to_owned()), "{input}");
    }
}

#[test]
fn numbers_and_booleans_become_attribute_text() {
    let event = one(with(
        view(),
        "attributes",
        json!({"price": 12.5, "rooms": 3, "mobile": true}),
    ))
    .expect("valid");
    let text = |k: &str| event.attributes.get(k);
    assert_eq!(text("price"), Some("12.5"));
    assert_eq!(text("rooms"), Some("3"));
    assert_eq!(text("mobile"), Some("true"));
}

#[test]
fn an_array_gives_one_result_per_element() {
    let body = format!("[{}, {{\"event_id\": \"x\"}}, 7]", view());
    let parsed = parse_events(body.as_bytes(), Some("application/json")).expect("array");
    assert_eq!(parsed.len(), 3);
    assert!(parsed[0].is_ok());
    assert_eq!(parsed[1], Err(EventError("missing `user_id`".into())));
    assert_eq!(
        parsed[2],
        Err(EventError(
            "an event must be a JSON object, not a number".into()
        ))
    );
    assert_eq!(parse_events(b" [] ", None), Ok(vec![]));
}

#[test]
fn ndjson_lines_fail_alone_and_name_their_line() {
    let body = format!(
        "{}\r\n\n  \nnot json\n{}\n{{\"event_id\": \"e-3\"}} {{}}\n\u{0}\n",
        view(),
        with(view(), "event_id", json!("e-2"))
    );
    for content_type in [Some("application/x-ndjson; charset=utf-8"), None] {
        let parsed = parse_events(body.as_bytes(), content_type).expect("ndjson");
        let errors: Vec<Option<String>> = parsed
            .iter()
            .map(|r| r.clone().err().map(|e| e.0))
            .collect();
        assert_eq!(
            errors,
            [
                None,
                Some("line 4 is not JSON: expected ident at column 2".into()),
                None,
                Some("line 6 is not JSON: trailing characters at column 21".into()),
                Some("line 7 is not JSON: expected value at column 1".into()),
            ]
        );
    }
    let invalid_utf8 = [
        br#"{"event_id": ""#.as_slice(),
        &[0xff],
        b"\"}\n",
        view().to_string().as_bytes(),
    ]
    .concat();
    let parsed = parse_events(&invalid_utf8, None).expect("ndjson");
    assert_eq!(
        parsed[0],
        Err(EventError(
            "line 1 is not JSON: invalid unicode code point at column 15".into()
        ))
    );
    assert!(parsed[1].is_ok());
}

#[test]
fn unusable_bodies_are_refused_whole() {
    let cases = [
        ("", None, "the body is empty: send a JSON array of events or NDJSON"),
        (" \n\t", Some("application/x-ndjson"), "the body is empty: send a JSON array of events or NDJSON"),
        (
            "[{\"a\": 1}",
            None,
            "the body is not valid JSON: EOF while parsing a list at line 1 column 9",
        ),
        (
            "[\n  {\"event_id\": \"e\",}\n]",
            Some("application/json"),
            "the body is not valid JSON: trailing comma at line 2 column 20",
        ),
        (
            "[] []",
            None,
            "the body is not valid JSON: trailing characters at line 1 column 4",
        ),
        (
            "hello",
            Some("application/json"),
            "the body is neither a JSON array nor NDJSON: expected `[` or `{` at line 1 column 1, found `h`",
        ),
        (
            "\n\n   42",
            None,
            "the body is neither a JSON array nor NDJSON: expected `[` or `{` at line 3 column 4, found `4`",
        ),
        (
            "\u{feff}[]",
            None,
            "the body is neither a JSON array nor NDJSON: expected `[` or `{` at line 1 column 1, found byte 0xef",
        ),
        (
            "[]",
            Some("application/x-ndjson"),
            "an NDJSON body must have one JSON object per line, not an array",
        ),
    ];
    for (body, content_type, expected) in cases {
        assert_eq!(body_error(body, content_type), expected, "{body:?}");
    }
}

#[test]
fn retractions_are_checked() {
    let ok = parse_retraction(br#"{"event_ids": ["e-1", "e-2"], "reason": "bot"}"#);
    assert_eq!(
        ok,
        Ok(Retraction {
            event_ids: vec!["e-1".into(), "e-2".into()],
            reason: "bot".into()
        })
    );
    let no_reason = parse_retraction(br#"{"event_ids": ["e-1"]}"#).map(|r| r.reason);
    assert_eq!(no_reason, Ok(String::new()));

    let too_many =
        serde_json::to_string(&json!({"event_ids": vec!["e"; 10_001]})).unwrap_or_default();
    let max = serde_json::to_string(&json!({"event_ids": vec!["e"; 10_000]})).unwrap_or_default();
    assert!(parse_retraction(max.as_bytes()).is_ok());
    let long_reason = json!({"event_ids": ["e"], "reason": "r".repeat(1025)}).to_string();
    let cases = [
        (
            "",
            "the body is empty: send {\"event_ids\": [...], \"reason\": \"...\"}",
        ),
        (
            "{",
            "the body is not valid JSON: EOF while parsing an object at line 1 column 1",
        ),
        (
            r#"["e-1"]"#,
            "a retraction must be a JSON object with `event_ids`, not an array",
        ),
        (r#"{"reason": "x"}"#, "missing `event_ids`"),
        (
            r#"{"event_ids": "e-1"}"#,
            "`event_ids` must be an array of strings, not a string",
        ),
        (r#"{"event_ids": []}"#, "`event_ids` must not be empty"),
        (
            &too_many,
            "`event_ids` has 10001 ids; at most 10000 per retraction",
        ),
        (
            r#"{"event_ids": ["a", 3]}"#,
            "`event_ids[1]` must be a string, not a number",
        ),
        (
            r#"{"event_ids": ["a", ""]}"#,
            "`event_ids[1]` must not be empty",
        ),
        (
            r#"{"event_ids": ["a\u0007"]}"#,
            "`event_ids[0]` must not contain control characters",
        ),
        (
            r#"{"event_ids": ["a"], "reason": 1}"#,
            "`reason` must be a string, not a number",
        ),
        (&long_reason, "`reason` is longer than 1024 bytes"),
        (
            r#"{"event_ids": ["a"], "why": 1}"#,
            "unknown field `why` (expected event_ids, reason)",
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(retraction_error(body), expected, "{body}");
    }
}

#[test]
fn to_json_has_the_contract_shape() {
    let event = one(search()).expect("valid");
    assert_eq!(
        to_json(&event),
        json!({"event_id": "e-2", "user_id": "u-42", "event_type": "search", "item_id": null,
               "query": "lofts", "event_time": "2026-11-23T10:00:00.000Z", "attributes": {}})
    );
}

proptest! {
    #[test]
    fn events_round_trip_through_json(event in arb_event()) {
        prop_assert_eq!(event_from_json(to_json(&event)), Ok(event));
    }

    #[test]
    fn bodies_round_trip_as_array_and_ndjson(events in prop::collection::vec(arb_event(), 0..6)) {
        let values: Vec<Value> = events.iter().map(to_json).collect();
        let expected: Vec<Result<Event, EventError>> = events.into_iter().map(Ok).collect();
        let array = Value::Array(values.clone()).to_string();
        prop_assert_eq!(parse_events(array.as_bytes(), None), Ok(expected.clone()));
        if !values.is_empty() {
            let ndjson: String = values.iter().map(|v| format!("{v}\n")).collect();
            prop_assert_eq!(parse_events(ndjson.as_bytes(), Some("application/x-ndjson")), Ok(expected.clone()));
            prop_assert_eq!(parse_events(ndjson.as_bytes(), None), Ok(expected));
        }
    }
}
