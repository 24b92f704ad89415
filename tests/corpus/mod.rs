//! The generated detection corpus: for every entity the rule pack is meant to find, `n` valid values built
//! from the format's public specification (issuer prefixes and a computed Luhn digit, ISO 13616 mod-97, the
//! SSA's never-issued ranges, NANP and E.164 numbering, the vendors' documented token shapes and checksums),
//! each embedded in a varied sentence, and `n` near misses: values one step away from valid (a wrong check
//! digit, one character short, a wrong prefix, a placeholder) and look-alikes from everyday text (timestamps,
//! ISBNs, UUIDs, dates, version strings).
//!
//! Nothing here is copied from the rule files: the values come from the specifications, so the measurement
//! in `tests/detection.rs` says how well the rules meet the formats, not how well they meet their own
//! examples. Deterministic: every entity draws from its own PRNG seeded from its name, so adding an entity
//! changes no other entity's corpus.

use std::ops::Range;

use fastrand::Rng;

/// One generated text.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Which variant of the format (valid values) or which kind of near miss produced it.
    pub kind: &'static str,
    pub text: String,
    /// Where the generated value sits in `text` (the whole value; empty for near misses).
    pub value: Range<usize>,
    /// The part of the value a detector must catch (the password of a database URL, the key of a
    /// connection string); the whole value for most formats. Empty for near misses.
    pub core: Range<usize>,
}

/// One entity's corpus.
#[derive(Debug, Clone)]
pub struct Entity {
    pub name: &'static str,
    pub valid: Vec<Sample>,
    pub misses: Vec<Sample>,
}

/// A value with the part that must be caught (byte range inside the value).
struct Value {
    kind: &'static str,
    text: String,
    core: Range<usize>,
}

impl Value {
    fn whole(kind: &'static str, text: String) -> Self {
        let core = 0..text.len();
        Self { kind, text, core }
    }

    /// `prefix` + `secret` + `suffix`, the secret being the core.
    fn framed(kind: &'static str, prefix: &str, secret: &str, suffix: &str) -> Self {
        let core = prefix.len()..prefix.len() + secret.len();
        Self {
            kind,
            text: format!("{prefix}{secret}{suffix}"),
            core,
        }
    }
}

/// A near miss: which kind, and the text put into a sentence.
type Miss = (&'static str, String);

/// Sentences a value is put into: alone, at the start, middle and end, after a colon, in quotes, in
/// JSON-looking text, next to punctuation, on its own line. None contains a context word ("phone", "SSN", …)
/// or anything another rule could match.
const PROSE: &[&str] = &[
    "{}",
    "{} is the one from the form.",
    "Please check {} before Friday.",
    "The value we have on file is {}",
    "value: {}",
    "She wrote \"{}\" on the sheet.",
    "copied from the ticket: '{}'",
    "{\"note\": \"{}\", \"source\": \"import\"}",
    "({})",
    "see {}.",
    "first line\n{}\nlast line",
    "<{}>",
    "items: [{}, 42]",
    "The summary mentions {}; nothing else changed.",
];

/// Sentences with a context word before the value (for formats that count only near one).
const SSN_CONTEXT: &[&str] = &[
    "SSN {}",
    "SSN: {}",
    "my ssn is {}.",
    "Social Security number {}",
    "social security no. {} on the form",
    "{\"ssn\": \"{}\"}",
    "Applicant SSN={}",
];

const PHONE_CONTEXT: &[&str] = &[
    "phone: {}",
    "Phone {}",
    "call me at {}",
    "please call {} tomorrow",
    "tel. {}",
    "Tel: {}",
    "{\"phone\": \"{}\"}",
    "my phone number is {}.",
];

/// Puts `value` into one of `templates` (the `{}` that is not part of a JSON brace pair is the slot).
fn embed(rng: &mut Rng, templates: &[&str], v: Value) -> Sample {
    let t = templates[rng.usize(..templates.len())];
    let at = slot(t);
    let text = format!("{}{}{}", &t[..at], v.text, &t[at + 2..]);
    Sample {
        kind: v.kind,
        value: at..at + v.text.len(),
        core: at + v.core.start..at + v.core.end,
        text,
    }
}

fn embed_miss(rng: &mut Rng, templates: &[&str], m: Miss) -> Sample {
    let mut s = embed(rng, templates, Value::whole(m.0, m.1));
    s.value = 0..0;
    s.core = 0..0;
    s
}

/// The byte offset of the template's `{}` slot.
fn slot(t: &str) -> usize {
    t.find("{}").expect("every template has a {} slot")
}

// ---------------------------------------------------------------------------------------------------------
// Alphabets and small helpers

const DIGITS: &[u8] = b"0123456789";
const HEX: &[u8] = b"0123456789abcdef";
const UPPER_HEX: &[u8] = b"0123456789ABCDEF";
const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
/// Base62 in the order GitHub's and npm's checksums use: digits, upper, lower.
pub const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn pick<'a, T: ?Sized>(rng: &mut Rng, items: &[&'a T]) -> &'a T {
    items[rng.usize(..items.len())]
}

fn draw(rng: &mut Rng, alphabet: &[u8], n: usize) -> String {
    (0..n)
        .map(|_| alphabet[rng.usize(..alphabet.len())] as char)
        .collect()
}

/// Random text over `alphabet` that uses every kind of character the alphabet has (digits, upper and
/// lower case), as real random keys do: a draw that happens to be all digits would test something else.
fn key(rng: &mut Rng, alphabet: &[u8], n: usize) -> String {
    let kinds = |s: &[u8]| {
        [
            s.iter().any(|b| b.is_ascii_digit()),
            s.iter().any(|b| b.is_ascii_uppercase()),
            s.iter().any(|b| b.is_ascii_lowercase()),
        ]
    };
    let wanted = kinds(alphabet);
    loop {
        let s = draw(rng, alphabet, n);
        if n < 8 || kinds(s.as_bytes()) == wanted {
            return s;
        }
    }
}

fn digits(rng: &mut Rng, n: usize) -> String {
    draw(rng, DIGITS, n)
}

fn num(rng: &mut Rng, lo: u32, hi: u32) -> String {
    rng.u32(lo..=hi).to_string()
}

fn base64_encode(bytes: &[u8], alphabet: &[u8], pad: bool) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.u8(..)).collect()
}

/// Inserts `sep` between groups of the given sizes (the sizes add up to the length of `s`).
fn group(s: &str, sizes: &[usize], sep: &str) -> String {
    let mut out = String::new();
    let mut at = 0;
    for (i, n) in sizes.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        out.push_str(&s[at..at + n]);
        at += n;
    }
    out
}

/// Groups of four, the last one shorter.
fn fours(len: usize) -> Vec<usize> {
    let mut sizes = vec![4; len / 4];
    if !len.is_multiple_of(4) {
        sizes.push(len % 4);
    }
    sizes
}

// ---------------------------------------------------------------------------------------------------------
// Check digits and checksums

