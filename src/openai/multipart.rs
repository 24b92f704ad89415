//! `multipart/form-data` bodies (file and audio uploads: `/v1/audio/transcriptions`, `/v1/files`, …): just
//! enough to read one text field, such as the `model` a key's scope must check. Pure, bounded by the body it
//! is given, linear in it.

/// The boundary of a `multipart/form-data` content type (`None` for any other type).
pub fn boundary(content_type: &str) -> Option<&str> {
    let mut parts = content_type.split(';');
    let kind = parts.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"'))
            .filter(|b| !b.is_empty() && b.len() <= 200)
    })
}

/// The value of the first form field called `name` (not a file), if the body has one and it is UTF-8 text of
/// at most 1 KiB.
pub fn field(body: &[u8], boundary: &str, name: &str) -> Option<String> {
    let delimiter = format!("--{boundary}");
    let finder = memchr::memmem::Finder::new(delimiter.as_bytes());
    let starts: Vec<usize> = finder.find_iter(body).collect();
    for pair in starts.windows(2) {
        let part = &body[pair[0] + delimiter.len()..pair[1]];
        // A part: CRLF, its headers, a blank line, its content, CRLF (before the next delimiter).
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let Some(split) = memchr::memmem::find(part, b"\r\n\r\n") else {
            continue;
        };
        let (headers, content) = (&part[..split], &part[split + 4..]);
        let Ok(headers) = std::str::from_utf8(headers) else {
            continue;
        };
        if !names_field(headers, name) {
            continue;
        }
        let content = content.strip_suffix(b"\r\n").unwrap_or(content);
        return (content.len() <= 1024)
            .then(|| std::str::from_utf8(content).ok().map(str::to_string))
            .flatten();
    }
    None
}

/// Whether a part's headers name it the form field `name` (and not a file upload).
fn names_field(headers: &str, name: &str) -> bool {
    headers.lines().any(|line| {
        let Some((k, v)) = line.split_once(':') else {
            return false;
        };
        if !k.trim().eq_ignore_ascii_case("content-disposition") {
            return false;
        }
        let mut params = v.split(';').skip(1).filter_map(|p| p.split_once('='));
        let is_file = v.to_ascii_lowercase().contains("filename");
        !is_file
            && params.any(|(k, v)| {
                k.trim().eq_ignore_ascii_case("name") && v.trim().trim_matches('"') == name
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_from_content_types() {
        let cases = [
            ("multipart/form-data; boundary=abc", Some("abc")),
            ("Multipart/Form-Data;boundary=\"a b\"", Some("a b")),
            ("multipart/form-data", None),
            ("application/json; boundary=abc", None),
        ];
        for (ct, want) in cases {
            assert_eq!(boundary(ct), want, "{ct}");
        }
    }

    #[test]
    fn a_form_field_is_found_and_files_are_not_taken_for_it() {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"model\"\r\nContent-Type: audio/mpeg\r\n\r\n\x00\x01model\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\r\n--XyZ--\r\n";
        assert_eq!(
            field(body.as_bytes(), "XyZ", "model").as_deref(),
            Some("whisper-1")
        );
        assert_eq!(
            field(body.as_bytes(), "XyZ", "language").as_deref(),
            Some("en")
        );
        assert_eq!(field(body.as_bytes(), "XyZ", "prompt"), None);
        assert_eq!(field(body.as_bytes(), "other", "model"), None);
        assert_eq!(field(b"", "XyZ", "model"), None);
    }
}
