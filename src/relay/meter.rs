//! Reading the tokens a model call used from what passes through the relay, without holding
//! the stream back: server-sent events are read line by line as they go by; a plain JSON
//! answer is kept (bounded) and read at its end.
//!
//! Where providers put it:
//! - OpenAI chat completions: `usage.prompt_tokens` / `usage.completion_tokens`, in a stream
//!   on the last chunk (with `stream_options.include_usage`);
//! - OpenAI responses: `response.usage.input_tokens` / `output_tokens` on
//!   `response.completed`;
//! - Anthropic messages: `message.usage` on `message_start`, then `usage` on
//!   `message_delta` (cumulative); input is `input_tokens` plus both cache counts.
//!
//! Every count seen is kept at its largest, which reads all three the same way.

use serde_json::Value;

/// Largest line or JSON answer looked at; longer ones pass through unread.
const MAX_KEPT: usize = 4 << 20;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Metered {
    pub model: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Some count was found.
    pub seen: bool,
}

#[derive(Debug)]
pub struct Meter {
    event_stream: bool,
    kept: Vec<u8>,
    /// The kept bytes outgrew `MAX_KEPT` (a line, or a JSON answer): skip to the next line.
    overflowed: bool,
    metered: Metered,
}

impl Meter {
    /// `event_stream`: the answer is `text/event-stream`.
    pub fn new(event_stream: bool) -> Self {
        Self {
            event_stream,
            kept: Vec::new(),
            overflowed: false,
            metered: Metered::default(),
        }
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        if !self.event_stream {
            if self.kept.len() + chunk.len() > MAX_KEPT {
                self.overflowed = true;
            } else {
                self.kept.extend_from_slice(chunk);
            }
            return;
        }
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            if !self.overflowed {
                self.kept.extend_from_slice(&chunk[..end]);
                let line = std::mem::take(&mut self.kept);
                self.read_line(&line);
            }
            self.kept.clear();
            self.overflowed = false;
            chunk = &chunk[end + 1..];
        }
        if self.kept.len() + chunk.len() > MAX_KEPT {
            self.overflowed = true;
            self.kept.clear();
        } else if !self.overflowed {
            self.kept.extend_from_slice(chunk);
        }
    }

    /// What was used, once the answer has ended.
    pub fn finish(mut self) -> Metered {
        if self.event_stream {
            if !self.overflowed && !self.kept.is_empty() {
                let line = std::mem::take(&mut self.kept);
                self.read_line(&line);
            }
        } else if !self.overflowed {
            if let Ok(value) = serde_json::from_slice::<Value>(&self.kept) {
                self.read(&value);
            }
        }
        self.metered
    }

    fn read_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        if let Ok(value) = serde_json::from_slice::<Value>(data.trim_ascii_start()) {
            self.read(&value);
        }
    }

    fn read(&mut self, value: &Value) {
        let holder = [value.get("response"), value.get("message"), Some(value)];
        for v in holder.into_iter().flatten() {
            if self.metered.model.is_none() {
                if let Some(model) = v.get("model").and_then(Value::as_str) {
                    self.metered.model = Some(model.to_owned());
                }
            }
            if let Some(usage) = v.get("usage").filter(|u| u.is_object()) {
                self.read_usage(usage);
            }
        }
    }

    fn read_usage(&mut self, usage: &Value) {
        let count = |name: &str| usage.get(name).and_then(Value::as_u64);
        let input = count("prompt_tokens").or_else(|| {
            let plain = count("input_tokens")?;
            Some(
                plain
                    + count("cache_creation_input_tokens").unwrap_or(0)
                    + count("cache_read_input_tokens").unwrap_or(0),
            )
        });
        let output = count("completion_tokens").or_else(|| count("output_tokens"));
        let m = &mut self.metered;
        if let Some(input) = input {
            m.input_tokens = m.input_tokens.max(input);
            m.seen = true;
        }
        if let Some(output) = output {
            m.output_tokens = m.output_tokens.max(output);
            m.seen = true;
        }
    }
}