/// The Luhn check digit for `payload` (the digit that would follow it).
pub fn luhn_digit(payload: &str) -> u8 {
    let sum: u32 = payload
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

pub fn luhn_valid(number: &str) -> bool {
    let (payload, last) = number.split_at(number.len() - 1);
    luhn_digit(payload) == last.as_bytes()[0] - b'0'
}

/// `prefix` completed with random digits and a Luhn digit to `len` digits.
fn luhn_number(rng: &mut Rng, prefix: &str, len: usize) -> String {
    let mut s = prefix.to_string();
    s.push_str(&digits(rng, len - prefix.len() - 1));
    let d = luhn_digit(&s);
    s.push((b'0' + d) as char);
    s
}

/// ISO 7064 mod 97-10 over an IBAN's country, check digits and BBAN (letters count as 10..35).
pub fn iban_mod97(country: &str, check: &str, bban: &str) -> u32 {
    let rearranged = format!("{bban}{country}{check}");
    rearranged.bytes().fold(0u32, |acc, b| {
        if b.is_ascii_digit() {
            (acc * 10 + u32::from(b - b'0')) % 97
        } else {
            (acc * 100 + u32::from(b - b'A') + 10) % 97
        }
    })
}

/// The two check digits that make `country` + digits + `bban` pass mod-97.
pub fn iban_check(country: &str, bban: &str) -> String {
    format!("{:02}", 98 - iban_mod97(country, "00", bban))
}

/// The ISBN-13 (EAN-13) check digit: weights 1, 3, 1, 3, …
pub fn isbn13_digit(payload: &str) -> u8 {
    let sum: u32 = payload
        .bytes()
        .enumerate()
        .map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 1 } else { 3 })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Base62 of `n`, left-padded with "0" to six characters (GitHub's and npm's token checksum).
pub fn base62_6(mut n: u32) -> String {
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `prefix` + 30 random base62 characters + the base62 CRC-32 of those 30 characters.
pub fn checksummed_token(rng: &mut Rng, prefix: &str) -> String {
    let body = draw(rng, BASE62, 30);
    format!("{prefix}{body}{}", base62_6(crc32(body.as_bytes())))
}

/// The same shape with a checksum that does not match its body.
fn bad_checksum_token(rng: &mut Rng, prefix: &str) -> String {
    let body = draw(rng, BASE62, 30);
    let good = crc32(body.as_bytes());
    let bad = good.wrapping_add(rng.u32(1..u32::MAX));
    format!("{prefix}{body}{}", base62_6(bad))
}

/// Whether `token` (prefix of `prefix_len` bytes + 30 + 6) carries a matching checksum.
pub fn checksum_ok(token: &str, prefix_len: usize) -> bool {
    let body = &token[prefix_len..token.len() - 6];
    base62_6(crc32(body.as_bytes())) == token[token.len() - 6..]
}

// ---------------------------------------------------------------------------------------------------------
// The corpus

/// Every entity, `n` valid values and `n` near misses each.
pub fn generate(n: usize) -> Vec<Entity> {
    let mut out = Vec::new();
    cards(n, &mut out);
    ssn(n, &mut out);
    phones(n, &mut out);
    out.push(entity(n, "iban", PROSE, iban_valid, iban_miss));
    out.push(entity(n, "email", PROSE, email_valid, email_miss));
    secrets(n, &mut out);
    out
}

/// A seed per entity name (FNV-1a), so each entity's corpus depends on nothing else.
fn seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn entity(
    n: usize,
    name: &'static str,
    templates: &[&str],
    mut valid: impl FnMut(&mut Rng) -> Value,
    mut miss: impl FnMut(&mut Rng) -> Miss,
) -> Entity {
    entity_with(n, name, templates, PROSE, &mut valid, &mut miss)
}

fn entity_with(
    n: usize,
    name: &'static str,
    valid_templates: &[&str],
    miss_templates: &[&str],
    valid: &mut dyn FnMut(&mut Rng) -> Value,
    miss: &mut dyn FnMut(&mut Rng) -> Miss,
) -> Entity {
    let mut rng = Rng::with_seed(seed(name));
    let valid = (0..n)
        .map(|_| {
            let v = valid(&mut rng);
            embed(&mut rng, valid_templates, v)
        })
        .collect();
    let misses = (0..n)
        .map(|_| {
            let m = miss(&mut rng);
            embed_miss(&mut rng, miss_templates, m)
        })
        .collect();
    Entity {
        name,
        valid,
        misses,
    }
}

// ----- payment cards ---------------------------------------------------------------------------------------

/// A card family: how its numbers start, which lengths it issues, and lengths it does not (Luhn-valid
/// numbers of those lengths are near misses).
struct Family {
    name: &'static str,
    prefix: fn(&mut Rng) -> String,
    lengths: &'static [usize],
    wrong_lengths: &'static [usize],
}

const FAMILIES: &[Family] = &[
    Family {
        name: "card.visa",
        prefix: |_| "4".into(),
        lengths: &[16, 16, 16, 13, 19],
        wrong_lengths: &[14, 15, 17, 18],
    },
    Family {
        name: "card.mastercard",
        prefix: |rng| {
            if rng.bool() {
                num(rng, 51, 55)
            } else {
                num(rng, 2221, 2720)
            }
        },
        lengths: &[16],
        wrong_lengths: &[15, 17],
    },
    Family {
        name: "card.amex",
        prefix: |rng| pick(rng, &["34", "37"]).into(),
        lengths: &[15],
        wrong_lengths: &[14, 16],
    },
    Family {
        name: "card.discover",
        prefix: |rng| match rng.u8(0..3) {
            0 => "6011".into(),
            1 => "65".into(),
            _ => num(rng, 644, 649),
        },
        lengths: &[16],
        wrong_lengths: &[13, 15],
    },
    Family {
        name: "card.diners",
        prefix: |rng| match rng.u8(0..3) {
            0 => num(rng, 300, 305),
            1 => "36".into(),
            _ => "38".into(),
        },
        lengths: &[14],
        wrong_lengths: &[12, 13],
    },
    Family {
        name: "card.jcb",
        prefix: |rng| num(rng, 3528, 3589),
        lengths: &[16],
        wrong_lengths: &[14, 15],
    },
    Family {
        name: "card.unionpay",
        prefix: |_| "62".into(),
        lengths: &[16, 16, 17, 18, 19],
        wrong_lengths: &[14, 15],
    },
    Family {
        name: "card.maestro",
        prefix: |rng| {
            pick(
                rng,
                &[
                    "5018", "5020", "5038", "5893", "6304", "6759", "6761", "6762", "6763",
                ],
            )
            .into()
        },
        lengths: &[16, 16, 12, 13, 15, 19],
        wrong_lengths: &[11, 20],
    },
];

/// How a card of `len` digits is printed in groups, and the grouping's name.
fn card_grouping(number: &str) -> (Vec<usize>, &'static str) {
    let amex = number.starts_with("34") || number.starts_with("37");
    match number.len() {
        15 if amex => (vec![4, 6, 5], "4-6-5"),
        15 => (fours(15), "4-4-4-3"),
        14 => (vec![4, 6, 4], "4-6-4"),
        13 => (vec![4, 3, 3, 3], "4-3-3-3"),
        12 => (fours(12), "4-4-4"),
        16 => (fours(16), "4-4-4-4"),
        17 => (fours(17), "4-4-4-4-1"),
        18 => (fours(18), "4-4-4-4-2"),
        _ => (fours(number.len()), "4-4-4-4-3"),
    }
}

/// The variant's name for the report ("spaced 4-3-3-3"), from a closed set so it can stay `&'static`.
fn card_kind(sep: &str, grouping: &str) -> &'static str {
    match (sep, grouping) {
        ("spaced", "4-4-4") => "spaced 4-4-4",
        ("spaced", "4-3-3-3") => "spaced 4-3-3-3",
        ("spaced", "4-6-4") => "spaced 4-6-4",
        ("spaced", "4-4-4-4") => "spaced 4-4-4-4",
        ("spaced", "4-4-4-4-1") => "spaced 4-4-4-4-1",
        ("spaced", "4-4-4-4-2") => "spaced 4-4-4-4-2",
        ("spaced", "4-4-4-4-3") => "spaced 4-4-4-4-3",
        ("spaced", "4-6-5") => "spaced 4-6-5",
        ("spaced", "4-4-4-3") => "spaced 4-4-4-3",
        ("dashed", "4-4-4") => "dashed 4-4-4",
        ("dashed", "4-3-3-3") => "dashed 4-3-3-3",
        ("dashed", "4-6-4") => "dashed 4-6-4",
        ("dashed", "4-4-4-4") => "dashed 4-4-4-4",
        ("dashed", "4-4-4-4-1") => "dashed 4-4-4-4-1",
        ("dashed", "4-4-4-4-2") => "dashed 4-4-4-4-2",
        ("dashed", "4-4-4-4-3") => "dashed 4-4-4-4-3",
        ("dashed", "4-6-5") => "dashed 4-6-5",
        ("dashed", "4-4-4-3") => "dashed 4-4-4-3",
        _ => "grouped",
    }
}

