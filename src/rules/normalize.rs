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
//!
//! Cost and size are linear in the text with a small constant, whatever the text: a character's view is at
//! most [`MAX_GROWTH`] times its own UTF-8 length (a character whose compatibility form is longer keeps its
//! own form), and the map back to the original holds one entry per stretch of the view whose offsets shift,
//! not one per byte.

use std::borrow::Cow;
use std::ops::Range;

use unicode_normalization::char::decompose_compatible;
use unicode_normalization::UnicodeNormalization;

/// The most bytes one character's view may take, as a multiple of the character's own UTF-8 length; so a view
/// is never longer than `MAX_GROWTH` times its text. A character whose compatibility decomposition is longer
/// keeps its own form: U+FDFA (3 bytes) would otherwise become 18 characters (33 bytes), and a body of it
/// eleven times its size for every matcher. Everything a rule could plausibly need stays inside the bound:
/// full-width forms, ligatures, fractions (`½` → `1⁄2`), circled and parenthesised numbers, squared
/// abbreviations of up to four characters (`㌀` → `アパート`).
pub const MAX_GROWTH: usize = 4;

/// A view of a text and the way back to it.
#[derive(Debug)]
pub struct View<'a> {
    original: &'a str,
    text: Cow<'a, str>,
    /// The view in stretches, in order, the first at view offset 0. Empty for an ASCII text, whose view
    /// offsets are its own.
    pieces: Vec<Piece>,
    identity: bool,
}

/// A stretch of the view and where it came from. It ends where the next one starts (or at the view's end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    /// The stretch's first byte in the view.
    view: u32,
    /// Where its first byte came from in the original.
    orig: u32,
    /// 0: an *aligned* stretch: view byte `view + k` lies inside the original character that holds byte
    /// `orig + k` (characters copied, or replaced by forms no longer than themselves, one after the other
    /// without a shift). Otherwise the stretch is the expansion of the one original character
    /// `orig..orig + whole`.
    whole: u32,
}

/// The map of a view under construction: one piece per shift of the offsets or per expanded character.
#[derive(Default)]
struct Pieces(Vec<Piece>);

impl Pieces {
    /// The original character (or ASCII run) `orig` produced `len` view bytes at `view`.
    fn add(&mut self, view: usize, len: usize, orig: Range<usize>) {
        if len == 0 {
            // Removed: nothing in the view comes from it; the next stretch starts with a new shift.
            return;
        }
        if len > orig.len() {
            self.0.push(Piece {
                view: view as u32,
                orig: orig.start as u32,
                whole: orig.len() as u32,
            });
            return;
        }
        // Aligned: it continues the last aligned stretch when the shift is unchanged since that stretch began
        // (every character in between kept its length), else it starts a new one.
        if let Some(last) = self.0.last() {
            if last.whole == 0 && last.orig as usize + (view - last.view as usize) == orig.start {
                return;
            }
        }
        self.0.push(Piece {
            view: view as u32,
            orig: orig.start as u32,
            whole: 0,
        });
    }
}

impl<'a> View<'a> {
    /// The normalised view (`fold = false`) or the folded one (`fold = true`) of `original`. For ASCII text
    /// the normalised view is the text itself and the folded view its lowercase copy: offsets are the
    /// original's either way, so no map is built.
    pub fn new(original: &'a str, fold: bool) -> Self {
        if original.is_ascii() {
            return View {
                original,
                text: if fold {
                    Cow::Owned(original.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(original)
                },
                pieces: Vec::new(),
                identity: true,
            };
        }
        let bytes = original.as_bytes();
        let mut text = String::with_capacity(original.len() + 16);
        let mut pieces = Pieces::default();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i].is_ascii() {
                // ASCII runs are copied whole: they are their own normal form, and one aligned stretch.
                let start = i;
                i = bytes[i..]
                    .iter()
                    .position(|b| !b.is_ascii())
                    .map_or(bytes.len(), |k| i + k);
                let run = &original[start..i];
                pieces.add(text.len(), run.len(), start..i);
                if fold {
                    text.extend(run.bytes().map(|b| char::from(b.to_ascii_lowercase())));
                } else {
                    text.push_str(run);
                }
                continue;
            }
            let Some(c) = original[i..].chars().next() else {
                break;
            };
            let at = text.len();
            normalize_char(c, fold, &mut text);
            pieces.add(at, text.len() - at, i..i + c.len_utf8());
            i += c.len_utf8();
        }
        View {
            original,
            text: Cow::Owned(text),
            pieces: pieces.0,
            identity: false,
        }
    }

    /// The view's text, which the matchers search.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether view offsets are original offsets.
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// The original byte range a view range came from: from the start of the character that produced the
    /// first byte to the end of the character that produced the last, so characters removed inside the range
    /// are in it and those just outside are not. Always on character boundaries. An empty range maps to the
    /// start of the character that produced the byte at its position (the original's end at the view's end).
    pub fn to_original(&self, r: Range<usize>) -> Range<usize> {
        if self.identity {
            return r;
        }
        let len = self.text.len();
        if r.start >= len {
            return self.original.len()..self.original.len();
        }
        let start = self.start_of(r.start);
        if r.is_empty() {
            return start..start;
        }
        start..self.end_of(r.end.min(len) - 1)
    }

    /// The piece that holds view byte `v` (`v` inside the view).
    fn piece(&self, v: usize) -> Option<&Piece> {
        let i = self.pieces.partition_point(|p| p.view as usize <= v);
        self.pieces.get(i.checked_sub(1)?)
    }

    /// The start of the original character that produced view byte `v`.
    fn start_of(&self, v: usize) -> usize {
        match self.piece(v) {
            Some(p) if p.whole == 0 => {
                floor_boundary(self.original, p.orig as usize + (v - p.view as usize))
            }
            Some(p) => p.orig as usize,
            None => 0,
        }
    }

    /// The end of the original character that produced view byte `v`.
    fn end_of(&self, v: usize) -> usize {
        match self.piece(v) {
            Some(p) if p.whole == 0 => {
                ceil_boundary(self.original, p.orig as usize + (v - p.view as usize) + 1)
            }
            Some(p) => (p.orig + p.whole) as usize,
            None => self.original.len(),
        }
    }
}

