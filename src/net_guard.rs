//! The address guard: no webhook request goes to an address that is not globally routable,
//! unless an operator allow-listed it.
//!
//! This module owns three things and guarantees each:
//!
//! - [`refusal`], the pure classification of one IP address: `None` for a globally routable
//!   unicast address, otherwise the [`AddressClass`] that makes it unfit for a webhook (loopback,
//!   private, link-local, CGNAT, multicast, documentation, …, and the IPv6 forms that embed an
//!   IPv4 address: mapped, compatible, NAT64, 6to4 — judged by the embedded address).
//! - [`Policy`], the operator's exceptions (`http.allow_private`: CIDRs, single addresses and
//!   host names) and name pins (`http.resolve`, like `curl --resolve`), validated at start with
//!   errors that name the setting.
//! - [`Resolver`], the only way a delivery turns a host name into addresses: it resolves the
//!   name itself (pins first, then the system resolver or a [`Lookup::Static`] map that tests
//!   control), drops every refused address and returns only the checked ones. It is plugged into
//!   the connectors of both transports (hyper's `HttpConnector` as a `tower::Service<Name>`,
//!   reqwest's `dns_resolver`), so the address dialled is exactly the address checked: there is
//!   no second lookup for DNS rebinding to slip through. IP-literal hosts never reach a
//!   resolver (the connectors dial them directly), so [`Resolver::check_literal`] is called
//!   before every request.
//!
//! The one exception is a proxy named by the environment: its own host is exempt (it is where
//! every request goes), and for requests through it the target's address is checked by our
//! lookup but dialled by the proxy (see `delivery::http`).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ipnet::IpNet;

use crate::config::HttpConfig;

/// Why an address is refused. The set is closed; [`AddressClass::as_str`] is a bounded label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// `0.0.0.0`, `::`.
    Unspecified,
    /// `0.0.0.0/8` ("this network").
    ThisNetwork,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`.
    Private,
    /// `100.64.0.0/10`, shared address space of carrier-grade NAT.
    SharedCgnat,
    /// `169.254.0.0/16` (cloud metadata services live at 169.254.169.254), `fe80::/10`.
    LinkLocal,
    /// `192.0.0.0/24` and `2001::/23` (IETF protocol assignments, Teredo included).
    IetfProtocol,
    /// `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `192.88.99.0/24`, the deprecated 6to4 relay anycast.
    RelayAnycast,
    /// `198.18.0.0/15`, `2001:2::/48`.
    Benchmarking,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `240.0.0.0/4`, and IPv6 outside the global unicast `2000::/3` not named otherwise.
    Reserved,
    /// `fc00::/7` (unique local addresses).
    UniqueLocal,
    /// `fec0::/10` (deprecated site-local).
    SiteLocal,
    /// `100::/64` (discard-only).
    Discard,
}

impl AddressClass {
    /// Every class, e.g. for tests and metric initialisation.
    pub const ALL: [AddressClass; 16] = [
        AddressClass::Unspecified,
        AddressClass::ThisNetwork,
        AddressClass::Loopback,
        AddressClass::Private,
        AddressClass::SharedCgnat,
        AddressClass::LinkLocal,
        AddressClass::IetfProtocol,
        AddressClass::Documentation,
        AddressClass::RelayAnycast,
        AddressClass::Benchmarking,
        AddressClass::Multicast,
        AddressClass::Broadcast,
        AddressClass::Reserved,
        AddressClass::UniqueLocal,
        AddressClass::SiteLocal,
        AddressClass::Discard,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            AddressClass::Unspecified => "unspecified",
            AddressClass::ThisNetwork => "this_network",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::SharedCgnat => "shared_cgnat",
            AddressClass::LinkLocal => "link_local",
            AddressClass::IetfProtocol => "ietf_protocol",
            AddressClass::Documentation => "documentation",
            AddressClass::RelayAnycast => "relay_anycast",
            AddressClass::Benchmarking => "benchmarking",
            AddressClass::Multicast => "multicast",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Reserved => "reserved",
            AddressClass::UniqueLocal => "unique_local",
            AddressClass::SiteLocal => "site_local",
            AddressClass::Discard => "discard",
        }
    }
}

