//! The local OpenAI endpoint against a fake attested proxy.

mod common;

use common::*;
use measurements::ImageHash;
use serde_json::json;

#[tokio::test]
async fn models_are_listed() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    let (status, _, body) = request(local, "GET", "/v1/models", b"").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["data"][0]["id"], "ok");
}

#[tokio::test]
async fn non_streamed_chat_is_aggregated_with_usage() {
    let proxy = spawn_proxy().await;
    let mut config = client_config(&proxy, proxy.image);
    config.price_cap_nano = Some(123_456);
    let local = spawn_local(config).await;
    let body = br#"{"model":"ok","messages":[{"role":"user","content":"hi"}],"max_tokens":17}"#;
    let (status, head, resp) = request(local, "POST", "/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    assert!(head.contains("content-type: application/json"));
    let v = json(&resp);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["id"], "chatcmpl-fake");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello world");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], USAGE.prompt_tokens);
    assert_eq!(v["usage"]["completion_tokens"], USAGE.completion_tokens);

    // The proxy got the body unchanged and the metadata headers.
    let reqs = proxy.requests.lock().unwrap().clone();
    let r = reqs
        .iter()
        .find(|r| r.path == "/v1/chat/completions")
        .unwrap();
    assert_eq!(&r.body[..], &body[..]);
    let h = |n: &str| r.headers.get(n).unwrap().to_str().unwrap().to_string();
    assert_eq!(h("cocoon-model"), "ok");
    assert_eq!(h("cocoon-max-tokens"), "17");
    assert_eq!(h("cocoon-price-cap"), "123456");
    assert_eq!(h("cocoon-protocol-version"), "1");
    let id = h("cocoon-request-id");
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        r.account.as_deref(),
        Some(
            ratls::account::AccountKey::from_seed([5u8; 32])
                .account_id()
                .as_str()
        )
    );
}

#[tokio::test]
async fn default_max_tokens_applies() {
    let proxy = spawn_proxy().await;
    let mut config = client_config(&proxy, proxy.image);
    config.default_max_tokens = Some(42);
    let local = spawn_local(config).await;
    let (status, _, _) = request(
        local,
        "POST",
        "/v1/chat/completions",
        br#"{"model":"ok","messages":[]}"#,
    )
    .await;
    assert_eq!(status, 200);
    let reqs = proxy.requests.lock().unwrap().clone();
    assert_eq!(reqs[0].headers["cocoon-max-tokens"], "42");
    assert!(reqs[0].headers.get("cocoon-price-cap").is_none());
}

#[tokio::test]
async fn absent_max_tokens_asks_for_the_models_limit_and_batches_multiply() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    let (status, _, _) = request(
        local,
        "POST",
        "/v1/chat/completions",
        br#"{"model":"ok","messages":[]}"#,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = request(
        local,
        "POST",
        "/v1/completions",
        br#"{"model":"ok","prompt":["a","b","c"],"max_tokens":5}"#,
    )
    .await;
    assert_eq!(status, 200);
    let reqs = proxy.requests.lock().unwrap().clone();
    // No max_tokens and no configured default: the protocol's limit, which the proxy clamps
    // to the model's advertised max_completion_tokens.
    assert_eq!(reqs[0].headers["cocoon-max-tokens"], "1000000");
    // A batch of three prompts reserves three times max_tokens.
    assert_eq!(reqs[1].headers["cocoon-max-tokens"], "15");
}

#[tokio::test]
async fn streamed_chat_relays_chunks_and_usage() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    let body = json!({"model": "ok", "messages": [], "stream": true,
                      "stream_options": {"include_usage": true}})
    .to_string();
    let (status, head, resp) =
        request(local, "POST", "/v1/chat/completions", body.as_bytes()).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/event-stream"));
    let data = sse_data(&resp);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<serde_json::Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello world");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["object"], "chat.completion.chunk");
    assert_eq!(usage["usage"]["prompt_tokens"], USAGE.prompt_tokens);
    assert_eq!(usage["usage"]["completion_tokens"], USAGE.completion_tokens);
    assert_eq!(chunks.iter().filter(|c| !c["usage"].is_null()).count(), 1);

    // Without include_usage: no usage chunk.
    let body = json!({"model": "ok", "messages": [], "stream": true}).to_string();
    let (_, _, resp) = request(local, "POST", "/v1/chat/completions", body.as_bytes()).await;
    let data = sse_data(&resp);
    assert!(data.iter().all(|d| !d.contains("\"usage\"")), "{data:?}");
}

