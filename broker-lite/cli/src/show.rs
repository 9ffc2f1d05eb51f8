//! How `consume` prints a delivery: a readable block for a person, or one JSON object per line
//! (`--json`) for `jq` and scripts. Bodies that are not UTF-8 are shown in hex, never mangled.

use broker_lite_client::protocol::Delivery;
use serde_json::json;

use crate::admin::timestamp;

/// The text form:
///
/// ```text
/// orders:2@17 id=0190c6f2-... key=order-7 tag=created redelivered=0 stored=2026-12-02 04:30:00.123 UTC
///   header traceparent=00-4bf9...-01
///   order 7 created
/// ```
pub(crate) fn text(delivery: &Delivery) -> String {
    let m = &delivery.message;
    let mut out = format!(
        "{}:{}@{} id={} key={} tag={} redelivered={} stored={}\n",
        m.topic,
        m.queue_id,
        m.queue_offset,
        m.message_id,
        m.key.as_deref().unwrap_or("-"),
        m.tag.as_deref().unwrap_or("-"),
        delivery.reconsume_times,
        timestamp(m.stored_timestamp_ms),
    );
    for (name, value) in &m.properties {
        out.push_str(&format!("  header {name}={value}\n"));
    }
    match std::str::from_utf8(&m.body) {
        Ok(body) => {
            for line in body.lines() {
                out.push_str("  ");
                out.push_str(line);
                out.push('\n');
            }
        }
        Err(_) => out.push_str(&format!(
            "  (not UTF-8, {} bytes, hex) {}\n",
            m.body.len(),
            hex::encode(&m.body)
        )),
    }
    out
}

/// The JSON form, one line: `body` for UTF-8 payloads, `body_hex` for others.
pub(crate) fn json(delivery: &Delivery) -> String {
    let m = &delivery.message;
    let mut value = json!({
        "topic": m.topic,
        "queue": m.queue_id,
        "offset": m.queue_offset,
        "id": m.message_id,
        "key": m.key,
        "tag": m.tag,
        "headers": m.properties,
        "redelivered": delivery.reconsume_times,
        "stored_ms": m.stored_timestamp_ms,
        "born_ms": m.born_timestamp_ms,
    });
    match std::str::from_utf8(&m.body) {
        Ok(body) => value["body"] = json!(body),
        Err(_) => value["body_hex"] = json!(hex::encode(&m.body)),
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use broker_lite_client::protocol::{Delivery, MessageView};
    use bytes::Bytes;
    use uuid::Uuid;

    fn delivery(body: &'static [u8]) -> Delivery {
        let mut view = MessageView::new("orders", 2, 17, Uuid::nil(), Bytes::from_static(body));
        view.key = Some("order-7".into());
        view.properties.insert("trace".into(), "abc".into());
        Delivery::new(view, Bytes::new(), 1)
    }

    #[test]
    fn text_shows_coordinates_headers_and_an_indented_body() {
        let shown = super::text(&delivery(b"line 1\nline 2"));
        let lines: Vec<&str> = shown.lines().collect();
        assert!(lines[0].starts_with("orders:2@17 id=00000000-0000-0000-0000-000000000000 key=order-7 tag=- redelivered=1 stored="), "{shown}");
        assert_eq!(&lines[1..], ["  header trace=abc", "  line 1", "  line 2"]);
    }

    #[test]
    fn binary_bodies_are_hex_in_both_forms() {
        let binary = delivery(&[0xff, 0x00, 0x41]);
        assert!(super::text(&binary).ends_with("  (not UTF-8, 3 bytes, hex) ff0041\n"));
        let json: serde_json::Value = serde_json::from_str(&super::json(&binary)).unwrap();
        assert_eq!(json["body_hex"], "ff0041");
        assert!(json.get("body").is_none());
        let text: serde_json::Value = serde_json::from_str(&super::json(&delivery(b"hi"))).unwrap();
        assert_eq!(text["body"], "hi");
        assert_eq!(text["headers"]["trace"], "abc");
    }
}
