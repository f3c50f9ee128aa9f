//! From mistral.rs's streamed responses to this engine's [`Chunk`]s.
//!
//! Text passes two stages before it is sent:
//!
//! 1. **Stop strings** ([`StopFilter`]): text that may be the start of a stop string is held
//!    back, and the output ends before the first stop string (mistral.rs detects them one
//!    token late and would stream the stop string itself).
//! 2. **Tool calls** (`tool_choice` auto): text whose first non-blank character could start a
//!    call is held back until the end and then parsed ([`super::tools::parse_calls`]). Forced
//!    calls skip stage 1 (their output is a JSON object by construction) and are always held.
//!
//! Log probabilities travel with the text they belong to. mistral.rs sends one chunk per
//! token, except that tokens ending inside a UTF-8 sequence send none (their text arrives with
//! a later token), and it is asked for the top-1 logprob only to learn each chunk's token id:
//! a chunk then owns the sampler's step records up to the first one with that id. The final
//! chunk of a sequence stopped by an end-of-sequence token has no text; its record (the EOS)
//! is dropped, as OpenAI does not report it. Logprobs of text held back by a stage are held
//! with it; those of text cut at a stop string are dropped with it.
//!
//! `reasoning_content` deltas (templates with `<think>`) are not forwarded: OpenAI's chat
//! completions never return reasoning text. Their tokens still count as completion tokens.

use std::collections::VecDeque;

use mistralrs::Response;
use protocol::Usage;
use tokio::sync::mpsc;

use super::sampler::{StepRecord, Steps};
use super::tools::{could_be_call, cut_call, parse_calls};
use super::vocab::Vocab;
use crate::engine::{
    Chunk, EngineError, FinishReason, Meter, TokenLogprob, ToolCall, ToolSpec, TopLogprob,
};

/// Holds back text that may be the start of a stop string, and cuts at the first stop string.
#[derive(Debug)]
pub(crate) struct StopFilter {
    stops: Vec<String>,
    pending: String,
}

impl StopFilter {
    pub(crate) fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds `text`; returns the text that is safe to emit and whether a stop string was hit
    /// (the returned text then ends just before it).
    pub(crate) fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..pos].to_string();
            self.pending.clear();
            return (out, true);
        }
        let mut hold = 0;
        for s in &self.stops {
            for (k, _) in s.char_indices().skip(1) {
                if k > hold && self.pending.ends_with(&s[..k]) {
                    hold = k;
                }
            }
        }
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// The held-back text, at the end of generation.
    pub(crate) fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Text and the log probabilities of its tokens.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Piece {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
}

impl Piece {
    fn append(&mut self, other: Piece) {
        self.text.push_str(&other.text);
        self.logprobs.extend(other.logprobs);
    }

    fn is_empty(&self) -> bool {
        self.text.is_empty() && self.logprobs.is_empty()
    }
}

/// Stage 1: the stop filter, with the logprobs of each input piece released once some of its
/// text (or, for a piece without text, everything before it) has been emitted.
#[derive(Debug)]
struct StopStage {
    filter: StopFilter,
    /// (offset of the piece's text in the input, its length, its logprobs).
    queue: VecDeque<(usize, usize, Vec<TokenLogprob>)>,
    received: usize,
    emitted: usize,
}

impl StopStage {
    fn new(stops: &[String]) -> Self {
        Self {
            filter: StopFilter::new(stops),
            queue: VecDeque::new(),
            received: 0,
            emitted: 0,
        }
    }

    fn release(&mut self) -> Vec<TokenLogprob> {
        let mut out = Vec::new();
        while let Some((start, len, _)) = self.queue.front() {
            if *start < self.emitted || (*len == 0 && *start <= self.emitted) {
                if let Some((_, _, lps)) = self.queue.pop_front() {
                    out.extend(lps);
                }
            } else {
                break;
            }
        }
        out
    }

    /// Adds a piece; returns what may be emitted and whether a stop string was hit.
    fn push(&mut self, piece: Piece) -> (Piece, bool) {
        self.queue
            .push_back((self.received, piece.text.len(), piece.logprobs));
        self.received += piece.text.len();
        let (text, stopped) = self.filter.push(&piece.text);
        self.emitted += text.len();
        let logprobs = self.release();
        if stopped {
            self.queue.clear();
        }
        (Piece { text, logprobs }, stopped)
    }

