//! Who may use the local endpoint: the checks every request passes before it is routed.
//!
//! The endpoint spends the user's account, and every web page the user visits can send it
//! requests (CSRF) or, after DNS rebinding, read its answers. A browser cannot forge `Host`,
//! `Origin`, `Sec-Fetch-Site` or a non-simple `Content-Type` without the server's consent, so:
//!
//! * **Host allowlist.** `Host` (and the authority of an absolute-form target) must name a
//!   loopback address — `localhost`, any `127.x.y.z`, `[::1]`, each with an optional port,
//!   compared case-insensitively — or one of the configured `allowed_hosts`. A rebound name
//!   (`evil.example` resolving to 127.0.0.1) is refused with 403. A missing Host is refused too.
//! * **No cross-origin requests.** A request with an `Origin` whose host fails the same rule,
//!   or whose scheme is not http/https, or `Origin: null`, is refused with 403; so is
//!   `Sec-Fetch-Site: cross-site` (how browsers mark cross-site GETs that carry no Origin). The
//!   endpoint never sends `Access-Control-*` headers, so a browser never lets another origin
//!   read an answer or pass a preflight; an `OPTIONS` preflight gets 405 (or 403 by its Origin).
//!   SDKs and curl send no Origin and are unaffected.
//! * **JSON only.** POST bodies must be `Content-Type: application/json` (parameters such as
//!   `charset` allowed): HTML forms and `fetch` "simple requests" cannot send that type without a
//!   preflight. Anything else is refused with 415 ([`check_content_type`]).
//! * **Optional bearer token.** With an [`ApiKey`] every request must carry
//!   `Authorization: Bearer <key>` (401 otherwise). Only the key's SHA-256 digest is kept; the
//!   comparison runs over digests without early exit. Without a key any Authorization header is
//!   accepted (the OpenAI SDKs always send one).
//!
//! The `/healthz` and `/readyz` probes pass the first two checks but not the bearer token
//! ([`Access::check_browser`]): they answer with a status word and reasons, nothing that
//! spends or reveals the account.
//!
//! The Host allowlist stops browsers, not other programs: anything that can open a TCP
//! connection to the listen address can claim `Host: localhost`. On a non-loopback listen
//! address the bearer token is the only defence.
//!
//! Pure functions over the request head; no I/O. Values from the request are shown in error
//! messages truncated by characters ([`shown`]) and escaped, never sliced at byte offsets.

use std::net::{IpAddr, Ipv6Addr};

use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN};
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use protocol::{ApiError, ErrorKind};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Characters of an untrusted value shown in an error message.
const SHOWN_CHARS: usize = 100;

/// At most `max` characters of `s` (never cut inside a character).
pub fn shown(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn shown_header(v: &HeaderValue) -> String {
    shown(&String::from_utf8_lossy(v.as_bytes()), SHOWN_CHARS)
}

/// A host name or address the endpoint answers to besides the loopback names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedHost {
    /// A DNS name, stored lowercase.
    Name(String),
    /// An IP address.
    Ip(IpAddr),
}

/// Why an `allowed_hosts` entry is not a host.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{entry:?}: expected a host name or ip address without port or scheme")]
pub struct AllowedHostError {
    pub entry: String,
}

impl std::str::FromStr for AllowedHost {
    type Err = AllowedHostError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || AllowedHostError {
            entry: shown(s, SHOWN_CHARS),
        };
        let bare = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if s.len() <= 253 && s.split('.').all(label_ok) {
            Ok(Self::Name(s.to_ascii_lowercase()))
        } else {
            Err(err())
        }
    }
}

/// The bearer token apps must present. Holds only the SHA-256 digest of the key, wiped on
/// drop; `Debug` shows nothing of it.
#[derive(Clone)]
pub struct ApiKey {
    digest: Zeroizing<[u8; 32]>,
}

/// Why an `api_key` is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiKeyError {
    #[error("empty")]
    Empty,
    #[error("must be visible ascii without spaces (it travels in an http header)")]
    Characters,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl ApiKey {
    /// The key apps will send as `Authorization: Bearer <key>`.
    pub fn new(key: &str) -> Result<Self, ApiKeyError> {
        if key.is_empty() {
            return Err(ApiKeyError::Empty);
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiKeyError::Characters);
        }
        Ok(Self {
            digest: digest(key.as_bytes()),
        })
    }

    /// Whether `presented` is the key. Compares SHA-256 digests without early exit, so the
    /// time taken says nothing about how much of the key a guess got right.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let other = digest(presented);
        let diff = self
            .digest
            .iter()
            .zip(other.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl zeroize::ZeroizeOnDrop for ApiKey {}

fn digest(bytes: &[u8]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(Sha256::digest(bytes).into())
}

/// Who may use the endpoint (see the module docs). The default: loopback names only, no key.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Host names or addresses accepted besides the loopback ones.
    pub allowed_hosts: Vec<AllowedHost>,
    /// If set, every request must carry `Authorization: Bearer <key>`.
    pub api_key: Option<ApiKey>,
}