impl std::fmt::Display for AddressClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why `ip` must not receive a webhook, or `None` when it is a globally routable unicast address.
/// IPv6 addresses that embed an IPv4 address (mapped `::ffff:0:0/96`, compatible `::/96`, NAT64
/// `64:ff9b::/96` and the local-use `64:ff9b:1::/48` with the address in the last 32 bits, 6to4
/// `2002::/16`) are judged by the embedded address.
pub fn refusal(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => refusal_v6(v6),
    }
}

fn in_v4(ip: u32, net: [u8; 4], len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    ip & mask == u32::from_be_bytes(net) & mask
}

fn refusal_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    use AddressClass::*;
    let n = u32::from(ip);
    // Most specific first: 0.0.0.0 before 0/8, 255.255.255.255 before 240/4.
    let table: [([u8; 4], u32, AddressClass); 17] = [
        ([0, 0, 0, 0], 32, Unspecified),
        ([255, 255, 255, 255], 32, Broadcast),
        ([0, 0, 0, 0], 8, ThisNetwork),
        ([10, 0, 0, 0], 8, Private),
        ([100, 64, 0, 0], 10, SharedCgnat),
        ([127, 0, 0, 0], 8, Loopback),
        ([169, 254, 0, 0], 16, LinkLocal),
        ([172, 16, 0, 0], 12, Private),
        ([192, 0, 0, 0], 24, IetfProtocol),
        ([192, 0, 2, 0], 24, Documentation),
        ([192, 88, 99, 0], 24, RelayAnycast),
        ([192, 168, 0, 0], 16, Private),
        ([198, 18, 0, 0], 15, Benchmarking),
        ([198, 51, 100, 0], 24, Documentation),
        ([203, 0, 113, 0], 24, Documentation),
        ([224, 0, 0, 0], 4, Multicast),
        ([240, 0, 0, 0], 4, Reserved),
    ];
    table
        .iter()
        .find(|(net, len, _)| in_v4(n, *net, *len))
        .map(|(_, _, class)| *class)
}

fn in_v6(ip: u128, net: u128, len: u32) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    ip & mask == net & mask
}

/// The IPv4 address an IPv6 address carries, when it is of a form that embeds one.
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let n = u128::from(ip);
    let last32 = Ipv4Addr::from((n & 0xffff_ffff) as u32);
    if in_v6(n, 0xffff_0000_0000, 96) {
        // ::ffff:a.b.c.d, IPv4-mapped.
        return Some(last32);
    }
    if in_v6(n, 0, 96) && n > 1 {
        // ::a.b.c.d, IPv4-compatible (deprecated); `::` and `::1` are themselves.
        return Some(last32);
    }
    if in_v6(n, 0x0064_ff9b << 96, 96) || in_v6(n, 0x0064_ff9b_0001 << 80, 48) {
        // NAT64, well-known and local-use prefixes: the IPv4 address in the last 32 bits.
        return Some(last32);
    }
    if in_v6(n, 0x2002 << 112, 16) {
        // 6to4: 2002:aabb:ccdd::/48 carries a.b.c.d in bits 16..48.
        return Some(Ipv4Addr::from(((n >> 80) & 0xffff_ffff) as u32));
    }
    None
}

fn refusal_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    use AddressClass::*;
    let n = u128::from(ip);
    if n == 0 {
        return Some(Unspecified);
    }
    if n == 1 {
        return Some(Loopback);
    }
    if let Some(v4) = embedded_v4(ip) {
        return refusal_v4(v4);
    }
    let table: [(u128, u32, AddressClass); 10] = [
        (0x0100 << 112, 64, Discard),
        (0x2001_0db8 << 96, 32, Documentation),
        (0x3fff << 112, 20, Documentation),
        (0x2001_0002 << 96, 48, Benchmarking),
        // 2001::/32 Teredo and the rest of the IETF protocol assignments.
        (0x2001 << 112, 23, IetfProtocol),
        (0xfc00 << 112, 7, UniqueLocal),
        (0xfe80 << 112, 10, LinkLocal),
        (0xfec0 << 112, 10, SiteLocal),
        (0xff00 << 112, 8, Multicast),
        // Everything else outside global unicast 2000::/3 is unassigned or special.
        (0x2000 << 112, 3, Reserved),
    ];
    for (net, len, class) in table {
        let inside = in_v6(n, net, len);
        match class {
            // The last row is the global unicast range: refused when *outside* it.
            Reserved if !inside => return Some(Reserved),
            Reserved => return None,
            _ if inside => return Some(class),
            _ => {}
        }
    }
    None
}