fn card_print(rng: &mut Rng, number: &str) -> (&'static str, String) {
    let (sizes, grouping) = card_grouping(number);
    match rng.u8(0..3) {
        0 => ("plain", number.to_string()),
        1 => (card_kind("spaced", grouping), group(number, &sizes, " ")),
        _ => (card_kind("dashed", grouping), group(number, &sizes, "-")),
    }
}

fn cards(n: usize, out: &mut Vec<Entity>) {
    for f in FAMILIES {
        let mut valid = |rng: &mut Rng| {
            let prefix = (f.prefix)(rng);
            let len = f.lengths[rng.usize(..f.lengths.len())];
            let number = luhn_number(rng, &prefix, len);
            let (kind, text) = card_print(rng, &number);
            Value::whole(kind, text)
        };
        let mut miss = |rng: &mut Rng| -> Miss {
            match rng.u8(0..8) {
                0 | 1 => {
                    let prefix = (f.prefix)(rng);
                    let len = f.lengths[rng.usize(..f.lengths.len())];
                    let good = luhn_number(rng, &prefix, len);
                    let last = good.as_bytes()[len - 1] - b'0';
                    let wrong = (last + rng.u8(1..10)) % 10;
                    let number = format!("{}{}", &good[..len - 1], wrong);
                    ("Luhn-invalid", card_print(rng, &number).1)
                }
                2 => {
                    let prefix = (f.prefix)(rng);
                    let len = f.wrong_lengths[rng.usize(..f.wrong_lengths.len())];
                    ("wrong length", luhn_number(rng, &prefix, len))
                }
                3 => ("ms timestamp", luhn_number(rng, "17", 13)),
                4 => {
                    let number = format!("1{}", {
                        let k = rng.usize(12..16);
                        digits(rng, k)
                    });
                    ("order number", format!("order number {number}"))
                }
                5 => ("ISBN-13", isbn13(rng)),
                6 => ("UUID", uuid_with_digit_groups(rng)),
                // A mobile number in E.164 without its "+": 12 digits, a length no family
                // issues with these prefixes.
                _ => (
                    "phone digits",
                    if rng.bool() {
                        format!("49{}{}", num(rng, 150, 179), digits(rng, 7))
                    } else {
                        format!("447{}", digits(rng, 9))
                    },
                ),
            }
        };
        out.push(entity_with(n, f.name, PROSE, PROSE, &mut valid, &mut miss));
    }
}

/// An ISBN-13 (978/979 prefix, valid check digit), plain or hyphenated.
fn isbn13(rng: &mut Rng) -> String {
    let payload = format!("{}{}", pick(rng, &["978", "979"]), digits(rng, 9));
    let d = isbn13_digit(&payload);
    let full = format!("{payload}{d}");
    if rng.bool() {
        full
    } else {
        format!(
            "ISBN {}-{}-{}-{}-{}",
            &full[..3],
            &full[3..4],
            &full[4..7],
            &full[7..12],
            &full[12..]
        )
    }
}

/// A UUID whose groups are often all digits (what a digit-run detector sees in one).
fn uuid_with_digit_groups(rng: &mut Rng) -> String {
    let mut part = |n: usize| {
        if rng.bool() {
            digits(rng, n)
        } else {
            draw(rng, HEX, n)
        }
    };
    format!(
        "{}-{}-4{}-a{}-{}",
        part(8),
        part(4),
        part(3),
        part(3),
        part(12)
    )
}

// ----- US SSN ---------------------------------------------------------------------------------------------

fn ssn_area(rng: &mut Rng) -> u32 {
    loop {
        let a = rng.u32(1..900);
        if a != 666 {
            return a;
        }
    }
}

fn ssn_parts(rng: &mut Rng) -> (u32, u32, u32) {
    (ssn_area(rng), rng.u32(1..100), rng.u32(1..10000))
}

fn ssn(n: usize, out: &mut Vec<Entity>) {
    let mut dashed = |rng: &mut Rng| {
        let (a, g, s) = ssn_parts(rng);
        Value::whole("dashed", format!("{a:03}-{g:02}-{s:04}"))
    };
    let mut miss = |rng: &mut Rng| -> Miss {
        let (a, g, s) = ssn_parts(rng);
        match rng.u8(0..6) {
            0 => {
                let bad = *pick(rng, &[&0u32, &666, &900, &950, &999]);
                ("invalid area", format!("{bad:03}-{g:02}-{s:04}"))
            }
            1 => ("group 00", format!("{a:03}-00-{s:04}")),
            2 => ("serial 0000", format!("{a:03}-{g:02}-0000")),
            3 => ("undashed, no context", format!("{a:03}{g:02}{s:04}")),
            4 => (
                "date",
                format!(
                    "{}-{:02}-{:02}",
                    rng.u32(1990..2031),
                    rng.u32(1..13),
                    rng.u32(1..29)
                ),
            ),
            _ => (
                "ZIP+4",
                format!("{:05}-{:04}", rng.u32(501..99951), rng.u32(1..10000)),
            ),
        }
    };
    out.push(entity_with(
        n,
        "ssn.dashed",
        PROSE,
        PROSE,
        &mut dashed,
        &mut miss,
    ));

    let mut undashed = |rng: &mut Rng| {
        let (a, g, s) = ssn_parts(rng);
        Value::whole("undashed", format!("{a:03}{g:02}{s:04}"))
    };
    let mut miss = |rng: &mut Rng| -> Miss {
        let (a, g, s) = ssn_parts(rng);
        match rng.u8(0..3) {
            0 => ("undashed, no context", format!("{a:03}{g:02}{s:04}")),
            1 => ("nine digits, context far away", {
                let filler = "and then we talked about the weather for a while, ".repeat(4);
                format!("SSN forms were discussed {filler}ticket {a:03}{g:02}{s:04}")
            }),
            _ => ("invalid area", format!("SSN 000{g:02}{s:04}")),
        }
    };
    out.push(entity_with(
        n,
        "ssn.undashed_context",
        SSN_CONTEXT,
        PROSE,
        &mut undashed,
        &mut miss,
    ));
}

