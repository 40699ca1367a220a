//! Header rules: which header names may be configured, and every header meshguard sets upstream
//! (the principal, peer facts, claims), checked together so that no two outputs write the same
//! header and none overwrites a token source. Client-sent copies of owned headers are removed on
//! every request.

use serde::Deserialize;

use super::validate::header_token;
use super::ConfigError;
use crate::identity::PeerField;
use crate::jwt::extract::TokenSource;
use crate::jwt::provider::Provider;

pub const DEFAULT_PRINCIPAL_HEADER: &str = "x-meshguard-principal";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawPeerHeader {
    header: String,
    field: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHeader {
    pub header: String,
    pub field: PeerField,
}

/// The headers meshguard sets upstream, validated together.
pub(super) struct Outputs {
    pub principal_header: String,
    pub peer_headers: Vec<PeerHeader>,
    /// Every header meshguard may set upstream, under both spellings.
    pub owned_headers: Vec<String>,
}

/// Validates the principal and peer headers against each other, the providers' claim headers
/// and the token sources.
pub(super) fn outputs(
    principal_header: Option<String>,
    raw_peer_headers: Vec<RawPeerHeader>,
    providers: &[Provider],
    token_sources: &[TokenSource],
) -> Result<Outputs, ConfigError> {
    let principal_header = principal_header.unwrap_or_else(|| DEFAULT_PRINCIPAL_HEADER.to_string());
    let principal_header = header_name("principalHeader", &principal_header)?;

    let mut peer_headers = Vec::new();
    for (i, ph) in raw_peer_headers.into_iter().enumerate() {
        let header = header_name(&format!("outputPeerToHeaders[{i}].header"), &ph.header)?;
        let field = PeerField::parse(&ph.field).ok_or_else(|| {
            ConfigError::new(
                format!("outputPeerToHeaders[{i}].field"),
                format!(
                    "unknown peer field \"{}\", expected one of: {}",
                    ph.field,
                    PeerField::NAMES.join(", ")
                ),
            )
        })?;
        peer_headers.push(PeerHeader { header, field });
    }

    // Every header we set, with the field that names it, to refuse the same header twice.
    let mut owned: Vec<(String, String)> =
        vec![("principalHeader".to_string(), principal_header.clone())];
    for (i, h) in peer_headers.iter().enumerate() {
        owned.push((format!("outputPeerToHeaders[{i}].header"), h.header.clone()));
    }
    for (i, p) in providers.iter().enumerate() {
        for (j, h) in p.claim_headers.iter().enumerate() {
            // The same header from two providers is fine: one token, one provider.
            let dup_in_provider = p.claim_headers.iter().take(j).any(|c| c.header == h.header);
            let path = format!("providers[{i}].outputClaimToHeaders[{j}].header");
            if dup_in_provider {
                return Err(ConfigError::new(path, "header set twice by this provider"));
            }
            owned.push((path, h.header.clone()));
        }
    }
    for (k, (path, h)) in owned.iter().enumerate() {
        let clash = owned.iter().take(k).any(|(p, o)| {
            o == h && !(p.starts_with("providers[") && path.starts_with("providers["))
        });
        if clash {
            return Err(ConfigError::new(
                path.clone(),
                format!("header \"{h}\" is already set by another output"),
            ));
        }
        let is_source = token_sources
            .iter()
            .any(|s| matches!(s, TokenSource::Header { name, .. } if name == h));
        if is_source {
            return Err(ConfigError::new(
                path.clone(),
                format!("header \"{h}\" is also a token source"),
            ));
        }
    }
    // Envoy passes `x_meshguard_principal` by default, and CGI-style upstreams read it as
    // `x-meshguard-principal`: client copies under the underscore spelling go too.
    let mut owned_headers: Vec<String> = Vec::new();
    for (_, h) in owned {
        for name in [h.clone(), h.replace('-', "_")] {
            if !owned_headers.contains(&name) {
                owned_headers.push(name);
            }
        }
    }

    Ok(Outputs {
        principal_header,
        peer_headers,
        owned_headers,
    })
}

/// Header names are lower-cased tokens (RFC 9110); pseudo-headers and hop-by-hop names are refused.
pub(super) fn header_name(path: &str, name: &str) -> Result<String, ConfigError> {
    let lower = name.to_ascii_lowercase();
    if lower.is_empty() || !lower.bytes().all(header_token) {
        return Err(ConfigError::new(
            path,
            format!("\"{name}\" is not a valid header name"),
        ));
    }
    const RESERVED: [&str; 7] = [
        "host",
        "connection",
        "content-length",
        "transfer-encoding",
        "te",
        "upgrade",
        "keep-alive",
    ];
    if RESERVED.contains(&lower.as_str()) {
        return Err(ConfigError::new(
            path,
            format!("header \"{name}\" cannot be used"),
        ));
    }
    Ok(lower)
}
