//! The normalised views the matchers see, and the map from a view's byte offsets back to the original text.
//!
//! Two views exist. The *normalised* view (regexes and case-sensitive keywords): every default-ignorable code
//! point removed (Unicode's `Default_Ignorable_Code_Point`: zero-width characters, soft hyphen, bidi controls,
//! tag characters, variation selectors, Hangul fillers, …: characters that render as nothing and would
//! otherwise split a value in two for the matchers while the reader sees it whole), Unicode NFKC applied per
//! character (full-width digits become ASCII digits, ligatures split, compatibility spaces become U+0020),
//! Unicode dashes unified to `-` and Unicode spaces to ` `. The *folded* view (case-insensitive keywords) adds
//! full case folding (`ß` → `ss`, `Σ`/`ς` → `σ`) and maps common Cyrillic and Greek look-alikes to their Latin
//! twins.
//!
//! ASCII text is its own normalised view (no copy, no map) and its lowercase copy is its folded view, which
//! keeps the common case fast.
//! NFKC is applied character by character: combining sequences are not recomposed across characters (a
//! decomposed `é` stays two characters); precomposed text, which is what clients send, is unaffected.

use std::borrow::Cow;
use std::ops::Range;

use unicode_normalization::char::decompose_compatible;
use unicode_normalization::UnicodeNormalization;

/// A view of a text and the way back to it.
#[derive(Debug)]
pub struct View<'a> {
    text: Cow<'a, str>,
    /// For each byte of the view: the original byte range of the character that produced it. Empty when the
    /// view is the original text.
    map: Vec<(u32, u32)>,
}

impl<'a> View<'a> {
    /// The normalised view (`fold = false`) or the folded one (`fold = true`) of `original`. For ASCII text
    /// the normalised view is the text itself and the folded view its lowercase copy: offsets are the
    /// original's either way, so no map is built.
    pub fn new(original: &'a str, fold: bool) -> Self {
        if original.is_ascii() {
            return View {
                text: if fold {
                    Cow::Owned(original.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(original)
                },
                map: Vec::new(),
            };
        }
        let bytes = original.as_bytes();
        let mut text = String::with_capacity(original.len() + 16);
        let mut map: Vec<(u32, u32)> = Vec::with_capacity(original.len() + 16);
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i].is_ascii() {
                // ASCII runs are copied whole: they are their own normal form.
                let start = i;
                while i < bytes.len() && bytes[i].is_ascii() {
                    i += 1;
                }
                let run = &original[start..i];
                if fold {
                    text.extend(run.bytes().map(|b| char::from(b.to_ascii_lowercase())));
                } else {
                    text.push_str(run);
                }
                map.extend((start..i).map(|j| (j as u32, j as u32 + 1)));
                continue;
            }
            let Some(c) = original[i..].chars().next() else {
                break;
            };
            let range = (i as u32, (i + c.len_utf8()) as u32);
            normalize_char(c, fold, &mut text);
            map.resize(text.len(), range);
            i += c.len_utf8();
        }
        View {
            text: Cow::Owned(text),
            map,
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether view offsets are original offsets.
    pub fn is_identity(&self) -> bool {
        self.map.is_empty()
    }

    /// The original byte range a view range came from: from the start of the character that produced the
    /// first byte to the end of the character that produced the last. Always on character boundaries.
    pub fn to_original(&self, r: Range<usize>) -> Range<usize> {
        if self.map.is_empty() || r.is_empty() {
            return match self.map.get(r.start) {
                Some(&(s, _)) if r.is_empty() => s as usize..s as usize,
                _ => r,
            };
        }
        let start = self.map[r.start].0 as usize;
        let end = self.map[r.end - 1].1 as usize;
        start..end
    }
}

/// Unicode's `Default_Ignorable_Code_Point` property, from DerivedCoreProperties.txt of Unicode 16.0.0 (the
/// same ranges as 15.1; `the_table_is_the_unicode_property` checks it against the regex crate's own table).
/// These code points render as nothing, or change only how their neighbours render, so a reader sees a value
/// whole while a matcher would see it cut: the views remove them all.
const DEFAULT_IGNORABLE: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),   // soft hyphen
    ('\u{034F}', '\u{034F}'),   // combining grapheme joiner
    ('\u{061C}', '\u{061C}'),   // Arabic letter mark
    ('\u{115F}', '\u{1160}'),   // Hangul choseong and jungseong fillers
    ('\u{17B4}', '\u{17B5}'),   // Khmer inherent vowels
    ('\u{180B}', '\u{180F}'),   // Mongolian free variation selectors, vowel separator
    ('\u{200B}', '\u{200F}'), // zero-width space, non-joiner, joiner; left-to-right and right-to-left marks
    ('\u{202A}', '\u{202E}'), // bidi embeddings, pop, overrides
    ('\u{2060}', '\u{206F}'), // word joiner, invisible operators, bidi isolates, deprecated format controls
    ('\u{3164}', '\u{3164}'), // Hangul filler
    ('\u{FE00}', '\u{FE0F}'), // variation selectors 1-16
    ('\u{FEFF}', '\u{FEFF}'), // zero-width no-break space (byte order mark)
    ('\u{FFA0}', '\u{FFA0}'), // halfwidth Hangul filler
    ('\u{FFF0}', '\u{FFF8}'), // unassigned, reserved as ignorable
    ('\u{1BCA0}', '\u{1BCA3}'), // shorthand format controls
    ('\u{1D173}', '\u{1D17A}'), // musical beam and phrase controls
    ('\u{E0000}', '\u{E0FFF}'), // tag characters, variation selectors 17-256, reserved
];

