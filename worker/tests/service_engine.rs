//! Engine failures as the proxy sees them, through `Service::handle` directly: before the
//! first byte an HTTP status, after it a `cocoon-error` event and no `[DONE]`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use protocol::sse::{Decoder, Event, EVENT_ERROR};
use protocol::{ApiError, ErrorKind, ModelAdvert};
use ratls::FixedClock;
use tokio::sync::mpsc;
use worker::engine::{Chunk, Engine, EngineError, GenerationRequest};
use worker::service::{ServedModel, Service, ServiceError, WorkerInfo};

/// How the test engine misbehaves.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// One token, then an error.
    FailMidStream,
    /// An error before any output.
    PromptTooLong,
    /// One token, then returns Ok without a `Done`.
    NoDone,
}

#[derive(Debug)]
struct Faulty(Mode);

#[async_trait::async_trait]
impl Engine for Faulty {
    fn models(&self) -> Vec<ModelAdvert> {
        vec![ModelAdvert {
            name: "faulty".into(),
            model_hash: "11".repeat(32),
            max_context: 100,
            max_completion_tokens: 100,
        }]
    }

    async fn generate(
        &self,
        _req: GenerationRequest,
        tx: mpsc::Sender<Result<Chunk, EngineError>>,
    ) -> Result<(), EngineError> {
        match self.0 {
            Mode::PromptTooLong => Err(EngineError::PromptTooLong {
                tokens: 500,
                limit: 100,
            }),
            Mode::FailMidStream => {
                let _ = tx.send(Ok(Chunk::Text("a".into()))).await;
                Err(EngineError::Failed("device lost".into()))
            }
            Mode::NoDone => {
                let _ = tx.send(Ok(Chunk::Text("a".into()))).await;
                Ok(())
            }
        }
    }
}

fn service(mode: Mode) -> Service {
    Service::new(
        WorkerInfo {
            name: "w".into(),
            capacity: 2,
            price_coefficient_milli: 1000,
        },
        ServedModel::all_of(Arc::new(Faulty(mode))),
        Arc::new(FixedClock::new(1)),
    )
    .unwrap()
}

fn request() -> http::Request<Full<Bytes>> {
    let body = r#"{"model":"faulty","messages":[{"role":"user","content":"x"}]}"#;
    http::Request::post("http://worker/v1/chat/completions")
        .header("cocoon-request-id", "r1")
        .header("cocoon-model", "faulty")
        .header("cocoon-max-tokens", "10")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn run(mode: Mode) -> (u16, Vec<u8>) {
    let resp = service(mode).handle("test", request()).await;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, body.to_vec())
}

#[tokio::test]
async fn failure_before_the_first_byte_is_a_status() {
    let (status, body) = run(Mode::PromptTooLong).await;
    let e = ApiError::from_json(status, &body);
    assert_eq!((status, e.kind), (400, ErrorKind::ContextLengthExceeded));
    assert_eq!(e.param.as_deref(), Some("messages"));
    assert!(e.message.contains("exceeds the context"), "{}", e.message);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn failure_mid_stream_is_an_error_event_without_done() {
    for mode in [Mode::FailMidStream, Mode::NoDone] {
        let (status, body) = run(mode).await;
        assert_eq!(status, 200);
        let evs = Decoder::default().feed(&body).unwrap();
        assert_eq!(evs.len(), 2, "{mode:?}: {evs:?}");
        let last: &Event = &evs[1];
        assert_eq!(last.name.as_deref(), Some(EVENT_ERROR));
        let e = ApiError::from_json(502, last.data.as_bytes());
        assert_eq!(e.kind, ErrorKind::Upstream, "{mode:?}");
        assert!(!evs.iter().any(Event::is_done));
    }
    let s = service(Mode::FailMidStream);
    let _ = s
        .handle("test", request())
        .await
        .into_body()
        .collect()
        .await;
    let snap = s.stats().snapshot();
    assert_eq!((snap.failed, snap.active_generations), (1, 0));
}

#[test]
fn service_refuses_bad_model_sets() {
    let faulty = || ServedModel::all_of(Arc::new(Faulty(Mode::NoDone)));
    let info = WorkerInfo {
        name: "w".into(),
        capacity: 1,
        price_coefficient_milli: 1000,
    };
    let clock = Arc::new(FixedClock::new(1));
    assert!(matches!(
        Service::new(info.clone(), vec![], clock.clone()),
        Err(ServiceError::NoModels)
    ));
    let twice = [faulty(), faulty()].concat();
    assert!(matches!(
        Service::new(info.clone(), twice, clock.clone()),
        Err(ServiceError::DuplicateModel(_))
    ));
    let zero = WorkerInfo {
        capacity: 0,
        ..info
    };
    assert!(matches!(
        Service::new(zero, faulty(), clock),
        Err(ServiceError::Registration(_))
    ));
}
