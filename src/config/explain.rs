//! serde's error messages in plain words: Rust type names become what a user writes (`expected
//! u64` → `expected a whole number ≥ 0`), and an unknown field or value gets a "did you mean"
//! hint: the accepted name it differs from only by case, `_` or `-` (`jwks_uri` → `jwksUri`), or
//! the meshguard field an Istio RequestAuthentication / AuthorizationPolicy name maps to.

/// The message for serde error `message` at field path `path`.
pub(super) fn serde_message(path: &str, message: &str) -> String {
    if message.starts_with("data did not match any variant of untagged enum RawJwks") {
        return "expected a JWKS document: a JSON object, or a string holding one".to_string();
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        return with_hint(message, rest, istio_hint(path, field_name(rest)));
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        return with_hint(message, rest, None);
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            if let Some((got, expected)) = rest.split_once(", expected ") {
                return format!(
                    "{prefix}{}, expected {}",
                    unexpected(got),
                    expected_words(expected)
                );
            }
        }
    }
    message.to_string()
}

/// The name in "unknown field `name`, expected …".
fn field_name(rest: &str) -> &str {
    rest.split('`').next().unwrap_or("")
}

/// `message` with "; did you mean …" when `hint` is given or when an accepted name listed after
/// "expected" differs from the given one only by case, `_` or `-`.
fn with_hint(message: &str, rest: &str, hint: Option<&'static str>) -> String {
    if let Some(hint) = hint {
        return format!("{message}; {hint}");
    }
    let given = normalise(field_name(rest));
    let near = rest
        .split_once("expected ")
        .map(|(_, names)| names)
        .unwrap_or("")
        .split('`')
        .skip(1)
        .step_by(2)
        .find(|name| normalise(name) == given);
    match near {
        Some(name) => format!("{message}; did you mean `{name}`?"),
        None => message.to_string(),
    }
}

fn normalise(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Istio's field names that mean something in meshguard under another name (or not at all).
fn istio_hint(path: &str, field: &str) -> Option<&'static str> {
    let in_provider = path.starts_with("providers[");
    let in_route = path.starts_with("routes[");
    let top = !path.contains('.');
    Some(match field {
        "timeout" if in_provider => {
            "did you mean `jwksTimeoutMs`? (Istio's `timeout` is a duration such as \"5s\"; \
             jwksTimeoutMs is in milliseconds: 5000)"
        }
        "outputPayloadToHeader" if in_provider => {
            "meshguard does not forward the whole payload: `outputClaimToHeaders` forwards \
             single claims, and the top-level `principalHeader` the verified identity"
        }
        "fromCookies" if in_provider => {
            "meshguard reads tokens from `fromHeaders` and `fromParams` only"
        }
        "spaceDelimitedClaims" if in_provider => {
            "not needed: `require.scopes` splits the `scope` and `scp` claims on spaces itself"
        }
        "audience" if in_provider => "did you mean `audiences` (a list)?",
        "jwtRules" if top => "did you mean `providers`? (Istio RequestAuthentication's `jwtRules`)",
        "rules" if top => {
            "did you mean `routes`? (Istio AuthorizationPolicy `rules`: `to.operation` becomes \
             a route's `match`, `from` and `when` its `require`)"
        }
        "action" if top => "did you mean `defaultAction` (\"allow\" or \"deny\")?",
        "to" | "operation" if in_route => {
            "did you mean `match`? (Istio's `to.operation.{paths,methods,hosts}` are \
             `match.{paths,methods,hosts}`)"
        }
        "from" | "source" if in_route => {
            "did you mean `require.peers` (`principals`, `namespaces`) or `require.issuers`? \
             (Istio's `from.source`)"
        }
        "when" if in_route => {
            "did you mean `require.claims`? (Istio's `when` on `request.auth.claims[…]`)"
        }
        "notPaths" | "notMethods" | "notHosts" if path.contains(".match.") => {
            "meshguard has no negative matches: list the routes to allow; `defaultAction: \
             deny` refuses the rest"
        }
        _ => return None,
    })
}

/// serde's description of the value it got, in JSON words (integer `5`, boolean `true` and
/// string "x" are left as they are).
fn unexpected(got: &str) -> String {
    match got {
        "map" => "an object".to_string(),
        "sequence" => "a list".to_string(),
        "unit value" => "null".to_string(),
        _ => match got.strip_prefix("floating point ") {
            Some(n) => format!("number {n}"),
            None => got.to_string(),
        },
    }
}

