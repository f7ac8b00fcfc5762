//! `PeerAuthentication`, `AuthorizationPolicy` and `RequestAuthentication`
//! (`security.istio.io`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::duration::Duration;
use super::meta::{PolicyTargetReference, WorkloadSelector};

/// Spec of a `PeerAuthentication`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Workloads the policy applies to; absent means the whole namespace.
    pub selector: Option<WorkloadSelector>,
    /// Mutual TLS mode.
    pub mtls: Option<MutualTls>,
    /// Per workload (container) port overrides; keys are port numbers.
    #[serde(default)]
    pub port_level_mtls: BTreeMap<String, MutualTls>,
}

/// Mutual TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    /// The mode.
    pub mode: Option<MtlsMode>,
}

/// Peer authentication modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent (else PERMISSIVE).
    Unset,
    /// Plaintext only.
    Disable,
    /// mTLS or plaintext.
    Permissive,
    /// mTLS required.
    Strict,
}

/// Spec of an `AuthorizationPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Workloads the policy applies to.
    pub selector: Option<WorkloadSelector>,
    /// Single target reference.
    pub target_ref: Option<PolicyTargetReference>,
    /// Target references.
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Rules; none means the policy matches nothing.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Action (default ALLOW).
    pub action: Option<Action>,
    /// Extension provider for CUSTOM.
    pub provider: Option<ExtensionProvider>,
}

/// Authorization actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    /// Allow matching requests.
    Allow,
    /// Deny matching requests.
    Deny,
    /// Audit matching requests.
    Audit,
    /// Delegate to an extension provider.
    Custom,
}

/// The extension provider of a CUSTOM policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    /// Provider name from the mesh config.
    pub name: Option<String>,
}

/// An authorization rule: from, to and when.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Sources (ORed); none means any.
    #[serde(default)]
    pub from: Vec<RuleFrom>,
    /// Operations (ORed); none means any.
    #[serde(default)]
    pub to: Vec<RuleTo>,
    /// Conditions (ANDed).
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// One `from` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    /// The source.
    pub source: Option<Source>,
}

/// One `to` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    /// The operation.
    pub operation: Option<Operation>,
}

/// Source of a request (fields ANDed, entries ORed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities, `<td>/ns/<ns>/sa/<sa>`.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Negated principals.
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// JWT principals, `<iss>/<sub>`.
    #[serde(default)]
    pub request_principals: Vec<String>,
    /// Negated request principals.
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    /// Source namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Negated namespaces.
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// Source service accounts, `ns/sa`.
    #[serde(default)]
    pub service_accounts: Vec<String>,
    /// Negated service accounts.
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    /// Peer IPs/CIDRs.
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    /// Negated IP blocks.
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    /// Original client IPs/CIDRs (X-Forwarded-For).
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    /// Negated remote IP blocks.
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
    /// Trust domains.
    #[serde(default)]
    pub trust_domains: Vec<String>,
    /// Negated trust domains.
    #[serde(default)]
    pub not_trust_domains: Vec<String>,
}

/// Operation of a request (fields ANDed, entries ORed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Hosts (case-insensitive).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Negated hosts.
    #[serde(default)]
    pub not_hosts: Vec<String>,
    /// Ports (as strings).
    #[serde(default)]
    pub ports: Vec<String>,
    /// Negated ports.
    #[serde(default)]
    pub not_ports: Vec<String>,
    /// Methods.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Negated methods.
    #[serde(default)]
    pub not_methods: Vec<String>,
    /// Paths (`{*}`, `{**}` templates allowed).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Negated paths.
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// An additional condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// Attribute, e.g. `request.headers[x]` (required).
    pub key: String,
    /// Accepted values.
    #[serde(default)]
    pub values: Vec<String>,
    /// Rejected values.
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// Spec of a `RequestAuthentication`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// Workloads the policy applies to.
    pub selector: Option<WorkloadSelector>,
    /// Single target reference.
    pub target_ref: Option<PolicyTargetReference>,
    /// Target references.
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// JWT validation rules.
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

/// Whether a token is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JwtPresence {
    /// A missing token is accepted.
    Optional,
    /// A missing token is rejected.
    Required,
}

/// A JWT validation rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// Expected issuer.
    pub issuer: Option<String>,
    /// Accepted audiences.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// JWKS URL; also accepted as `jwks_uri`.
    #[serde(alias = "jwks_uri")]
    pub jwks_uri: Option<String>,
    /// Inline JWKS.
    pub jwks: Option<String>,
    /// Headers carrying the token.
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters carrying the token.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Cookies carrying the token.
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// Header receiving the payload.
    pub output_payload_to_header: Option<String>,
    /// Forward the original token.
    pub forward_original_token: Option<bool>,
    /// Claims copied to headers.
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// JWKS fetch timeout (default 5s).
    pub timeout: Option<Duration>,
    /// Claims holding space-delimited lists.
    #[serde(default)]
    pub space_delimited_claims: Vec<String>,
    /// Whether a token is required.
    pub presence: Option<JwtPresence>,
}

/// A header carrying a JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    /// Header name (required).
    pub name: String,
    /// Prefix before the token, e.g. `Bearer `.
    pub prefix: Option<String>,
}

/// A claim copied to a header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Header name (required).
    pub header: String,
    /// Claim name (required).
    pub claim: String,
}
