//! Streaming text while tools are offered: [`Splitter`] passes generated
//! text through as content until a tool call of the template's [`Family`]
//! could begin, and holds everything from there to the end, when the held
//! part is parsed ([`super::parse`]). Openers that may come anywhere
//! (Hermes' `<tool_call>`, DeepSeek's call blocks) are held from the point
//! they start, and a tail that could be the start of one (`<tool` at the end
//! of a piece) waits for the next piece. The JSON forms (Llama 3's object,
//! the generic fallback, a ```json fence) must be the whole output, so an
//! answer whose first non-blank text could start one is held whole, and an
//! answer that starts otherwise can never become one. Whitespace just before
//! a held part stays held too, since a call's content is trimmed.

use super::Family;

/// Where the output stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Only blanks so far, or the start of what may be a JSON call.
    Start,
    /// Plain text: passed on, unless an opener may begin.
    Text,
    /// A call may be under way: all is held to the end.
    Held,
}

/// Splits streamed output into content to send now and a held tail.
#[derive(Debug)]
pub struct Splitter {
    openers: &'static [&'static str],
    python_tag: bool,
    state: State,
    /// Text not yet passed on.
    buf: String,
}

/// How an output's first non-blank text bears on the JSON call forms.
#[derive(Debug, PartialEq, Eq)]
enum Lead {
    Undecided,
    Call,
    Text,
}

