//! Turns file names and query text into keywords.
//!
//! Unicode-aware: text is NFKC-normalised (so "ﬁ" and "fi", full-width and
//! half-width forms agree) and lower-cased with Unicode rules, then split on
//! every character that is not alphanumeric. "Ärger_im-Büro.MP3" yields
//! `ärger`, `im`, `büro`, `mp3`. The same function serves the index and the
//! query, so whatever a name contains, a query can match.

use unicode_normalization::UnicodeNormalization;

/// Longest keyword kept, in characters; longer runs are cut to this length
/// on both sides so matching stays consistent.
pub const MAX_TOKEN_CHARS: usize = 64;

/// The distinct keywords of `text`, in order of first appearance.
pub fn tokenize(text: &str) -> Vec<String> {
    if text.is_ascii() {
        tokenize_ascii(text)
    } else {
        tokenize_unicode(text)
    }
}

fn tokenize_unicode(text: &str) -> Vec<String> {
    let normalized: String = text.nfkc().collect::<String>().to_lowercase();
    let mut tokens: Vec<String> = Vec::new();
    for word in normalized.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        let token: String = word.chars().take(MAX_TOKEN_CHARS).collect();
        if !tokens.contains(&token) {
            tokens.push(token);
        }
    }
    tokens
}

/// [`tokenize`] for ASCII text, which NFKC leaves as it is: the common
/// case, without the normalisation pass.
fn tokenize_ascii(text: &str) -> Vec<String> {
    let mut tokens: Vec<String> = Vec::new();
    for word in text.split(|c: char| !c.is_ascii_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        let token = word[..word.len().min(MAX_TOKEN_CHARS)].to_ascii_lowercase();
        if !tokens.contains(&token) {
            tokens.push(token);
        }
    }
    tokens
}

/// The distinct keywords of several query terms taken together.
pub fn tokenize_all<S: AsRef<str>>(terms: &[S]) -> Vec<String> {
    let mut tokens: Vec<String> = Vec::new();
    for term in terms {
        for token in tokenize(term.as_ref()) {
            if !tokens.contains(&token) {
                tokens.push(token);
            }
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_punctuation_and_lowercases() {
        assert_eq!(
            tokenize("Ärger_im-Büro.MP3"),
            vec!["ärger", "im", "büro", "mp3"]
        );
    }

    #[test]
    fn unicode_forms_agree() {
        // Full-width letters and the "ﬁ" ligature normalise to plain ones.
        assert_eq!(tokenize("ＦＩＬＥ ﬁsh"), vec!["file", "fish"]);
        // Greek capital sigma lower-cases; Cyrillic and CJK stay whole words.
        assert_eq!(
            tokenize("ΣΟΦΊΑ Москва 東京"),
            vec!["σοφία", "москва", "東京"]
        );
    }

    #[test]
    fn repeats_are_dropped() {
        assert_eq!(tokenize("la la land"), vec!["la", "land"]);
        assert_eq!(tokenize_all(&["Live", "live.mp3"]), vec!["live", "mp3"]);
    }

    #[test]
    fn the_ascii_path_agrees_with_the_unicode_one() {
        let long = format!("{} tail", "Ab1".repeat(40));
        for text in [
            "Blue Moon - Live (1961).MP3",
            "a_b-c.d e",
            "  --x--  ",
            "UPPER lower 123 mixed9Case",
            "~!@#$%^&*()",
            long.as_str(),
        ] {
            assert_eq!(tokenize_ascii(text), tokenize_unicode(text), "{text}");
        }
    }

    #[test]
    fn nothing_but_punctuation_yields_nothing() {
        assert!(tokenize("--- ... !!!").is_empty());
    }
}
