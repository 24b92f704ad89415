//! The hash chain that makes the audit file tamper-evident: what a line's `seq` and `chain` fields are, how
//! the writer seals a line and how a reader takes the seal back off. Pure: no files.
//!
//! A sealed line is the record's JSON object with two fields appended last:
//! `…,"seq":N,"chain":"<64 hex>"}`. `seq` counts every line the writer writes, across segments, from 1.
//! `chain` is `SHA-256(previous line's chain, as 32 raw bytes ‖ the line without its chain field)` — "the line
//! without its chain field" being the written bytes with the suffix `,"chain":"<hex>"` removed, so
//! `…,"seq":N}`. A reader therefore never re-serialises JSON: it cuts a fixed-length suffix and hashes bytes.
//!
//! Each segment opens with a header record, itself sealed:
//! `{"type":"audit.segment","segment":S,"prev":"<hex>","ts":"…","seq":N,"chain":"…"}`, where `prev` is the
//! chain value of the last line of segment S−1 (64 zeros for the first segment ever written). The header
//! chains from `prev`, so a segment verifies on its own from its first line, and a directory whose oldest
//! segments were removed by retention verifies from its first present segment.

use sha2::{Digest, Sha256};

/// A chain value.
pub type Link = [u8; 32];

/// The `prev` of the very first segment.
pub const GENESIS: Link = [0; 32];

/// `type` of a segment's header record.
pub const SEGMENT: &str = "audit.segment";

/// `,"chain":"` + 64 hex digits + `"}`: the fixed-length suffix of every sealed line.
const SUFFIX_LEN: usize = 10 + 64 + 2;

/// Where the chain stands: the last line's chain value and `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tip {
    pub link: Link,
    pub seq: u64,
}

impl Tip {
    /// Before any line.
    pub const START: Tip = Tip {
        link: GENESIS,
        seq: 0,
    };

    /// Seals one record (a JSON object, without a newline) as the next line: appends `seq` and `chain` and
    /// moves the tip. A record that is not a JSON object (never produced by the writer) is wrapped so the
    /// line stays one object.
    pub fn seal(&mut self, mut record: Vec<u8>) -> Vec<u8> {
        if record.last() != Some(&b'}') || record.first() != Some(&b'{') {
            record = serde_json::json!({ "type": "audit.unknown" })
                .to_string()
                .into_bytes();
        }
        let seq = self.seq + 1;
        record.pop();
        if record.len() > 1 {
            record.push(b',');
        }
        record.extend_from_slice(b"\"seq\":");
        record.extend_from_slice(seq.to_string().as_bytes());
        record.push(b'}');
        let link = link(&self.link, &record);
        record.pop();
        record.extend_from_slice(b",\"chain\":\"");
        record.extend_from_slice(hex::encode(link).as_bytes());
        record.extend_from_slice(b"\"}");
        *self = Tip { link, seq };
        record
    }
}

/// `SHA-256(prev ‖ body)`.
pub fn link(prev: &Link, body: &[u8]) -> Link {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(body);
    h.finalize().into()
}

/// The header record of segment `segment`, before sealing.
pub fn header(segment: u64, prev: &Link, ts: &str) -> Vec<u8> {
    serde_json::json!({
        "type": SEGMENT,
        "segment": segment,
        "prev": hex::encode(prev),
        "ts": ts,
    })
    .to_string()
    .into_bytes()
}

/// A sealed line taken apart: the bytes its chain value covers and the value it states.
#[derive(Debug, PartialEq, Eq)]
pub struct Unsealed {
    /// The line without its chain field (`…,"seq":N}`).
    pub body: Vec<u8>,
    pub chain: Link,
}

/// Takes a line's seal off; `None` when the line does not end with a well-formed chain field.
pub fn unseal(line: &[u8]) -> Option<Unsealed> {
    if line.len() < SUFFIX_LEN + 1 {
        return None;
    }
    let (head, suffix) = line.split_at(line.len() - SUFFIX_LEN);
    let hex_part = suffix
        .strip_prefix(b",\"chain\":\"")?
        .strip_suffix(b"\"}")?;
    let mut chain = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut chain).ok()?;
    let mut body = Vec::with_capacity(head.len() + 1);
    body.extend_from_slice(head);
    body.push(b'}');
    Some(Unsealed { body, chain })
}

/// The chain value a line states, if it is sealed (what a restarted writer continues from).
pub fn tip_of(line: &[u8]) -> Option<Tip> {
    let u = unseal(line)?;
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    let s: Seq = serde_json::from_slice(&u.body).ok()?;
    Some(Tip {
        link: u.chain,
        seq: s.seq,
    })
}

/// Parses a hex chain value (a header's `prev`).
pub fn parse_link(hex_text: &str) -> Option<Link> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_line_unseals_to_the_bytes_its_chain_covers() {
        let mut tip = Tip::START;
        let a = tip.seal(br#"{"type":"x","n":1}"#.to_vec());
        let first = tip;
        let b = tip.seal(br#"{"type":"y"}"#.to_vec());
        assert_eq!(tip.seq, 2);
        let ua = unseal(&a).expect("sealed");
        assert_eq!(ua.body, br#"{"type":"x","n":1,"seq":1}"#);
        assert_eq!(ua.chain, link(&GENESIS, &ua.body));
        assert_eq!(ua.chain, first.link);
        let ub = unseal(&b).expect("sealed");
        assert_eq!(ub.chain, link(&ua.chain, &ub.body));
        assert_eq!(tip_of(&b), Some(tip));
        let v: serde_json::Value = serde_json::from_slice(&b).expect("still JSON");
        assert_eq!(v["seq"], 2);
        assert_eq!(v["chain"], hex::encode(tip.link));
        // An edit anywhere in the body changes what the chain value must be.
        let edited = String::from_utf8(a.clone())
            .expect("utf8")
            .replace("\"n\":1", "\"n\":2");
        let ue = unseal(edited.as_bytes()).expect("sealed");
        assert_ne!(link(&GENESIS, &ue.body), ue.chain);
    }

    #[test]
    fn unsealed_and_malformed_lines_are_told_apart() {
        for bad in [
            &b"{}"[..],
            br#"{"type":"x"}"#,
            br#"{"type":"x","chain":"zz"}"#,
            br#"{"type":"x","chain":"00000000000000000000000000000000000000000000000000000000000000zz"}"#,
        ] {
            assert_eq!(unseal(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let mut tip = Tip::START;
        let odd = tip.seal(b"not json".to_vec());
        assert!(serde_json::from_slice::<serde_json::Value>(&odd).is_ok());
        let empty = tip.seal(b"{}".to_vec());
        assert_eq!(unseal(&empty).expect("sealed").body, br#"{"seq":2}"#);
    }
}
