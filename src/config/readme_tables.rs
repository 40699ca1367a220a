//! README.md's configuration tables, read as data, against the parser: every documented key is a
//! key the parser knows and every key it knows is documented; a `bool` / `integer` / `string` row
//! refuses a value of another JSON type at that key; a default written as a literal (`` `5000` ``,
//! `` `"meshguard"` ``, `` `false` ``, `` `[]` ``) gives the same configuration as leaving the key
//! out. Defaults written in words ("— (required)", "absent", "the top-level `mode`") are shown as
//! such. The DPoP table has its own checks (src/config/dpop/tests.rs) on the same reader.

use serde_json::{json, Value};

use crate::config::tests::{parse, with_provider};

/// One row of a README table: field, type and default columns, as written.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub field: String,
    pub ty: String,
    pub default: String,
}

/// The rows of the first `| field | type | default | meaning |` table after `heading`.
pub(crate) fn readme_table(heading: &str) -> Vec<Row> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split(&format!("\n{heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    let rows: Vec<Row> = section
        .lines()
        .skip_while(|l| !l.starts_with("| field | type | default |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            // `\|` inside a cell is a literal bar.
            let cells: Vec<String> = l
                .replace("\\|", "\u{1}")
                .split(" | ")
                .map(|c| c.replace('\u{1}', "|"))
                .collect();
            Row {
                field: cells[0]
                    .trim_start_matches("| ")
                    .trim_matches('`')
                    .to_string(),
                ty: cells[1].clone(),
                default: cells[2].clone(),
            }
        })
        .collect();
    assert!(!rows.is_empty(), "{heading}: no table");
    rows
}

/// The keys the parser accepts where `config` has an unknown key `zz`, from its own error
/// ("unknown field `zz`, expected one of `a`, `b`").
fn known_keys(config: Value) -> Vec<String> {
    let e = parse(config).unwrap_err().to_string();
    let listed = e
        .split("expected one of ")
        .nth(1)
        .or_else(|| e.split("expected ").nth(1))
        .unwrap_or_else(|| panic!("no key list in {e}"));
    listed
        .split(", ")
        .map(|f| f.trim().trim_matches('`').to_string())
        .collect()
}

/// A valid configuration with `value` at the dotted README `field` under `at` (a JSON pointer
/// into `base`); `<name>` in a field is the policy `p`.
fn with(base: &Value, at: &str, field: &str, value: Value) -> Value {
    let mut v = base.clone();
    let mut target = v.pointer_mut(at).unwrap();
    let parts: Vec<&str> = field.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        let key = if *part == "<name>" { "p" } else { part };
        let obj = target.as_object_mut().unwrap();
        // `entries[]`: the first element of the list `entries`.
        target = match key.strip_suffix("[]") {
            Some(list) => &mut obj.entry(list.to_string()).or_insert_with(|| json!([{}]))[0],
            None => obj.entry(key.to_string()).or_insert_with(|| json!({})),
        };
    }
    let last = parts[parts.len() - 1];
    target
        .as_object_mut()
        .unwrap()
        .insert(last.trim_end_matches("[]").to_string(), value);
    v
}

/// The README's literal default as JSON: `` `5000` (1–60000) `` → 5000, `` `info` `` → "info"
/// when the type lists `` `info` `` (a bare word otherwise names another field: `` `requests` ``).
fn literal_default(ty: &str, default: &str) -> Option<Value> {
    let rest = default.strip_prefix('`')?;
    let (text, after) = rest.split_once('`')?;
    if !(after.is_empty() || after.starts_with(" (")) {
        return None;
    }
    match serde_json::from_str(text) {
        Ok(v) => Some(v),
        Err(_) if ty.contains(&format!("`{text}`")) => Some(Value::from(text)),
        Err(_) => None,
    }
}

/// A value of another JSON type than the row's, when its type column starts with one.
fn wrong_kind(ty: &str) -> Option<Value> {
    let first = ty.split([',', ' ']).next().unwrap_or_default();
    match first {
        "bool" => Some(json!("yes")),
        "integer" => Some(json!("1")),
        "string" => Some(json!(1)),
        "list" => Some(json!(7)),
        _ => None,
    }
}

struct Section {
    heading: &'static str,
    /// A valid configuration and the JSON pointer where the table's keys go.
    base: Value,
    at: &'static str,
    /// How an error names that place (`providers[0].`).
    prefix: &'static str,
    /// Keys whose own keys the table documents as `key.sub`, and where `zz` goes to list them.
    nested: &'static [(&'static str, &'static str)],
}

