//! Stop strings over streamed text.

/// Finds stop strings in text that arrives in pieces, and holds back any tail that could
/// still become one, so that a stop string never reaches the client even in part.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// The longest stop string's bytes: more is never held back, so a token's work is
    /// bounded by the stop strings, not by the output's length.
    longest: usize,
    held: String,
    /// The stop string found: nothing more is released.
    matched: Option<String>,
}

/// What a piece of text releases.
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    /// Text safe to send.
    pub text: String,
    /// A stop string was found; `text` ends right before it.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        Self { stops, longest, held: String::new(), matched: None }
    }

    /// Adds `piece` and returns what can be sent.
    pub fn push(&mut self, piece: &str) -> Released {
        if self.matched.is_some() {
            return Released { text: String::new(), stopped: true };
        }
        self.held.push_str(piece);
        let first_stop = self.stops.iter().filter_map(|s| Some((self.held.find(s.as_str())?, s))).min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = first_stop {
            let text = self.held[..at].to_owned();
            self.held.clear();
            self.matched = Some(stop.clone());
            return Released { text, stopped: true };
        }
        // Only a tail shorter than the longest stop string can still become one.
        let from = self.held.len().saturating_sub(self.longest.saturating_sub(1));
        let keep = self.held.char_indices().map(|(i, _)| i).filter(|&i| i >= from).find(|&i| self.could_start_stop(&self.held[i..]));
        let split = keep.unwrap_or(self.held.len());
        let text = self.held[..split].to_owned();
        self.held.drain(..split);
        Released { text, stopped: false }
    }

    /// The stop string that ended the text, if one did.
    pub fn matched(&self) -> Option<&str> {
        self.matched.as_deref()
    }

    /// The text held back, released at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    fn could_start_stop(&self, tail: &str) -> bool {
        self.stops.iter().any(|s| s.starts_with(tail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for p in pieces {
            let r = m.push(p);
            out.push(r.text);
            if r.stopped {
                return (out, true);
            }
        }
        out.push(m.finish());
        (out, false)
    }

    #[test]
    fn text_before_a_stop_string_split_over_pieces_is_sent_and_the_stop_is_not() {
        assert_eq!(run(&["END"], &["hello E", "N", "D more"]), (vec!["hello ".into(), "".into(), "".into()], true));
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), (vec!["a".into(), "".into()], true));
    }

    #[test]
    fn a_false_start_is_released_once_it_cannot_match() {
        assert_eq!(run(&["END"], &["EN", "x"]), (vec!["".into(), "ENx".into(), "".into()], false));
        assert_eq!(run(&["END"], &["E"]), (vec!["".into(), "E".into()], false));
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_multibyte_text_is_split_on_characters() {
        assert_eq!(run(&["b", "ab"], &["xxab"]), (vec!["xx".into()], true));
        assert_eq!(run(&["é!"], &["café", " ok"]), (vec!["caf".into(), "é ok".into(), "".into()], false));
        assert_eq!(run(&[], &["plain"]), (vec!["plain".into(), "".into()], false));
    }

    #[test]
    fn nothing_is_released_after_a_stop() {
        let mut m = StopMatcher::new(vec!["b".into(), "x".into()]);
        assert_eq!(m.matched(), None);
        assert!(m.push("axb").stopped);
        assert_eq!(m.matched(), Some("x"), "the stop found first is the one reported");
        assert_eq!(m.push("more"), Released { text: String::new(), stopped: true });
        assert_eq!(m.finish(), "");
    }
}