/// Whether the views remove `c` (see [`DEFAULT_IGNORABLE`]).
fn is_default_ignorable(c: char) -> bool {
    // The scripts most text is in (Latin, Greek, Cyrillic, Hebrew, Arabic; CJK, kana, Hangul syllables) sit
    // below or between the ranges: answer them without the search.
    if c < '\u{115F}' {
        return matches!(c, '\u{00AD}' | '\u{034F}' | '\u{061C}');
    }
    if ('\u{3165}'..'\u{FE00}').contains(&c) {
        return false;
    }
    DEFAULT_IGNORABLE
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

fn is_dash(c: char) -> bool {
    matches!(
        c,
        '\u{2010}'
            ..='\u{2015}'
                | '\u{2212}'
                | '\u{FE58}'
                | '\u{FE63}'
                | '\u{FF0D}'
                | '\u{2043}'
                | '\u{1806}'
    )
}

fn is_space(c: char) -> bool {
    matches!(
        c,
        '\u{00A0}' | '\u{1680}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}'
    )
}

/// Appends the view of one original character to `out`.
fn normalize_char(c: char, fold: bool, out: &mut String) {
    if c.is_ascii() {
        out.push(if fold { c.to_ascii_lowercase() } else { c });
        return;
    }
    if is_default_ignorable(c) {
        return;
    }
    if is_dash(c) {
        out.push('-');
        return;
    }
    if is_space(c) {
        out.push(' ');
        return;
    }
    // Most characters are their own NFKC form: skip the decomposition for them.
    if nfkc_stable(c) {
        if fold {
            fold_char(c, out);
        } else {
            out.push(c);
        }
        return;
    }
    // NFKC of a single character: compatibility decomposition, then canonical composition.
    let mut decomposed = String::new();
    decompose_compatible(c, |d| decomposed.push(d));
    for n in decomposed.nfc() {
        if is_default_ignorable(n) {
            continue;
        }
        let n = if is_dash(n) {
            '-'
        } else if is_space(n) {
            ' '
        } else {
            n
        };
        if fold {
            fold_char(n, out);
        } else {
            out.push(n);
        }
    }
}

/// Whether `c` is its own NFKC form: a table-free answer for the common scripts, the quick check otherwise.
fn nfkc_stable(c: char) -> bool {
    match c {
        // Latin-1 letters, Latin Extended-A except its compatibility characters (Ĳ ĳ Ŀ ŀ ŉ ſ), Cyrillic, CJK
        // ideographs, Hangul syllables.
        '\u{C0}'..='\u{FF}'
        | '\u{400}'..='\u{4FF}'
        | '\u{4E00}'..='\u{9FFF}'
        | '\u{AC00}'..='\u{D7A3}' => true,
        '\u{100}'..='\u{17F}' => !matches!(
            c,
            '\u{132}' | '\u{133}' | '\u{13F}' | '\u{140}' | '\u{149}' | '\u{17F}'
        ),
        _ => {
            unicode_normalization::is_nfkc_quick(std::iter::once(c))
                == unicode_normalization::IsNormalized::Yes
        }
    }
}

/// Full case folding for the characters where it differs from lowercasing, then look-alike mapping.
fn fold_char(c: char, out: &mut String) {
    match c {
        'ß' | 'ẞ' => out.push_str("ss"),
        'ς' => out.push('σ'),
        'ﬅ' | 'ﬆ' => out.push_str("st"),
        _ => {
            for l in c.to_lowercase() {
                out.push(confusable(l));
            }
        }
    }
}

/// Cyrillic and Greek letters that render like Latin ones, mapped to the Latin letter (after lowercasing).
fn confusable(c: char) -> char {
    match c {
        'а' => 'a',
        'в' => 'b',
        'е' | 'ё' => 'e',
        'к' => 'k',
        'м' => 'm',
        'н' => 'h',
        'о' => 'o',
        'р' => 'p',
        'с' => 'c',
        'т' => 't',
        'у' => 'y',
        'х' => 'x',
        'і' => 'i',
        'ј' => 'j',
        'ѕ' => 's',
        'ԁ' => 'd',
        'ԛ' => 'q',
        'ԝ' => 'w',
        'α' => 'a',
        'ε' => 'e',
        'ι' => 'i',
        'κ' => 'k',
        'ν' => 'v',
        'ο' => 'o',
        'ρ' => 'p',
        'τ' => 't',
        'υ' => 'u',
        'χ' => 'x',
        _ => c,
    }
}

/// Normalises a keyword term the way the text is normalised, so that both meet in the same view.
pub fn normalize_term(term: &str, fold: bool) -> String {
    let mut out = String::with_capacity(term.len());
    for c in term.chars() {
        normalize_char(c, fold, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        View::new(s, false).text().to_string()
    }

    fn fold(s: &str) -> String {
        View::new(s, true).text().to_string()
    }

    #[test]
    fn normalisation_table() {
        let cases = [
            // zero-width inside an email
            (
                "jane\u{200B}.doe@exa\u{200D}mple.com",
                "jane.doe@example.com",
            ),
            // full-width digits in a card
            ("４１１１ １１１１", "4111 1111"),
            // Unicode dashes in an SSN
            ("123\u{2013}45\u{2011}6789", "123-45-6789"),
            // NBSP and other spaces
            ("a\u{00A0}b\u{2009}c\u{3000}d", "a b c d"),
            // soft hyphen
            ("pass\u{00AD}word", "password"),
            // ligature (NFKC)
            ("ﬁle", "file"),
            ("plain ascii stays", "plain ascii stays"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input), want, "{input:?}");
        }
    }

    #[test]
    fn folding_table() {
        let cases = [
            ("STRAẞE", "strasse"),
            ("Straße", "strasse"),
            ("ΟΔΥΣΣΕΥΣ", "oδuσσeuσ"),
            // Cyrillic look-alikes: "Рrојесt" written with Cyrillic Р, о, ј, е, с
            ("\u{0420}r\u{043E}\u{0458}\u{0435}\u{0441}t", "project"),
            ("ＰＲＯＪＥＣＴ", "project"),
        ];
        for (input, want) in cases {
            assert_eq!(fold(input), want, "{input:?}");
        }
    }

    #[test]
    fn spans_map_back_to_the_original_bytes() {
        let original = "Mail: jane\u{200B}.doe@exa\u{200D}mple.com — ok";
        let v = View::new(original, false);
        let at = v.text().find("jane.doe@example.com").expect("found");
        let back = v.to_original(at..at + "jane.doe@example.com".len());
        assert_eq!(&original[back], "jane\u{200B}.doe@exa\u{200D}mple.com");

        let original = "card ４１１１-１１１１ end";
        let v = View::new(original, false);
        let at = v.text().find("4111-1111").expect("found");
        let back = v.to_original(at..at + 9);
        assert_eq!(&original[back], "４１１１-１１１１");

        let original = "Die STRAẞE hier";
        let v = View::new(original, true);
        let at = v.text().find("strasse").expect("found");
        let back = v.to_original(at..at + 7);
        assert_eq!(&original[back], "STRAẞE");
    }

    #[test]
    fn the_stable_ranges_agree_with_nfkc() {
        let ranges = [
            '\u{C0}'..='\u{FF}',
            '\u{100}'..='\u{17F}',
            '\u{400}'..='\u{4FF}',
            '\u{4E00}'..='\u{4FFF}',
            '\u{AC00}'..='\u{AFFF}',
        ];
        for r in ranges {
            for c in r {
                let nfkc: String = std::iter::once(c).nfkc().collect();
                assert_eq!(
                    nfkc_stable(c),
                    nfkc == c.to_string(),
                    "{c:?} U+{:04X}",
                    c as u32
                );
            }
        }
    }

    #[test]
    fn every_default_ignorable_range_is_removed_and_its_neighbours_are_not() {
        // First, last and a middle code point of each range.
        for &(lo, hi) in DEFAULT_IGNORABLE {
            let mid = char::from_u32((lo as u32 + hi as u32) / 2).expect("inside a range");
            for c in [lo, mid, hi] {
                for f in [false, true] {
                    let text = format!("a{c}b");
                    assert_eq!(
                        View::new(&text, f).text(),
                        "ab",
                        "U+{:04X} fold={f}",
                        c as u32
                    );
                }
            }
        }
        // The code points just outside each range stay (as themselves or their NFKC form).
        let neighbours = [
            '\u{00AC}',
            '\u{00AE}',
            '\u{034E}',
            '\u{0350}',
            '\u{061B}',
            '\u{061D}',
            '\u{115E}',
            '\u{1161}',
            '\u{17B3}',
            '\u{17B6}',
            '\u{180A}',
            '\u{1810}',
            '\u{200A}',
            '\u{2010}',
            '\u{2029}',
            '\u{202F}',
            '\u{205F}',
            '\u{2070}',
            '\u{3163}',
            '\u{3165}',
            '\u{FDFF}',
            '\u{FE10}',
            '\u{FEFE}',
            '\u{FF00}',
            '\u{FF9F}',
            '\u{FFA1}',
            '\u{FFEF}',
            '\u{FFF9}',
            '\u{1BC9F}',
            '\u{1BCA4}',
            '\u{1D172}',
            '\u{1D17B}',
            '\u{DFFFF}',
            '\u{E1000}',
        ];
        for c in neighbours {
            assert!(!is_default_ignorable(c), "U+{:04X}", c as u32);
            let text = format!("a{c}b");
            assert_ne!(norm(&text), "ab", "U+{:04X} was removed", c as u32);
        }
    }

    #[test]
    fn the_table_is_the_unicode_property() {
        // The regex crate carries Unicode's own table of the property: both must agree range for range.
        let hir = regex_syntax::parse(r"\p{Default_Ignorable_Code_Point}").expect("parses");
        let regex_syntax::hir::HirKind::Class(regex_syntax::hir::Class::Unicode(class)) =
            hir.kind()
        else {
            panic!("a Unicode class: {hir:?}");
        };
        let theirs: Vec<(char, char)> = class
            .ranges()
            .iter()
            .map(|r| (r.start(), r.end()))
            .collect();
        assert_eq!(DEFAULT_IGNORABLE, theirs.as_slice());
        // And the fast exits of `is_default_ignorable` agree with the table everywhere.
        for u in 0..=0x10FFFFu32 {
            let Some(c) = char::from_u32(u) else { continue };
            let listed = DEFAULT_IGNORABLE.iter().any(|&(lo, hi)| lo <= c && c <= hi);
            assert_eq!(is_default_ignorable(c), listed, "U+{u:04X}");
        }
    }

    #[test]
    fn invisible_characters_inside_a_value_map_back_with_it() {
        let cases = [
            // tag characters inside an AWS key id
            (
                "key AKIA\u{E0041}IOSFODNN7\u{E007F}EXAMPLE!",
                "AKIAIOSFODNN7EXAMPLE",
            ),
            // bidi controls and isolates inside an email
            (
                "to \u{202E}jane\u{200E}.doe@\u{2066}example\u{2069}.com\u{200F} now",
                "jane.doe@example.com",
            ),
            // variation selectors, a grapheme joiner and Hangul fillers inside a card number
            (
                "card 4111\u{FE0F}1111\u{E0100}1111\u{034F}11\u{3164}11\u{FFA0}\u{115F} end",
                "4111111111111111",
            ),
        ];
        for (original, value) in cases {
            for f in [false, true] {
                let v = View::new(original, f);
                let want = if f {
                    value.to_ascii_lowercase()
                } else {
                    value.to_string()
                };
                let at = v
                    .text()
                    .find(&want)
                    .expect("the value is whole in the view");
                let back = v.to_original(at..at + want.len());
                let covered = &original[back.clone()];
                // The span starts at the value's first character and ends with its last: every invisible
                // character inside is in it, none outside.
                assert!(covered.starts_with(&value[..1]), "{covered:?}");
                assert!(covered.ends_with(&value[value.len() - 1..]), "{covered:?}");
                let seen: String = covered
                    .chars()
                    .filter(|c| !is_default_ignorable(*c))
                    .collect();
                assert_eq!(seen, value, "fold={f}");
            }
        }
    }

    #[test]
    fn ascii_views_need_no_map() {
        let v = View::new("HeLLo", true);
        assert!(v.is_identity());
        assert_eq!(v.text(), "hello");
        assert_eq!(v.to_original(1..3), 1..3);
        assert_eq!(View::new("HeLLo", false).text(), "HeLLo");
    }
}
