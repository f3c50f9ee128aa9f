//! Who may use the local OpenAI endpoint: Host allowlist, Origin refusal, no CORS, JSON content
//! type, optional bearer token. Each refusal is checked to reach nothing (the fake proxy records
//! no request, so nothing is billed).

mod common;

use client::serve::{Access, ApiKey, ServeOptions};
use common::*;

const CHAT: &[u8] = br#"{"model":"ok","messages":[{"role":"user","content":"hi"}]}"#;

fn message(body: &[u8]) -> String {
    json(body)["error"]["message"]
        .as_str()
        .expect("error message")
        .to_string()
}

fn no_cors(head: &str) {
    assert!(!head.contains("access-control-"), "{head}");
}

#[tokio::test]
async fn the_reported_csrf_request_is_refused_and_not_billed() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    // What a page on evil.example, rebound to 127.0.0.1, sent (and got billed for).
    let headers = [
        ("host", "evil.example"),
        ("origin", "http://evil.example"),
        ("content-type", "text/plain"),
    ];
    let (status, head, resp) =
        request_with(local, "POST", "/v1/chat/completions", &headers, CHAT).await;
    assert_eq!(status, 403);
    no_cors(&head);
    assert!(message(&resp).contains("\"evil.example\""), "{resp:?}");
    assert!(proxy.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn only_loopback_hosts_are_served() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    let port = local.port();
    for host in [
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        "localhost".to_string(),
        format!("127.0.0.1:{port}"),
        format!("127.1.2.3:{port}"),
        format!("[::1]:{port}"),
    ] {
        let headers = [("host", host.as_str())];
        let (status, _, _) = request_with(local, "GET", "/v1/models", &headers, b"").await;
        assert_eq!(status, 200, "{host}");
    }
    let before = proxy.requests.lock().unwrap().len();
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        format!("192.168.1.5:{port}"),
        format!("[::2]:{port}"),
        format!("localhost:{port}x"),
    ] {
        let headers = [
            ("host", host.as_str()),
            ("content-type", "application/json"),
        ];
        for (method, path, body) in [
            ("GET", "/v1/models", &b""[..]),
            ("POST", "/v1/chat/completions", CHAT),
        ] {
            let (status, _, resp) = request_with(local, method, path, &headers, body).await;
            assert_eq!(status, 403, "{host} {method}");
            let v = json(&resp);
            assert_eq!(v["error"]["code"], "unauthorized");
            assert!(
                message(&resp).contains(&format!("host {host:?} not allowed")),
                "{}",
                message(&resp)
            );
        }
    }
    // No Host at all.
    let (status, _, _) = request_with(local, "GET", "/v1/models", &[], b"").await;
    assert_eq!(status, 403);
    assert_eq!(proxy.requests.lock().unwrap().len(), before);
}

