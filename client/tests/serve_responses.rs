//! OpenAI's Responses API on the local endpoint (`POST /v1/responses`), against a fake
//! attested proxy: what reaches the proxy is the chat translation, what reaches the app is
//! the Responses form, errors keep their HTTP status before the stream starts and end it with
//! `response.failed` after.

mod common;

use common::*;
use serde_json::{json, Value};

/// The decoded events of a Responses stream; each event's `event:` line names its type.
fn events(body: &[u8]) -> Vec<Value> {
    let mut d = protocol::sse::Decoder::default();
    d.feed(body)
        .expect("sse")
        .into_iter()
        .map(|e| {
            let v: Value = serde_json::from_str(&e.data).expect("json event");
            assert_eq!(e.name.as_deref(), v["type"].as_str(), "{v}");
            v
        })
        .collect()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn a_response_object_from_the_chat_stream() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    let body = json!({"model": "ok", "input": "hi", "instructions": "Be brief.",
                      "max_output_tokens": 17, "store": true, "metadata": {"a": "b"}});
    let (status, head, resp) =
        request(local, "POST", "/v1/responses", body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    assert!(head.contains("content-type: application/json"));
    let r = json(&resp);
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(r["id"], format!("resp_{id}"));
    assert_eq!(r["object"], "response");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["output"][0]["content"][0]["text"], "Hello world");
    assert_eq!(r["usage"]["input_tokens"], USAGE.prompt_tokens);
    assert_eq!(r["usage"]["output_tokens"], USAGE.completion_tokens);
    assert_eq!(r["instructions"], "Be brief.");
    assert_eq!(r["metadata"], json!({"a": "b"}));
    assert_eq!(r["store"], json!(false));

    // The proxy got the chat translation at the chat endpoint, with the metadata from it.
    let reqs = proxy.requests.lock().unwrap().clone();
    let sent = reqs
        .iter()
        .find(|r| r.path == "/v1/chat/completions")
        .expect("a chat request");
    let chat = json(&sent.body);
    assert_eq!(
        chat["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    );
    assert_eq!(chat["max_completion_tokens"], 17);
    assert_eq!(chat["metadata"], json!({"a": "b"}));
    assert!(chat.get("store").is_none() && chat.get("input").is_none());
    assert_eq!(sent.headers["cocoon-max-tokens"], "17");
    assert_eq!(sent.headers["cocoon-request-id"].to_str().unwrap(), id);
}

#[tokio::test]
async fn a_streamed_response_is_responses_events() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    let body = json!({"model": "ok", "input": [{"role": "user", "content": "hi"}],
                      "stream": true});
    let (status, head, resp) =
        request(local, "POST", "/v1/responses", body.to_string().as_bytes()).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/event-stream"));
    let ev = events(&resp);
    assert_eq!(
        kinds(&ev),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let text: String = ev.iter().filter_map(|e| e["delta"].as_str()).collect();
    assert_eq!(text, "Hello world");
    let done = &ev.last().unwrap()["response"];
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello world");
    assert_eq!(done["usage"]["total_tokens"], USAGE.total());
    // No chat chunk, no cocoon event and no [DONE] reach the app.
    assert!(!String::from_utf8_lossy(&resp).contains("[DONE]"));
}

#[tokio::test]
async fn refusals_are_local_and_errors_keep_their_status_until_the_stream_starts() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    let post = |body: Value| async move {
        request(local, "POST", "/v1/responses", body.to_string().as_bytes()).await
    };

    // Refused locally: nothing reaches the proxy.
    let (status, _, resp) =
        post(json!({"model": "ok", "input": "x", "previous_response_id": "resp_1"})).await;
    assert_eq!(status, 400);
    assert_eq!(json(&resp)["error"]["param"], "previous_response_id");
    let (status, _, resp) = post(json!({"model": "ok", "input": "x",
                                        "tools": [{"type": "file_search"}]}))
    .await;
    assert_eq!(status, 400);
    assert_eq!(json(&resp)["error"]["param"], "tools[0].type");
    assert!(proxy.requests.lock().unwrap().is_empty());

    // Before the first chunk: the proxy's status (streamed or not).
    for stream in [false, true] {
        let (status, _, resp) =
            post(json!({"model": "busy", "input": "x", "stream": stream})).await;
        assert_eq!(status, 429, "{}", String::from_utf8_lossy(&resp));
        assert_eq!(json(&resp)["error"]["code"], "no_capacity");
        let (status, _, _) =
            post(json!({"model": "firstfail", "input": "x", "stream": stream})).await;
        assert_eq!(status, 502);
    }

    // After it: not streamed, the error's status; streamed, `response.failed` with the text
    // so far.
    let (status, _, resp) = post(json!({"model": "midfail", "input": "x"})).await;
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&resp));
    assert_eq!(json(&resp)["error"]["code"], "timeout");
    let (status, _, resp) = post(json!({"model": "midfail", "input": "x", "stream": true})).await;
    assert_eq!(status, 200);
    let ev = events(&resp);
    let last = ev.last().unwrap();
    assert_eq!(last["type"], "response.failed");
    assert_eq!(last["response"]["error"]["code"], "timeout");
    assert_eq!(last["response"]["output"][0]["content"][0]["text"], "Hel");
    // A stream cut before its end.
    let (_, _, resp) = post(json!({"model": "truncated", "input": "x", "stream": true})).await;
    let ev = events(&resp);
    assert_eq!(ev.last().unwrap()["type"], "response.failed");
    assert_eq!(
        ev.last().unwrap()["response"]["error"]["code"],
        "upstream_error"
    );
}

