//! The rule engine through its public API: the default pack, normalisation, spans, false-positive controls,
//! overlap resolution, redaction, and errors that point rule authors at `file:line`.

use std::path::{Path, PathBuf};

use promptgate::rules::{self, load, redact, Action, Budget, Direction, RuleSet};

use crate::support::repo_root;

fn default_pack() -> RuleSet {
    load(&repo_root().join("rules"), &Budget::default())
        .expect("the default pack loads and its examples pass")
}

/// Rule ids and the matched original text, in order.
fn found(set: &RuleSet, text: &str) -> Vec<(String, String)> {
    set.scan(text, Direction::Request)
        .iter()
        .map(|m| (set.rule(m.rule).id.clone(), text[m.range()].to_string()))
        .collect()
}

#[test]
fn default_pack_covers_the_documented_kinds() {
    let set = default_pack();
    let ids: Vec<&str> = set.rules().iter().map(|r| r.id.as_str()).collect();
    for id in [
        "pii.email",
        "pii.payment_card",
        "pii.us_ssn",
        "pii.phone",
        "pii.iban",
        "secret.aws_access_key_id",
        "secret.openai_api_key",
        "secret.anthropic_api_key",
        "secret.github_token",
        "secret.slack_token",
        "secret.private_key",
        "secret.jwt",
        "confidential.codename",
    ] {
        assert!(ids.contains(&id), "missing {id}");
    }
    for r in set.rules() {
        assert_eq!(
            r.direction,
            rules::Direction::Both,
            "{}: default rules apply both ways",
            r.id
        );
        // Secrets block, except where a false positive would cost a request (see rules/README.md).
        let redacted_secrets = ["secret.generic_assignment", "secret.stripe_test_key"];
        let want = if r.id.starts_with("pii.") || redacted_secrets.contains(&r.id.as_str()) {
            Action::Redact
        } else {
            Action::Block
        };
        assert_eq!(r.action, want, "{}", r.id);
    }
}

#[test]
fn evasions_are_normalised_and_spans_cut_the_original() {
    let set = default_pack();
    let cases: &[(&str, &str, &str)] = &[
        // (text, rule, original bytes the match must cover)
        (
            "mail jane\u{200B}.doe@exa\u{200D}mple.com now",
            "pii.email",
            "jane\u{200B}.doe@exa\u{200D}mple.com",
        ),
        (
            "card ４１１１ １１１１ １１１１ １１１１ ok",
            "pii.payment_card",
            "４１１１ １１１１ １１１１ １１１１",
        ),
        (
            "ssn 123\u{2013}45\u{2014}6789 ok",
            "pii.us_ssn",
            "123\u{2013}45\u{2014}6789",
        ),
        (
            "ssn 123\u{00A0}45\u{00A0}6789 ok",
            "pii.us_ssn",
            "123\u{00A0}45\u{00A0}6789",
        ),
        (
            "key AKIA\u{200B}IOSFODNN7EXAMPLE",
            "secret.aws_access_key_id",
            "AKIA\u{200B}IOSFODNN7EXAMPLE",
        ),
        (
            "about \u{0420}r\u{043E}\u{0458}\u{0435}\u{0441}t Bluebird today",
            "confidential.codename",
            "\u{0420}r\u{043E}\u{0458}\u{0435}\u{0441}t Bluebird",
        ),
        (
            "die GROSSBAUSTELLE NORDHAFEN",
            "confidential.codename",
            "GROSSBAUSTELLE NORDHAFEN",
        ),
        (
            "die Großbaustelle Nordhafen",
            "confidential.codename",
            "Großbaustelle Nordhafen",
        ),
        (
            "ＰＲＯＪＥＣＴ ＢＬＵＥＢＩＲＤ",
            "confidential.codename",
            "ＰＲＯＪＥＣＴ ＢＬＵＥＢＩＲＤ",
        ),
    ];
    for (text, rule, covered) in cases {
        let got = found(&set, text);
        assert_eq!(
            got,
            vec![(rule.to_string(), covered.to_string())],
            "{text:?}"
        );
    }
}