// ----- phone numbers --------------------------------------------------------------------------------------

/// A NANP number: area code and exchange start with 2–9 and are not N11.
fn nanp(rng: &mut Rng) -> (String, String, String) {
    let part = |rng: &mut Rng| loop {
        let p = format!("{}{}", rng.u8(2..10), digits(rng, 2));
        if &p[1..] != "11" {
            return p;
        }
    };
    let npa = part(rng);
    let nxx = part(rng);
    (npa, nxx, digits(rng, 4))
}

/// E.164 numbers of a few countries: (country code, national significant number, grouping for print).
fn international(rng: &mut Rng) -> (&'static str, String, Vec<usize>) {
    match rng.u8(0..8) {
        0 => ("44", format!("20{}", digits(rng, 8)), vec![2, 4, 4]),
        1 => (
            "44",
            format!("7{}{}", rng.u8(1..10), digits(rng, 8)),
            vec![4, 6],
        ),
        2 => (
            "49",
            format!("1{}{}", rng.u8(5..8), digits(rng, 9)),
            vec![3, 8],
        ),
        3 => (
            "33",
            format!("{}{}", rng.u8(1..8), digits(rng, 8)),
            vec![1, 2, 2, 2, 2],
        ),
        4 => (
            "91",
            format!("{}{}", rng.u8(6..10), digits(rng, 9)),
            vec![5, 5],
        ),
        5 => (
            "81",
            format!("{}0{}", rng.u8(7..10), digits(rng, 8)),
            vec![2, 4, 4],
        ),
        6 => ("61", format!("4{}", digits(rng, 8)), vec![3, 3, 3]),
        _ => (
            "55",
            format!("{}9{}", num(rng, 11, 99), digits(rng, 8)),
            vec![2, 5, 4],
        ),
    }
}

fn phones(n: usize, out: &mut Vec<Entity>) {
    let miss = |rng: &mut Rng| -> Miss {
        match rng.u8(0..6) {
            0 => {
                let (_, nxx, line) = nanp(rng);
                ("short number", format!("{nxx}-{line}"))
            }
            1 => ("short code", format!("text STOP to {}", digits(rng, 5))),
            2 => {
                let (npa, nxx, line) = nanp(rng);
                ("bare digits, no context", format!("{npa}{nxx}{line}"))
            }
            3 => (
                "version string",
                match rng.u8(0..3) {
                    0 => format!("v{}.{}.{}", rng.u8(0..20), rng.u8(0..50), rng.u8(0..100)),
                    1 => format!("10.0.{}.{}", rng.u32(10000..30000), rng.u32(1000..9999)),
                    _ => format!(
                        "release {}.{}.{}",
                        rng.u8(1..4),
                        rng.u8(0..30),
                        rng.u8(0..10)
                    ),
                },
            ),
            4 => (
                "date",
                format!(
                    "{}-{:02}-{:02}",
                    rng.u32(1990..2031),
                    rng.u32(1..13),
                    rng.u32(1..29)
                ),
            ),
            _ => (
                "IPv4 address",
                format!(
                    "{}.{}.{}.{}",
                    rng.u8(1..224),
                    rng.u8(..),
                    rng.u8(..),
                    rng.u8(1..255)
                ),
            ),
        }
    };

    let mut us = |rng: &mut Rng| {
        let (a, b, c) = nanp(rng);
        match rng.u8(0..6) {
            0 => Value::whole("(415) 555-2671", format!("({a}) {b}-{c}")),
            1 => Value::whole("415-555-2671", format!("{a}-{b}-{c}")),
            2 => Value::whole("415.555.2671", format!("{a}.{b}.{c}")),
            3 => Value::whole("+1 415 555 2671", format!("+1 {a} {b} {c}")),
            4 => Value::whole("+1-415-555-2671", format!("+1-{a}-{b}-{c}")),
            _ => Value::whole("+14155552671", format!("+1{a}{b}{c}")),
        }
    };
    let mut m = miss;
    out.push(entity_with(n, "phone.us", PROSE, PROSE, &mut us, &mut m));

    let mut intl = |rng: &mut Rng| {
        let (cc, nsn, sizes) = international(rng);
        if rng.bool() {
            Value::whole("E.164", format!("+{cc}{nsn}"))
        } else {
            Value::whole("spaced", format!("+{cc} {}", group(&nsn, &sizes, " ")))
        }
    };
    let mut m = miss;
    out.push(entity_with(
        n,
        "phone.international",
        PROSE,
        PROSE,
        &mut intl,
        &mut m,
    ));

    let mut bare = |rng: &mut Rng| {
        let (a, b, c) = nanp(rng);
        Value::whole("bare 10 digits", format!("{a}{b}{c}"))
    };
    let mut m = |rng: &mut Rng| -> Miss {
        let (a, b, c) = nanp(rng);
        match rng.u8(0..3) {
            0 => ("bare digits, no context", format!("{a}{b}{c}")),
            1 => ("invoice number", format!("invoice {a}{b}{c}")),
            _ => miss(rng),
        }
    };
    out.push(entity_with(
        n,
        "phone.bare_context",
        PHONE_CONTEXT,
        PROSE,
        &mut bare,
        &mut m,
    ));
}

// ----- IBAN -----------------------------------------------------------------------------------------------

/// Country, total IBAN length, BBAN layout (`n` digit, `a` upper-case letter, `c` letter or digit, each with
/// a count), per the SWIFT IBAN registry.
/// A BBAN layout: (kind of character, count) in order.
type Layout = &'static [(char, usize)];

const IBAN_COUNTRIES: &[(&str, usize, Layout)] = &[
    ("DE", 22, &[('n', 18)]),
    ("GB", 22, &[('a', 4), ('n', 14)]),
    ("FR", 27, &[('n', 10), ('c', 11), ('n', 2)]),
    ("NL", 18, &[('a', 4), ('n', 10)]),
    ("ES", 24, &[('n', 20)]),
    ("IT", 27, &[('a', 1), ('n', 10), ('c', 12)]),
    ("CH", 21, &[('n', 5), ('c', 12)]),
    ("BE", 16, &[('n', 12)]),
    ("AT", 20, &[('n', 16)]),
    ("PL", 28, &[('n', 24)]),
];