#[tokio::test]
async fn nothing_is_stored_so_nothing_is_retrieved() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    for (method, path) in [
        ("GET", "/v1/responses/resp_1"),
        ("DELETE", "/v1/responses/resp_1"),
        ("POST", "/v1/responses/resp_1/cancel"),
        ("GET", "/v1/responses/resp_1/input_items"),
    ] {
        let (status, _, resp) = request(local, method, path, b"").await;
        assert_eq!(status, 404, "{method} {path}");
        let e = json(&resp);
        assert_eq!(e["error"]["code"], "not_found");
        assert!(e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stores no responses"));
    }
    let (status, head, _) = request(local, "GET", "/v1/responses", b"").await;
    assert_eq!(status, 405);
    assert!(head.contains("allow: post"));
    // Not a prefix match of another name.
    let (status, _, resp) = request(local, "POST", "/v1/responsesx", b"{}").await;
    assert_eq!(status, 404);
    assert!(json(&resp)["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no route"));
    assert!(proxy.requests.lock().unwrap().is_empty());
}

/// The chat translation is what the proxy reads, under the same body limit: a Responses body
/// just under the limit whose translation is over it is refused here with 413, in the app's
/// terms, and nothing reaches the proxy.
#[tokio::test]
async fn a_body_whose_translation_is_over_the_limit_gets_413_locally() {
    let proxy = spawn_proxy().await;
    let max = 256;
    let opts = client::serve::ServeOptions {
        max_body: max,
        ..client::serve::ServeOptions::default()
    };
    let local = spawn_local_with(client_config(&proxy, proxy.image), opts).await;
    let sized = |len: usize| {
        let empty = json!({"model": "ok", "input": ""}).to_string().len();
        json!({"model": "ok", "input": "x".repeat(len - empty)}).to_string()
    };
    // At the limit: the body is read, its translation is longer, refused.
    let body = sized(max);
    assert_eq!(body.len(), max);
    let (status, _, resp) = request(local, "POST", "/v1/responses", body.as_bytes()).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&resp));
    let e = json(&resp);
    assert_eq!(e["error"]["code"], "payload_too_large", "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("once translated to chat messages"));
    // Over the limit: refused as read.
    let (status, _, _) = request(local, "POST", "/v1/responses", sized(max + 1).as_bytes()).await;
    assert_eq!(status, 413);
    assert!(proxy.requests.lock().unwrap().is_empty());
    // Well under: its translation fits and goes.
    let (status, _, resp) =
        request(local, "POST", "/v1/responses", sized(max - 64).as_bytes()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    assert_eq!(proxy.requests.lock().unwrap().len(), 1);
}

/// A long prompt: keepalive comments start the Responses stream too (SSE readers ignore them);
/// the events follow, or `response.failed` for an error after them.
#[tokio::test]
async fn keepalives_start_a_responses_stream() {
    let proxy = spawn_proxy().await;
    let local = spawn_local(client_config(&proxy, proxy.image)).await;
    let post = |model: &str| {
        let body = json!({"model": model, "input": "hi", "stream": true}).to_string();
        async move { request(local, "POST", "/v1/responses", body.as_bytes()).await }
    };
    let (status, _, resp) = post("slowprefill").await;
    assert_eq!(status, 200);
    assert!(resp.starts_with(b": keepalive\n\n: keepalive\n\n"));
    let ev = events(&resp);
    assert_eq!(ev[0]["type"], "response.created");
    assert_eq!(ev.last().unwrap()["type"], "response.completed");
    assert_eq!(
        ev.last().unwrap()["response"]["output"][0]["content"][0]["text"],
        "Hello"
    );
    let (status, _, resp) = post("prefillfail").await;
    assert_eq!(status, 200);
    let ev = events(&resp);
    assert_eq!(kinds(&ev)[0], "response.created");
    let last = ev.last().unwrap();
    assert_eq!(last["type"], "response.failed");
    assert_eq!(last["response"]["error"]["code"], "upstream_error");
}

/// Shutdown mid-stream: `response.failed` with `service_unavailable`, not a silent cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_streamed_response_with_response_failed() {
    let proxy = spawn_proxy().await;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let opts = client::serve::ServeOptions {
        drain: std::time::Duration::from_millis(200),
        ..client::serve::ServeOptions::default()
    };
    let (local, server) =
        spawn_local_stoppable(client_config(&proxy, proxy.image), opts, stopped).await;
    let streamed = tokio::spawn(request(
        local,
        "POST",
        "/v1/responses",
        br#"{"model":"endless","input":"hi","stream":true}"#,
    ));
    wait_until("the request at the proxy", || {
        !proxy.requests.lock().unwrap().is_empty()
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    let (status, _, body) = streamed.await.unwrap();
    assert_eq!(status, 200);
    let ev = events(&body);
    assert_eq!(
        kinds(&ev)[..5],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
        ]
    );
    let last = ev.last().unwrap();
    assert_eq!(last["type"], "response.failed");
    assert_eq!(last["response"]["error"]["code"], "service_unavailable");
    assert_eq!(last["response"]["output"][0]["status"], "incomplete");
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("run returns after the drain")
        .unwrap();
}