    fn flush(&mut self) -> Piece {
        let text = self.filter.flush();
        let logprobs = self.queue.drain(..).flat_map(|(_, _, l)| l).collect();
        Piece { text, logprobs }
    }
}

/// How the output may contain tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Calls {
    /// Text only.
    Never,
    /// The model decides (`tool_choice` auto).
    Auto,
    /// The output is a call (`required` or a named function), constrained by a grammar.
    Forced,
}

/// What the output turned out to be at the end.
#[derive(Debug, PartialEq)]
enum Ending {
    Text(Piece),
    Calls(Vec<ToolCall>),
    /// A call cut short by `max_tokens` (its arguments so far).
    CutCall(ToolCall),
}

/// Both stages.
#[derive(Debug)]
struct Stages<'a> {
    stop: StopStage,
    calls: Calls,
    tools: &'a [ToolSpec],
    /// Text held for the tool-call decision (`None`: decided, it is text).
    held: Option<Piece>,
}

impl<'a> Stages<'a> {
    fn new(stops: &[String], calls: Calls, tools: &'a [ToolSpec]) -> Self {
        Self {
            stop: StopStage::new(stops),
            calls,
            tools,
            held: (calls != Calls::Never).then(Piece::default),
        }
    }

    /// Adds a piece of output; returns what may be sent now and whether a stop string ended
    /// the output.
    fn push(&mut self, piece: Piece) -> (Piece, bool) {
        if self.calls == Calls::Forced {
            if let Some(held) = &mut self.held {
                held.append(piece);
            }
            return (Piece::default(), false);
        }
        let (out, stopped) = self.stop.push(piece);
        match &mut self.held {
            None => (out, stopped),
            Some(held) => {
                held.append(out);
                if could_be_call(&held.text) {
                    (Piece::default(), stopped)
                } else {
                    (self.held.take().unwrap_or_default(), stopped)
                }
            }
        }
    }

    /// The end of the output; `cut` when `max_tokens` ended it.
    ///
    /// Held text that is not (only) whole calls is a call cut short when `cut` ends it inside
    /// the call form ([`cut_call`]), as OpenAI returns one. Otherwise it is text — except the
    /// output of a forced call, which is never text: when even its name was cut off
    /// ambiguously, the output is empty rather than the call form's JSON.
    fn finish(&mut self, cut: bool) -> Ending {
        let rest = self.stop.flush();
        let Some(mut held) = self.held.take() else {
            return Ending::Text(rest);
        };
        held.append(rest);
        if let Some(calls) = parse_calls(&held.text, self.tools) {
            return Ending::Calls(calls);
        }
        let forced = self.calls == Calls::Forced;
        if let Some(call) = cut
            .then(|| cut_call(&held.text, self.tools, forced))
            .flatten()
        {
            return Ending::CutCall(call);
        }
        if forced {
            return Ending::Text(Piece::default());
        }
        Ending::Text(held)
    }
}

/// How one generation ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Done(Chunk),
    Cancelled,
}

/// What `forward` needs besides the response channel.
#[derive(Debug)]
pub(crate) struct Forward<'a> {
    pub tx: &'a mpsc::Sender<Result<Chunk, EngineError>>,
    pub prompt_tokens: u64,
    pub max_len: usize,
    pub steps: &'a Steps,
    pub stops: &'a [String],
    pub calls: Calls,
    pub tools: &'a [ToolSpec],
    /// Token texts, when the request asked for logprobs.
    pub logprobs: Option<&'a Vocab>,
    /// Counts the sampled tokens as they come (held-back text included).
    pub meter: &'a Meter,
}

fn failed(msg: impl Into<String>) -> EngineError {
    EngineError::Failed(msg.into())
}

fn token_logprob(vocab: &Vocab, r: &StepRecord) -> TokenLogprob {
    let (logprob, top) = match &r.logprobs {
        Some(l) => (l.logprob, l.top.as_slice()),
        None => (0.0, &[][..]),
    };
    TokenLogprob {
        token: vocab.text(r.token),
        logprob,
        bytes: vocab.bytes(r.token).map(<[u8]>::to_vec),
        top: top
            .iter()
            .map(|(id, lp)| TopLogprob {
                token: vocab.text(*id),
                logprob: *lp,
                bytes: vocab.bytes(*id).map(<[u8]>::to_vec),
            })
            .collect(),
    }
}