/// The character boundary at or before `i`.
fn floor_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The character boundary at or after `i`.
fn ceil_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
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

/// Appends the view of one original character to `out`: at most [`MAX_GROWTH`] times its UTF-8 length.
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
    let start = out.len();
    // Most characters of the common scripts are their own NFKC form: skip the decomposition for them.
    if nfkc_stable(c) {
        own_form(c, fold, out);
    } else {
        compatibility_form(c, fold, out);
    }
    // The bound: a character whose form is longer than it allows keeps its own form (`㌖`, six characters).
    if out.len() - start > MAX_GROWTH * c.len_utf8() {
        out.truncate(start);
        out.push(c);
    }
}

/// How much longer than the bound a decomposition may be and still be composed: composition can shorten it
/// (`㌀` decomposes to five characters, `ハ` and a combining mark among them, and composes to four).
const DECOMPOSED_SLACK: usize = 2;

/// The compatibility decomposition of one character, kept only while it is short enough to be worth
/// composing (see [`DECOMPOSED_SLACK`]); a longer one is only measured.
struct Decomposition {
    chars: [char; 4 * MAX_GROWTH * DECOMPOSED_SLACK],
    len: usize,
    /// UTF-8 length of the whole decomposition, counted on past the buffer.
    bytes: usize,
}

impl Decomposition {
    /// The most bytes a decomposition of `c` may take to be composed.
    fn limit(c: char) -> usize {
        MAX_GROWTH * DECOMPOSED_SLACK * c.len_utf8()
    }

    fn of(c: char) -> Self {
        let mut d = Decomposition {
            chars: ['\0'; 4 * MAX_GROWTH * DECOMPOSED_SLACK],
            len: 0,
            bytes: 0,
        };
        let limit = Self::limit(c);
        decompose_compatible(c, |n| {
            d.bytes += n.len_utf8();
            // Within the limit, the characters fit: each takes at least one byte.
            if d.bytes <= limit && d.len < d.chars.len() {
                d.chars[d.len] = n;
                d.len += 1;
            }
        });
        d
    }

    fn chars(&self) -> &[char] {
        &self.chars[..self.len]
    }
}

/// Appends the NFKC form of one character (compatibility decomposition, then canonical composition), with
/// the view's own mappings applied to each resulting character. A character whose decomposition is far
/// past the bound stands for itself at once, without the work of composing it (U+FDFA, 18 characters);
/// [`normalize_char`] holds the composed form to the bound.
fn compatibility_form(c: char, fold: bool, out: &mut String) {
    let d = Decomposition::of(c);
    if d.bytes > Decomposition::limit(c) {
        out.push(c);
        return;
    }
    match d.chars() {
        // Its own decomposition: most characters outside the common scripts, answered by this one lookup.
        [n] if *n == c => own_form(c, fold, out),
        // One character composes with nothing: skip the composition.
        [n] => mapped_form(*n, fold, out),
        chars => {
            for n in chars.iter().copied().nfc() {
                mapped_form(n, fold, out);
            }
        }
    }
}

/// Appends one character of a compatibility form with the view's own mappings applied: removed when
/// default-ignorable, dashes and spaces unified, then itself or folded.
fn mapped_form(n: char, fold: bool, out: &mut String) {
    if is_default_ignorable(n) {
        return;
    }
    let n = if is_dash(n) {
        '-'
    } else if is_space(n) {
        ' '
    } else {
        n
    };
    own_form(n, fold, out);
}