/// Why a request was refused before routing. Messages name the refused value (truncated).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("missing host header")]
    MissingHost,
    #[error("host {host:?} not allowed: only loopback names and the configured allowed_hosts")]
    Host { host: String },
    #[error("origin {origin:?} not allowed: cross-origin browser requests are refused")]
    Origin { origin: String },
    #[error("sec-fetch-site {site:?}: cross-site browser requests are refused")]
    CrossSite { site: String },
    #[error("more than one {header} header")]
    Duplicate { header: &'static str },
    #[error("missing content-type: send application/json")]
    MissingContentType,
    #[error("content-type {got:?} not supported: send application/json")]
    ContentType { got: String },
    #[error("missing api key: send authorization: bearer <api_key>")]
    MissingBearer,
    #[error("invalid api key")]
    WrongBearer,
}

impl Refusal {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingHost
            | Self::Host { .. }
            | Self::Origin { .. }
            | Self::CrossSite { .. } => StatusCode::FORBIDDEN,
            Self::Duplicate { .. } => StatusCode::BAD_REQUEST,
            Self::MissingContentType | Self::ContentType { .. } => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::MissingBearer | Self::WrongBearer => StatusCode::UNAUTHORIZED,
        }
    }

    /// The OpenAI error object (sent with [`Refusal::status`]).
    pub fn api_error(&self) -> ApiError {
        let kind = match self.status() {
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => ErrorKind::Unauthorized,
            _ => ErrorKind::InvalidRequest,
        };
        ApiError::new(kind, self.to_string())
    }
}

/// The single value of header `name`, if present.
fn single<'a, K: http::header::AsHeaderName>(
    headers: &'a HeaderMap,
    name: K,
    label: &'static str,
) -> Result<Option<&'a HeaderValue>, Refusal> {
    let mut all = headers.get_all(name).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(Refusal::Duplicate { header: label });
    }
    Ok(first)
}

/// Whether `ip` is a loopback address.
fn loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    }
}

