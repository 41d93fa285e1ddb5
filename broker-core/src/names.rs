//! Display names peers and models read: who is who must not be forgeable by spelling.
//!
//! Two names are the same name when their skeletons are equal: case folded, invisible
//! characters and accents dropped, full-width forms and common look-alikes (Cyrillic and Greek
//! letters, digits that pass for letters) mapped to one Latin letter, separators ignored. So
//! `Alice`, `ALICE`, `al1ce`, `a_lice` and `аlice` (Cyrillic а) are one name. Names that a model
//! could take for its own conversation's parties (`user`, `assistant`, `system`, …) are reserved.

use unicode_normalization::UnicodeNormalization as _;

/// Names nobody may take, compared by skeleton.
const RESERVED: &[&str] = &[
    "user",
    "human",
    "assistant",
    "system",
    "developer",
    "tool",
    "model",
    "claude",
    "claudemesh",
    "anthropic",
    "broker",
];
/// The form two names are compared in (see the module docs).
pub fn skeleton(name: &str) -> String {
    // NFKD splits accents off their letters and turns compatibility forms (full-width letters,
    // ligatures, superscripts) into plain ones.
    name.nfkd()
        .flat_map(char::to_lowercase)
        .filter(|c| !is_invisible(*c) && !is_separator(*c))
        .map(look_alike)
        .collect()
}

/// Whether `name` is one of the reserved names.
pub fn is_reserved(name: &str) -> bool {
    let folded = skeleton(name);
    folded.is_empty() || RESERVED.iter().any(|reserved| skeleton(reserved) == folded)
}

/// Zero-width characters, combining marks, variation selectors, controls.
fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00ad}' | '\u{034f}' | '\u{0300}'..='\u{036f}' | '\u{1ab0}'..='\u{1aff}' | '\u{1dc0}'..='\u{1dff}'
            | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{20d0}'..='\u{20ff}' | '\u{2060}'..='\u{2069}'
            | '\u{fe00}'..='\u{fe0f}' | '\u{fe20}'..='\u{fe2f}' | '\u{feff}')
}

fn is_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, '-' | '_' | '.' | '·' | '\u{2010}'..='\u{2015}' | '\'' | '`')
}

/// One representative for characters that look alike in common fonts.
fn look_alike(c: char) -> char {
    match c {
        // Latin letters and digits that pass for each other.
        '0' => 'o',
        '1' | 'i' | '|' | '!' | 'ı' | 'ł' => 'l',
        '3' => 'e',
        '4' | '@' => 'a',
        '5' | '$' => 's',
        '7' => 't',
        '8' => 'b',
        '9' => 'g',
        // Cyrillic.
        'а' => 'a',
        'в' | 'ь' => 'b',
        'с' => 'c',
        'ԁ' => 'd',
        'е' | 'ё' => 'e',
        'һ' => 'h',
        'і' | 'ї' | 'ӏ' => 'l',
        'ј' => 'j',
        'к' => 'k',
        'м' => 'm',
        'п' => 'n',
        'о' => 'o',
        'р' => 'p',
        'ԛ' => 'q',
        'ѕ' => 's',
        'т' => 't',
        'у' => 'y',
        'ѵ' => 'v',
        'ԝ' => 'w',
        'х' => 'x',
        // Greek.
        'α' => 'a',
        'β' => 'b',
        'ε' => 'e',
        'η' => 'n',
        'ι' => 'l',
        'κ' => 'k',
        'μ' => 'u',
        'ν' => 'v',
        'ο' => 'o',
        'ρ' => 'p',
        'τ' => 't',
        'υ' => 'u',
        'χ' => 'x',
        'γ' => 'y',
        // Latin look-alikes.
        'ɡ' => 'g',
        'ɑ' => 'a',
        'ʏ' => 'y',
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_name_share_a_skeleton() {
        let alice = skeleton("alice");
        for spelling in [
            "Alice",
            "ALICE",
            "al1ce",
            "a_lice",
            "a l i c e",
            "\u{0430}lice",
            "ａｌｉｃｅ",
            "ali\u{200b}ce",
            "alíce",
            "ali\u{301}ce",
        ] {
            assert_eq!(skeleton(spelling), alice, "{spelling}");
        }
        assert_ne!(skeleton("alice"), skeleton("alicia"));
        assert_ne!(skeleton("bob"), skeleton("rob"));
    }

    #[test]
    fn the_parties_of_a_conversation_are_reserved() {
        for name in ["user", "User", "USER", "us3r", "Assistant", "system", "Claude", "claude-mesh", "cl4ude", " ", ""]
        {
            assert!(is_reserved(name), "{name:?}");
        }
        for name in ["alice", "claude-helper", "users", "systems-team", "me", "admin"] {
            assert!(!is_reserved(name), "{name:?}");
        }
    }
}
