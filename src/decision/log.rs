//! The JSON line logged per denial and per dry-run would-deny: a stable schema (README "Logs"),
//! absent facts left out rather than `null`, never the token or other claims.

use super::LocalReply;

/// Every field a line can carry, in the order the README's table lists them.
pub const FIELDS: [&str; 12] = [
    "meshguard",
    "status",
    "reason",
    "route",
    "detail",
    "request_id",
    "source_address",
    "spiffe_id",
    "iss",
    "sub",
    "client_id",
    "identity_bucket",
];

/// What the host knows of the connection and request (each read only for a line).
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub request_id: Option<String>,
    pub source_address: Option<String>,
    pub spiffe_id: Option<String>,
    /// The refused identity's bucket in `meshguard_refused_identities_total` (denials only).
    pub identity_bucket: Option<String>,
}

/// One line: `event` (`deny` or `dry_run_would_deny`), status, reason code, route, what exactly
/// failed when the core says (`detail`, e.g. the `htu` values a DPoP proof was compared with),
/// request id and identity keys (iss, sub, client_id only when verified; SPIFFE ID, source IP),
/// and the refused identity's bucket.
pub fn line(event: &str, reply: &LocalReply, context: Context) -> String {
    let caller = reply.caller.as_deref().cloned().unwrap_or_default();
    let mut line = serde_json::Map::new();
    line.insert("meshguard".into(), event.into());
    line.insert("status".into(), reply.status.into());
    line.insert("reason".into(), reply.reason.code().into());
    let optional = [
        ("route", reply.route.clone()),
        ("detail", reply.detail.clone()),
        ("request_id", context.request_id),
        ("source_address", context.source_address),
        ("spiffe_id", context.spiffe_id),
        ("iss", caller.iss),
        ("sub", caller.sub),
        ("client_id", caller.client_id),
        ("identity_bucket", context.identity_bucket),
    ];
    for (name, value) in optional {
        if let Some(v) = value {
            line.insert(name.into(), v.into());
        }
    }
    serde_json::Value::Object(line).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Caller, Reason};
    use std::collections::BTreeSet;

    fn keys(line: &str) -> BTreeSet<String> {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn absent_facts_are_left_out_and_present_ones_named_as_documented() {
        let bare = LocalReply::new(Reason::MissingToken, "api", None);
        assert_eq!(
            line("deny", &bare, Context::default()),
            r#"{"meshguard":"deny","reason":"missing_token","status":401}"#
        );
        let mut full = LocalReply::new(Reason::MissingToken, "api", None);
        full.route = Some("r".into());
        full.detail = Some("d".into());
        full.caller = Some(Box::new(Caller {
            iss: Some("i".into()),
            sub: Some("s".into()),
            client_id: Some("c".into()),
        }));
        let context = Context {
            request_id: Some("id".into()),
            source_address: Some("10.0.0.1:1".into()),
            spiffe_id: Some("spiffe://td/ns/a/sa/b".into()),
            identity_bucket: Some("17".into()),
        };
        let all: BTreeSet<String> = FIELDS.iter().map(|f| f.to_string()).collect();
        assert_eq!(keys(&line("deny", &full, context)), all);
    }

    /// The README "Logs" table: one row per field, `| \`name\` | …`, between its heading and
    /// the next blank line after the table.
    #[test]
    fn the_readme_log_table_lists_every_field_the_line_can_carry() {
        let listed = crate::testkit::readme_table_keys(Some("\n### Logs\n"), "\n| field |");
        assert_eq!(listed, FIELDS);
    }
}