#[tokio::test]
async fn text_completions_stream_and_aggregate() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    let (status, _, resp) = request(
        local,
        "POST",
        "/v1/completions",
        br#"{"model":"ok","prompt":"x"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let v = json(&resp);
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "Hello world");
    assert_eq!(v["usage"]["total_tokens"], USAGE.total());
    let (status, _, resp) = request(
        local,
        "POST",
        "/v1/completions",
        br#"{"model":"ok","prompt":"x","stream":true,"stream_options":{"include_usage":true}}"#,
    )
    .await;
    assert_eq!(status, 200);
    let data = sse_data(&resp);
    let usage: serde_json::Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["object"], "text_completion");
    assert_eq!(usage["usage"]["completion_tokens"], USAGE.completion_tokens);
}

#[tokio::test]
async fn cocoon_errors_map_to_openai_errors() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    let post = |model: &str, stream: bool| {
        let body = json!({"model": model, "messages": [], "stream": stream}).to_string();
        async move { request(local, "POST", "/v1/chat/completions", body.as_bytes()).await }
    };
    // After the first chunk: an OpenAI error event ends the stream (no [DONE]).
    let (status, _, resp) = post("midfail", true).await;
    assert_eq!(status, 200);
    let data = sse_data(&resp);
    assert_eq!(data.len(), 2, "{data:?}");
    let err: serde_json::Value = serde_json::from_str(&data[1]).unwrap();
    assert_eq!(err["error"]["code"], "timeout");
    assert_eq!(err["error"]["message"], "worker stalled");
    // Not streamed: the error's own status.
    let (status, _, resp) = post("midfail", false).await;
    assert_eq!(status, 504);
    assert_eq!(json(&resp)["error"]["code"], "timeout");
    // Before the first chunk, even when streaming: the error's status.
    let (status, _, resp) = post("firstfail", true).await;
    assert_eq!(status, 502);
    assert_eq!(json(&resp)["error"]["message"], "worker connection lost");
    // A stream cut short.
    let (status, _, resp) = post("truncated", false).await;
    assert_eq!(status, 502);
    assert!(json(&resp)["error"]["message"]
        .as_str()
        .unwrap()
        .contains("[DONE]"));
    let (_, _, resp) = post("truncated", true).await;
    let data = sse_data(&resp);
    assert!(data.last().unwrap().contains("upstream_error"));
    // Statuses the proxy answered with.
    for (model, status, code) in [
        ("busy", 429, "no_capacity"),
        ("nosuchmodel", 404, "model_not_found"),
        ("unknownfield", 400, "invalid_request"),
    ] {
        for stream in [false, true] {
            let (s, head, resp) = post(model, stream).await;
            assert_eq!(s, status, "{model} stream={stream}");
            assert!(head.contains("content-type: application/json"));
            let v = json(&resp);
            assert_eq!(v["error"]["code"], code);
            assert!(v["error"]["type"].is_string());
        }
    }
}