impl Splitter {
    pub fn new(family: Family) -> Splitter {
        let openers: &'static [&'static str] = match family {
            Family::Hermes => &["<tool_call>"],
            Family::DeepSeekV3 | Family::DeepSeekV31 => &["<｜tool▁calls▁begin｜>"],
            Family::DeepSeekV4 => &["<｜DSML｜tool_calls>"],
            Family::Llama3 | Family::Generic => &[],
        };
        Splitter {
            openers,
            python_tag: family == Family::Llama3,
            state: State::Start,
            buf: String::new(),
        }
    }

    /// Takes the next piece of output; returns the content that can be
    /// sent now (possibly empty).
    pub fn push(&mut self, piece: &str) -> String {
        self.buf.push_str(piece);
        if self.state == State::Start {
            match self.lead(self.buf.trim_start()) {
                Lead::Undecided => return String::new(),
                Lead::Call => self.state = State::Held,
                Lead::Text => self.state = State::Text,
            }
        }
        if self.state == State::Held {
            return String::new();
        }
        let send = match self.first_opener() {
            Some(at) => {
                self.state = State::Held;
                self.buf[..at].trim_end().len()
            }
            None => self.partial_tail(),
        };
        let rest = self.buf.split_off(send);
        std::mem::replace(&mut self.buf, rest)
    }

    /// The end of the output: what is still held (to parse for calls, or
    /// to send as content if it holds none).
    pub fn finish(self) -> String {
        self.buf
    }

    /// Whether `s` (the output, leading blanks off) is, or may become, one
    /// of the forms that are a call only as the whole output.
    fn lead(&self, s: &str) -> Lead {
        if s.is_empty() {
            return Lead::Undecided;
        }
        if s.starts_with('{') || s.starts_with('[') {
            return Lead::Call;
        }
        if self.python_tag {
            const TAG: &str = "<|python_tag|>";
            if s.starts_with(TAG) {
                return Lead::Call;
            }
            if TAG.starts_with(s) {
                return Lead::Undecided;
            }
        }
        // A fence the generic form reads: ``` or ```json, then the JSON.
        if "```".starts_with(s) {
            return Lead::Undecided;
        }
        if let Some(r) = s.strip_prefix("```") {
            if "json".starts_with(r) {
                return Lead::Undecided;
            }
            let r = r.strip_prefix("json").unwrap_or(r).trim_start();
            return match r.chars().next() {
                None => Lead::Undecided,
                Some('{' | '[') => Lead::Call,
                Some(_) => Lead::Text,
            };
        }
        Lead::Text
    }

    /// Where the first whole opener in the buffer starts.
    fn first_opener(&self) -> Option<usize> {
        self.openers.iter().filter_map(|o| self.buf.find(o)).min()
    }

    /// How much of the buffer can go: all but a tail of blanks and the
    /// start of an opener.
    fn partial_tail(&self) -> usize {
        let b = &self.buf;
        let could_open = |i: usize| {
            let t = b[i..].trim_start();
            t.is_empty() || self.openers.iter().any(|o| o.starts_with(t))
        };
        b.char_indices()
            .map(|(i, _)| i)
            .find(|&i| could_open(i))
            .unwrap_or(b.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces`; returns what was sent at each piece and the held rest.
    fn run(family: Family, pieces: &[&str]) -> (Vec<String>, String) {
        let mut s = Splitter::new(family);
        let sent = pieces.iter().map(|p| s.push(p)).collect();
        (sent, s.finish())
    }

    fn joined(family: Family, pieces: &[&str]) -> (String, String) {
        let (sent, held) = run(family, pieces);
        (sent.concat(), held)
    }

    #[test]
    fn plain_text_streams_as_it_comes() {
        let (sent, held) = run(Family::Hermes, &["Hello", " there", ", friend."]);
        assert_eq!(sent, ["Hello", " there", ", friend."]);
        assert_eq!(held, "");
    }

    #[test]
    fn a_hermes_call_is_held_from_its_opener() {
        let (sent, held) = run(
            Family::Hermes,
            &[
                "Let me check.",
                "\n",
                "<tool_call>",
                "{\"name\": \"x\"}",
                " after",
            ],
        );
        assert_eq!(sent, ["Let me check.", "", "", "", ""]);
        assert_eq!(held, "\n<tool_call>{\"name\": \"x\"} after");
    }

    #[test]
    fn a_partial_opener_waits_and_is_let_go_when_it_is_not_one() {
        let (sent, held) = run(Family::Hermes, &["a <to", "ol", "s are", " fine"]);
        assert_eq!(sent, ["a", "", " <tools are", " fine"]);
        assert_eq!(held, "");
        let (sent, held) = run(Family::Hermes, &["a <to", "ol_c", "all>{}"]);
        assert_eq!(sent.concat(), "a");
        assert_eq!(held, " <tool_call>{}");
    }

    #[test]
    fn every_split_of_an_answer_gives_the_same_text_and_held_tail() {
        let text = "Sure thing. <tool_call>{\"name\": \"f\"}</tool_call>";
        for cut in 1..text.len() {
            if !text.is_char_boundary(cut) {
                continue;
            }
            let (sent, held) = joined(Family::Hermes, &[&text[..cut], &text[cut..]]);
            assert_eq!(sent, "Sure thing.", "cut at {cut}");
            assert_eq!(format!("{sent}{held}"), text);
        }
    }

    #[test]
    fn json_as_the_whole_output_is_held_from_the_start() {
        for fam in [Family::Generic, Family::Llama3, Family::Hermes] {
            let (sent, held) = joined(fam, &["  ", "{\"name\"", ": \"f\"}"]);
            assert_eq!(sent, "", "{fam:?}");
            assert_eq!(held, "  {\"name\": \"f\"}");
        }
        let (sent, held) = joined(Family::Generic, &["``", "`js", "on\n", "{}", "```"]);
        assert_eq!((sent.as_str(), held.as_str()), ("", "```json\n{}```"));
        let (sent, held) = joined(Family::Llama3, &["<|python", "_tag|>{}"]);
        assert_eq!((sent.as_str(), held.as_str()), ("", "<|python_tag|>{}"));
    }

    #[test]
    fn text_that_cannot_be_json_is_never_held_later() {
        let (sent, held) = joined(Family::Generic, &["The answer", " is {\"a\": 1}"]);
        assert_eq!(
            (sent.as_str(), held.as_str()),
            ("The answer is {\"a\": 1}", "")
        );
        let (sent, held) = joined(Family::Generic, &["```py", "thon\nx = 1\n```"]);
        assert_eq!(
            (sent.as_str(), held.as_str()),
            ("```python\nx = 1\n```", "")
        );
        // Llama 3's tag counts only where the family uses it.
        let (sent, _) = joined(Family::Generic, &["<|python_tag|>"]);
        assert_eq!(sent, "<|python_tag|>");
    }

    #[test]
    fn deepseek_openers_hold_from_where_they_start() {
        let (sent, held) = joined(
            Family::DeepSeekV31,
            &[
                "Checking",
                "<｜tool▁",
                "calls▁begin｜>",
                "<｜tool▁call▁begin｜>f",
            ],
        );
        assert_eq!(sent, "Checking");
        assert_eq!(held, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f");
        let (sent, held) = joined(Family::DeepSeekV4, &["ok <｜DSML｜", "tool_calls>"]);
        assert_eq!(
            (sent.as_str(), held.as_str()),
            ("ok", " <｜DSML｜tool_calls>")
        );
    }

    #[test]
    fn trailing_blanks_wait_for_what_follows() {
        let (sent, held) = run(Family::Hermes, &["a\n\n", "b"]);
        assert_eq!(sent, ["a", "\n\nb"]);
        assert_eq!(held, "");
        let (sent, held) = run(Family::Hermes, &["a\n"]);
        assert_eq!((sent.concat(), held.as_str()), ("a".to_string(), "\n"));
    }
}