#[tokio::test]
async fn configured_allowed_hosts_are_served() {
    let proxy = spawn_proxy().await;
    let opts = ServeOptions {
        access: Access {
            allowed_hosts: vec!["myhost.lan".parse().unwrap()],
            api_key: None,
        },
        ..ServeOptions::default()
    };
    let local = spawn_local_with(client_config(&proxy, proxy.image), opts).await;
    let ok = [
        ("host", "MyHost.LAN:8080"),
        ("content-type", "application/json"),
    ];
    let (status, _, _) = request_with(local, "POST", "/v1/chat/completions", &ok, CHAT).await;
    assert_eq!(status, 200);
    let other = [
        ("host", "otherhost.lan"),
        ("content-type", "application/json"),
    ];
    let (status, _, _) = request_with(local, "POST", "/v1/chat/completions", &other, CHAT).await;
    assert_eq!(status, 403);
    assert_eq!(proxy.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn cross_origin_browser_requests_are_refused_without_cors() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    let host = local.to_string();
    let with = |extra: (&'static str, &'static str)| {
        let host = host.clone();
        async move {
            let headers = [
                ("host", host.as_str()),
                ("content-type", "application/json"),
                extra,
            ];
            request_with(local, "POST", "/v1/chat/completions", &headers, CHAT).await
        }
    };
    for origin in [
        "http://evil.example",
        "null",
        "https://localhost.evil.example",
    ] {
        let (status, head, resp) = with(("origin", origin)).await;
        assert_eq!(status, 403, "{origin}");
        no_cors(&head);
        assert!(
            message(&resp).contains(&format!("origin {origin:?} not allowed")),
            "{}",
            message(&resp)
        );
    }
    // Cross-site GETs carry no Origin; browsers mark them with Sec-Fetch-Site.
    let (status, _, _) = with(("sec-fetch-site", "cross-site")).await;
    assert_eq!(status, 403);
    assert!(proxy.requests.lock().unwrap().is_empty());

    // A CORS preflight gets no allow headers: 403 for a foreign origin, 405 otherwise.
    for (origin, expected) in [("http://evil.example", 403), ("http://localhost:3000", 405)] {
        let headers = [
            ("host", host.as_str()),
            ("origin", origin),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "content-type, authorization",
            ),
        ];
        let (status, head, _) =
            request_with(local, "OPTIONS", "/v1/chat/completions", &headers, b"").await;
        assert_eq!(status, expected, "{origin}");
        no_cors(&head);
    }

    // A page served from loopback itself (same rule as Host) is served, still without CORS.
    let (status, head, _) = with(("origin", "http://localhost:3000")).await;
    assert_eq!(status, 200);
    no_cors(&head);
    assert_eq!(proxy.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn post_bodies_must_be_declared_json() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    let host = local.to_string();
    for ct in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut headers = vec![("host", host.as_str())];
        headers.extend(ct.map(|c| ("content-type", c)));
        for path in ["/v1/chat/completions", "/v1/completions"] {
            let (status, _, resp) = request_with(local, "POST", path, &headers, CHAT).await;
            assert_eq!(status, 415, "{ct:?} {path}");
            let msg = message(&resp);
            assert!(msg.contains("application/json"), "{msg}");
            if let Some(c) = ct {
                assert!(msg.contains(&format!("{c:?}")), "{msg}");
            }
        }
    }
    assert!(proxy.requests.lock().unwrap().is_empty());
    let headers = [
        ("host", host.as_str()),
        ("content-type", "Application/JSON; charset=utf-8"),
    ];
    let (status, _, _) = request_with(local, "POST", "/v1/chat/completions", &headers, CHAT).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn bearer_token_is_required_when_configured() {
    let proxy = spawn_proxy().await;
    let key = "sk-local-0123456789";
    let opts = ServeOptions {
        access: Access {
            allowed_hosts: Vec::new(),
            api_key: Some(ApiKey::new(key).unwrap()),
        },
        ..ServeOptions::default()
    };
    let local = spawn_local_with(client_config(&proxy, proxy.image), opts).await;
    let host = local.to_string();
    let sdk = |auth: Option<String>| {
        let host = host.clone();
        async move {
            let mut headers = vec![
                ("host", host.as_str()),
                ("content-type", "application/json"),
                ("accept", "application/json"),
                ("user-agent", "OpenAI/Python 1.50.0"),
            ];
            headers.extend(auth.as_deref().map(|a| ("authorization", a)));
            request_with(local, "POST", "/v1/chat/completions", &headers, CHAT).await
        }
    };
    for auth in [
        None,
        Some("Bearer sk-local-012345678".to_string()),
        Some("Bearer sk-local-0123456789x".to_string()),
        Some(format!("Basic {key}")),
        Some(key.to_string()),
    ] {
        let (status, head, resp) = sdk(auth.clone()).await;
        assert_eq!(status, 401, "{auth:?}");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        let v = json(&resp);
        assert_eq!(v["error"]["type"], "authentication_error");
        assert!(!String::from_utf8_lossy(&resp).contains(key));
    }
    let (status, _, _) =
        request_with(local, "GET", "/v1/models", &[("host", host.as_str())], b"").await;
    assert_eq!(status, 401);
    assert!(proxy.requests.lock().unwrap().is_empty());

    // The SDK path: loopback Host, no Origin, JSON, the right key.
    let (status, _, resp) = sdk(Some(format!("Bearer {key}"))).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    assert_eq!(
        json(&resp)["choices"][0]["message"]["content"],
        "Hello world"
    );
    let auth = format!("Bearer {key}");
    let headers = [("host", host.as_str()), ("authorization", auth.as_str())];
    let (status, _, _) = request_with(local, "GET", "/v1/models", &headers, b"").await;
    assert_eq!(status, 200);
    // The key is not forwarded to the proxy.
    for r in proxy.requests.lock().unwrap().iter() {
        assert!(r.headers.get("authorization").is_none());
    }
}

#[tokio::test]
async fn any_authorization_is_accepted_without_an_api_key() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    let host = local.to_string();
    let headers = [
        ("host", host.as_str()),
        ("content-type", "application/json"),
        ("authorization", "Bearer sk-whatever-the-sdk-sends"),
    ];
    let (status, head, _) =
        request_with(local, "POST", "/v1/chat/completions", &headers, CHAT).await;
    assert_eq!(status, 200);
    no_cors(&head);
}

#[tokio::test]
async fn a_multibyte_character_at_byte_100_of_the_path_gets_404() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    // 99 ASCII bytes, then "é" (2 bytes) across byte offset 100, sent raw: httparse and
    // `http::Uri` accept UTF-8 in the path, so `uri().path()` carries it to the 404 message.
    let path = format!("/{}é/x", "a".repeat(98));
    assert!(!path.is_char_boundary(100));
    let (status, _, resp) = request(local, "GET", &path, b"").await;
    assert_eq!(status, 404);
    let msg = message(&resp);
    assert!(msg.contains(&format!("{}é", "a".repeat(98))), "{msg}");
    // The connection task survived: the endpoint still answers.
    let (status, _, _) = request(local, "GET", "/v1/models", b"").await;
    assert_eq!(status, 200);
}
