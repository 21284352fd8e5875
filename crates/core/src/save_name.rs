//! The name a downloaded file is saved under, made safe from a name a peer
//! sent.
//!
//! A hit's name is a stranger's claim. The protocol already refuses
//! separators, control characters, `.` and `..`, but a name can still hide
//! a file (`.bash_profile`), read as an option (`-rf`), reverse the text
//! around it (U+202E), or be a device on Windows (`CON.txt`). Saved without
//! `-o`, the name is cleaned here first: no leading `.` or `-`, no control
//! or format (Unicode category Cf) characters, Windows' reserved names and
//! characters replaced, trailing dots and spaces trimmed, at most
//! [`MAX_SAVE_NAME_BYTES`] bytes; a name with nothing left is named after
//! the content id.
//!
//! [`unique_name`] picks the first free name of `name`, `name (1).ext`,
//! `name (2).ext`... when a download's name is taken by another file.

use canopy_proto::ContentId;

/// Longest name saved, in UTF-8 bytes (file systems allow 255).
pub const MAX_SAVE_NAME_BYTES: usize = 200;
/// Longest extension kept whole when a name is shortened.
const MAX_KEPT_EXTENSION_BYTES: usize = 16;

/// Unicode's format characters (general category Cf, Unicode 15.1): bidi
/// controls, zero-width characters, invisible operators, tags.
const FORMAT_CHARACTERS: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{06DD}', '\u{06DD}'),
    ('\u{070F}', '\u{070F}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08E2}', '\u{08E2}'),
    ('\u{180E}', '\u{180E}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFF9}', '\u{FFFB}'),
    ('\u{110BD}', '\u{110BD}'),
    ('\u{110CD}', '\u{110CD}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0001}', '\u{E0001}'),
    ('\u{E0020}', '\u{E007F}'),
];

/// Names Windows gives to devices, with any extension.
const WINDOWS_RESERVED: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// True for a Unicode format character (category Cf).
pub fn is_format_character(c: char) -> bool {
    FORMAT_CHARACTERS
        .iter()
        .any(|&(first, last)| (first..=last).contains(&c))
}