#[tokio::test]
async fn attestation_refusal_names_the_reason_and_sends_nothing() {
    let proxy = spawn_proxy().await;
    let other = ImageHash([0x99; 32]);
    let local = spawn_local(client_config(&proxy, other)).await;
    let (status, _, resp) = request(
        local,
        "POST",
        "/v1/chat/completions",
        br#"{"model":"ok","messages":[{"role":"user","content":"secret"}]}"#,
    )
    .await;
    assert_eq!(status, 502);
    let v = json(&resp);
    assert_eq!(v["error"]["code"], "attestation_rejected");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("image hash {} not among", proxy.image)),
        "{msg}"
    );
    let (status, _, _) = request(local, "GET", "/v1/models", b"").await;
    assert_eq!(status, 502);
    assert!(proxy.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn debug_proxy_is_refused() {
    let mut regs = proxy_regs();
    regs.td_attributes[0] |= 1;
    let proxy = spawn_proxy_with(regs).await;
    let local = spawn_local(client_config(&proxy, regs.image_hash())).await;
    let (status, _, resp) = request(local, "GET", "/v1/models", b"").await;
    assert_eq!(status, 502);
    let msg = json(&resp)["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("debug bit set"), "{msg}");
}

#[tokio::test]
async fn bad_requests_are_refused_locally() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    for (body, param) in [
        (&b"{\"model\": \"ok\", "[..], None),
        (b"[]", None),
        (br#"{"messages":[]}"#, Some("model")),
        (br#"{"model":"ok","max_tokens":0}"#, Some("max_tokens")),
        (br#"{"model":"ok","stream":"yes"}"#, None),
    ] {
        let (status, _, resp) = request(local, "POST", "/v1/chat/completions", body).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(body));
        let v = json(&resp);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], p);
        }
    }
    let (status, _, resp) = request(local, "GET", "/v1/nothing", b"").await;
    assert_eq!(status, 404);
    assert_eq!(json(&resp)["error"]["code"], "not_found");
    let (status, _, _) = request(local, "GET", "/v1/chat/completions", b"").await;
    assert_eq!(status, 405);
    assert!(proxy.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    let big = vec![b' '; 10 << 20];
    // Declared length: refused before reading; the rest is drained so the app reads the answer.
    let (status, _, resp) = request(local, "POST", "/v1/chat/completions", &big).await;
    assert_eq!(status, 413);
    assert_eq!(json(&resp)["error"]["code"], "payload_too_large");
    // Chunked, no length: refused once the bytes read pass the limit.
    let mut chunked = Vec::new();
    for part in big.chunks(1 << 20) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {local}\r\ntransfer-encoding: chunked\r\n\
         content-type: application/json\r\nconnection: close\r\n\r\n"
    );
    let (status, _, _) = raw_http(local, &head, &chunked).await;
    assert_eq!(status, 413);
    // Just under the limit is fine (it reaches the parser: not json → 400).
    let (status, _, _) = request(
        local,
        "POST",
        "/v1/chat/completions",
        &vec![b' '; protocol::MAX_REQUEST_BODY],
    )
    .await;
    assert_eq!(status, 400);
    assert!(proxy.requests.lock().unwrap().is_empty());
}

/// Shutdown: requests still running at the end of the drain end with an error the SDK raises
/// — a stream with an OpenAI error event (after the chunks it already had), a request not
/// answered yet with 503 — and the server returns right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_requests_with_an_error_not_a_cut() {
    let proxy = spawn_proxy().await;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let opts = client::serve::ServeOptions {
        drain: std::time::Duration::from_millis(300),
        ..client::serve::ServeOptions::default()
    };
    let (local, server) =
        spawn_local_stoppable(client_config(&proxy, proxy.image), opts, stopped).await;
    let streamed = tokio::spawn(request(
        local,
        "POST",
        "/v1/chat/completions",
        br#"{"model":"endless","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
    ));
    let whole = tokio::spawn(request(
        local,
        "POST",
        "/v1/chat/completions",
        br#"{"model":"endless","messages":[{"role":"user","content":"hi"}]}"#,
    ));
    wait_until("requests at the proxy", || {
        proxy.requests.lock().unwrap().len() >= 2
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    stop.send(()).unwrap();

    let (status, _, body) = streamed.await.unwrap();
    assert_eq!(status, 200);
    let data = sse_data(&body);
    assert_eq!(data.len(), 2, "{data:?}");
    assert_eq!(
        json(data[0].as_bytes())["choices"][0]["delta"]["content"],
        "Hel"
    );
    let err = json(data[1].as_bytes());
    assert_eq!(err["error"]["code"], "service_unavailable");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("shutting down"));
    let (status, _, body) = whole.await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(json(&body)["error"]["code"], "service_unavailable");
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("run returns after the drain")
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(300) && took < std::time::Duration::from_secs(3),
        "{took:?}"
    );
}