/// What the relay does with a request body before it goes on.
#[derive(Debug, PartialEq)]
pub enum RequestCheck {
    /// As it is.
    Keep,
    /// This body instead.
    Replace(Vec<u8>),
    /// Not relayed, for this reason.
    Refuse(&'static str),
}

/// Looks at the top level of a model call's body only (the rest is kept as raw text, so a
/// large body costs one scan, not a tree of values):
/// - a streamed OpenAI-style completion (`chat/completions`, `completions`) is made to
///   report its usage on its last chunk, whatever the client asked
///   (`stream_options.include_usage`): a budget must see what it counts;
/// - a background call (`"background": true`) is refused: it answers before the work is
///   done, so its use could not be counted.
pub fn check_request(tail: &str, body: &[u8]) -> RequestCheck {
    type Object = serde_json::Map<String, Value>;
    type RawObject = std::collections::BTreeMap<String, Box<serde_json::value::RawValue>>;
    let Ok(mut top) = serde_json::from_slice::<RawObject>(body) else {
        // Not a JSON object: the provider says what is wrong with it.
        return RequestCheck::Keep;
    };
    let is_true =
        |raw: Option<&Box<serde_json::value::RawValue>>| raw.is_some_and(|v| v.get() == "true");
    if is_true(top.get("background")) {
        return RequestCheck::Refuse(
            "background calls are not relayed: their use could not be counted",
        );
    }
    if !matches!(tail, "chat/completions" | "completions") || !is_true(top.get("stream")) {
        return RequestCheck::Keep;
    }
    let mut options: Object = top
        .get("stream_options")
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_default();
    if options.get("include_usage") == Some(&Value::Bool(true)) {
        return RequestCheck::Keep;
    }
    options.insert("include_usage".into(), Value::Bool(true));
    let Ok(raw) = serde_json::value::to_raw_value(&options) else {
        return RequestCheck::Keep;
    };
    top.insert("stream_options".into(), raw);
    match serde_json::to_vec(&top) {
        Ok(body) => RequestCheck::Replace(body),
        Err(_) => RequestCheck::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(text: &str, pieces: usize) -> Metered {
        let mut meter = Meter::new(true);
        let bytes = text.as_bytes();
        let step = bytes.len().div_ceil(pieces);
        for chunk in bytes.chunks(step.max(1)) {
            meter.feed(chunk);
        }
        meter.finish()
    }

    #[test]
    fn openai_chat_usage_in_the_last_chunk_split_anywhere() {
        let text = "data: {\"model\":\"gpt-x\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
                    data: {\"model\":\"gpt-x\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":34}}\n\n\
                    data: [DONE]\n\n";
        for pieces in [1, 3, 7, text.len()] {
            let m = stream(text, pieces);
            assert_eq!(
                (m.model.as_deref(), m.input_tokens, m.output_tokens, m.seen),
                (Some("gpt-x"), 12, 34, true),
                "{pieces} pieces"
            );
        }
    }

    #[test]
    fn anthropic_usage_from_start_and_deltas() {
        let text = "event: message_start\r\n\
                    data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\r\n\r\n\
                    event: message_delta\r\n\
                    data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\r\n\r\n";
        let m = stream(text, 5);
        assert_eq!(
            (m.model.as_deref(), m.input_tokens, m.output_tokens),
            (Some("claude-x"), 15, 42)
        );
    }

    #[test]
    fn openai_responses_completed_event() {
        let text = "event: response.completed\n\
                    data: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-r\",\"usage\":{\"input_tokens\":8,\"output_tokens\":9}}}\n\n";
        let m = stream(text, 2);
        assert_eq!(
            (m.model.as_deref(), m.input_tokens, m.output_tokens),
            (Some("gpt-r"), 8, 9)
        );
    }

    #[test]
    fn a_plain_json_answer_is_read_at_its_end() {
        let mut meter = Meter::new(false);
        meter.feed(b"{\"model\":\"m\",\"usage\":{\"prompt_tokens\":3,");
        meter.feed(b"\"completion_tokens\":4}}");
        let m = meter.finish();
        assert_eq!((m.input_tokens, m.output_tokens, m.seen), (3, 4, true));
        let none = Meter::new(false).finish();
        assert!(!none.seen);
    }

    #[test]
    fn an_oversized_line_is_skipped_and_the_next_read() {
        let mut meter = Meter::new(true);
        meter.feed(b"data: ");
        meter.feed(&vec![b'x'; MAX_KEPT + 10]);
        meter.feed(b"\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n");
        let m = meter.finish();
        assert_eq!((m.input_tokens, m.output_tokens), (1, 2));
    }

    #[test]
    fn streams_always_report_usage_and_background_calls_are_refused() {
        let replaced = |tail: &str, body: &str| match check_request(tail, body.as_bytes()) {
            RequestCheck::Replace(body) => serde_json::from_slice::<Value>(&body).unwrap(),
            other => panic!("{body}: {other:?}"),
        };
        for asked in [
            r#"{"model":"m","stream":true}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#,
            r#"{"model":"m","stream":true,"stream_options":null}"#,
        ] {
            let v = replaced("chat/completions", asked);
            assert_eq!(v["stream_options"]["include_usage"], true, "{asked}");
            assert_eq!(v["model"], "m");
        }
        let v = replaced(
            "completions",
            r#"{"stream":true,"n":12345678901234567890123,"stream_options":{"x":1}}"#,
        );
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"x": 1, "include_usage": true})
        );
        let kept = check_request(
            "chat/completions",
            br#"{"stream":true,"stream_options":{"include_usage":true}}"#,
        );
        assert_eq!(kept, RequestCheck::Keep);
        assert_eq!(
            check_request("chat/completions", br#"{"stream":false}"#),
            RequestCheck::Keep
        );
        assert_eq!(
            check_request("messages", br#"{"stream":true}"#),
            RequestCheck::Keep
        );
        assert_eq!(
            check_request("chat/completions", b"not json"),
            RequestCheck::Keep
        );
        assert!(matches!(
            check_request("responses", br#"{"background":true,"stream":true}"#),
            RequestCheck::Refuse(_)
        ));
    }
}