/// One host-name entry of `http.allow_private`: the exact name, or `*.suffix` for every name
/// under it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    Exact(String),
    Suffix(String),
}

/// The operator's exceptions and pins, from `http.allow_private` and `http.resolve`.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    nets: Vec<IpNet>,
    hosts: Vec<HostRule>,
    /// name (lowercase, no trailing dot) → the addresses it resolves to.
    pins: HashMap<String, Vec<IpAddr>>,
}

/// A host name as compared: lowercase, without a trailing dot.
fn normal_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

impl Policy {
    /// The policy of `http.*`; every bad entry is reported, naming its setting.
    pub fn from_config(http: &HttpConfig) -> Result<Policy, Vec<String>> {
        let mut problems = Vec::new();
        let mut policy = Policy::default();
        for entry in &http.allow_private {
            let e = entry.trim();
            if let Ok(net) = e.parse::<IpNet>() {
                policy.nets.push(net.trunc());
            } else if let Ok(ip) = e.parse::<IpAddr>() {
                policy.nets.push(IpNet::from(ip));
            } else if let Some(suffix) = e.strip_prefix("*.") {
                if valid_host_name(suffix) {
                    policy.hosts.push(HostRule::Suffix(normal_host(suffix)));
                } else {
                    problems.push(format!(
                        "http.allow_private: {entry:?} is not a CIDR, an address or a host name"
                    ));
                }
            } else if valid_host_name(e.trim_end_matches('.')) {
                policy.hosts.push(HostRule::Exact(normal_host(e)));
            } else {
                problems.push(format!(
                    "http.allow_private: {entry:?} is not a CIDR (10.0.0.0/8), an address or a \
                     host name (localhost, *.dev.internal)"
                ));
            }
        }
        for entry in &http.resolve {
            match parse_pin(entry) {
                Ok((host, addrs)) => {
                    policy.pins.entry(host).or_default().extend(addrs);
                }
                Err(why) => problems.push(format!("http.resolve: {entry:?} {why}")),
            }
        }
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(problems)
        }
    }

    /// Whether `host` (a name, not an address) is allow-listed by name: its addresses are then
    /// not checked at all.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = normal_host(host);
        self.hosts.iter().any(|rule| match rule {
            HostRule::Exact(name) => *name == host,
            HostRule::Suffix(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|rest| rest.ends_with('.')),
        })
    }

    /// Why `ip` is refused under this policy, or `None` when it may be dialled: globally
    /// routable, or inside an allow-listed range (an address that embeds an IPv4 address is
    /// allowed when either form is).
    pub fn verdict(&self, ip: IpAddr) -> Option<AddressClass> {
        let class = refusal(ip)?;
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let allowed = self
            .nets
            .iter()
            .any(|net| net.contains(&ip) || embedded.is_some_and(|e| net.contains(&e)));
        if allowed {
            None
        } else {
            Some(class)
        }
    }

    /// The pinned addresses of `host`, if `http.resolve` names it.
    pub fn pinned(&self, host: &str) -> Option<&[IpAddr]> {
        self.pins.get(&normal_host(host)).map(Vec::as_slice)
    }

    /// The addresses of `host` that may be dialled, in their order; refused when none is left
    /// (naming the first refused address and its class).
    pub fn filter(&self, host: &str, addrs: &[IpAddr]) -> Result<Vec<IpAddr>, GuardError> {
        if addrs.is_empty() {
            return Err(GuardError::NoAddress);
        }
        if self.host_allowed(host) {
            return Ok(addrs.to_vec());
        }
        let mut first_refused = None;
        let mut ok = Vec::with_capacity(addrs.len());
        for &ip in addrs {
            match self.verdict(ip) {
                None => ok.push(ip),
                Some(class) => {
                    first_refused.get_or_insert(GuardError::Refused { addr: ip, class });
                }
            }
        }
        match (ok.is_empty(), first_refused) {
            (false, _) => Ok(ok),
            (true, Some(refused)) => Err(refused),
            (true, None) => Err(GuardError::NoAddress),
        }
    }
}

