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
}