fn bban(rng: &mut Rng, layout: &[(char, usize)]) -> String {
    layout
        .iter()
        .map(|&(k, count)| match k {
            'n' => digits(rng, count),
            'a' => draw(rng, UPPER, count),
            _ => draw(rng, UPPER_DIGITS, count),
        })
        .collect()
}

fn iban_print(rng: &mut Rng, iban: &str) -> (&'static str, String) {
    if rng.bool() {
        ("plain", iban.to_string())
    } else {
        ("groups of 4", group(iban, &fours(iban.len()), " "))
    }
}

fn iban_valid(rng: &mut Rng) -> Value {
    let (cc, len, layout) = IBAN_COUNTRIES[rng.usize(..IBAN_COUNTRIES.len())];
    let b = bban(rng, layout);
    let iban = format!("{cc}{}{b}", iban_check(cc, &b));
    debug_assert_eq!(iban.len(), len);
    let (kind, text) = iban_print(rng, &iban);
    Value::whole(kind, text)
}

fn iban_miss(rng: &mut Rng) -> Miss {
    let (cc, _, layout) = IBAN_COUNTRIES[rng.usize(..IBAN_COUNTRIES.len())];
    let b = bban(rng, layout);
    match rng.u8(0..3) {
        0 => {
            let good: u32 = iban_check(cc, &b).parse().expect("two digits");
            let bad = 2 + (good - 2 + rng.u32(1..97)) % 97;
            let iban = format!("{cc}{bad:02}{b}");
            ("wrong check digits", iban_print(rng, &iban).1)
        }
        1 => {
            // One character more or fewer than the country's registered length, check digits right.
            let b = if rng.bool() {
                format!("{b}{}", digits(rng, 1))
            } else {
                b[..b.len() - 1].to_string()
            };
            let iban = format!("{cc}{}{b}", iban_check(cc, &b));
            ("wrong length for country", iban_print(rng, &iban).1)
        }
        _ => {
            let cc = pick(rng, &["QQ", "XX", "ZZ", "AA"]);
            let iban = format!("{cc}{}{b}", iban_check(cc, &b));
            ("unregistered country", iban_print(rng, &iban).1)
        }
    }
}

// ----- email ----------------------------------------------------------------------------------------------

const NAMES: &[&str] = &[
    "jane",
    "john",
    "maria",
    "li",
    "oluwaseun",
    "francois",
    "anna",
    "k",
    "dev",
    "ops",
    "sales",
    "noreply",
];
const DOMAINS: &[&str] = &[
    "example",
    "mail",
    "acme-corp",
    "uni-heidelberg",
    "startup",
    "post",
    "contoso",
    "my-shop",
    "xn--bcher-kva",
];
const TLDS: &[&str] = &[
    "com",
    "org",
    "net",
    "io",
    "de",
    "fr",
    "co.uk",
    "dev",
    "ai",
    "app",
    "technology",
    "museum",
    "com.au",
    "info",
];

fn email_valid(rng: &mut Rng) -> Value {
    let a = pick(rng, NAMES);
    let b = pick(rng, NAMES);
    let (kind, local) = match rng.u8(0..6) {
        0 => ("first.last", format!("{a}.{b}")),
        1 => (
            "plus tag",
            format!("{a}+{}", pick(rng, &["news", "tag", "x1"])),
        ),
        2 => (
            "underscore and digits",
            format!("{a}_{b}{}", rng.u16(1..2000)),
        ),
        3 => ("hyphen", format!("{a}-{b}")),
        4 => ("upper case", format!("{}.{}", a.to_uppercase(), b)),
        _ => (
            "random",
            draw(rng, b"abcdefghijklmnopqrstuvwxyz0123456789", 10),
        ),
    };
    let sub = if rng.u8(0..4) == 0 { "mail." } else { "" };
    Value::whole(
        kind,
        format!("{local}@{sub}{}.{}", pick(rng, DOMAINS), pick(rng, TLDS)),
    )
}

fn email_miss(rng: &mut Rng) -> Miss {
    let a = pick(rng, NAMES);
    let d = pick(rng, DOMAINS);
    match rng.u8(0..6) {
        0 => ("spelled out", format!("{a} at {d} dot com")),
        1 => ("handle", format!("@{a}{}", rng.u16(1..999))),
        2 => ("no TLD", format!("{a}@{d}")),
        3 => ("obfuscated", format!("{a}(at){d}(dot)org")),
        4 => ("npm scope", format!("npm install @{d}/{a}-utils")),
        _ => ("no local part", format!("@{d}.com")),
    }
}

// ----- secrets --------------------------------------------------------------------------------------------

/// One char removed from the end of `s`.
fn short(s: &str) -> String {
    s[..s.len() - 1].to_string()
}

