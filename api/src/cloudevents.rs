//! CloudEvents 1.0 on `POST /v1/events`, beside Herald's own event body: structured mode
//! (`Content-Type: application/cloudevents+json`, the event as a JSON object), batched mode
//! (`application/cloudevents-batch+json`, an array of them) and binary mode (the attributes
//! as `ce-*` headers, the event's data as the JSON body).
//!
//! Mapping: `type` is the event type rules are keyed by, `subject` the user the event is about,
//! `data` (a JSON object, or absent) the event's data; `source` and `id` are the event's
//! identity, used as the idempotency key of the campaign it creates, so an event delivered
//! twice (a producer's retry, a redelivering broker) notifies once. Only JSON data is taken
//! (`datacontenttype` absent, `application/json` or `…+json`; no `data_base64`).

use crate::http::{parse_json, ApiError, ApiResult};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The structured-mode media type.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// The batched-mode media type.
pub const BATCH: &str = "application/cloudevents-batch+json";
/// Events in one batch at most.
pub const MAX_BATCH: usize = 1000;

/// What a CloudEvent says, checked.
#[derive(Debug, Clone)]
pub struct CloudEvent {
    pub id: String,
    pub source: String,
    pub event_type: String,
    pub subject: String,
    pub data: Map<String, Value>,
}

/// A structured-mode event as sent. Other attributes (`time`, `dataschema`, extensions) are
/// accepted and not used.
#[derive(Debug, Deserialize)]
struct Structured {
    specversion: Option<Value>,
    id: Option<Value>,
    source: Option<Value>,
    #[serde(rename = "type")]
    event_type: Option<Value>,
    subject: Option<Value>,
    datacontenttype: Option<Value>,
    #[serde(default)]
    data: Value,
    data_base64: Option<Value>,
}

/// Which way a request carries events.
pub enum Mode {
    /// Herald's own body (`{"type", "user_id", "data"}`).
    Herald,
    Structured,
    Batch,
    Binary,
}

/// The mode of a `POST /v1/events` from its headers.
pub fn mode(headers: &HeaderMap) -> Mode {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if content_type == BATCH {
        Mode::Batch
    } else if content_type == STRUCTURED {
        Mode::Structured
    } else if headers.contains_key("ce-specversion") {
        Mode::Binary
    } else {
        Mode::Herald
    }
}

fn invalid(what: &str, why: &str) -> ApiError {
    ApiError::invalid(format!("{what}: {why}"))
}

/// A required string attribute.
fn attribute(name: &str, v: Option<Value>) -> ApiResult<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) | None => Err(invalid(name, "required (a non-empty string)")),
        Some(_) => Err(invalid(name, "must be a string")),
    }
}

fn json_content_type(ct: &str) -> bool {
    let ct = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    ct == "application/json" || ct.ends_with("+json")
}

fn check(
    specversion: String,
    id: String,
    source: String,
    event_type: String,
    subject: Option<String>,
    data: Value,
) -> ApiResult<CloudEvent> {
    if specversion != "1.0" {
        return Err(invalid(
            "specversion",
            "only CloudEvents 1.0 is accepted (\"1.0\")",
        ));
    }
    let subject = subject
        .ok_or_else(|| invalid("subject", "required: the id of the user the event is about"))?;
    let data = match data {
        Value::Null => Map::new(),
        Value::Object(o) => o,
        _ => return Err(invalid("data", "must be a JSON object")),
    };
    Ok(CloudEvent {
        id,
        source,
        event_type,
        subject,
        data,
    })
}

/// One structured-mode event (a JSON object).
pub fn structured(v: Value) -> ApiResult<CloudEvent> {
    let s: Structured = serde_json::from_value(v)
        .map_err(|e| ApiError::invalid(format!("not a CloudEvent: {e}")))?;
    if s.data_base64.is_some() {
        return Err(invalid(
            "data_base64",
            "only JSON data is accepted (send it as `data`)",
        ));
    }
    if let Some(ct) = s.datacontenttype {
        let ct = attribute("datacontenttype", Some(ct))?;
        if !json_content_type(&ct) {
            return Err(invalid(
                "datacontenttype",
                "only JSON data is accepted (application/json)",
            ));
        }
    }
    let subject = match s.subject {
        None => None,
        v => Some(attribute("subject", v)?),
    };
    check(
        attribute("specversion", s.specversion)?,
        attribute("id", s.id)?,
        attribute("source", s.source)?,
        attribute("type", s.event_type)?,
        subject,
        s.data,
    )
}

/// The events of a batched-mode body (a JSON array of structured events); an error names the
/// first bad one by its index.
pub fn batch(body: &[u8]) -> ApiResult<Vec<CloudEvent>> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::Malformed(format!("the body is not JSON: {e}")))?;
    let Value::Array(items) = v else {
        return Err(ApiError::invalid(
            "a CloudEvents batch is a JSON array of events",
        ));
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ApiError::invalid(format!(
            "a CloudEvents batch holds 1 to {MAX_BATCH} events"
        )));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| structured(item).map_err(|e| prefix(i, e)))
        .collect()
}

