//! `Gateway`, `ServiceEntry`, `WorkloadEntry` and `Sidecar` (`networking.istio.io`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::destination_rule::ConnectionPoolSettings;
use super::meta::NetworkingWorkloadSelector;
use super::virtual_service::Destination;

/// Spec of an Istio `Gateway`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// Servers (listeners) of the gateway.
    #[serde(default)]
    pub servers: Vec<Server>,
    /// Labels of the gateway workloads, e.g. `istio: ingressgateway`.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

/// A gateway server: a port, the hosts it exposes and its TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// Port to listen on (required).
    pub port: Port,
    /// Address or `unix://` socket to bind.
    pub bind: Option<String>,
    /// Exposed hosts, `[ns/]dnsName` (required).
    pub hosts: Vec<String>,
    /// TLS settings.
    pub tls: Option<ServerTlsSettings>,
    /// Default endpoint (not implemented by Istio).
    pub default_endpoint: Option<String>,
    /// Server name.
    pub name: Option<String>,
}

/// A gateway server port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    /// Port number (required).
    pub number: u32,
    /// Protocol: HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, TCP, TLS (required).
    pub protocol: String,
    /// Port name (required).
    pub name: String,
    /// Deprecated target port.
    pub target_port: Option<u32>,
}

/// TLS modes of a gateway server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// Forward the TLS connection by SNI.
    Passthrough,
    /// Terminate TLS.
    Simple,
    /// Terminate TLS requiring a client certificate.
    Mutual,
    /// Passthrough with SNI-based routing to mesh services.
    AutoPassthrough,
    /// Mutual TLS with mesh certificates.
    IstioMutual,
    /// Client certificate optional.
    OptionalMutual,
}

/// TLS protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TlsProtocol {
    /// Automatic choice.
    #[serde(rename = "TLS_AUTO")]
    TlsAuto,
    /// TLS 1.0.
    #[serde(rename = "TLSV1_0")]
    Tlsv1_0,
    /// TLS 1.1.
    #[serde(rename = "TLSV1_1")]
    Tlsv1_1,
    /// TLS 1.2.
    #[serde(rename = "TLSV1_2")]
    Tlsv1_2,
    /// TLS 1.3.
    #[serde(rename = "TLSV1_3")]
    Tlsv1_3,
}

/// Server-side TLS settings (Gateway servers, Sidecar ingress).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// Redirect plain HTTP to HTTPS (301).
    pub https_redirect: Option<bool>,
    /// TLS mode.
    pub mode: Option<ServerTlsMode>,
    /// Server certificate file.
    pub server_certificate: Option<String>,
    /// Server key file.
    pub private_key: Option<String>,
    /// CA certificates file.
    pub ca_certificates: Option<String>,
    /// Certificate revocation list file.
    pub ca_crl: Option<String>,
    /// Secret holding the certificates.
    pub credential_name: Option<String>,
    /// Up to two secrets (e.g. RSA and ECDSA).
    #[serde(default)]
    pub credential_names: Vec<String>,
    /// Secret holding the CA certificate.
    pub ca_cert_credential_name: Option<String>,
    /// Up to two inline certificate sets.
    #[serde(default)]
    pub tls_certificates: Vec<TlsCertificate>,
    /// Accepted client SANs.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// Accepted client certificate SPKI hashes.
    #[serde(default)]
    pub verify_certificate_spki: Vec<String>,
    /// Accepted client certificate hashes.
    #[serde(default)]
    pub verify_certificate_hash: Vec<String>,
    /// Minimum TLS version.
    pub min_protocol_version: Option<TlsProtocol>,
    /// Maximum TLS version.
    pub max_protocol_version: Option<TlsProtocol>,
    /// Cipher suites.
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    /// ECDH curves.
    #[serde(default)]
    pub ecdh_curves: Vec<String>,
    /// Skip client certificate verification.
    pub insecure_skip_verify: Option<bool>,
}

/// An inline certificate set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificate {
    /// Server certificate file.
    pub server_certificate: Option<String>,
    /// Server key file.
    pub private_key: Option<String>,
    /// CA certificates file.
    pub ca_certificates: Option<String>,
}