/// `HOST=ADDR[,ADDR…]` of `http.resolve`.
fn parse_pin(entry: &str) -> Result<(String, Vec<IpAddr>), String> {
    let (host, addrs) = entry
        .split_once('=')
        .ok_or("is not HOST=ADDRESS[,ADDRESS…]")?;
    let host = host.trim();
    if !valid_host_name(host.trim_end_matches('.')) {
        return Err(format!("names no valid host ({host:?})"));
    }
    let mut out = Vec::new();
    for a in addrs.split(',') {
        let a = a.trim().trim_start_matches('[').trim_end_matches(']');
        out.push(
            a.parse::<IpAddr>()
                .map_err(|_| format!("holds {a:?}, which is not an IP address"))?,
        );
    }
    Ok((normal_host(host), out))
}

/// Why a host gave no address to dial. The `Display` text goes into the delivery log: it names
/// the address and its class, never the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error(
        "address refused: {addr} is {class}, not globally routable (allow it with \
         http.allow_private); not dialled"
    )]
    Refused { addr: IpAddr, class: AddressClass },
    #[error("DNS lookup failed: {0}")]
    Lookup(String),
    #[error("the host name resolved to no address")]
    NoAddress,
}

/// Where names are looked up after the pins of `http.resolve`.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The system resolver (`getaddrinfo`, on a blocking thread).
    System,
    /// Only this map (lowercase names): tests decide what every name resolves to, and a name
    /// that is not in it does not resolve.
    Static(Arc<HashMap<String, Vec<IpAddr>>>),
}

impl Lookup {
    /// A [`Lookup::Static`] from `(name, addresses)` pairs.
    pub fn fixed<'a>(entries: impl IntoIterator<Item = (&'a str, Vec<IpAddr>)>) -> Lookup {
        Lookup::Static(Arc::new(
            entries
                .into_iter()
                .map(|(k, v)| (normal_host(k), v))
                .collect(),
        ))
    }
}

/// The guarding resolver of every delivery. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Resolver {
    policy: Arc<Policy>,
    lookup: Lookup,
    /// Hosts whose addresses are not checked: the proxies the environment names.
    exempt: Arc<Vec<String>>,
}

impl Resolver {
    pub fn new(policy: Policy, lookup: Lookup) -> Resolver {
        Resolver {
            policy: Arc::new(policy),
            lookup,
            exempt: Arc::new(Vec::new()),
        }
    }

    /// The resolver of `http.*` over the system resolver.
    pub fn from_config(http: &HttpConfig) -> anyhow::Result<Resolver> {
        let policy = Policy::from_config(http).map_err(|p| anyhow::anyhow!("{}", p.join("; ")))?;
        Ok(Resolver::new(policy, Lookup::System))
    }

    /// The same resolver with `hosts` exempt from the check (the environment's proxies).
    pub fn with_exempt_hosts(mut self, hosts: Vec<String>) -> Resolver {
        self.exempt = Arc::new(hosts.iter().map(|h| normal_host(h)).collect());
        self
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The addresses of `host`, unchecked: pins first, then the lookup.
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, GuardError> {
        if let Some(pinned) = self.policy.pinned(host) {
            return Ok(pinned.to_vec());
        }
        match &self.lookup {
            Lookup::Static(map) => map
                .get(&normal_host(host))
                .cloned()
                .ok_or_else(|| GuardError::Lookup("name not found".into())),
            Lookup::System => {
                let found = tokio::net::lookup_host((host, 0))
                    .await
                    .map_err(|e| GuardError::Lookup(e.to_string()))?;
                Ok(found.map(|a| a.ip()).collect())
            }
        }
    }

    /// The addresses of `host` that may be dialled (see [`Policy::filter`]).
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, GuardError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.policy.filter(host, &[ip]);
        }
        let addrs = self.lookup(host).await?;
        if self.exempt.contains(&normal_host(host)) {
            return if addrs.is_empty() {
                Err(GuardError::NoAddress)
            } else {
                Ok(addrs)
            };
        }
        let ok = self.policy.filter(host, &addrs)?;
        if ok.len() < addrs.len() {
            tracing::debug!(
                host,
                kept = ok.len(),
                dropped = addrs.len() - ok.len(),
                "refused addresses dropped from a lookup"
            );
        }
        Ok(ok)
    }

    /// The check of an IP-literal URL host, which no resolver sees: `Some(Err)` when refused,
    /// `Some(Ok)` when allowed, `None` for a host name.
    pub fn check_literal(&self, url: &url::Url) -> Option<Result<IpAddr, GuardError>> {
        let ip = match url.host()? {
            url::Host::Ipv4(v4) => IpAddr::V4(v4),
            url::Host::Ipv6(v6) => IpAddr::V6(v6),
            url::Host::Domain(_) => return None,
        };
        Some(match self.policy.verdict(ip) {
            None => Ok(ip),
            Some(class) => Err(GuardError::Refused { addr: ip, class }),
        })
    }

    /// The whole check of a URL's host: the literal, or the name resolved and filtered.
    pub async fn check_url(&self, url: &url::Url) -> Result<Vec<IpAddr>, GuardError> {
        if let Some(literal) = self.check_literal(url) {
            return literal.map(|ip| vec![ip]);
        }
        let host = url.host_str().ok_or(GuardError::NoAddress)?;
        self.resolve(host).await
    }
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, GuardError>> + Send>>;