/// An app that closes its socket mid-stream: the local client asks the proxy to stop that
/// request (`POST /cocoon/v1/cancel` naming its id) instead of just resetting it, so the
/// stream's end — usage, and an encrypted request's receipt — still reaches it. A request
/// answered in full sends no cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_leaves_mid_stream_gets_its_request_cancelled_at_the_proxy() {
    use tokio::io::AsyncReadExt;
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    let (status, _, _) = request(
        local,
        "POST",
        "/v1/chat/completions",
        br#"{"model":"ok","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
    )
    .await;
    assert_eq!(status, 200);

    let body = br#"{"model":"endless","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let mut tcp = send_chat_raw(local, body, false).await;
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("Hel") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("the first chunk in time")
            .unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_string();
    let id = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-request-id")
                .then(|| value.trim().to_string())
        })
        .expect("x-request-id");
    drop(tcp);
    wait_until("a cancel sent", || !cancels(&proxy).is_empty()).await;
    let sent = cancels(&proxy);
    assert_eq!(sent.len(), 1, "only the request the app left");
    assert_eq!(sent[0].method, "POST");
    assert_eq!(
        sent[0].headers[protocol::meta::H_REQUEST_ID]
            .to_str()
            .unwrap(),
        id
    );
}

/// A long prompt: the worker's keepalive comments, passed on by the proxy, start a streamed
/// response and reach the app before the first chunk (nothing else can show a live request
/// to the app, or to a reverse proxy between it and us, during a prefill of minutes); an
/// error after them is an error event; a non-streamed request waits for its object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_reach_the_app_while_the_prompt_is_processed() {
    use tokio::io::AsyncReadExt;
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;

    // The head and the first comment come when the proxy's first comment does (~100 ms),
    // well before the answer (~300 ms).
    let body =
        br#"{"model":"slowprefill","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let t = std::time::Instant::now();
    let mut tcp = send_chat_raw(local, body, true).await;
    let mut got = Vec::new();
    let mut first_comment = None;
    loop {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("bytes in time")
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if first_comment.is_none() && text.contains(": keepalive") {
            assert!(!text.contains("Hello"), "a comment before the answer");
            first_comment = Some(t.elapsed());
        }
    }
    let done = t.elapsed();
    let first_comment = first_comment.expect("a keepalive comment");
    assert!(
        done - first_comment >= std::time::Duration::from_millis(150),
        "comment at {first_comment:?}, end at {done:?}"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(text.matches(": keepalive").count(), 2, "{text}");
    assert!(
        text.contains("Hello") && text.contains("data: [DONE]"),
        "{text}"
    );

    // An error after the first comment: an OpenAI error event, status 200.
    let (status, _, resp) = request(
        local,
        "POST",
        "/v1/chat/completions",
        br#"{"model":"prefillfail","messages":[],"stream":true}"#,
    )
    .await;
    assert_eq!(status, 200);
    let data = sse_data(&resp);
    let last: serde_json::Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error", "{last}");
    assert!(String::from_utf8_lossy(&resp).starts_with(": keepalive"));

    // Not streamed: no comment can go into a JSON body; the object, or the error's status.
    let (status, _, resp) = request(
        local,
        "POST",
        "/v1/chat/completions",
        br#"{"model":"slowprefill","messages":[]}"#,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    assert_eq!(json(&resp)["choices"][0]["message"]["content"], "Hello");
    let (status, _, _) = request(
        local,
        "POST",
        "/v1/chat/completions",
        br#"{"model":"prefillfail","messages":[]}"#,
    )
    .await;
    assert_eq!(status, 502);
}
