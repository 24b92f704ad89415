//! Request bodies arrive compressed sometimes; they are inspected decoded, with a cap on the decoded size so
//! a small compressed body cannot expand without bound.

use std::io::Read;

/// The encodings the gateway can inspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentEncoding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl ContentEncoding {
    /// Parses a `Content-Encoding` header value; `None` for anything the gateway cannot decode.
    pub fn parse(v: Option<&str>) -> Option<Self> {
        match v.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => Some(Self::Identity),
            Some("gzip") | Some("x-gzip") => Some(Self::Gzip),
            Some("deflate") => Some(Self::Deflate),
            Some("br") => Some(Self::Brotli),
            Some("zstd") => Some(Self::Zstd),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the decoded body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the body is not valid {0} data")]
    Corrupt(&'static str),
}

/// Decodes `body` (at most `cap` decoded bytes).
pub fn decode_body(enc: ContentEncoding, body: &[u8], cap: usize) -> Result<Vec<u8>, DecodeError> {
    let (name, reader): (&'static str, Box<dyn Read + '_>) = match enc {
        ContentEncoding::Identity => return Ok(body.to_vec()),
        ContentEncoding::Gzip => ("gzip", Box::new(flate2::read::MultiGzDecoder::new(body))),
        // HTTP's "deflate" is zlib-wrapped; some clients send raw deflate: try zlib first.
        ContentEncoding::Deflate => {
            return read_capped(flate2::read::ZlibDecoder::new(body), cap, "deflate")
                .or_else(|_| read_capped(flate2::read::DeflateDecoder::new(body), cap, "deflate"))
        }
        ContentEncoding::Brotli => ("br", Box::new(brotli::Decompressor::new(body, 8192))),
        ContentEncoding::Zstd => (
            "zstd",
            Box::new(
                zstd::stream::read::Decoder::new(body).map_err(|_| DecodeError::Corrupt("zstd"))?,
            ),
        ),
    };
    read_capped(reader, cap, name)
}

fn read_capped(r: impl Read, cap: usize, name: &'static str) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    r.take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| DecodeError::Corrupt(name))?;
    if out.len() > cap {
        return Err(DecodeError::TooLarge(cap));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn round_trips_and_caps() {
        let plain = b"hello hello hello hello".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).expect("gz");
        let gz = gz.finish().expect("gz");
        assert_eq!(
            decode_body(ContentEncoding::Gzip, &gz, 1 << 20).expect("decodes"),
            plain
        );
        assert_eq!(
            decode_body(ContentEncoding::Gzip, &gz, 100),
            Err(DecodeError::TooLarge(100))
        );
        assert_eq!(
            decode_body(ContentEncoding::Gzip, b"not gzip", 100),
            Err(DecodeError::Corrupt("gzip"))
        );
        let zs = zstd::encode_all(&plain[..], 3).expect("zstd");
        assert_eq!(
            decode_body(ContentEncoding::Zstd, &zs, 1 << 20).expect("decodes"),
            plain
        );
        assert_eq!(ContentEncoding::parse(Some("compress")), None);
        assert_eq!(
            ContentEncoding::parse(None),
            Some(ContentEncoding::Identity)
        );
    }
}