/// hyper-util's `HttpConnector` resolver: the connector sets the port.
impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = GuardError;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GuardError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Resolving {
        let this = self.clone();
        Box::pin(async move {
            let addrs = this.resolve(name.as_str()).await?;
            Ok(addrs
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect::<Vec<_>>()
                .into_iter())
        })
    }
}

/// reqwest's resolver (the proxied transport: the proxy's own host, and `NO_PROXY` targets).
impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = Resolver::resolve(&this, &host).await?;
            let addrs: reqwest::dns::Addrs = Box::new(
                addrs
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, 0))
                    .collect::<Vec<_>>()
                    .into_iter(),
            );
            Ok(addrs)
        })
    }
}

/// The [`GuardError::Refused`] somewhere in an error's source chain (the connectors wrap what
/// the resolver returned).
pub fn find_refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a GuardError> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(g) = e.downcast_ref::<GuardError>() {
            if matches!(g, GuardError::Refused { .. }) {
                return Some(g);
            }
        }
        current = e.source();
    }
    None
}

/// The hosts of the proxies that these variables name (`http://proxy:3128`, `proxy:3128`).
pub fn proxy_hosts(values: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    for v in values {
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        let with_scheme = if v.contains("://") {
            v.to_string()
        } else {
            format!("http://{v}")
        };
        if let Some(host) = url::Url::parse(&with_scheme)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
        {
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            if !out.contains(&host) {
                out.push(host);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddressClass::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_refused_class_and_its_edges() {
        #[rustfmt::skip]
        let table: &[(&str, Option<AddressClass>)] = &[
            // IPv4
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(ThisNetwork)),
            ("0.255.255.255", Some(ThisNetwork)),
            ("1.0.0.0", None),
            ("9.255.255.255", None),
            ("10.0.0.0", Some(Private)),
            ("10.0.0.5", Some(Private)),
            ("10.255.255.255", Some(Private)),
            ("11.0.0.0", None),
            ("100.63.255.255", None),
            ("100.64.0.0", Some(SharedCgnat)),
            ("100.127.255.255", Some(SharedCgnat)),
            ("100.128.0.0", None),
            ("126.255.255.255", None),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("128.0.0.0", None),
            ("169.253.255.255", None),
            ("169.254.0.1", Some(LinkLocal)),
            ("169.254.169.254", Some(LinkLocal)),
            ("169.255.0.0", None),
            ("172.15.255.255", None),
            ("172.16.0.0", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.0", None),
            ("192.0.0.1", Some(IetfProtocol)),
            ("192.0.0.255", Some(IetfProtocol)),
            ("192.0.1.0", None),
            ("192.0.2.1", Some(Documentation)),
            ("192.0.3.0", None),
            ("192.88.99.1", Some(RelayAnycast)),
            ("192.88.100.0", None),
            ("192.167.255.255", None),
            ("192.168.0.1", Some(Private)),
            ("192.168.255.255", Some(Private)),
            ("192.169.0.0", None),
            ("198.17.255.255", None),
            ("198.18.0.0", Some(Benchmarking)),
            ("198.19.255.255", Some(Benchmarking)),
            ("198.20.0.0", None),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.9", Some(Documentation)),
            ("203.0.114.0", None),
            ("223.255.255.255", None),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.255", Some(Multicast)),
            ("240.0.0.1", Some(Reserved)),
            ("255.255.255.254", Some(Reserved)),
            ("255.255.255.255", Some(Broadcast)),
            ("8.8.8.8", None),
            ("93.184.216.34", None),
            // IPv6
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("::2", Some(ThisNetwork)), // compatible ::0.0.0.2
            ("fc00::1", Some(UniqueLocal)),
            ("fd12:3456::1", Some(UniqueLocal)),
            ("fbff:ffff::1", Some(Reserved)),
            ("fe80::1", Some(LinkLocal)),
            ("febf:ffff::1", Some(LinkLocal)),
            ("fec0::1", Some(SiteLocal)),
            ("ff02::1", Some(Multicast)),
            ("ff0e::1", Some(Multicast)),
            ("2001:db8::1", Some(Documentation)),
            ("3fff::1", Some(Documentation)),
            ("2001:2::1", Some(Benchmarking)),
            ("2001::1", Some(IetfProtocol)), // Teredo
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Some(IetfProtocol)),
            ("2001:1ff:ffff::1", Some(IetfProtocol)),
            ("2001:200::1", None),
            ("100::1", Some(Discard)),
            ("100::ffff:ffff:ffff:ffff", Some(Discard)),
            ("100:0:0:1::", Some(Reserved)),
            ("4000::1", Some(Reserved)),
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001::200e", None),
            // IPv4-mapped and -compatible: judged as IPv4.
            ("::ffff:10.0.0.5", Some(Private)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("::ffff:8.8.8.8", None),
            ("::10.0.0.5", Some(Private)),
            ("::127.0.0.1", Some(Loopback)),
            ("::8.8.8.8", None),
            // NAT64, well-known and local-use.
            ("64:ff9b::10.0.0.5", Some(Private)),
            ("64:ff9b::127.0.0.1", Some(Loopback)),
            ("64:ff9b::169.254.169.254", Some(LinkLocal)),
            ("64:ff9b::8.8.8.8", None),
            ("64:ff9b:1::192.168.1.1", Some(Private)),
            ("64:ff9b:1::8.8.8.8", None),
            ("64:ff9b:2::8.8.8.8", Some(Reserved)),
            // 6to4 of a private and of a public address.
            ("2002:0a00:0005::1", Some(Private)),
            ("2002:7f00:0001::1", Some(Loopback)),
            ("2002:0808:0808::1", None),
        ];
        for (addr, expected) in table {
            assert_eq!(refusal(ip(addr)), *expected, "{addr}");
        }
        // Every class is reachable from the table.
        for class in AddressClass::ALL {
            assert!(
                table.iter().any(|(_, c)| *c == Some(class)),
                "{class} has no case"
            );
        }
    }

    #[test]
    fn class_labels_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for c in AddressClass::ALL {
            assert!(seen.insert(c.as_str()));
            assert!(c
                .as_str()
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch == '_'));
        }
    }

    fn policy(allow: &[&str], resolve: &[&str]) -> Result<Policy, Vec<String>> {
        let http = HttpConfig {
            allow_private: allow.iter().map(|s| s.to_string()).collect(),
            resolve: resolve.iter().map(|s| s.to_string()).collect(),
            ..HttpConfig::default()
        };
        Policy::from_config(&http)
    }

    #[test]
    fn allow_list_of_cidrs_addresses_and_host_names() {
        let p = policy(
            &[
                "127.0.0.0/8",
                "10.1.2.3",
                "fd00::/8",
                "dev-box.internal",
                "*.lab.example",
            ],
            &[],
        )
        .unwrap();
        let table = [
            ("127.0.0.1", None),
            ("127.9.9.9", None),
            ("10.1.2.3", None),
            ("10.1.2.4", Some(Private)),
            ("fd12::1", None),
            ("fc00::1", Some(UniqueLocal)),
            ("::ffff:127.0.0.1", None),
            ("64:ff9b::10.1.2.3", None),
            ("169.254.169.254", Some(LinkLocal)),
            ("8.8.8.8", None),
        ];
        for (addr, expected) in table {
            assert_eq!(p.verdict(ip(addr)), expected, "{addr}");
        }
        for (host, allowed) in [
            ("dev-box.internal", true),
            ("DEV-BOX.internal.", true),
            ("other.internal", false),
            ("a.lab.example", true),
            ("a.b.lab.example", true),
            ("lab.example", false),
            ("evillab.example", false),
        ] {
            assert_eq!(p.host_allowed(host), allowed, "{host}");
        }
    }

    #[test]
    fn bad_allow_list_and_pin_entries_are_named() {
        let err = policy(
            &["10.0.0.0/33", "not a host", "*.", "ok.example"],
            &[
                "nohost",
                "a.example=not-an-ip",
                "=1.2.3.4",
                "b.example=127.0.0.1",
            ],
        )
        .unwrap_err();
        assert_eq!(err.len(), 6, "{err:?}");
        assert!(err[..3].iter().all(|e| e.starts_with("http.allow_private")));
        assert!(err[3..].iter().all(|e| e.starts_with("http.resolve")));
    }

    #[test]
    fn filter_drops_refused_addresses_and_refuses_when_none_is_left() {
        let p = policy(&["127.0.0.0/8"], &[]).unwrap();
        assert_eq!(
            p.filter(
                "mixed.example",
                &[ip("10.0.0.5"), ip("127.0.0.1"), ip("8.8.8.8")]
            ),
            Ok(vec![ip("127.0.0.1"), ip("8.8.8.8")])
        );
        assert_eq!(
            p.filter("internal.example", &[ip("10.0.0.5"), ip("fd00::1")]),
            Err(GuardError::Refused {
                addr: ip("10.0.0.5"),
                class: Private
            })
        );
        assert_eq!(p.filter("x.example", &[]), Err(GuardError::NoAddress));
        let named = policy(&["internal.example"], &[]).unwrap();
        assert_eq!(
            named.filter("internal.example", &[ip("10.0.0.5")]),
            Ok(vec![ip("10.0.0.5")])
        );
    }

    #[tokio::test]
    async fn pins_come_before_the_lookup_and_are_checked_too() {
        let p = policy(&[], &["hooks.partner.example=127.0.0.1,::1"]).unwrap();
        let r = Resolver::new(
            p,
            Lookup::fixed([("hooks.partner.example", vec![ip("8.8.8.8")])]),
        );
        assert_eq!(
            r.lookup("Hooks.Partner.Example.").await,
            Ok(vec![ip("127.0.0.1"), ip("::1")])
        );
        assert_eq!(
            r.resolve("hooks.partner.example").await,
            Err(GuardError::Refused {
                addr: ip("127.0.0.1"),
                class: Loopback
            })
        );
        let allowed = Resolver::new(
            policy(&["127.0.0.0/8"], &["hooks.partner.example=127.0.0.1"]).unwrap(),
            Lookup::fixed([]),
        );
        assert_eq!(
            allowed.resolve("hooks.partner.example").await,
            Ok(vec![ip("127.0.0.1")])
        );
        assert!(matches!(
            allowed.resolve("unknown.example").await,
            Err(GuardError::Lookup(_))
        ));
    }

    #[tokio::test]
    async fn exempt_proxy_hosts_are_not_checked() {
        let r = Resolver::new(
            Policy::default(),
            Lookup::fixed([("proxy.corp", vec![ip("10.0.0.8")])]),
        )
        .with_exempt_hosts(proxy_hosts([
            "http://proxy.corp:3128".to_string(),
            "proxy.corp:3128".to_string(),
            String::new(),
        ]));
        assert_eq!(r.resolve("proxy.corp").await, Ok(vec![ip("10.0.0.8")]));
        assert_eq!(
            proxy_hosts(["http://[fd00::1]:8080".to_string()]),
            ["fd00::1"]
        );
    }

    #[test]
    fn literal_hosts_are_checked_without_a_lookup() {
        let r = Resolver::new(Policy::default(), Lookup::fixed([]));
        let check = |u: &str| r.check_literal(&url::Url::parse(u).unwrap());
        assert!(check("https://partner.example/h").is_none());
        assert_eq!(
            check("https://[::ffff:a00:5]/h"),
            Some(Err(GuardError::Refused {
                addr: ip("::ffff:10.0.0.5"),
                class: Private
            }))
        );
        // The URL parser normalises other IPv4 spellings, so they are caught as well.
        assert!(matches!(
            check("https://2130706433/h"),
            Some(Err(GuardError::Refused {
                class: Loopback,
                ..
            }))
        ));
        assert!(matches!(
            check("https://0x7f.1/h"),
            Some(Err(GuardError::Refused {
                class: Loopback,
                ..
            }))
        ));
        assert_eq!(check("https://8.8.8.8/h"), Some(Ok(ip("8.8.8.8"))));
    }
}