fn secrets(n: usize, out: &mut Vec<Entity>) {
    // OpenAI: legacy `sk-` + 20 + "T3BlbkFJ" + 20, project / service-account / admin keys.
    out.push(entity(
        n,
        "secret.openai",
        PROSE,
        |rng| {
            let kind = pick(rng, &["sk-", "sk-proj-", "sk-svcacct-", "sk-admin-"]);
            let text = if kind == "sk-" {
                format!(
                    "sk-{}T3BlbkFJ{}",
                    key(rng, BASE62, 20),
                    key(rng, BASE62, 20)
                )
            } else {
                format!(
                    "{kind}{}T3BlbkFJ{}",
                    key(rng, BASE64URL, 74),
                    key(rng, BASE64URL, 74)
                )
            };
            Value::whole("key", text)
        },
        |rng| match rng.u8(0..3) {
            0 => (
                "wrong prefix",
                format!("sx-proj-{}", key(rng, BASE64URL, 48)),
            ),
            1 => ("placeholder", "sk-...".to_string()),
            _ => (
                "placeholder",
                format!("sk-proj-{}", "X".repeat(rng.usize(24..48))),
            ),
        },
    ));

    out.push(entity(
        n,
        "secret.anthropic",
        PROSE,
        |rng| {
            let kind = pick(rng, &["api03", "admin01"]);
            Value::whole(
                "key",
                format!("sk-ant-{kind}-{}AA", key(rng, BASE64URL, 93)),
            )
        },
        |rng| match rng.u8(0..2) {
            0 => (
                "wrong prefix",
                format!("sk_ant_api03_{}AA", key(rng, BASE62, 93)),
            ),
            _ => ("placeholder", "sk-ant-api03-...".to_string()),
        },
    ));

    out.push(entity(
        n,
        "secret.aws_access_key_id",
        PROSE,
        |rng| {
            let p = pick(rng, &["AKIA", "ASIA"]);
            Value::whole("key id", format!("{p}{}", key(rng, BASE32, 16)))
        },
        |rng| match rng.u8(0..4) {
            0 => ("one char short", format!("AKIA{}", key(rng, BASE32, 15))),
            1 => (
                "user id, not a key",
                format!("AIDA{}", key(rng, BASE32, 16)),
            ),
            2 => (
                "lower case",
                format!("akia{}", key(rng, BASE32, 16).to_lowercase()),
            ),
            _ => ("placeholder", "AKIAXXXXXXXXXXXXXXXX".to_string()),
        },
    ));

    out.push(entity(
        n,
        "secret.github",
        PROSE,
        |rng| {
            let p = pick(rng, &["ghp_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_"]);
            Value::whole("checksummed token", checksummed_token(rng, p))
        },
        |rng| match rng.u8(0..4) {
            0 => ("bad checksum", bad_checksum_token(rng, "ghp_")),
            1 => ("one char short", short(&checksummed_token(rng, "ghp_"))),
            2 => ("wrong prefix", checksummed_token(rng, "ghx_")),
            _ => ("placeholder", format!("ghp_{}", "x".repeat(36))),
        },
    ));

    out.push(entity(
        n,
        "secret.slack",
        PROSE,
        |rng| {
            let text = if rng.bool() {
                format!(
                    "xoxb-{}-{}-{}",
                    digits(rng, 12),
                    digits(rng, 13),
                    key(rng, BASE62, 24)
                )
            } else {
                format!(
                    "xoxp-{}-{}-{}-{}",
                    digits(rng, 12),
                    digits(rng, 12),
                    digits(rng, 13),
                    draw(rng, HEX, 32)
                )
            };
            Value::whole("token", text)
        },
        |rng| match rng.u8(0..3) {
            0 => (
                "wrong prefix",
                format!("xoxz-{}-{}", digits(rng, 12), key(rng, BASE62, 24)),
            ),
            1 => ("placeholder", "xoxb-your-bot-token".to_string()),
            _ => (
                "placeholder",
                format!("xoxb-{}-{}", "0".repeat(12), "X".repeat(24)),
            ),
        },
    ));

    out.push(entity(
        n,
        "secret.private_key",
        PROSE,
        |rng| {
            let kind = pick(rng, &["RSA ", "EC ", "OPENSSH ", "", "ENCRYPTED ", "DSA "]);
            let body: Vec<String> = (0..rng.usize(3..8)).map(|_| key(rng, BASE64, 64)).collect();
            Value::whole(
                "PEM block",
                format!(
                    "-----BEGIN {kind}PRIVATE KEY-----\n{}\n-----END {kind}PRIVATE KEY-----",
                    body.join("\n")
                ),
            )
        },
        |rng| {
            let kind = pick(
                rng,
                &[
                    "PUBLIC KEY",
                    "CERTIFICATE",
                    "CERTIFICATE REQUEST",
                    "RSA PUBLIC KEY",
                ],
            );
            let body = key(rng, BASE64, 64);
            (
                "public PEM block",
                format!("-----BEGIN {kind}-----\n{body}\n-----END {kind}-----"),
            )
        },
    ));

    out.push(entity(
        n,
        "secret.jwt",
        PROSE,
        |rng| {
            let alg = pick(rng, &["HS256", "RS256", "ES256"]);
            let header = format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}");
            let payload = format!(
                "{{\"sub\":\"{}\",\"name\":\"{}\",\"iat\":{}}}",
                digits(rng, 10),
                pick(rng, NAMES),
                rng.u32(1_600_000_000..1_800_000_000)
            );
            let sig_len = if alg == "RS256" { 256 } else { 32 };
            let sig = random_bytes(rng, sig_len);
            Value::whole(
                "token",
                format!(
                    "{}.{}.{}",
                    base64_encode(header.as_bytes(), BASE64URL, false),
                    base64_encode(payload.as_bytes(), BASE64URL, false),
                    base64_encode(&sig, BASE64URL, false)
                ),
            )
        },
        |rng| match rng.u8(0..3) {
            0 => {
                let header = "{\"typ\":\"JWT\"}";
                let payload = format!("{{\"sub\":\"{}\"}}", digits(rng, 8));
                (
                    "header without alg",
                    format!(
                        "{}.{}.{}",
                        base64_encode(header.as_bytes(), BASE64URL, false),
                        base64_encode(payload.as_bytes(), BASE64URL, false),
                        base64_encode(&random_bytes(rng, 32), BASE64URL, false)
                    ),
                )
            }
            1 => (
                "not base64 JSON",
                format!(
                    "eyJ{}.eyJ{}.{}",
                    key(rng, BASE64URL, 30),
                    key(rng, BASE64URL, 40),
                    key(rng, BASE64URL, 43)
                ),
            ),
            _ => ("placeholder", "eyJhbGciOi...".to_string()),
        },
    ));

    out.push(entity(
        n,
        "secret.google_api_key",
        PROSE,
        |rng| Value::whole("key", format!("AIza{}", key(rng, BASE64URL, 35))),
        |rng| match rng.u8(0..3) {
            0 => ("one char short", format!("AIza{}", key(rng, BASE64URL, 34))),
            1 => ("wrong prefix", format!("AIxa{}", key(rng, BASE64URL, 35))),
            _ => ("placeholder", format!("AIza{}", "X".repeat(35))),
        },
    ));

    let mut gcp = |rng: &mut Rng| {
        let project = format!("{}-{}", pick(rng, DOMAINS), digits(rng, 6));
        let lines: Vec<String> = (0..rng.usize(4..10))
            .map(|_| key(rng, BASE64, 64))
            .collect();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\\n{}\\n-----END PRIVATE KEY-----\\n",
            lines.join("\\n")
        );
        let prefix = format!(
            "{{\"type\": \"service_account\", \"project_id\": \"{project}\", \"private_key_id\": \"{}\", \"private_key\": \"",
            draw(rng, HEX, 40)
        );
        let suffix = format!(
            "\", \"client_email\": \"deployer@{project}.iam.gserviceaccount.com\", \"client_id\": \"{}\"}}",
            digits(rng, 21)
        );
        Value::framed("service account JSON", &prefix, &pem, &suffix)
    };
    let mut gcp_miss = |rng: &mut Rng| -> Miss {
        let project = format!("{}-{}", pick(rng, DOMAINS), digits(rng, 6));
        let key_field = pick(rng, &["", "<REDACTED>", "${GCP_PRIVATE_KEY}"]);
        (
            "key field empty or placeholder",
            format!(
                "{{\"type\": \"service_account\", \"project_id\": \"{project}\", \"private_key\": \"{key_field}\"}}"
            ),
        )
    };
    out.push(entity_with(
        n,
        "secret.gcp_service_account",
        &[
            "{}",
            "here is the key file: {}",
            "credentials.json:\n{}\n",
            "```json\n{}\n```",
        ],
        PROSE,
        &mut gcp,
        &mut gcp_miss,
    ));

    out.push(entity(
        n,
        "secret.azure_storage_key",
        PROSE,
        |rng| {
            let account = { let k = rng.usize(3..24); draw(rng, b"abcdefghijklmnopqrstuvwxyz0123456789", k) };
            let key = base64_encode(&random_bytes(rng, 64), BASE64, true);
            Value::framed(
                "connection string",
                &format!("DefaultEndpointsProtocol=https;AccountName={account};AccountKey="),
                &key,
                ";EndpointSuffix=core.windows.net",
            )
        },
        |rng| {
            let account = { let k = rng.usize(3..24); draw(rng, LOWER, k) };
            match rng.u8(0..3) {
                0 => (
                    "placeholder key",
                    format!("DefaultEndpointsProtocol=https;AccountName={account};AccountKey=<your-account-key>;EndpointSuffix=core.windows.net"),
                ),
                1 => ("emulator shortcut", "UseDevelopmentStorage=true".to_string()),
                _ => (
                    "no key",
                    format!("DefaultEndpointsProtocol=https;AccountName={account};EndpointSuffix=core.windows.net"),
                ),
            }
        },
    ));

    out.push(entity(
        n,
        "secret.azure_sas_token",
        PROSE,
        |rng| {
            let account = { let k = rng.usize(3..24); draw(rng, LOWER, k) };
            let sig = base64_encode(&random_bytes(rng, 32), BASE64, true)
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D");
            let prefix = format!(
                "https://{account}.blob.core.windows.net/{}?sv=2022-11-02&ss=bfqt&srt=sco&sp=rwdlacupiytfx&se=2026-{:02}-{:02}T{:02}:00:00Z&st=2025-01-01T00:00:00Z&spr=https&sig=",
                pick(rng, &["backups", "uploads", "exports"]),
                rng.u8(1..13),
                rng.u8(1..29),
                rng.u8(0..24)
            );
            Value::framed("blob SAS URL", &prefix, &sig, "")
        },
        |rng| {
            let account = { let k = rng.usize(3..24); draw(rng, LOWER, k) };
            let base = format!("https://{account}.blob.core.windows.net/uploads");
            match rng.u8(0..3) {
                0 => ("URL without SAS", base),
                1 => (
                    "placeholder signature",
                    format!("{base}?sv=2022-11-02&sp=r&sig=<signature>"),
                ),
                _ => (
                    "SAS without signature",
                    format!("{base}?sv=2022-11-02&ss=b&srt=o&sp=r&se=2026-01-01T00:00:00Z"),
                ),
            }
        },
    ));

    out.push(entity(
        n,
        "secret.stripe",
        PROSE,
        |rng| {
            let p = pick(rng, &["sk_live_", "rk_live_"]);
            let len = if rng.bool() { 24 } else { 99 };
            Value::whole("key", format!("{p}{}", key(rng, BASE62, len)))
        },
        |rng| match rng.u8(0..4) {
            0 => (
                "publishable key",
                format!("pk_live_{}", key(rng, BASE62, 24)),
            ),
            1 => ("wrong prefix", format!("sk_lve_{}", key(rng, BASE62, 24))),
            2 => ("placeholder", format!("sk_live_{}", "x".repeat(24))),
            _ => ("placeholder", "sk_live_...".to_string()),
        },
    ));

    out.push(entity(
        n,
        "secret.gitlab",
        PROSE,
        |rng| Value::whole("token", format!("glpat-{}", key(rng, BASE64URL, 20))),
        |rng| match rng.u8(0..3) {
            0 => ("one char short", format!("glpat-{}", key(rng, BASE62, 19))),
            1 => ("wrong prefix", format!("glpta-{}", key(rng, BASE62, 20))),
            _ => ("placeholder", format!("glpat-{}", "x".repeat(20))),
        },
    ));

    out.push(entity(
        n,
        "secret.npm",
        PROSE,
        |rng| Value::whole("checksummed token", checksummed_token(rng, "npm_")),
        |rng| match rng.u8(0..4) {
            0 => ("bad checksum", bad_checksum_token(rng, "npm_")),
            1 => ("one char short", short(&checksummed_token(rng, "npm_"))),
            2 => ("wrong prefix", checksummed_token(rng, "npn_")),
            _ => ("placeholder", format!("npm_{}", "x".repeat(36))),
        },
    ));

    out.push(entity(
        n,
        "secret.pypi",
        PROSE,
        |rng| {
            // A macaroon: version 2, location "pypi.org", a UUID identifier, then caveats and signature.
            let mut bytes = vec![0x02, 0x01, 0x08];
            bytes.extend_from_slice(b"pypi.org");
            bytes.extend_from_slice(&[0x02, 0x24]);
            bytes.extend_from_slice(uuid_with_digit_groups(rng).as_bytes());
            bytes.extend_from_slice(&[0x00, 0x02, 0x2a]);
            let k = rng.usize(60..120);
            bytes.extend(random_bytes(rng, k));
            Value::whole(
                "token",
                format!("pypi-{}", base64_encode(&bytes, BASE64URL, false)),
            )
        },
        |rng| match rng.u8(0..2) {
            0 => (
                "wrong prefix",
                format!("pipy-AgEIcHlwaS5vcmc{}", key(rng, BASE64URL, 80)),
            ),
            _ => ("placeholder", "pypi-AgEIcHlwaS5vcmc...".to_string()),
        },
    ));

    out.push(entity(
        n,
        "secret.huggingface",
        PROSE,
        |rng| Value::whole("token", format!("hf_{}", key(rng, LETTERS, 34))),
        |rng| match rng.u8(0..4) {
            0 => ("one char short", format!("hf_{}", key(rng, LETTERS, 33))),
            1 => ("wrong prefix", format!("hg_{}", key(rng, LETTERS, 34))),
            2 => ("identifier", "hf_hub_download(repo_id=name)".to_string()),
            _ => ("placeholder", format!("hf_{}", "x".repeat(34))),
        },
    ));

    out.push(entity(
        n,
        "secret.twilio",
        PROSE,
        |rng| Value::whole("API key SID", format!("SK{}", draw(rng, HEX, 32))),
        |rng| match rng.u8(0..3) {
            0 => ("one char short", format!("SK{}", draw(rng, HEX, 31))),
            1 => (
                "account SID, not a key",
                format!("AC{}", draw(rng, HEX, 32)),
            ),
            _ => ("placeholder", format!("SK{}", "x".repeat(32))),
        },
    ));

    out.push(entity(
        n,
        "secret.sendgrid",
        PROSE,
        |rng| {
            Value::whole(
                "key",
                format!("SG.{}.{}", key(rng, BASE64URL, 22), key(rng, BASE64URL, 43)),
            )
        },
        |rng| match rng.u8(0..3) {
            0 => (
                "one char short",
                format!("SG.{}.{}", key(rng, BASE62, 22), key(rng, BASE62, 42)),
            ),
            1 => (
                "wrong prefix",
                format!("SX.{}.{}", key(rng, BASE62, 22), key(rng, BASE62, 43)),
            ),
            _ => ("placeholder", "SG.xxxxx.yyyyy".to_string()),
        },
    ));

    out.push(entity(
        n,
        "secret.mailgun",
        PROSE,
        |rng| Value::whole("key", format!("key-{}", draw(rng, HEX, 32))),
        |rng| match rng.u8(0..3) {
            0 => ("one char short", format!("key-{}", draw(rng, HEX, 31))),
            1 => ("public key", format!("pubkey-{}", draw(rng, HEX, 32))),
            _ => ("placeholder", format!("key-{}", "x".repeat(32))),
        },
    ));

    out.push(entity(
        n,
        "secret.shopify",
        PROSE,
        |rng| {
            let p = pick(rng, &["shpat_", "shpat_", "shpss_", "shpca_", "shppa_"]);
            Value::whole("token", format!("{p}{}", draw(rng, HEX, 32)))
        },
        |rng| match rng.u8(0..3) {
            0 => ("one char short", format!("shpat_{}", draw(rng, HEX, 31))),
            1 => ("wrong prefix", format!("shpxx_{}", draw(rng, HEX, 32))),
            _ => ("placeholder", format!("shpat_{}", "x".repeat(32))),
        },
    ));

    out.push(entity(
        n,
        "secret.digitalocean",
        PROSE,
        |rng| {
            let p = pick(rng, &["dop_v1_", "dop_v1_", "doo_v1_", "dor_v1_"]);
            Value::whole("token", format!("{p}{}", draw(rng, HEX, 64)))
        },
        |rng| match rng.u8(0..3) {
            0 => ("one char short", format!("dop_v1_{}", draw(rng, HEX, 63))),
            1 => ("wrong prefix", format!("dpo_v1_{}", draw(rng, HEX, 64))),
            _ => ("placeholder", format!("dop_v1_{}", "x".repeat(64))),
        },
    ));

    out.push(entity(
        n,
        "secret.atlassian",
        PROSE,
        |rng| {
            Value::whole(
                "API token",
                format!(
                    "ATATT3xFfGF0{}={}",
                    key(rng, BASE64URL, 171),
                    draw(rng, UPPER_HEX, 8)
                ),
            )
        },
        |rng| match rng.u8(0..2) {
            0 => (
                "wrong prefix",
                format!(
                    "ATATX3xFfGF0{}={}",
                    key(rng, BASE64URL, 171),
                    draw(rng, UPPER_HEX, 8)
                ),
            ),
            _ => ("placeholder", "ATATT3xFfGF0...".to_string()),
        },
    ));

    out.push(entity(
        n,
        "secret.discord_webhook",
        PROSE,
        |rng| {
            let host = pick(
                rng,
                &["discord.com", "discordapp.com", "canary.discord.com"],
            );
            let prefix = format!("https://{host}/api/webhooks/{}/", {
                let k = rng.usize(17..20);
                digits(rng, k)
            });
            Value::framed("webhook URL", &prefix, &key(rng, BASE64URL, 68), "")
        },
        |rng| match rng.u8(0..3) {
            0 => (
                "no token",
                format!("https://discord.com/api/webhooks/{}", digits(rng, 18)),
            ),
            1 => (
                "channel link",
                format!(
                    "https://discord.com/channels/{}/{}",
                    digits(rng, 18),
                    digits(rng, 18)
                ),
            ),
            _ => (
                "placeholder",
                "https://discord.com/api/webhooks/{webhook.id}/{webhook.token}".to_string(),
            ),
        },
    ));

    out.push(entity(
        n,
        "secret.telegram_bot_token",
        PROSE,
        |rng| {
            let id = {
                let k = rng.usize(8..11);
                digits(rng, k)
            };
            Value::whole(
                "bot token",
                format!("{}{id}:AA{}", rng.u8(1..10), key(rng, BASE64URL, 33)),
            )
        },
        |rng| match rng.u8(0..3) {
            0 => (
                "one char short",
                format!("{}:AA{}", digits(rng, 9), key(rng, BASE64URL, 32)),
            ),
            1 => (
                "clock time",
                format!(
                    "{:02}:{:02}:{:02}",
                    rng.u8(0..24),
                    rng.u8(0..60),
                    rng.u8(0..60)
                ),
            ),
            _ => ("placeholder", "123456789:YOUR_BOT_TOKEN".to_string()),
        },
    ));

    out.push(entity(
        n,
        "secret.database_url",
        PROSE,
        |rng| {
            let password = {
                let k = rng.usize(12..33);
                key(
                    rng,
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~",
                    k,
                )
            };
            let user = pick(rng, &["app", "admin", "svc_orders", "root", "analytics"]);
            let (scheme, prefix, suffix) = match rng.u8(0..7) {
                0 => (
                    "postgres",
                    format!("postgres://{user}:"),
                    "@db.internal:5432/orders".to_string(),
                ),
                1 => (
                    "postgresql",
                    format!("postgresql://{user}:"),
                    "@10.0.3.7/app?sslmode=require".to_string(),
                ),
                2 => (
                    "mysql",
                    format!("mysql://{user}:"),
                    "@mysql.prod.local:3306/shop".to_string(),
                ),
                3 => (
                    "mongodb+srv",
                    format!("mongodb+srv://{user}:"),
                    format!(
                        "@cluster0.{}.mongodb.net/test?retryWrites=true",
                        draw(rng, LOWER, 5)
                    ),
                ),
                4 => (
                    "mongodb",
                    format!("mongodb://{user}:"),
                    "@mongo-1:27017,mongo-2:27017/app".to_string(),
                ),
                5 => (
                    "redis",
                    "redis://:".to_string(),
                    "@cache.internal:6379/0".to_string(),
                ),
                _ => (
                    "rediss",
                    "rediss://default:".to_string(),
                    "@redis.example.net:6380".to_string(),
                ),
            };
            Value::framed(scheme, &prefix, &password, &suffix)
        },
        |rng| match rng.u8(0..4) {
            0 => ("no password", "postgres://user@host/db".to_string()),
            1 => (
                "password from environment",
                "postgres://app:${DB_PASSWORD}@db.internal:5432/orders".to_string(),
            ),
            2 => ("no credentials", "mysql://localhost:3306/shop".to_string()),
            _ => (
                "placeholder password",
                format!(
                    "{}://user:{}@localhost/db",
                    pick(rng, &["postgres", "mysql", "mongodb"]),
                    pick(rng, &["password", "changeme", "<password>", "****"])
                ),
            ),
        },
    ));

    out.push(entity(
        n,
        "secret.generic_assignment",
        PROSE,
        |rng| {
            let len = rng.usize(16..41);
            let value = key(
                rng,
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#%*+-._~",
                len,
            );
            let (kind, prefix, suffix) = match rng.u8(0..8) {
                0 => ("password=", "password=", ""),
                1 => ("PASSWORD: ", "PASSWORD: ", ""),
                2 => ("api_key = \"…\"", "api_key = \"", "\""),
                3 => ("\"api_key\": \"…\"", "\"api_key\": \"", "\""),
                4 => ("secret_key='…'", "secret_key='", "'"),
                5 => ("DB_PASSWORD=", "DB_PASSWORD=", ""),
                6 => ("apiKey: ", "apiKey: ", ""),
                _ => ("client_secret=", "client_secret=", ""),
            };
            Value::framed(kind, prefix, &value, suffix)
        },
        |rng| {
            let m = pick(
                rng,
                &[
                    "password=changeme",
                    "password=",
                    "api_key=${API_KEY}",
                    "api_key=<your-api-key>",
                    "password: ********",
                    "password=password",
                    "API_KEY=YOUR_API_KEY",
                    "api_key: {{ api_key }}",
                    "password = os.environ[\"DB_PASSWORD\"]",
                    "the password policy requires twelve characters",
                ],
            );
            ("placeholder", m.to_string())
        },
    ));
}