#[test]
fn false_positive_controls_do_not_match() {
    let set = default_pack();
    let clean = [
        "4111 1111 1111 1112 is not Luhn-valid",
        "1234 5678 9012 3456",
        "000-12-3456 and 666-12-3456 and 923-45-6789 and 123-00-4567 and 123-45-0000",
        "event at 1700000000000 and 1732272000123 ms",
        "id 550e8400-e29b-41d4-a716-446655440000",
        "commit 9fceb02d0ae598e95dc970b74767f19372d61af8 and e83c5163316f89bfbde7d9ab23ca2e25604af290",
        "model gpt-4o-2024-08-06 and claude-3-5-sonnet-20241022, version 1.2.3, v10.15.7",
        "ISBN 978-3-16-148410-0, price 1,234.56 EUR, 2024-08-06T12:00:00Z",
        "the task-list-items-for-the-sprint and desk-lamp-with-a-very-long-name-indeed",
        "Write to me at my usual address; the bluebird sang at noon.",
    ];
    for text in clean {
        assert_eq!(found(&set, text), vec![], "{text:?}");
    }
}

#[test]
fn non_ascii_digits_reach_validators_without_panicking() {
    // `\d` in a rule author's pattern matches Arabic-Indic and Devanagari digits; validators must say no.
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "d.toml",
        r#"
[[rule]]
id = "t.card"
description = "card with \\d"
regex = { pattern = '\d{13,19}' }
validator = "payment_card"
action = "redact"
examples = { match = ["4111111111111111"], no_match = ["٤١١١١١١١١١١١١١١١", "४१११११११११११११११"] }
"#,
    );
    let set = load(dir.path(), &Budget::default()).expect("loads");
    assert!(set
        .scan("٤١١١١١١١١١١١١١١١ ४१११११११११११११११", Direction::Both)
        .is_empty());
}

#[test]
fn the_most_severe_action_wins_on_overlap() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "o.toml",
        r#"
[[rule]]
id = "t.word"
description = "a word"
keywords = { terms = ["alpha beta"] }
action = "redact"

[[rule]]
id = "t.secret"
description = "overlapping secret"
keywords = { terms = ["beta gamma"] }
action = "block"

[[rule]]
id = "t.note"
description = "logged only"
keywords = { terms = ["gamma delta"] }
action = "log"
"#,
    );
    let set = load(dir.path(), &Budget::default()).expect("loads");
    let text = "x alpha beta gamma delta y";
    let got: Vec<(&str, &str)> = set
        .scan(text, Direction::Both)
        .iter()
        .map(|m| (set.rule(m.rule).id.as_str(), &text[m.range()]))
        .collect();
    // One match, named by the block rule, covering every overlapping candidate: nothing of any leaks.
    assert_eq!(got, [("t.secret", "alpha beta gamma delta")]);
}

#[test]
fn direction_selects_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "d.toml",
        r#"
[[rule]]
id = "t.req"
description = "request only"
keywords = { terms = ["inbound"] }
direction = "request"
action = "redact"

[[rule]]
id = "t.resp"
description = "response only"
keywords = { terms = ["outbound"] }
direction = "response"
action = "redact"
"#,
    );
    let set = load(dir.path(), &Budget::default()).expect("loads");
    let ids = |flow| -> Vec<String> {
        set.scan("inbound outbound", flow)
            .iter()
            .map(|m| set.rule(m.rule).id.clone())
            .collect()
    };
    assert_eq!(ids(Direction::Request), ["t.req"]);
    assert_eq!(ids(Direction::Response), ["t.resp"]);
}

#[test]
fn redaction_is_a_pure_function_of_text_and_matches() {
    let text = "a ✓ b ✓ c";
    let first = text.find('✓').expect("found");
    let second = text.rfind('✓').expect("found");
    let out = redact(
        text,
        [(first..first + 3, "[X]"), (second..second + 3, "[Y]")],
    );
    assert_eq!(out, "a [X] b [Y] c");
    assert_eq!(redact(text, []), text);

    let set = default_pack();
    let text = "Mail jane\u{200B}.doe@example.com, card 4111-1111-1111-1111, SSN 078 05 1120.";
    let m = set.scan(text, Direction::Request);
    let out = redact(
        text,
        m.iter()
            .map(|m| (m.range(), set.rule(m.rule).replacement.as_str())),
    );
    assert_eq!(out, "Mail [EMAIL], card [CARD], SSN [SSN].");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&p, text).expect("write");
    p
}