/// Appends a character that is its own NFKC form: itself, or folded.
fn own_form(c: char, fold: bool, out: &mut String) {
    if fold {
        fold_char(c, out);
    } else {
        out.push(c);
    }
}

/// Whether `c` is known to be its own NFKC form without a lookup: the common scripts. Other characters are
/// decomposed, which answers the question with one table lookup (the NFKC quick check of the
/// `unicode-normalization` crate costs hundreds of instructions per character outside ASCII).
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
        _ => false,
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
    use crate::testkit::Rng;

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

    /// Characters of every kind the views treat differently: copied, case-mapped, shrunk, removed, expanded,
    /// expanded past the bound, composed.
    const PALETTE: &[char] = &[
        'a',
        'Z',
        '7',
        ' ',
        '-',
        '@',
        'é',
        'É',
        'ß',
        'ẞ',
        'İ',
        'ς',
        'Σ',
        'а',
        'Р',
        'ј',
        'α',
        'д',
        '中',
        '한',
        '４',
        'Ａ',
        'ｚ',
        'ﬁ',
        'ﬃ',
        'ﬅ',
        '½',
        '⑽',
        '㌀',
        '㍿',
        '\u{FDFA}',
        '\u{FDFB}',
        'ǅ',
        'Ǆ',
        'ŉ',
        '\u{0301}',
        '\u{00AD}',
        '\u{200B}',
        '\u{202E}',
        '\u{2066}',
        '\u{FE0F}',
        '\u{E0041}',
        '\u{E0100}',
        '\u{3164}',
        '\u{115F}',
        '\u{2013}',
        '\u{00A0}',
        '\u{3000}',
        '𝐀',
        '😀',
        '\u{1D173}',
    ];

    #[test]
    fn spans_agree_with_a_map_kept_per_byte() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..400 {
            let len = 1 + (rng.next() % 24) as usize;
            let original: String = (0..len)
                .map(|_| PALETTE[(rng.next() % PALETTE.len() as u64) as usize])
                .collect();
            for f in [false, true] {
                // The reference: each character's view on its own, and for each view byte the original
                // range of the character that produced it.
                let mut want = String::new();
                let mut per_byte = Vec::new();
                for (i, c) in original.char_indices() {
                    normalize_char(c, f, &mut want);
                    per_byte.resize(want.len(), i..i + c.len_utf8());
                }
                let v = View::new(&original, f);
                assert_eq!(v.text(), want, "round {round}: {original:?}");
                for s in 0..want.len() {
                    for e in s + 1..=want.len() {
                        assert_eq!(
                            v.to_original(s..e),
                            per_byte[s].start..per_byte[e - 1].end,
                            "round {round} fold={f}: {original:?} view {s}..{e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn no_character_grows_past_the_bound() {
        let mut out = String::new();
        for u in 0..=0x10FFFFu32 {
            let Some(c) = char::from_u32(u) else { continue };
            for f in [false, true] {
                out.clear();
                normalize_char(c, f, &mut out);
                assert!(
                    out.len() <= MAX_GROWTH * c.len_utf8(),
                    "U+{u:04X} fold={f}: {} bytes",
                    out.len()
                );
            }
        }
    }

    #[test]
    fn expanding_characters_keep_the_view_within_the_bound() {
        // U+FDFA is 18 characters under NFKC: repeated, it kept a view eleven times the text.
        let text = "\u{FDFA}".repeat(10_000);
        for f in [false, true] {
            let v = View::new(&text, f);
            assert!(v.text().len() <= MAX_GROWTH * text.len());
            assert_eq!(v.text(), text, "it stands for itself");
            // One aligned stretch maps all of it: the map is not per byte.
            assert_eq!(v.pieces.len(), 1);
            assert_eq!(v.to_original(3..6), 3..6);
        }
        // Compatibility forms within the bound are still applied.
        assert_eq!(norm("½ ⑽ ㌀ ﬃ"), "1⁄2 (10) アパート ffi");
        // Keyword terms get the same treatment, so a term written with U+FDFA still meets the text.
        assert_eq!(normalize_term("\u{FDFA}", true), "\u{FDFA}");
    }

    #[test]
    fn the_map_grows_with_shifts_not_with_bytes() {
        // Accented prose keeps its length in the normalised view: one stretch, whatever its size.
        let prose = "Größe café naïve déjà über façade résumé ".repeat(1000);
        assert_eq!(View::new(&prose, false).pieces.len(), 1);
        // Each shrunk or removed character shifts the offsets once.
        let shifted = "ab\u{200B}cd４ef".repeat(1000);
        assert_eq!(View::new(&shifted, false).pieces.len(), 1 + 2 * 1000);
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