/// `e` with "event <i>: " in front of its message.
pub fn prefix(i: usize, e: ApiError) -> ApiError {
    match e {
        ApiError::Core(c) => ApiError::Core(herald_core::Error::new(
            c.kind,
            format!("event {i}: {}", c.message),
        )),
        ApiError::Malformed(m) => ApiError::Malformed(format!("event {i}: {m}")),
        other => other,
    }
}

/// A `ce-*` header value decoded as the HTTP binding encodes it (CloudEvents HTTP binding
/// 1.0.2, 3.1.3.2): `%XX` octets of UTF-8, everything else as it is. `None` for a malformed
/// escape or octets that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A binary-mode event: attributes from the `ce-*` headers, the body as `data`.
pub fn binary(headers: &HeaderMap, body: &[u8]) -> ApiResult<CloudEvent> {
    let header = |name: &str| -> ApiResult<Option<String>> {
        match headers.get(format!("ce-{name}")) {
            None => Ok(None),
            Some(v) => {
                let raw = v
                    .to_str()
                    .map_err(|_| invalid(&format!("ce-{name}"), "must be visible ASCII"))?;
                percent_decode(raw).map(Some).ok_or_else(|| {
                    invalid(
                        &format!("ce-{name}"),
                        "malformed percent-encoding (%XX octets of UTF-8)",
                    )
                })
            }
        }
    };
    let required = |name: &str| -> ApiResult<String> {
        header(name)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid(&format!("ce-{name}"), "required header"))
    };
    let data = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        let ct = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json");
        if !json_content_type(ct) {
            return Err(invalid(
                "content-type",
                "only JSON data is accepted (application/json)",
            ));
        }
        parse_json(body)?
    };
    check(
        required("specversion")?,
        required("id")?,
        required("source")?,
        required("type")?,
        header("subject")?.filter(|s| !s.is_empty()),
        data,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn binary_header_values_are_percent_decoded_as_the_http_binding_says() {
        assert_eq!(percent_decode("A-17").as_deref(), Some("A-17"));
        assert_eq!(
            percent_decode("order%20A%2D17").as_deref(),
            Some("order A-17")
        );
        assert_eq!(percent_decode("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(percent_decode("100%25").as_deref(), Some("100%"));
        for bad in ["%", "%4", "%zz", "%+1", "%C3", "%FF"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("ce-specversion", "1.0"),
            ("ce-id", "order%20A-17"),
            ("ce-source", "%2Fshop%2Forders"),
            ("ce-type", "order.shipped"),
            ("ce-subject", "alice"),
        ] {
            headers.insert(k, v.parse().unwrap());
        }
        let e = binary(&headers, b"{}").unwrap();
        assert_eq!(
            (e.id.as_str(), e.source.as_str()),
            ("order A-17", "/shop/orders")
        );
        headers.insert("ce-id", "A%2".parse().unwrap());
        assert!(binary(&headers, b"{}").is_err());
    }

    fn event() -> Value {
        json!({"specversion": "1.0", "id": "A-17", "source": "/shop/orders",
               "type": "order.shipped", "subject": "alice",
               "time": "2026-11-30T10:00:00Z", "shopregion": "eu",
               "datacontenttype": "application/json", "data": {"amount": 1500}})
    }

    #[test]
    fn a_structured_event_maps_type_subject_and_data_and_ignores_extensions() {
        let e = structured(event()).unwrap();
        assert_eq!(
            (
                e.id.as_str(),
                e.source.as_str(),
                e.event_type.as_str(),
                e.subject.as_str()
            ),
            ("A-17", "/shop/orders", "order.shipped", "alice")
        );
        assert_eq!(Value::Object(e.data), json!({"amount": 1500}));
    }

    #[test]
    fn a_bad_structured_event_names_the_attribute() {
        let with = |k: &str, v: Value| {
            let mut e = event();
            if v.is_null() {
                e.as_object_mut().unwrap().remove(k);
            } else {
                e[k] = v;
            }
            structured(e).unwrap_err().to_string()
        };
        for (k, v, says) in [
            ("specversion", json!("0.3"), "specversion"),
            ("id", Value::Null, "id"),
            ("id", json!(""), "id"),
            ("source", json!(7), "source"),
            ("type", Value::Null, "type"),
            ("subject", Value::Null, "subject"),
            ("data", json!([1]), "data"),
            ("datacontenttype", json!("text/xml"), "datacontenttype"),
            ("data_base64", json!("AAAA"), "data_base64"),
        ] {
            let msg = with(k, v.clone());
            assert!(msg.contains(says), "{k}={v}: {msg}");
        }
    }

    #[test]
    fn a_batch_is_an_array_and_a_bad_event_is_named_by_its_index() {
        let good = event().to_string();
        assert_eq!(
            batch(format!("[{good},{good}]").as_bytes()).unwrap().len(),
            2
        );
        let e = batch(format!("[{good},{{\"specversion\":\"1.0\"}}]").as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("event 1:"), "{e}");
        assert!(batch(b"[]").is_err());
        assert!(batch(good.as_bytes()).is_err());
    }
}