/// `(file name, rule file text, expected error fragment)`: each must be reported with `file:line`.
#[test]
fn authoring_errors_name_file_line_rule_and_problem() {
    let cases = [
        ("unknown field", "[[rule]]\nid = \"a.b\"\ndescription = \"d\"\nkeywords = { terms = [\"x\"] }\naction = \"redact\"\ncolour = \"red\"\n", "bad.toml:6: unknown field `colour`"),
        ("bad regex", "\n[[rule]]\nid = \"a.re\"\ndescription = \"d\"\nregex = { pattern = '(unclosed' }\naction = \"block\"\n", "bad.toml:2: rule 'a.re': bad regex: regex parse error:"),
        ("empty-matching regex", "[[rule]]\nid = \"a.re\"\ndescription = \"d\"\nregex = { pattern = 'x*' }\naction = \"block\"\n", "bad.toml:1: rule 'a.re': regex can match the empty string"),
        ("missing terms file", "[[rule]]\nid = \"a.kw\"\ndescription = \"d\"\nkeywords = { terms_file = \"terms/nope.txt\" }\naction = \"block\"\n", "bad.toml:1: rule 'a.kw': terms_file \"terms/nope.txt\""),
        ("failing example", "[[rule]]\nid = \"a.kw\"\ndescription = \"d\"\nkeywords = { terms = [\"secret\"] }\naction = \"block\"\nexamples = { match = [\"nothing here\"] }\n", "bad.toml:1: rule 'a.kw': example \"nothing here\" should match but does not"),
        ("no_match that matches", "[[rule]]\nid = \"a.kw\"\ndescription = \"d\"\nkeywords = { terms = [\"secret\"] }\naction = \"block\"\nexamples = { no_match = [\"a secret\"] }\n", "should not match but does"),
        ("bad action", "[[rule]]\nid = \"a.kw\"\ndescription = \"d\"\nkeywords = { terms = [\"x\"] }\naction = \"explode\"\n", "bad.toml:5: unknown variant `explode`"),
        ("no matcher", "[[rule]]\nid = \"a.kw\"\ndescription = \"d\"\naction = \"block\"\n", "rule 'a.kw': no matcher"),
        ("bad id", "[[rule]]\nid = \"Not An Id\"\ndescription = \"d\"\nkeywords = { terms = [\"x\"] }\naction = \"block\"\n", "invalid id"),
    ];
    for (what, text, want) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "bad.toml", text);
        let errors = load(dir.path(), &Budget::default()).expect_err(what);
        let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            all.iter().any(|e| e.contains(want)),
            "{what}: want {want:?} in {all:?}"
        );
    }
}

#[test]
fn duplicate_ids_across_files_point_at_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rule = "[[rule]]\nid = \"dup.rule\"\ndescription = \"d\"\nkeywords = { terms = [\"x\"] }\naction = \"log\"\n";
    write(dir.path(), "a.toml", rule);
    write(dir.path(), "b.toml", &format!("\n\n{rule}"));
    let errors = load(dir.path(), &Budget::default()).expect_err("duplicate");
    let e = errors[0].to_string();
    assert!(
        e.contains("b.toml:3: rule 'dup.rule': duplicate id: also defined at")
            && e.contains("a.toml:1"),
        "{e}"
    );
}

#[test]
fn an_empty_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let errors = load(dir.path(), &Budget::default()).expect_err("empty");
    assert!(errors[0].to_string().contains("no rules"), "{}", errors[0]);
}

#[test]
fn budgets_refuse_oversized_sets() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "k.toml", "[[rule]]\nid = \"k.many\"\ndescription = \"d\"\nkeywords = { terms_file = \"terms/many.txt\" }\naction = \"log\"\n");
    let terms: String = (0..1000).map(|i| format!("term{i}\n")).collect();
    write(dir.path(), "terms/many.txt", &terms);
    let tight = Budget {
        max_terms: 999,
        ..Budget::default()
    };
    let e = load(dir.path(), &tight).expect_err("over max_terms")[0].to_string();
    assert!(
        e.contains("1000 keyword terms, over the budget of 999"),
        "{e}"
    );
    let instant = Budget {
        max_compile: std::time::Duration::ZERO,
        ..Budget::default()
    };
    let e = load(dir.path(), &instant).expect_err("over compile time")[0].to_string();
    assert!(e.contains("over the budget of 0 ms"), "{e}");
    assert!(load(dir.path(), &Budget::default()).is_ok());
}

