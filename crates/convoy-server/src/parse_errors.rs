//! hyper's own answers to requests it cannot parse, given JSON bodies.
//!
//! hyper answers a request line it cannot parse (400), a head over its
//! header limits (431) and a URI too long (414) itself, before any service
//! runs, with an empty body, and offers no hook for that body. Every other
//! error the server writes is `{"error": "…"}`, so these are rewritten on
//! their way out: a response head that is a 4xx with `content-length: 0`
//! and `connection: close` is one hyper wrote itself (the router's errors
//! always carry a body), and it is replaced by the same status with a JSON
//! body saying what was wrong.

/// The JSON answer that replaces `written`, when `written` is exactly one of
/// hyper's own empty-bodied error answers; `None` for anything else.
pub(crate) fn json_for(written: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(written).ok()?;
    let head = text.strip_suffix("\r\n\r\n")?;
    if head.contains("\r\n\r\n") {
        return None;
    }
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let code = status_line.strip_prefix("HTTP/1.1 ")?.get(..3)?;
    let message = match code {
        "400" => "the request could not be read as HTTP/1.1: check the request line and headers",
        "414" => "the request's URI is too long",
        "431" => "the request's headers are too large or too many",
        _ => return None,
    };
    let headers: Vec<&str> = lines.collect();
    let has = |name: &str, value: &str| {
        headers.iter().any(|h| {
            h.split_once(':').is_some_and(|(n, v)| {
                n.trim().eq_ignore_ascii_case(name) && v.trim().eq_ignore_ascii_case(value)
            })
        })
    };
    if !(has("content-length", "0") && has("connection", "close")) {
        return None;
    }
    let body = serde_json::json!({ "error": message }).to_string();
    let mut out = format!("{status_line}\r\n");
    for h in &headers {
        if !h.to_ascii_lowercase().starts_with("content-length:") {
            out.push_str(h);
            out.push_str("\r\n");
        }
    }
    out.push_str("content-type: application/json\r\n");
    out.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    Some(out.into_bytes())
}

/// A replacement being written in place of what hyper asked to write:
/// `claimed` is the length hyper is told was written once all of `bytes`
/// is out.
#[derive(Debug)]
pub(crate) struct Replacing {
    pub bytes: Vec<u8>,
    pub written: usize,
    pub claimed: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_own_answers_get_a_json_body() {
        for (code, words) in [
            ("400 Bad Request", "request line"),
            ("431 Request Header Fields Too Large", "headers"),
        ] {
            let hyper = format!(
                "HTTP/1.1 {code}\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 14:56:45 GMT\r\n\r\n"
            );
            let out = String::from_utf8(json_for(hyper.as_bytes()).expect("rewritten")).unwrap();
            let (head, body) = out.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with(&format!("HTTP/1.1 {code}\r\n")), "{out}");
            assert!(head.contains("date: Sun"), "{out}");
            assert!(head.contains("content-type: application/json"), "{out}");
            assert!(
                head.contains(&format!("content-length: {}", body.len())),
                "{out}"
            );
            assert!(!head.contains("content-length: 0"), "{out}");
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert!(json["error"].as_str().unwrap().contains(words), "{out}");
        }
    }

    #[test]
    fn everything_else_is_left_alone() {
        for other in [
            // The router's own errors carry a body.
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n",
            // Not closing: not hyper's parse error.
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            // A success, a 404, an empty 200.
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            // A head and a body in one write.
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\nx\r\n\r\n",
            "not HTTP at all\r\n\r\n",
        ] {
            assert!(json_for(other.as_bytes()).is_none(), "{other:?}");
        }
    }
}