/// The step records a chunk for token `token` owns, from `cursor` on.
fn take_records(steps: &Steps, cursor: &mut usize, token: Option<u32>) -> Vec<StepRecord> {
    let Some(token) = token else {
        return Vec::new();
    };
    let mut records = steps.since(*cursor);
    let n = records
        .iter()
        .position(|r| r.token == token)
        .map_or(records.len(), |i| i + 1);
    records.truncate(n);
    *cursor += n;
    records
}

/// The logprobs of the records no chunk claimed (from `cursor` on), for the end of a stream
/// whose last tokens never completed a UTF-8 sequence.
fn leftover(steps: &Steps, cursor: &mut usize, vocab: &Vocab) -> Vec<TokenLogprob> {
    let records = steps.since(*cursor);
    *cursor += records.len();
    records.iter().map(|r| token_logprob(vocab, r)).collect()
}

/// The error for a request mistral.rs refused before generating.
fn refused(e: &str) -> EngineError {
    if e.starts_with("Invalid grammar") {
        EngineError::Unsupported(format!(
            "the JSON schema is not supported by the grammar engine: {e}"
        ))
    } else {
        failed(format!("mistral.rs: {e}"))
    }
}

/// One response, reduced to what this engine uses.
struct Step {
    text: String,
    /// The chunk carried reasoning only.
    hidden: bool,
    token: Option<u32>,
    finish: Option<String>,
    usage: Option<mistralrs::Usage>,
}

fn step_of(response: Response) -> Result<Step, EngineError> {
    match response {
        Response::Chunk(c) => {
            let usage = c.usage;
            let Some(choice) = c.choices.into_iter().next() else {
                return Ok(Step {
                    text: String::new(),
                    hidden: true,
                    token: None,
                    finish: None,
                    usage,
                });
            };
            let hidden = choice.delta.content.is_none() && choice.delta.reasoning_content.is_some();
            Ok(Step {
                text: choice.delta.content.unwrap_or_default(),
                hidden,
                token: choice
                    .logprobs
                    .and_then(|l| l.top_logprobs.first().map(|t| t.token)),
                finish: choice.finish_reason,
                usage,
            })
        }
        Response::CompletionChunk(c) => {
            let choice = c.choices.into_iter().next();
            Ok(Step {
                hidden: false,
                token: choice
                    .as_ref()
                    .and_then(|c| c.logprobs.as_ref())
                    .and_then(|l| l.top_logprobs.first().map(|t| t.token)),
                finish: choice.as_ref().and_then(|c| c.finish_reason.clone()),
                text: choice.map(|c| c.text).unwrap_or_default(),
                usage: None,
            })
        }
        Response::ValidationError(e) => Err(refused(&e.to_string())),
        Response::InternalError(e) => Err(failed(format!("mistral.rs: {e}"))),
        Response::ModelError(m, _) | Response::CompletionModelError(m, _) => {
            Err(failed(format!("mistral.rs: {m}")))
        }
        _ => Err(failed("mistral.rs: unexpected response kind")),
    }
}

