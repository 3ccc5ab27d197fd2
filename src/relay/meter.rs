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

/// For an OpenAI-style streamed chat request that did not ask for usage: the body with
/// `stream_options.include_usage` set, so the last chunk carries it. `None`: leave the body
/// as it is.
pub fn ask_for_usage(body: &[u8]) -> Option<Vec<u8>> {
    let mut value: Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object_mut()?;
    if object.get("stream") != Some(&Value::Bool(true)) {
        return None;
    }
    let options = object
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Default::default()))
        .as_object_mut()?;
    if options.contains_key("include_usage") {
        return None;
    }
    options.insert("include_usage".into(), Value::Bool(true));
    serde_json::to_vec(&value).ok()
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
    fn usage_is_asked_for_only_in_streams_that_did_not_say() {
        let asked = ask_for_usage(br#"{"model":"m","stream":true}"#).unwrap();
        let v: Value = serde_json::from_slice(&asked).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(ask_for_usage(br#"{"stream":false}"#).is_none());
        assert!(
            ask_for_usage(br#"{"stream":true,"stream_options":{"include_usage":false}}"#).is_none()
        );
        assert!(ask_for_usage(b"not json").is_none());
    }
}