#[test]
fn version_is_a_content_hash() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let rule = "[[rule]]\nid = \"v.r\"\ndescription = \"d\"\nkeywords = { terms = [\"x\"] }\naction = \"log\"\n";
    write(a.path(), "r.toml", rule);
    write(b.path(), "r.toml", rule);
    let va = load(a.path(), &Budget::default())
        .expect("a")
        .version()
        .to_string();
    assert_eq!(va, load(b.path(), &Budget::default()).expect("b").version());
    assert_eq!(va.len(), 12);
    write(b.path(), "r.toml", &rule.replace("\"x\"", "\"y\""));
    assert_ne!(
        va,
        load(b.path(), &Budget::default()).expect("b2").version()
    );
}

#[test]
fn a_regex_match_cannot_hide_a_more_severe_one_inside_it() {
    // The email pattern starts first and covers the key; the key's block must still be seen.
    let set = default_pack();
    let text = "contact AKIAIOSFODNN7EXAMPLE@example.com now";
    let got = found(&set, text);
    assert_eq!(
        got,
        vec![(
            "secret.aws_access_key_id".to_string(),
            "AKIAIOSFODNN7EXAMPLE@example.com".to_string()
        )]
    );

    // Two regexes in one multi-pattern group: a redact match starting first must not hide a block one.
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "g.toml",
        r#"
[[rule]]
id = "t.wide"
description = "wide, redact"
regex = { pattern = '[a-z]+ [a-z]+ [a-z]+' }
case_sensitive = true
action = "redact"

[[rule]]
id = "t.narrow"
description = "narrow, block"
regex = { pattern = 'b[a-z]ta g[a-z]mma' }
case_sensitive = true
action = "block"
"#,
    );
    let set = load(dir.path(), &Budget::default()).expect("loads");
    let text = "alpha beta gamma";
    let got: Vec<&str> = set
        .scan(text, Direction::Both)
        .iter()
        .map(|m| set.rule(m.rule).id.as_str())
        .collect();
    assert_eq!(got, ["t.narrow"]);
}

/// One code point of every kind of `Default_Ignorable_Code_Point`: tag characters, bidi marks, embeddings,
/// overrides and isolates, variation selectors, the grapheme joiner, Hangul fillers, and the rarer controls.
const IGNORABLES: &[char] = &[
    '\u{E0001}',
    '\u{E0041}',
    '\u{E007F}', // tag characters
    '\u{200E}',
    '\u{200F}',
    '\u{061C}', // bidi marks
    '\u{202A}',
    '\u{202E}',
    '\u{2066}',
    '\u{2069}', // bidi embeddings, overrides, isolates
    '\u{FE00}',
    '\u{FE0F}',
    '\u{E0100}',
    '\u{E01EF}', // variation selectors
    '\u{180B}',
    '\u{180F}', // Mongolian free variation selectors
    '\u{034F}', // combining grapheme joiner
    '\u{115F}',
    '\u{1160}',
    '\u{3164}',
    '\u{FFA0}', // Hangul fillers
    '\u{17B4}',
    '\u{206A}',
    '\u{1BCA0}',
    '\u{1D173}',
    '\u{FFF0}',
    '\u{E0FFF}', // the rest
];

/// `(value, rule, replacement)`: a regex, regexes with validators (Luhn, SSN ranges), a folded keyword.
const VALUES: &[(&str, &str, &str)] = &[
    (
        "AKIAIOSFODNN7EXAMPLE",
        "secret.aws_access_key_id",
        "[AWS_ACCESS_KEY_ID]",
    ),
    ("jane.doe@example.com", "pii.email", "[EMAIL]"),
    ("4111 1111 1111 1111", "pii.payment_card", "[CARD]"),
    ("078-05-1120", "pii.us_ssn", "[SSN]"),
    (
        "Project Bluebird",
        "confidential.codename",
        "[CONFIDENTIAL]",
    ),
];