/// serde's description of what it expected (a Rust type name, often), in plain words.
fn expected_words(expected: &str) -> String {
    match expected {
        "u8" => "a whole number from 0 to 255".to_string(),
        "u16" => "a whole number from 0 to 65535".to_string(),
        "u32" => "a whole number from 0 to 4294967295".to_string(),
        "u64" | "usize" => "a whole number ≥ 0".to_string(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".to_string(),
        "f32" | "f64" => "a number".to_string(),
        "a sequence" => "a list".to_string(),
        "a map" => "an object".to_string(),
        "unit" => "null".to_string(),
        s if s.starts_with("struct ") => "an object".to_string(),
        s => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::serde_message;

    #[test]
    fn rust_type_names_become_plain_words() {
        let cases = [
            (
                "invalid type: string \"60\", expected u64",
                "invalid type: string \"60\", expected a whole number ≥ 0",
            ),
            (
                "invalid value: integer `-1`, expected usize",
                "invalid value: integer `-1`, expected a whole number ≥ 0",
            ),
            (
                "invalid value: integer `70000`, expected u16",
                "invalid value: integer `70000`, expected a whole number from 0 to 65535",
            ),
            (
                "invalid type: floating point `1.5`, expected u64",
                "invalid type: number `1.5`, expected a whole number ≥ 0",
            ),
            (
                "invalid type: map, expected a sequence",
                "invalid type: an object, expected a list",
            ),
            (
                "invalid type: boolean `true`, expected struct RawDpop",
                "invalid type: boolean `true`, expected an object",
            ),
            (
                "invalid type: unit value, expected a string",
                "invalid type: null, expected a string",
            ),
            (
                "data did not match any variant of untagged enum RawJwks",
                "expected a JWKS document: a JSON object, or a string holding one",
            ),
        ];
        for (serde, plain) in cases {
            assert_eq!(serde_message("providers[0].x", serde), plain, "{serde}");
        }
    }

    #[test]
    fn istio_names_point_to_ours() {
        let listed = ", expected one of `name`, `issuer`, `jwksUri`, `jwksTimeoutMs`";
        let cases = [
            (
                "providers[0].timeout",
                "timeout",
                "; did you mean `jwksTimeoutMs`? (Istio's `timeout` is a duration such as \"5s\"; \
                 jwksTimeoutMs is in milliseconds: 5000)",
            ),
            (
                "providers[1].outputPayloadToHeader",
                "outputPayloadToHeader",
                "; meshguard does not forward the whole payload: `outputClaimToHeaders` forwards \
                 single claims, and the top-level `principalHeader` the verified identity",
            ),
            (
                "providers[0].fromCookies",
                "fromCookies",
                "; meshguard reads tokens from `fromHeaders` and `fromParams` only",
            ),
            (
                "jwtRules",
                "jwtRules",
                "; did you mean `providers`? (Istio RequestAuthentication's `jwtRules`)",
            ),
            (
                "routes[2].when",
                "when",
                "; did you mean `require.claims`? (Istio's `when` on `request.auth.claims[…]`)",
            ),
            (
                "routes[0].match.notPaths",
                "notPaths",
                "; meshguard has no negative matches: list the routes to allow; `defaultAction: \
                 deny` refuses the rest",
            ),
        ];
        for (path, field, hint) in cases {
            let serde = format!("unknown field `{field}`{listed}");
            assert_eq!(serde_message(path, &serde), format!("{serde}{hint}"));
        }
    }

    #[test]
    fn a_name_that_differs_by_case_or_underscores_is_suggested() {
        assert_eq!(
            serde_message(
                "providers[0].jwks_uri",
                "unknown field `jwks_uri`, expected one of `issuer`, `jwksUri`"
            ),
            "unknown field `jwks_uri`, expected one of `issuer`, `jwksUri`; did you mean `jwksUri`?"
        );
        assert_eq!(
            serde_message(
                "mode",
                "unknown variant `dry_run`, expected `enforce` or `dryRun`"
            ),
            "unknown variant `dry_run`, expected `enforce` or `dryRun`; did you mean `dryRun`?"
        );
    }

    #[test]
    fn a_name_like_no_accepted_one_gets_no_hint() {
        let serde = "unknown field `bogus`, expected one of `issuer`, `jwksUri`";
        assert_eq!(serde_message("providers[0].bogus", serde), serde);
        // `timeout` means Istio's JWT rule only inside a provider.
        let serde = "unknown field `timeout`, expected one of `name`, `match`";
        assert_eq!(serde_message("routes[0].timeout", serde), serde);
    }
}
