//! Validators: checks run on a regex candidate before it counts as a match. They take the matched text of the
//! normalised view and never panic: a character they do not expect (a non-ASCII digit that `\d` let through,
//! say) makes the candidate invalid.

use serde::Deserialize;

/// The validators a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Validator {
    /// Luhn check digit over the digits (separators ignored).
    Luhn,
    /// Payment card: Luhn, a known issuer prefix, and a length that issuer uses.
    PaymentCard,
    /// US social security number outside the SSA's never-issued ranges.
    UsSsn,
    /// IBAN: known country length and ISO 7064 mod-97 check.
    Iban,
    /// ABA routing transit number: 3-7-1 weighted checksum.
    AbaRouting,
    /// JSON Web Token: a base64url header that decodes to a JSON object with `alg`.
    Jwt,
    /// Phone number: 8 to 15 digits (E.164's maximum), not all the same digit.
    Phone,
    /// Panics on every candidate: a fault injected by tests to prove that a failing rule fails closed. Only
    /// loadable when `PROMPTGATE_ALLOW_FAULT_INJECTION=1` is set.
    FaultInjection,
    /// GitHub / npm token checksum: the last 6 characters are the CRC-32 of the 30 random characters before
    /// them, in base62 (`0-9A-Za-z`), left-padded with `0`.
    Crc32Base62,
    /// The value looks random: at least 8 characters, Shannon entropy of at least 3 bits per character, and
    /// not a placeholder (`${VAR}`, `<your key>`, `null`, `xxxx…`, `changeme`, a path, a number). The value is
    /// what follows the first `=` or `:` (quotes and spaces trimmed), or the whole candidate without one.
    Entropy,
    /// A URL's userinfo carries a real password: present, non-empty, not a template or a placeholder word.
    UrlPassword,
}

impl Validator {
    pub fn check(self, candidate: &str) -> bool {
        match self {
            Validator::Luhn => digits(candidate).is_some_and(|d| d.len() >= 2 && luhn(&d)),
            Validator::PaymentCard => payment_card_as_written(candidate),
            Validator::UsSsn => digits(candidate).is_some_and(|d| us_ssn(&d)),
            Validator::Iban => iban(candidate),
            Validator::AbaRouting => digits(candidate).is_some_and(|d| aba_routing(&d)),
            Validator::Jwt => jwt(candidate),
            Validator::Phone => phone(candidate),
            Validator::FaultInjection => panic!("fault injected by a test rule"),
            Validator::Crc32Base62 => crc32_base62(candidate),
            Validator::Entropy => entropy(candidate),
            Validator::UrlPassword => url_password(candidate),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Validator::Luhn => "luhn",
            Validator::PaymentCard => "payment_card",
            Validator::UsSsn => "us_ssn",
            Validator::Iban => "iban",
            Validator::AbaRouting => "aba_routing",
            Validator::Jwt => "jwt",
            Validator::Phone => "phone",
            Validator::FaultInjection => "fault_injection",
            Validator::Crc32Base62 => "crc32_base62",
            Validator::Entropy => "entropy",
            Validator::UrlPassword => "url_password",
        }
    }
}

/// The decimal digits of `s` as values, separators (space, `-`, `.`, `/`) skipped. `None` if anything else
/// appears — including digits outside ASCII.
fn digits(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'0'..=b'9' => out.push(b - b'0'),
            b' ' | b'-' | b'.' | b'/' => {}
            _ => return None,
        }
    }
    Some(out)
}