/// `value` with `z` between every two of its characters.
fn interleaved(value: &str, z: char) -> String {
    let mut out = String::new();
    for (i, c) in value.chars().enumerate() {
        if i > 0 {
            out.push(z);
        }
        out.push(c);
    }
    out
}

#[test]
fn default_ignorables_inside_a_value_hide_nothing_and_are_cut_with_it() {
    let set = default_pack();
    for &z in IGNORABLES {
        for &(value, rule, replacement) in VALUES {
            let hidden = interleaved(value, z);
            // Invisible characters just outside the value belong to the text around it.
            let text = format!("say {z}{hidden}{z} ok");
            let got = found(&set, &text);
            assert_eq!(
                got,
                vec![(rule.to_string(), hidden.clone())],
                "U+{:04X} in {value:?}",
                z as u32
            );
            let m = set.scan(&text, Direction::Request);
            let out = redact(
                &text,
                m.iter()
                    .map(|m| (m.range(), set.rule(m.rule).replacement.as_str())),
            );
            assert_eq!(out, format!("say {z}{replacement}{z} ok"));
        }
    }
}

#[test]
fn a_growing_text_holds_a_value_with_ignorables_from_its_first_character() {
    let set = default_pack();
    for &z in IGNORABLES {
        for &(value, _, _) in VALUES {
            let hidden = interleaved(value, z);
            let text = format!("Before {z}{hidden}{z} after.");
            let start = text.find(&hidden).expect("placed");
            // Every cut inside the value (the invisible characters' own bytes included): what arrived of the
            // value is held, from its first character, not from the invisible one before it.
            for cut in start + 1..start + hidden.len() {
                if !text.is_char_boundary(cut) {
                    continue;
                }
                let mut cache = rules::PrefixCache::default();
                let mut growing = rules::Growing::default();
                set.grow(&mut growing, &mut cache, &text[..cut], 0);
                assert_eq!(
                    growing.hold_from(),
                    start,
                    "U+{:04X} in {value:?}, cut at {cut}",
                    z as u32
                );
            }
        }
    }
}

#[test]
fn characters_that_expand_under_nfkc_cannot_inflate_the_view() {
    // U+FDFA is one code point and 18 under NFKC; 1.8 MB of it made views of 20 MB for every matcher.
    for c in [
        '\u{FDFA}',
        '\u{FDFB}',
        '㌖',
        '㍿',
        '½',
        '⑽',
        'ﬃ',
        '\u{1F12A}',
    ] {
        let text: String = std::iter::repeat_n(c, 1_800_000 / c.len_utf8()).collect();
        for fold in [false, true] {
            let view = rules::View::new(&text, fold);
            assert!(
                view.text().len() <= 4 * text.len(),
                "U+{:04X} fold={fold}: {} bytes of view for {}",
                c as u32,
                view.text().len(),
                text.len()
            );
        }
    }
    // Values among them are still found, and their spans are exact.
    let set = default_pack();
    let filler = "\u{FDFA}".repeat(100_000);
    let text = format!("{filler}jane.doe@example.com{filler} 078-05-1120 {filler}");
    assert_eq!(
        found(&set, &text),
        vec![
            ("pii.email".to_string(), "jane.doe@example.com".to_string()),
            ("pii.us_ssn".to_string(), "078-05-1120".to_string()),
        ]
    );
}

#[test]
fn keyword_terms_and_text_meet_on_either_side_of_the_expansion_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "x.toml",
        r#"
[[rule]]
id = "t.ligature"
description = "a term written with a character past the bound"
keywords = { terms = ["\uFDFA"] }
action = "redact"

[[rule]]
id = "t.apartment"
description = "a term a squared word within the bound normalises to"
keywords = { terms = ["アパート"] }
action = "redact"
"#,
    );
    let set = load(dir.path(), &Budget::default()).expect("loads");
    let text = "a \u{FDFA} b ㌀ c";
    assert_eq!(
        found(&set, text),
        vec![
            ("t.ligature".to_string(), "\u{FDFA}".to_string()),
            ("t.apartment".to_string(), "㌀".to_string()),
        ]
    );
}