/// A `host [":" port]` authority split into the host (brackets removed from IPv6 literals).
/// `None` when it is not of that shape.
fn host_of(authority: &str) -> Option<&str> {
    let port_ok = |p: &str| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        match after.strip_prefix(':') {
            Some(p) => (inside, Some(p)),
            None if after.is_empty() => (inside, None),
            None => return None,
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() || port.is_some_and(|p| !port_ok(p) || p.parse::<u16>().is_err()) {
        return None;
    }
    Some(host)
}

impl Access {
    /// Whether the authority `host[:port]` names this endpoint.
    pub fn allows_authority(&self, authority: &str) -> bool {
        let Some(host) = host_of(authority) else {
            return false;
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return loopback(ip) || self.allowed_hosts.contains(&AllowedHost::Ip(ip));
        }
        // Address parsing is strict: "127.1" or "0x7f.0.0.1" are names here, and no name but
        // "localhost" and the configured ones is accepted.
        host.eq_ignore_ascii_case("localhost")
            || self
                .allowed_hosts
                .iter()
                .any(|a| matches!(a, AllowedHost::Name(n) if host.eq_ignore_ascii_case(n)))
    }

    /// Whether a browser `Origin` value names this endpoint: `http` or `https`, then an
    /// allowed authority, nothing else.
    fn allows_origin(&self, origin: &str) -> bool {
        let Some((scheme, authority)) = origin.split_once("://") else {
            return false;
        };
        (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
            && self.allows_authority(authority)
    }

    /// The checks every request passes before routing: Host, Origin, Sec-Fetch-Site, bearer
    /// token (in that order).
    pub fn check(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), Refusal> {
        self.check_browser(uri, headers)?;
        self.check_bearer(headers)
    }

    /// The checks the `/healthz` and `/readyz` probes pass: Host, Origin and Sec-Fetch-Site
    /// (what stops other web pages), not the bearer token (probes carry no credentials).
    pub fn check_browser(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = single(headers, &HOST, "host")?.ok_or(Refusal::MissingHost)?;
        let refused_host = |v: &HeaderValue| Refusal::Host {
            host: shown_header(v),
        };
        if !host.to_str().is_ok_and(|h| self.allows_authority(h)) {
            return Err(refused_host(host));
        }
        // An absolute-form target (`GET http://evil.example/ HTTP/1.1`) names a host too.
        if let Some(authority) = uri.authority() {
            if !self.allows_authority(authority.as_str()) {
                return Err(Refusal::Host {
                    host: shown(authority.as_str(), SHOWN_CHARS),
                });
            }
        }
        if let Some(origin) = single(headers, &ORIGIN, "origin")? {
            if !origin.to_str().is_ok_and(|o| self.allows_origin(o)) {
                return Err(Refusal::Origin {
                    origin: shown_header(origin),
                });
            }
        }
        if let Some(site) = single(headers, "sec-fetch-site", "sec-fetch-site")? {
            if site.as_bytes().eq_ignore_ascii_case(b"cross-site") {
                return Err(Refusal::CrossSite {
                    site: shown_header(site),
                });
            }
        }
        Ok(())
    }

    /// The bearer token check (only with an api key configured).
    fn check_bearer(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if let Some(key) = &self.api_key {
            let auth =
                single(headers, &AUTHORIZATION, "authorization")?.ok_or(Refusal::MissingBearer)?;
            let token = auth
                .to_str()
                .ok()
                .and_then(|a| a.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim_matches(' '))
                .ok_or(Refusal::WrongBearer)?;
            if !key.matches(token.as_bytes()) {
                return Err(Refusal::WrongBearer);
            }
        }
        Ok(())
    }
}

/// Checks that a POST body is declared `application/json` (parameters allowed,
/// case-insensitive).
pub fn check_content_type(headers: &HeaderMap) -> Result<(), Refusal> {
    let v = single(headers, &CONTENT_TYPE, "content-type")?.ok_or(Refusal::MissingContentType)?;
    let essence = v
        .to_str()
        .ok()
        .map(|t| t.split_once(';').map_or(t, |(e, _)| e).trim());
    if essence.is_some_and(|e| e.eq_ignore_ascii_case("application/json")) {
        Ok(())
    } else {
        Err(Refusal::ContentType {
            got: shown_header(v),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(hosts: &[&str], key: Option<&str>) -> Access {
        Access {
            allowed_hosts: hosts.iter().map(|h| h.parse().unwrap()).collect(),
            api_key: key.map(|k| ApiKey::new(k).unwrap()),
        }
    }

    fn head(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn loopback_authorities_are_allowed_and_nothing_else() {
        let a = Access::default();
        for ok in [
            "localhost",
            "LocalHost:8080",
            "127.0.0.1",
            "127.0.0.1:65535",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:8080",
            "[0:0:0:0:0:0:0:1]:80",
        ] {
            assert!(a.allows_authority(ok), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "localhost.",
            "x.localhost",
            "127.1",
            "0x7f.0.0.1",
            "2130706433",
            "128.0.0.1",
            "0.0.0.0",
            "[::]",
            "[::2]:80",
            "::1",
            "[::1",
            "[::1]x",
            "[::ffff:127.0.0.1]",
            "localhost:",
            "localhost:+80",
            "localhost:65536",
            "localhost:80:80",
            "localhost:8é",
            "user@localhost",
            "lòcalhost",
        ] {
            assert!(!a.allows_authority(bad), "{bad}");
        }
    }

    #[test]
    fn configured_hosts_extend_the_set() {
        let a = access(&["MyHost.lan", "192.168.1.5", "fe80::1", "[fd00::2]"], None);
        for ok in [
            "myhost.lan",
            "MYHOST.LAN:8080",
            "192.168.1.5:8080",
            "[fe80::1]:80",
            "[fd00::2]",
            "localhost",
        ] {
            assert!(a.allows_authority(ok), "{ok}");
        }
        for bad in ["other.lan", "myhost.lan.evil", "192.168.1.6", "[fe80::2]"] {
            assert!(!a.allows_authority(bad), "{bad}");
        }
        for bad in [
            "", "host:80", "http://h", "a..b", "-a.b", "a b", "é.lan", "*.lan",
        ] {
            assert!(bad.parse::<AllowedHost>().is_err(), "{bad}");
        }
    }

    #[test]
    fn host_origin_and_fetch_site_are_checked() {
        let a = Access::default();
        let uri = Uri::from_static("/v1/models");
        let check = |pairs: &[(&str, &str)]| a.check(&uri, &head(pairs));
        assert_eq!(check(&[("host", "127.0.0.1:8080")]), Ok(()));
        assert_eq!(check(&[]), Err(Refusal::MissingHost));
        assert_eq!(
            check(&[("host", "evil.example")]),
            Err(Refusal::Host {
                host: "evil.example".into()
            })
        );
        assert!(matches!(
            check(&[("host", "localhost"), ("host", "localhost")]),
            Err(Refusal::Duplicate { header: "host" })
        ));
        for origin in [
            "http://localhost:3000",
            "https://127.0.0.1",
            "HTTP://[::1]:8080",
        ] {
            assert_eq!(check(&[("host", "localhost"), ("origin", origin)]), Ok(()));
        }
        for origin in [
            "http://evil.example",
            "null",
            "file://",
            "chrome-extension://abc",
            "ftp://localhost",
            "http://localhost/path",
            "localhost",
        ] {
            assert_eq!(
                check(&[("host", "localhost"), ("origin", origin)]),
                Err(Refusal::Origin {
                    origin: origin.into()
                }),
                "{origin}"
            );
        }
        assert!(matches!(
            check(&[("host", "localhost"), ("sec-fetch-site", "cross-site")]),
            Err(Refusal::CrossSite { .. })
        ));
        for site in ["none", "same-origin", "same-site"] {
            assert_eq!(
                check(&[("host", "localhost"), ("sec-fetch-site", site)]),
                Ok(())
            );
        }
        // An absolute-form target names its own host.
        let abs = Uri::from_static("http://evil.example/v1/models");
        assert!(matches!(
            a.check(&abs, &head(&[("host", "localhost")])),
            Err(Refusal::Host { .. })
        ));
    }

    #[test]
    fn refused_values_are_shown_by_characters() {
        let a = Access::default();
        let uri = Uri::from_static("/");
        let long = format!("{}é{}", "a".repeat(99), "b".repeat(50));
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_bytes(long.as_bytes()).unwrap());
        let Err(Refusal::Host { host }) = a.check(&uri, &h) else {
            panic!("host accepted");
        };
        assert_eq!(host.chars().count(), SHOWN_CHARS);
        assert!(host.ends_with('é'));
        assert_eq!(shown("añb", 2), "añ");
    }

    #[test]
    fn bearer_token_when_a_key_is_set() {
        let uri = Uri::from_static("/v1/models");
        let a = access(&[], Some("sk-local-secret"));
        let check = |auth: Option<&str>| {
            let mut pairs = vec![("host", "localhost")];
            pairs.extend(auth.map(|v| ("authorization", v)));
            a.check(&uri, &head(&pairs))
        };
        assert_eq!(check(Some("Bearer sk-local-secret")), Ok(()));
        assert_eq!(check(Some("bearer  sk-local-secret")), Ok(()));
        assert_eq!(check(None), Err(Refusal::MissingBearer));
        for wrong in [
            "Bearer sk-local-secreT",
            "Bearer sk-local-secret2",
            "Bearer ",
            "Basic sk-local-secret",
            "sk-local-secret",
            "Bearersk-local-secret",
        ] {
            assert_eq!(check(Some(wrong)), Err(Refusal::WrongBearer), "{wrong}");
        }
        // Without a key any Authorization header is fine (the SDKs always send one).
        let open = Access::default();
        let h = head(&[
            ("host", "localhost"),
            ("authorization", "Bearer sk-anything"),
        ]);
        assert_eq!(open.check(&uri, &h), Ok(()));
        // The key is never shown.
        let shown = format!("{:?} {:?}", a, Refusal::WrongBearer.api_error());
        assert!(!shown.contains("sk-local-secret"), "{shown}");
        assert!(matches!(ApiKey::new(""), Err(ApiKeyError::Empty)));
        assert!(matches!(
            ApiKey::new("has space"),
            Err(ApiKeyError::Characters)
        ));
        assert!(matches!(ApiKey::new("ключ"), Err(ApiKeyError::Characters)));
    }

    #[test]
    fn api_key_is_wiped_on_drop() {
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<ApiKey>();
        wiped_on_drop::<Zeroizing<[u8; 32]>>();
    }

    #[test]
    fn content_type_must_be_json() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            " application/json ",
        ] {
            assert_eq!(check_content_type(&head(&[("content-type", ok)])), Ok(()));
        }
        assert_eq!(
            check_content_type(&head(&[])),
            Err(Refusal::MissingContentType)
        );
        for bad in [
            "text/plain",
            "text/plain; x=application/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "application/json-seq",
            "",
        ] {
            assert_eq!(
                check_content_type(&head(&[("content-type", bad)])),
                Err(Refusal::ContentType { got: bad.into() }),
                "{bad}"
            );
        }
        let r = check_content_type(&head(&[("content-type", "text/plain")])).unwrap_err();
        assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(r.to_string().contains("\"text/plain\""), "{r}");
    }
}