pub fn luhn(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &x) in d.iter().rev().enumerate() {
        let mut v = u32::from(x);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn prefix_num(d: &[u8], n: usize) -> u32 {
    d.iter().take(n).fold(0, |acc, &x| acc * 10 + u32::from(x))
}

fn payment_card(d: &[u8]) -> bool {
    let len = d.len();
    if !(12..=19).contains(&len) || !luhn(d) {
        return false;
    }
    let p1 = prefix_num(d, 1);
    let p2 = prefix_num(d, 2);
    let p3 = prefix_num(d, 3);
    let p4 = prefix_num(d, 4);
    let p6 = prefix_num(d, 6);
    // Visa
    (p1 == 4 && matches!(len, 13 | 16 | 19))
        // Mastercard (51–55, 2221–2720)
        || (((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && len == 16)
        // American Express
        || ((p2 == 34 || p2 == 37) && len == 15)
        // Discover (6011, 644–649, 65, 622126–622925)
        || ((p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || (622_126..=622_925).contains(&p6))
            && (16..=19).contains(&len))
        // JCB
        || ((3528..=3589).contains(&p4) && (16..=19).contains(&len))
        // Diners Club
        || (((300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39) && (14..=19).contains(&len))
        // UnionPay
        || (p2 == 62 && (16..=19).contains(&len))
        // Maestro
        || (matches!(p4, 5018 | 5020 | 5038 | 5893 | 6304 | 6759 | 6761 | 6762 | 6763) && (12..=19).contains(&len))
}

/// How many digits a short group after a card may have and still be redacted with it (a CVV, an expiry year).
const TRAILING_GROUP: std::ops::RangeInclusive<usize> = 2..=4;

/// A payment card as written: its digits make a card; or, for a number written in groups, the groups before
/// a short last one (2 to 4 digits, [`TRAILING_GROUP`]) make a card of 15 digits or more. A pattern can match
/// only one span per start, and a card followed by its CVV or expiry (`4111 1111 1111 1111 123`) reads as
/// one longer number that is no card: without this the card itself would go unseen. What follows it is
/// redacted with it.
fn payment_card_as_written(candidate: &str) -> bool {
    if digits(candidate).is_some_and(|d| payment_card(&d)) {
        return true;
    }
    let Some(cut) = candidate.rfind([' ', '-']) else {
        return false;
    };
    let last = &candidate[cut + 1..];
    TRAILING_GROUP.contains(&last.len())
        && last.bytes().all(|b| b.is_ascii_digit())
        && digits(&candidate[..cut]).is_some_and(|d| d.len() >= 15 && payment_card(&d))
}

fn us_ssn(d: &[u8]) -> bool {
    if d.len() != 9 {
        return false;
    }
    let area = prefix_num(d, 3);
    let group = prefix_num(&d[3..], 2);
    let serial = prefix_num(&d[5..], 4);
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

fn aba_routing(d: &[u8]) -> bool {
    if d.len() != 9 || d.iter().all(|&x| x == 0) {
        return false;
    }
    let w = [3u32, 7, 1, 3, 7, 1, 3, 7, 1];
    let sum: u32 = d.iter().zip(w).map(|(&x, w)| u32::from(x) * w).sum();
    sum.is_multiple_of(10)
}

/// IBAN lengths by country (ISO 13616 registry).
fn iban_length(country: &str) -> Option<usize> {
    Some(match country {
        "AD" => 24,
        "AE" => 23,
        "AL" => 28,
        "AT" => 20,
        "AZ" => 28,
        "BA" => 20,
        "BE" => 16,
        "BG" => 22,
        "BH" => 22,
        "BR" => 29,
        "BY" => 28,
        "CH" => 21,
        "CR" => 22,
        "CY" => 28,
        "CZ" => 24,
        "DE" => 22,
        "DK" => 18,
        "DO" => 28,
        "EE" => 20,
        "EG" => 29,
        "ES" => 24,
        "FI" => 18,
        "FO" => 18,
        "FR" => 27,
        "GB" => 22,
        "GE" => 22,
        "GI" => 23,
        "GL" => 18,
        "GR" => 27,
        "GT" => 28,
        "HR" => 21,
        "HU" => 28,
        "IE" => 22,
        "IL" => 23,
        "IQ" => 23,
        "IS" => 26,
        "IT" => 27,
        "JO" => 30,
        "KW" => 30,
        "KZ" => 20,
        "LB" => 28,
        "LC" => 32,
        "LI" => 21,
        "LT" => 20,
        "LU" => 20,
        "LV" => 21,
        "MC" => 27,
        "MD" => 24,
        "ME" => 22,
        "MK" => 19,
        "MR" => 27,
        "MT" => 31,
        "MU" => 30,
        "NL" => 18,
        "NO" => 15,
        "PK" => 24,
        "PL" => 28,
        "PS" => 29,
        "PT" => 25,
        "QA" => 29,
        "RO" => 24,
        "RS" => 22,
        "SA" => 24,
        "SC" => 31,
        "SE" => 24,
        "SI" => 19,
        "SK" => 24,
        "SM" => 27,
        "ST" => 25,
        "SV" => 28,
        "TL" => 23,
        "TN" => 24,
        "TR" => 26,
        "UA" => 29,
        "VA" => 22,
        "VG" => 24,
        "XK" => 20,
        _ => return None,
    })
}

fn iban(s: &str) -> bool {
    let compact: Vec<u8> = s
        .bytes()
        .filter(|b| *b != b' ' && *b != b'-')
        .map(|b| b.to_ascii_uppercase())
        .collect();
    if compact.len() < 15 || !compact.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let country = std::str::from_utf8(&compact[..2]).unwrap_or("");
    if iban_length(country) != Some(compact.len()) || !compact[2..4].iter().all(u8::is_ascii_digit)
    {
        return false;
    }
    // Move the first four characters to the end, letters → 10..35, mod 97 must be 1.
    let mut rem = 0u32;
    for &b in compact[4..].iter().chain(&compact[..4]) {
        let v = if b.is_ascii_digit() {
            u32::from(b - b'0')
        } else {
            u32::from(b - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn phone(s: &str) -> bool {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).collect();
    if s.chars()
        .any(|c| !(c.is_ascii_digit() || " .-()+/".contains(c)))
    {
        return false;
    }
    (8..=15).contains(&digits.len()) && digits.iter().any(|&d| d != digits[0])
}

fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn jwt(s: &str) -> bool {
    let mut parts = s.split('.');
    let (Some(header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let is_object = |p: &str| {
        base64url_decode(p)
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.as_object().cloned())
    };
    is_object(header).is_some_and(|h| h.contains_key("alg")) && is_object(payload).is_some()
}

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it). Bitwise: the inputs are 30 bytes long.
fn crc32(data: &[u8]) -> u32 {
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

/// `n` in base62 (`0-9A-Za-z`), left-padded with `0` to 6 digits (a CRC-32 always fits: 62^6 > 2^32).
fn base62_6(mut n: u32) -> [u8; 6] {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// GitHub's and npm's token checksum: `<prefix>_` then 30 random base62 characters then 6 base62 characters of
/// their CRC-32. The prefix is whatever precedes the last `_`; the part after it must be exactly 36 characters.
fn crc32_base62(s: &str) -> bool {
    let Some((_, body)) = s.rsplit_once('_') else {
        return false;
    };
    let body = body.as_bytes();
    if body.len() != 36 || !body.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let (random, check) = body.split_at(30);
    base62_6(crc32(random)) == check
}

/// Shannon entropy of `s`'s bytes, in bits per byte.
fn shannon_bits(s: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in s {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Words that mark a value as a stand-in for a secret rather than one (matched anywhere in the value, ASCII
/// case-insensitively).
const PLACEHOLDER_MARKERS: &[&str] = &[
    "xxxx",
    "****",
    "....",
    "example",
    "placeholder",
    "changeme",
    "change_me",
    "your",
    "redacted",
    "dummy",
    "sample",
    "insert",
    "replace",
];

/// Whole values that are not secrets whatever their spelling.
const PLACEHOLDER_VALUES: &[&str] = &[
    "null",
    "none",
    "nil",
    "true",
    "false",
    "undefined",
    "empty",
    "password",
    "secret",
];

/// The value part of an assignment candidate: after the first `=` or `:` (then `=`/`>` of `:=`/`=>`,
/// spaces and quotes trimmed), or the whole candidate when it has no separator.
fn assigned_value(s: &str) -> &str {
    let value = match s.find(['=', ':']) {
        Some(i) => &s[i + 1..],
        None => s,
    };
    value
        .trim_start_matches(['=', '>', ' ', '\t', '"', '\'', '`'])
        .trim_end_matches(['"', '\'', '`'])
}

/// Whether `value` is a stand-in: a template (`${X}`, `{{x}}`, `<x>`, `%(x)s`), a path, a number, a
/// placeholder word, or a single repeated character.
fn is_placeholder(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    value.starts_with(['$', '{', '<', '%', '['])
        || is_path(value)
        || value.contains("://")
        || value.bytes().all(|b| b.is_ascii_digit())
        || PLACEHOLDER_VALUES.contains(&lower.as_str())
        || PLACEHOLDER_MARKERS.iter().any(|m| lower.contains(m))
        || value.bytes().all(|b| Some(b) == value.bytes().next())
}

/// A file path (`/run/secrets/db`, `~/.aws/key`, `./key.pem`), not base64 that happens to start with `/`: a
/// path has no `+` and does not end in base64's `=` padding.
fn is_path(value: &str) -> bool {
    (value.starts_with(['/', '~']) || value.starts_with("./"))
        && !value.contains('+')
        && !value.ends_with('=')
}

/// A value random enough to be a credential (see [`Validator::Entropy`]).
fn entropy(s: &str) -> bool {
    const MIN_LEN: usize = 8;
    const MIN_BITS: f64 = 3.0;
    let value = assigned_value(s);
    value.len() >= MIN_LEN && !is_placeholder(value) && shannon_bits(value.as_bytes()) >= MIN_BITS
}

/// Passwords in connection-string examples that stand for "put yours here".
const URL_PLACEHOLDER_PASSWORDS: &[&str] = &[
    "password", "pass", "passwd", "pwd", "secret", "changeme", "xxx", "****", "...",
];

/// The password of `scheme://user:password@host` is present and real (see [`Validator::UrlPassword`]).
fn url_password(s: &str) -> bool {
    let Some((_, rest)) = s.split_once("://") else {
        return false;
    };
    let Some((userinfo, _host)) = rest.rsplit_once('@') else {
        return false;
    };
    let Some((_user, password)) = userinfo.split_once(':') else {
        return false;
    };
    let lower = password.to_ascii_lowercase();
    !password.is_empty()
        && !password.starts_with(['$', '{', '<', '[', '*'])
        && !password.starts_with("%(")
        && !lower.contains("your")
        && !URL_PLACEHOLDER_PASSWORDS.contains(&lower.as_str())
        && !password
            .bytes()
            .all(|b| b == b'x' || b == b'X' || b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends the Luhn check digit to `body`.
    fn with_luhn(body: &str) -> String {
        for c in 0..10u8 {
            let s = format!("{body}{c}");
            if luhn(&digits(&s).expect("digits")) {
                return s;
            }
        }
        unreachable!("one check digit always fits")
    }

    /// A valid IBAN for `country` and `bban`, check digits computed.
    fn make_iban(country: &str, bban: &str) -> String {
        for cd in 2..=98 {
            let s = format!("{country}{cd:02}{bban}");
            if iban(&s) {
                return s;
            }
        }
        unreachable!("check digits exist")
    }

    fn make_aba(first8: &str) -> String {
        (0..10)
            .map(|c| format!("{first8}{c}"))
            .find(|s| aba_routing(&digits(s).expect("d")))
            .expect("fits")
    }

    #[test]
    fn luhn_valid_and_invalid() {
        for body in ["7992739871", "411111111111111", "3714496353984", "12345678"] {
            let valid = with_luhn(body);
            assert!(Validator::Luhn.check(&valid), "{valid}");
            let last = valid.as_bytes()[valid.len() - 1] - b'0';
            let broken = format!("{}{}", &valid[..valid.len() - 1], (last + 1) % 10);
            assert!(!Validator::Luhn.check(&broken), "{broken}");
        }
    }

    #[test]
    fn payment_cards_by_issuer() {
        let valid = [
            with_luhn("411111111111111"), // Visa 16
            with_luhn("555555555555444"), // Mastercard
            with_luhn("222100000000000"), // Mastercard 2-series
            with_luhn("37828224631000"),  // Amex 15
            with_luhn("601111111111111"), // Discover
            with_luhn("353011133330000"), // JCB
            with_luhn("3056930902590"),   // Diners 14
        ];
        for v in &valid {
            assert!(Validator::PaymentCard.check(v), "{v}");
            let grouped = v
                .as_bytes()
                .chunks(4)
                .map(|c| std::str::from_utf8(c).expect("ascii"))
                .collect::<Vec<_>>()
                .join(" ");
            assert!(Validator::PaymentCard.check(&grouped), "{grouped}");
            let dashed = grouped.replace(' ', "-");
            assert!(Validator::PaymentCard.check(&dashed), "{dashed}");
        }
        let invalid = [
            "4111111111111112".to_string(), // Luhn fails
            with_luhn("999999999999999"),   // no issuer
            with_luhn("411111111111"), // Visa with 13? no: 13 digits total is valid; this is 13
            with_luhn("1700000000000"), // 14-digit ms timestamp-like (no issuer)
            with_luhn("17000000000"),  // too short
        ];
        // The third one is a 13-digit Visa, which exists; check it separately.
        assert!(Validator::PaymentCard.check(&invalid[2]));
        for v in [&invalid[0], &invalid[1], &invalid[3], &invalid[4]] {
            assert!(!Validator::PaymentCard.check(v), "{v}");
        }
        // Non-ASCII digits never panic and never validate.
        assert!(!Validator::PaymentCard.check("٤١١١١١١١١١١١١١١١"));
    }

    #[test]
    fn ssn_ranges() {
        for ok in ["123-45-6789", "078 05 1120", "899-99-9999", "001010001"] {
            assert!(Validator::UsSsn.check(ok), "{ok}");
        }
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "999-12-3456",
            "123-00-4567",
            "123-45-0000",
            "12-345-678",
            "１２３",
        ] {
            assert!(!Validator::UsSsn.check(bad), "{bad}");
        }
    }

    #[test]
    fn iban_check_digits() {
        let cases = [
            ("DE", "370400440532013000"),
            ("GB", "NWBK60161331926819"),
            ("FR", "20041010050500013M02606"),
            ("NL", "ABNA0417164300"),
        ];
        for (country, bban) in cases {
            let v = make_iban(country, bban);
            assert!(Validator::Iban.check(&v), "{v}");
            let spaced = v
                .as_bytes()
                .chunks(4)
                .map(|c| std::str::from_utf8(c).expect("a"))
                .collect::<Vec<_>>()
                .join(" ");
            assert!(Validator::Iban.check(&spaced), "{spaced}");
            let mut broken = v.clone().into_bytes();
            let i = broken.len() - 1;
            broken[i] = if broken[i] == b'0' { b'1' } else { b'0' };
            assert!(!Validator::Iban.check(&String::from_utf8(broken).expect("a")));
        }
        assert!(Validator::Iban.check("GB82 WEST 1234 5698 7654 32"));
        assert!(!Validator::Iban.check("GB82 WEST 1234 5698 7654 33"));
        assert!(!Validator::Iban.check("XX82WEST12345698765432"));
        assert!(!Validator::Iban.check("DE89370400440532013000123"));
    }

    #[test]
    fn aba_checksum() {
        for first8 in ["02100002", "01100001", "12200066"] {
            let v = make_aba(first8);
            assert!(Validator::AbaRouting.check(&v), "{v}");
        }
        assert!(Validator::AbaRouting.check("021000021"));
        assert!(!Validator::AbaRouting.check("021000022"));
        assert!(!Validator::AbaRouting.check("000000000"));
    }

    #[test]
    fn phone_digit_counts() {
        for ok in [
            "+1 415 555 2671",
            "(415) 555-2671",
            "020 7946 0958",
            "+91 98765 43210",
        ] {
            assert!(Validator::Phone.check(ok), "{ok}");
        }
        for bad in [
            "123-4567",
            "+1 (111) 111-1111",
            "0000 000 0000",
            "+1234567890123456",
            "４１５-555-2671",
        ] {
            assert!(!Validator::Phone.check(bad), "{bad}");
        }
    }

    #[test]
    fn jwt_shape() {
        let jwt_ok = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert!(Validator::Jwt.check(jwt_ok));
        assert!(
            !Validator::Jwt.check("eyJmb28iOiJiYXIifQ.eyJzdWIiOiIxIn0.sig"),
            "header without alg"
        );
        assert!(!Validator::Jwt.check("abc.def.ghi"));
        assert!(!Validator::Jwt.check("a.b"));
    }

    /// `prefix` + `random` + the base62 CRC-32 of `random`: a token as GitHub and npm mint them.
    fn checksummed(prefix: &str, random: &str) -> String {
        let check = base62_6(crc32(random.as_bytes()));
        format!(
            "{prefix}{random}{}",
            std::str::from_utf8(&check).expect("ascii")
        )
    }

    #[test]
    fn crc32_and_base62_match_their_references() {
        // The CRC-32 check value of the standard ("123456789"), and base62 with `0-9A-Za-z` digits.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(&base62_6(0), b"000000");
        assert_eq!(&base62_6(61), b"00000z");
        assert_eq!(&base62_6(62), b"000010");
        assert_eq!(&base62_6(u32::MAX), b"4gfFC3");
    }

    #[test]
    fn crc32_base62_accepts_minted_tokens_and_refuses_any_change() {
        // Minted by an independent implementation (Python's binascii.crc32 and a base62 encoder).
        for t in [
            "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",
            "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",
            "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",
        ] {
            assert!(Validator::Crc32Base62.check(t), "{t}");
        }
        for (prefix, random) in [
            ("ghp_", "AbCdEfGhIjKlMnOpQrStUvWxYz0123"),
            ("ghs_", "000000000000000000000000000000"),
            ("npm_", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"),
        ] {
            let t = checksummed(prefix, random);
            assert!(Validator::Crc32Base62.check(&t), "{t}");
            // Every single-character change, in the random part or the checksum, is caught.
            for i in prefix.len()..t.len() {
                let mut b = t.clone().into_bytes();
                b[i] = if b[i] == b'a' { b'b' } else { b'a' };
                let changed = String::from_utf8(b).expect("ascii");
                assert!(!Validator::Crc32Base62.check(&changed), "{changed}");
            }
        }
        for bad in [
            "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
            "ghp_short",
            "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x",
            "no underscore",
            "ghp_Ky9Pf34qY6Nb3wWD25RQ4F5ZR3qa7y3gm1I-",
            "ghp_Ky9Pf34qY6Nb3wWD25RQ4F5ZR3qa7y3gm1Iﬁ",
        ] {
            assert!(!Validator::Crc32Base62.check(bad), "{bad}");
        }
    }

    #[test]
    fn entropy_accepts_random_values_and_refuses_stand_ins() {
        for ok in [
            "password=Xk29fLq0pZ!m",
            "DB_PASSWORD: \"lMz#Bk4opH1Dr8#h97s!\"",
            "api_key => 'AbC123xYz789QwErTy'",
            "token := e3b0c44298fc1c149afbf4c8996fb924",
            "sk_live_ibaZUPgHV7iB3m03nbqnsGpW",
            "SKe58b081006f7e3dfc967a64cb14028d5",
        ] {
            assert!(Validator::Entropy.check(ok), "{ok}");
        }
        for bad in [
            "password=changeme",
            "password=${DB_PASSWORD}",
            "api_key=<your key here>",
            "token=null",
            "token=undefined",
            "password=Password",
            "password=short1",
            "api_key=xxxxxxxxxxxxxxxx",
            "secret=****************",
            "token=aaaaaaaaaaaaaaaa",
            "token=abababababababab",
            "token_count=1234567890123",
            "secret=/run/secrets/db_password",
            "token=https://example.com/callback",
            "api_key=YOUR_API_KEY_GOES_HERE",
            "sk_live_xxxxxxxxxxxxxxxxxxxxxxxx",
            "password: EXAMPLEpassword123",
            "",
            "=",
        ] {
            assert!(!Validator::Entropy.check(bad), "{bad}");
        }
    }

    #[test]
    fn shannon_bits_of_known_strings() {
        assert_eq!(shannon_bits(b"aaaa"), 0.0);
        assert!((shannon_bits(b"abcd") - 2.0).abs() < 1e-9);
        assert!((shannon_bits(b"abcdefgh") - 3.0).abs() < 1e-9);
    }

    #[test]
    fn url_password_needs_a_real_password() {
        for ok in [
            "postgres://app:Xk29fLq0pZ@db.internal",
            "redis://:redispass123@cache",
            "mongodb+srv://admin:s3cr3t@cluster0.mongodb.net",
            "mysql://root:toor@localhost",
            "amqp://u:p%40ss@host",
        ] {
            assert!(Validator::UrlPassword.check(ok), "{ok}");
        }
        for bad in [
            "postgres://app@db.internal",
            "postgres://app:@db.internal",
            "postgres://user:password@localhost",
            "postgres://user:PASSWORD@localhost",
            "postgres://user:${DB_PASSWORD}@db",
            "postgres://user:<password>@db",
            "postgres://user:{{ pg_pass }}@db",
            "postgres://user:%(password)s@db",
            "postgres://user:****@db",
            "postgres://user:xxxxxx@db",
            "postgres://user:your_password@db",
            "not a url",
            "postgres://no-at-sign",
        ] {
            assert!(!Validator::UrlPassword.check(bad), "{bad}");
        }
    }
}