/// Characters dropped outright: invisible, or changing how text reads.
fn is_dropped(c: char) -> bool {
    c.is_control() || is_format_character(c) || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Characters Windows (and shells) give a meaning to, replaced by `_`.
fn is_replaced(c: char) -> bool {
    matches!(c, '<' | '>' | ':' | '"' | '/' | '\\' | '|' | '?' | '*')
}

/// True if `name` is a Windows device name, whatever its extension.
fn is_windows_reserved(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or(name).trim_end();
    WINDOWS_RESERVED
        .iter()
        .any(|reserved| stem.eq_ignore_ascii_case(reserved))
}

/// Cuts `name` to at most `max` bytes on a character boundary, keeping a
/// short extension.
fn shorten(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let extension = name
        .rfind('.')
        .map(|dot| &name[dot..])
        .filter(|ext| ext.len() <= MAX_KEPT_EXTENSION_BYTES && ext.len() < max)
        .unwrap_or("");
    let mut end = max - extension.len();
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{extension}", &name[..end])
}

/// The name to save content `id` under, given the `name` a peer sent.
pub fn safe_file_name(name: &str, id: &ContentId) -> String {
    let cleaned: String = name
        .chars()
        .filter(|&c| !is_dropped(c))
        .map(|c| if is_replaced(c) { '_' } else { c })
        .collect();
    let trimmed = cleaned
        .trim_start_matches(|c: char| c == '.' || c == '-' || c.is_whitespace())
        .trim_end_matches(|c: char| c == '.' || c.is_whitespace());
    let short = shorten(trimmed, MAX_SAVE_NAME_BYTES);
    let short = short.trim_end_matches(|c: char| c == '.' || c.is_whitespace());
    if short.is_empty() {
        return id.to_hex();
    }
    if is_windows_reserved(short) {
        return format!("_{short}");
    }
    short.to_owned()
}

/// Most numbered names tried before giving up on a name.
pub const MAX_NUMBERED_NAMES: u32 = 9999;

/// The first of `name`, `stem (1).ext`, `stem (2).ext`... for which
/// `taken` says no; `None` if all [`MAX_NUMBERED_NAMES`] are taken. The
/// number goes before the extension (the last `.` not at the start), so
/// the file keeps its type; the result stays within
/// [`MAX_SAVE_NAME_BYTES`] by shortening the stem.
pub fn unique_name(name: &str, mut taken: impl FnMut(&str) -> bool) -> Option<String> {
    if !taken(name) {
        return Some(name.to_owned());
    }
    let (stem, extension) = match name.rfind('.') {
        Some(dot) if dot > 0 && name.len() - dot <= MAX_KEPT_EXTENSION_BYTES => name.split_at(dot),
        _ => (name, ""),
    };
    (1..=MAX_NUMBERED_NAMES)
        .map(|n| {
            let suffix = format!(" ({n}){extension}");
            let mut end = stem
                .len()
                .min(MAX_SAVE_NAME_BYTES.saturating_sub(suffix.len()));
            while !stem.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}{suffix}", &stem[..end])
        })
        .find(|candidate| !taken(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: ContentId = ContentId([0xab; 32]);

    fn safe(name: &str) -> String {
        safe_file_name(name, &ID)
    }

    #[test]
    fn hidden_and_option_like_names_lose_their_leading_dots_and_dashes() {
        assert_eq!(safe(".bash_profile"), "bash_profile");
        assert_eq!(safe("-rf"), "rf");
        assert_eq!(safe("--help"), "help");
        assert_eq!(safe("..hidden.txt"), "hidden.txt");
        assert_eq!(safe(" .-x"), "x");
        assert_eq!(safe("a-b.c"), "a-b.c", "dashes and dots inside are kept");
    }

    #[test]
    fn bidi_controls_and_other_format_characters_are_dropped() {
        // "photo\u{202E}gpj.exe" displays as "photoexe.jpg".
        assert_eq!(safe("photo\u{202E}gpj.exe"), "photogpj.exe");
        assert_eq!(safe("a\u{200B}b\u{FEFF}c\u{2066}d\u{E0041}"), "abcd");
        assert_eq!(safe("tab\there\nnew\u{7f}"), "tabherenew");
        assert!(is_format_character('\u{202E}'));
        assert!(!is_format_character('é'));
        assert_eq!(safe("été.mp3"), "été.mp3");
    }

    #[test]
    fn windows_reserved_names_and_characters_are_replaced() {
        assert_eq!(safe("CON.txt"), "_CON.txt");
        assert_eq!(safe("con"), "_con");
        assert_eq!(safe("Lpt9.tar.gz"), "_Lpt9.tar.gz");
        assert_eq!(safe("nul "), "_nul");
        assert_eq!(safe("CONSOLE.txt"), "CONSOLE.txt");
        assert_eq!(safe("COM10"), "COM10");
        assert_eq!(safe("a<b>.txt"), "a_b_.txt");
        assert_eq!(safe("what?:\"|*\\/"), "what_______");
    }

    #[test]
    fn trailing_dots_and_spaces_go_and_the_length_is_bounded() {
        assert_eq!(safe("name. . "), "name");
        let long = format!("{}.mkv", "é".repeat(300));
        let short = safe(&long);
        assert!(short.len() <= MAX_SAVE_NAME_BYTES, "{}", short.len());
        assert!(short.ends_with(".mkv"));
        assert!(short.starts_with('é'));
    }

    #[test]
    fn a_name_with_nothing_left_is_named_after_the_id() {
        assert_eq!(safe("..."), ID.to_hex());
        assert_eq!(safe("\u{202E}\u{200B}"), ID.to_hex());
        assert_eq!(safe("- -"), ID.to_hex());
    }

    #[test]
    fn a_taken_name_gets_the_first_free_number_before_its_extension() {
        let taken = ["song.mp3", "song (1).mp3", "archive.tar.gz", "README"];
        let free = |name: &str| taken.contains(&name);
        assert_eq!(unique_name("new.mp3", free).as_deref(), Some("new.mp3"));
        assert_eq!(
            unique_name("song.mp3", free).as_deref(),
            Some("song (2).mp3")
        );
        assert_eq!(
            unique_name("archive.tar.gz", free).as_deref(),
            Some("archive.tar (1).gz")
        );
        assert_eq!(unique_name("README", free).as_deref(), Some("README (1)"));
    }

    #[test]
    fn numbered_names_stay_short_and_the_search_is_bounded() {
        let long = format!("{}.mkv", "é".repeat(99));
        let next = unique_name(&long, |n| n == long).unwrap();
        assert!(next.len() <= MAX_SAVE_NAME_BYTES, "{}", next.len());
        assert!(next.ends_with(" (1).mkv"), "{next}");
        let mut asked = 0;
        assert_eq!(
            unique_name("x.txt", |_| {
                asked += 1;
                true
            }),
            None
        );
        assert_eq!(asked, MAX_NUMBERED_NAMES + 1);
        // A leading dot is not an extension.
        assert_eq!(unique_name(".x", |n| n == ".x").as_deref(), Some(".x (1)"));
    }
}