/// Spec of a `ServiceEntry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    /// Hosts of the service (required).
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDRs.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Ports of the service.
    #[serde(default)]
    pub ports: Vec<ServiceEntryPort>,
    /// Inside or outside the mesh.
    pub location: Option<Location>,
    /// How endpoints are found.
    pub resolution: Option<Resolution>,
    /// Static endpoints.
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntrySpec>,
    /// Workloads backing the service (instead of `endpoints`).
    pub workload_selector: Option<NetworkingWorkloadSelector>,
    /// Namespaces the entry is visible to.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Accepted server SANs.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// A ServiceEntry port (`ServicePort` in the proto).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntryPort {
    /// Port number (required).
    pub number: u32,
    /// Protocol, e.g. HTTP, HTTPS, TCP.
    pub protocol: Option<String>,
    /// Port name (required).
    pub name: String,
    /// Port on the endpoints.
    pub target_port: Option<u32>,
}

/// Where a ServiceEntry's service lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    /// Outside the mesh (default).
    MeshExternal,
    /// Part of the mesh.
    MeshInternal,
}

/// How a ServiceEntry's endpoints are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Use the original destination address.
    None,
    /// Use the static `endpoints`.
    Static,
    /// Resolve via DNS, all addresses.
    Dns,
    /// Resolve via DNS, first address.
    DnsRoundRobin,
    /// Dynamic DNS.
    DynamicDns,
}

/// Spec of a `WorkloadEntry`, also a ServiceEntry endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    /// Address (IP, DNS name or `unix://` socket).
    pub address: Option<String>,
    /// Port number by port name.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    /// Labels of the workload.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Network the workload is on.
    pub network: Option<String>,
    /// Locality (`region/zone/subzone`).
    pub locality: Option<String>,
    /// Load balancing weight.
    pub weight: Option<u32>,
    /// Service account of the workload.
    pub service_account: Option<String>,
}

/// Spec of a `Sidecar`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarSpec {
    /// Workloads the Sidecar applies to.
    pub workload_selector: Option<NetworkingWorkloadSelector>,
    /// Inbound listeners.
    #[serde(default)]
    pub ingress: Vec<IstioIngressListener>,
    /// Outbound listeners (reachable hosts).
    #[serde(default)]
    pub egress: Vec<IstioEgressListener>,
    /// Inbound connection pool.
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    /// Outbound traffic policy.
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// Traffic capture modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaptureMode {
    /// Environment default.
    Default,
    /// iptables redirection.
    Iptables,
    /// No capture.
    None,
}

/// A Sidecar port (all fields optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarPort {
    /// Port number.
    pub number: Option<u32>,
    /// Protocol.
    pub protocol: Option<String>,
    /// Port name.
    pub name: Option<String>,
    /// Deprecated target port.
    pub target_port: Option<u32>,
}

/// An inbound Sidecar listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioIngressListener {
    /// Port (required).
    pub port: SidecarPort,
    /// Address to bind.
    pub bind: Option<String>,
    /// Capture mode.
    pub capture_mode: Option<CaptureMode>,
    /// Where to forward, e.g. `127.0.0.1:8080`.
    pub default_endpoint: Option<String>,
    /// TLS termination.
    pub tls: Option<ServerTlsSettings>,
    /// Connection pool.
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// An outbound Sidecar listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioEgressListener {
    /// Port.
    pub port: Option<SidecarPort>,
    /// Address to bind.
    pub bind: Option<String>,
    /// Capture mode.
    pub capture_mode: Option<CaptureMode>,
    /// Reachable hosts, `ns/dnsName` (required).
    pub hosts: Vec<String>,
}

/// Outbound traffic policy modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicyMode {
    /// Only registered services are reachable.
    RegistryOnly,
    /// Unknown destinations pass through.
    AllowAny,
}

/// Outbound traffic policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    /// Mode.
    pub mode: Option<OutboundTrafficPolicyMode>,
    /// Egress proxy for unknown destinations.
    pub egress_proxy: Option<Destination>,
}