impl Forward<'_> {
    fn usage(&self, engine: Option<mistralrs::Usage>) -> Usage {
        match engine {
            Some(u) => Usage {
                prompt_tokens: u.prompt_tokens as u64,
                completion_tokens: u.completion_tokens as u64,
                ..Usage::default()
            },
            None => Usage {
                prompt_tokens: self.prompt_tokens,
                completion_tokens: self.steps.count(),
                ..Usage::default()
            },
        }
    }

    /// Sends a piece; `false` when the receiver is gone.
    async fn send(&self, piece: Piece) -> bool {
        let chunk = match self.logprobs {
            Some(_) if !piece.is_empty() => Chunk::Tokens {
                text: piece.text,
                logprobs: piece.logprobs,
            },
            None if !piece.text.is_empty() => Chunk::Text(piece.text),
            _ => return true,
        };
        self.tx.send(Ok(chunk)).await.is_ok()
    }

    /// Sends the end of the output and returns the final chunk.
    async fn end(&self, stages: &mut Stages<'_>, usage: Usage, reason: FinishReason) -> Outcome {
        let (calls, finish_reason) = match stages.finish(reason == FinishReason::Length) {
            Ending::Calls(calls) => (calls, FinishReason::ToolCalls),
            Ending::CutCall(call) => (vec![call], reason),
            Ending::Text(piece) => {
                if !self.send(piece).await {
                    return Outcome::Cancelled;
                }
                return Outcome::Done(Chunk::Done {
                    usage,
                    finish_reason: reason,
                });
            }
        };
        if self.tx.send(Ok(Chunk::ToolCalls(calls))).await.is_err() {
            return Outcome::Cancelled;
        }
        Outcome::Done(Chunk::Done {
            usage,
            finish_reason,
        })
    }

    /// Forwards mistral.rs responses from `mrx` until the sequence ends or `tx` closes.
    pub(crate) async fn run(
        &self,
        mut mrx: mpsc::Receiver<Response>,
    ) -> Result<Outcome, EngineError> {
        let mut stages = Stages::new(self.stops, self.calls, self.tools);
        let mut cursor = 0;
        loop {
            let response = tokio::select! {
                biased;
                _ = self.tx.closed() => return Ok(Outcome::Cancelled),
                r = mrx.recv() => r,
            };
            let Some(response) = response else {
                // The last token was an incomplete UTF-8 sequence: mistral.rs sends no final
                // chunk. Legitimate only when the length limit was reached.
                let usage = self.usage(None);
                if usage.completion_tokens < self.max_len as u64 {
                    return Err(failed(
                        "mistral.rs ended the stream without a finish reason",
                    ));
                }
                // Its tokens were sampled and are billed: they get their logprobs entries
                // (with their bytes; the text they would have completed never came).
                if let Some(vocab) = self.logprobs {
                    let rest = leftover(self.steps, &mut cursor, vocab);
                    if !rest.is_empty() {
                        let (out, _) = stages.push(Piece {
                            text: String::new(),
                            logprobs: rest,
                        });
                        if !self.send(out).await {
                            return Ok(Outcome::Cancelled);
                        }
                    }
                }
                return Ok(self.end(&mut stages, usage, FinishReason::Length).await);
            };
            self.meter.completion(self.steps.count());
            let step = step_of(response)?;
            let mut logprobs = match self.logprobs {
                Some(vocab) => take_records(self.steps, &mut cursor, step.token)
                    .iter()
                    .map(|r| token_logprob(vocab, r))
                    .collect(),
                None => Vec::new(),
            };
            if step.hidden {
                logprobs.clear();
            }
            if step.finish.as_deref() == Some("stop") && step.text.is_empty() {
                // The end-of-sequence (or stop) token.
                logprobs.pop();
            }
            let (out, stopped) = stages.push(Piece {
                text: step.text,
                logprobs,
            });
            if !self.send(out).await {
                return Ok(Outcome::Cancelled);
            }
            if stopped {
                // Dropping `mrx` makes mistral.rs cancel the sequence at its next token.
                drop(mrx);
                let usage = self.usage(None);
                return Ok(self.end(&mut stages, usage, FinishReason::Stop).await);
            }
            if let Some(reason) = step.finish {
                let reason = match reason.as_str() {
                    "length" => FinishReason::Length,
                    "canceled" => return Err(failed("mistral.rs cancelled the generation")),
                    _ => FinishReason::Stop,
                };
                let usage = self.usage(step.usage);
                return Ok(self.end(&mut stages, usage, reason).await);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut f = StopFilter::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let (t, stopped) = f.push(p);
            out.push_str(&t);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&f.flush());
        (out, false)
    }

    #[test]
    fn stop_filter_cuts_before_the_stop_string() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D more"]),
            ("hello ".into(), true)
        );
        assert_eq!(
            run(&["END"], &["hello EN", "x"]),
            ("hello ENx".into(), false)
        );
        assert_eq!(run(&["\n\n", "."], &["a\n", "b. c"]), ("a\nb".into(), true));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".into(), true));
        assert_eq!(run(&["ab"], &["xa"]), ("xa".into(), false));
    }

    #[test]
    fn stop_filter_emits_what_cannot_start_a_stop() {
        let mut f = StopFilter::new(&["END".to_string()]);
        assert_eq!(f.push("hello E"), ("hello ".to_string(), false));
        assert_eq!(f.push("x"), ("Ex".to_string(), false));
        assert_eq!(f.flush(), "");
    }

    fn lp(token: &str) -> TokenLogprob {
        TokenLogprob {
            token: token.into(),
            logprob: -1.0,
            bytes: Some(token.as_bytes().to_vec()),
            top: vec![],
        }
    }

    fn piece(text: &str) -> Piece {
        Piece {
            text: text.into(),
            logprobs: vec![lp(text)],
        }
    }

    fn tokens(p: &Piece) -> Vec<&str> {
        p.logprobs.iter().map(|l| l.token.as_str()).collect()
    }

    #[test]
    fn logprobs_travel_with_their_text_through_the_stop_filter() {
        let mut s = StopStage::new(&["END".to_string()]);
        let (out, stopped) = s.push(piece("hi "));
        assert_eq!(
            (out.text.as_str(), tokens(&out), stopped),
            ("hi ", vec!["hi "], false)
        );
        // Held back: "E" may start "END"; its logprob waits with it.
        let (out, _) = s.push(piece("E"));
        assert_eq!((out.text.as_str(), tokens(&out)), ("", vec![]));
        let (out, _) = s.push(piece("x"));
        assert_eq!((out.text.as_str(), tokens(&out)), ("Ex", vec!["E", "x"]));
        // Cut at a stop string: tokens that start before it are kept, the rest dropped.
        let (out, stopped) = s.push(piece("yEN"));
        assert_eq!((out.text.as_str(), tokens(&out)), ("y", vec!["yEN"]));
        assert!(!stopped);
        let (out, stopped) = s.push(piece("D"));
        assert_eq!(
            (out.text.as_str(), tokens(&out), stopped),
            ("", vec![], true)
        );
        assert_eq!(s.flush(), Piece::default());
        // A token without text is released with the text before it; flush releases the rest.
        let mut s = StopStage::new(&["END".to_string()]);
        let (out, _) = s.push(piece(""));
        assert_eq!(tokens(&out), vec![""]);
        s.push(piece("EN"));
        assert_eq!(
            s.flush(),
            Piece {
                text: "EN".into(),
                logprobs: vec![lp("EN")]
            }
        );
    }

    fn weather() -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "get_weather".into(),
            description: None,
            parameters: serde_json::json!({"type": "object"}),
        }]
    }

    #[test]
    fn auto_calls_are_held_and_parsed_or_released_as_text() {
        let tools = weather();
        let mut st = Stages::new(&[], Calls::Auto, &tools);
        assert_eq!(st.push(piece(" {\"name\": ")).0, Piece::default());
        assert_eq!(
            st.push(piece("\"get_weather\", \"arguments\": {}}")).0,
            Piece::default()
        );
        match st.finish(false) {
            Ending::Calls(c) => assert_eq!(
                (c[0].name.as_str(), c[0].arguments.as_str()),
                ("get_weather", "{}")
            ),
            other => panic!("{other:?}"),
        }
        // Text: released as soon as it cannot be a call, then streamed.
        let mut st = Stages::new(&[], Calls::Auto, &tools);
        assert_eq!(st.push(piece(" ")).0, Piece::default());
        let (out, _) = st.push(piece("Hi"));
        assert_eq!((out.text.as_str(), tokens(&out)), (" Hi", vec![" ", "Hi"]));
        assert_eq!(st.push(piece("!")).0.text, "!");
        assert_eq!(st.finish(false), Ending::Text(Piece::default()));
        // A call cut short by max_tokens is a call; the same text ended otherwise is text.
        for (cut, call) in [(true, true), (false, false)] {
            let mut st = Stages::new(&[], Calls::Auto, &tools);
            st.push(piece("{\"name\": \"get_weather\", \"arguments\": {\"ci"));
            match st.finish(cut) {
                Ending::CutCall(c) => assert!(call && c.arguments == "{\"ci", "{c:?}"),
                Ending::Text(p) => assert!(!call && p.text.starts_with("{\"name"), "{p:?}"),
                other => panic!("{other:?}"),
            }
        }
        // Text cut short that is not the call form stays text.
        let mut st = Stages::new(&[], Calls::Auto, &tools);
        st.push(piece("{\"a\": "));
        assert!(matches!(st.finish(true), Ending::Text(p) if p.text == "{\"a\": "));
        // JSON that is not a call of a known tool is text at the end.
        let mut st = Stages::new(&[], Calls::Auto, &tools);
        st.push(piece("{\"a\": 1}"));
        assert_eq!(
            st.finish(false),
            Ending::Text(Piece {
                text: "{\"a\": 1}".into(),
                logprobs: vec![lp("{\"a\": 1}")]
            })
        );
    }

    #[test]
    fn forced_calls_ignore_stop_strings() {
        let tools = weather();
        let stops = vec!["\"".to_string()];
        let mut st = Stages::new(&stops, Calls::Forced, &tools);
        let (out, stopped) = st.push(piece("{\"name\": \"get_weather\", \"arguments\": {}}"));
        assert_eq!((out, stopped), (Piece::default(), false));
        assert!(matches!(st.finish(false), Ending::Calls(c) if c.len() == 1));
        // Cut short (max_tokens): the call so far, never the call form's JSON as text.
        let mut st = Stages::new(&stops, Calls::Forced, &tools);
        st.push(piece("{\"name\": \"get_"));
        assert!(
            matches!(st.finish(true), Ending::CutCall(c) if c.name == "get_weather" && c.arguments.is_empty())
        );
        let mut st = Stages::new(&stops, Calls::Forced, &tools);
        st.push(piece(
            "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Pa",
        ));
        assert!(matches!(st.finish(true), Ending::CutCall(c) if c.arguments == "{\"city\": \"Pa"));
        // Cut inside the name of one of two tools: nothing, rather than the JSON so far.
        let two = [
            tools[0].clone(),
            ToolSpec {
                name: "get_time".into(),
                ..tools[0].clone()
            },
        ];
        let mut st = Stages::new(&stops, Calls::Forced, &two);
        st.push(piece("{\"na"));
        assert_eq!(st.finish(true), Ending::Text(Piece::default()));
    }

    #[test]
    fn records_are_matched_to_chunks_by_token() {
        let steps = Steps::default();
        // Steps 0..3 chose tokens 5, 6 (an incomplete UTF-8 start), 7, 5.
        for (i, t) in [5, 6, 7, 5].into_iter().enumerate() {
            steps.record(
                i,
                StepRecord {
                    token: t,
                    logprobs: None,
                },
            );
        }
        let mut cursor = 0;
        let ids = |r: Vec<StepRecord>| r.iter().map(|r| r.token).collect::<Vec<_>>();
        assert_eq!(ids(take_records(&steps, &mut cursor, Some(5))), vec![5]);
        assert_eq!(ids(take_records(&steps, &mut cursor, Some(7))), vec![6, 7]);
        assert_eq!(
            ids(take_records(&steps, &mut cursor, None)),
            Vec::<u32>::new()
        );
        assert_eq!(ids(take_records(&steps, &mut cursor, Some(5))), vec![5]);
        assert_eq!(cursor, 4);
    }

    /// A stream cut at the length limit inside a UTF-8 sequence (mistral.rs sends no chunk for
    /// its last tokens): those tokens are billed, so they get their logprobs entries, with
    /// their bytes. Before, they were dropped and a client saw one entry fewer than the
    /// completion tokens (seen in CI with SmolLM2 sampling a byte token last).
    #[test]
    fn unclaimed_records_get_entries_at_the_end() {
        let vocab = Vocab::new(&super::super::vocab::TokenizerMetadata {
            model: "gpt2".into(),
            tokens: ["a", "b", "\u{e2}", "\u{124}"]
                .iter()
                .map(|t| t.to_string())
                .collect(),
            token_types: vec![1, 1, 1, 1],
            specials: vec![],
            chat_template: None,
        });
        let steps = Steps::default();
        for (i, t) in [0, 1, 2, 3].into_iter().enumerate() {
            steps.record(
                i,
                StepRecord {
                    token: t,
                    logprobs: None,
                },
            );
        }
        let mut cursor = 0;
        assert_eq!(take_records(&steps, &mut cursor, Some(0)).len(), 1);
        assert_eq!(take_records(&steps, &mut cursor, Some(1)).len(), 1);
        let rest = leftover(&steps, &mut cursor, &vocab);
        assert_eq!(rest.len(), 2);
        assert_eq!(cursor, 4);
        assert!(rest
            .iter()
            .all(|t| t.bytes.as_ref().is_some_and(|b| b.len() == 1)));
        assert!(leftover(&steps, &mut cursor, &vocab).is_empty());
    }

    #[test]
    fn grammar_refusals_are_unsupported() {
        assert!(
            matches!(refused("Invalid grammar. bad schema"), EngineError::Unsupported(m) if m.contains("bad schema"))
        );
        assert!(matches!(refused("other"), EngineError::Failed(_)));
    }
}