fn sections() -> Vec<Section> {
    let base = with_provider(json!({}));
    let route = {
        let mut b = base.clone();
        b["routes"] = json!([{}]);
        b
    };
    let limits = {
        let mut b = base.clone();
        b["rateLimits"] = json!({"policies": {"p": {"requests": 10, "per": "1s"}}});
        b
    };
    vec![
        Section {
            heading: "### Top level",
            base: base.clone(),
            at: "",
            prefix: "",
            nested: &[],
        },
        Section {
            heading: "### Provider",
            // A remote JWKS: the `jwks*` settings are allowed only with one.
            base: json!({"providers": [{"issuer": "https://idp", "jwksUri": "https://idp/keys",
                "jwksCluster": "idp"}]}),
            at: "/providers/0",
            prefix: "providers[0].",
            nested: &[],
        },
        Section {
            heading: "### Route",
            base: route,
            at: "/routes/0",
            prefix: "routes[0].",
            nested: &[("match", "match.zz"), ("require", "require.zz")],
        },
        Section {
            heading: "### Rate limits",
            base: limits,
            at: "/rateLimits",
            prefix: "rateLimits.",
            nested: &[
                ("policies.<name>", "policies.<name>.zz"),
                ("policies.<name>.fleet", "policies.<name>.fleet.zz"),
                (
                    "policies.<name>.fleet.entries[]",
                    "policies.<name>.fleet.entries[].zz",
                ),
                ("service", "service.zz"),
            ],
        },
    ]
}

/// Rows of a section: Rate limits has a second table, the fleet settings.
fn rows_of(s: &Section) -> Vec<Row> {
    let mut rows = readme_table(s.heading);
    if s.heading == "### Rate limits" {
        rows.extend(readme_table("### Per proxy or fleet"));
    }
    rows
}

#[test]
fn the_readme_tables_name_every_key_the_parser_knows_and_no_other() {
    for s in sections() {
        let mut known = known_keys(with(&s.base, s.at, "zz", json!(1)));
        for (key, probe) in s.nested {
            let inner = if key.contains('.') {
                // `policies.<name>` sits in `policies` of the parser's list; `policies.<name>.fleet`
                // (also `true`) and its `entries[]` stay documented themselves.
                if !key.starts_with("policies.<name>.fleet") {
                    known.retain(|k| k != key.split('.').next().unwrap_or_default());
                } else if let Some(list) = key.strip_suffix("[]") {
                    // The list's own row is `entries[]`.
                    for k in known.iter_mut().filter(|k| k.as_str() == list) {
                        k.push_str("[]");
                    }
                }
                known_keys(with(&s.base, s.at, probe, json!(1)))
            } else {
                known.retain(|k| k != key);
                let mut v = s.base.clone();
                if *key == "service" {
                    v = with(&v, s.at, "service", json!({"cluster": "c", "domain": "d"}));
                }
                known_keys(with(&v, s.at, probe, json!(1)))
            };
            known.extend(inner.into_iter().map(|k| format!("{key}.{k}")));
        }
        let mut documented: Vec<String> = rows_of(&s).into_iter().map(|r| r.field).collect();
        if s.heading == "### Rate limits" {
            // `policies.<name>.requests` is what `policies` holds.
            known.retain(|k| k != "policies");
        }
        known.sort();
        documented.sort();
        assert_eq!(documented, known, "{}", s.heading);
    }
}

#[test]
fn the_readme_types_and_literal_defaults_are_the_parsers() {
    let mut defaults_checked = 0;
    let mut types_checked = 0;
    for s in sections() {
        let plain = format!("{:?}", parse(s.base.clone()).unwrap());
        for row in rows_of(&s) {
            // `service.*` needs the rest of `service` and a policy counted there (`q`).
            let base = if row.field.starts_with("service.") || row.field.contains(".fleet") {
                let v = with(
                    &s.base,
                    s.at,
                    "service",
                    json!({"cluster": "c", "domain": "d"}),
                );
                with(
                    &v,
                    s.at,
                    "policies.q",
                    json!({"requests": 10, "per": "1s", "fleet": true}),
                )
            } else {
                s.base.clone()
            };
            if let Some(v) = literal_default(&row.ty, &row.default) {
                let explicit = parse(with(&base, s.at, &row.field, v.clone()))
                    .unwrap_or_else(|e| panic!("{}: default {v}: {e}", row.field));
                let absent = if base == s.base {
                    plain.clone()
                } else {
                    format!("{:?}", parse(base.clone()).unwrap())
                };
                assert_eq!(
                    format!("{explicit:?}"),
                    absent,
                    "{} {}: the README's default {v} is not what leaving it out gives",
                    s.heading,
                    row.field
                );
                defaults_checked += 1;
            } else {
                assert!(!row.default.trim().is_empty(), "{}: no default", row.field);
            }
            if let Some(v) = wrong_kind(&row.ty) {
                let e = parse(with(&base, s.at, &row.field, v.clone()))
                    .map(|_| String::new())
                    .unwrap_or_else(|e| e.to_string());
                let path = format!(
                    "{}{}",
                    s.prefix,
                    (row.field.replace("<name>", "p").trim_end_matches("[]")).replace("[]", "[0]")
                );
                assert!(
                    e.starts_with(&path),
                    "{}: type {:?} but {v} gives {e:?}",
                    row.field,
                    row.ty
                );
                types_checked += 1;
            }
        }
    }
    // As many as the tables had when this test was written: a table that lost its literal
    // defaults or types would show here.
    assert!(
        defaults_checked >= 33,
        "{defaults_checked} defaults checked"
    );
    assert!(types_checked >= 44, "{types_checked} types checked");
}
