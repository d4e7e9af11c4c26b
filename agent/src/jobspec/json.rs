//! A small JSON reader that keeps the byte offset of every key and value, so
//! JSON job files get `LINE:COLUMN` in their errors like HCL ones (serde_json's
//! `Value` drops positions).

use super::tree::{Kind, Value};

/// A syntax error: byte offset and message.
pub(crate) type JsonError = (usize, String);

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 128;

/// Parses one JSON document.
pub(crate) fn parse(src: &str) -> Result<Value, JsonError> {
    let mut p = Parser {
        s: src.as_bytes(),
        src,
        i: 0,
    };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i < p.s.len() {
        return Err((p.i, "trailing characters after the JSON document".into()));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    src: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8, what: &str) -> Result<(), JsonError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err((self.i, format!("expected {what}")))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, JsonError> {
        if depth > MAX_DEPTH {
            return Err((self.i, "JSON nested too deeply".into()));
        }
        let at = self.i;
        let kind = match self.peek() {
            None => return Err((at, "unexpected end of input, expected a value".into())),
            Some(b'{') => {
                self.i += 1;
                let mut entries = Vec::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        let kat = self.i;
                        if self.peek() != Some(b'"') {
                            return Err((kat, "expected a string key".into()));
                        }
                        let key = self.string()?;
                        self.ws();
                        self.expect(b':', "':' after an object key")?;
                        self.ws();
                        let v = self.value(depth + 1)?;
                        entries.push((key, kat, v));
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err((self.i, "expected ',' or '}'".into())),
                        }
                    }
                }
                Kind::Object(entries)
            }
            Some(b'[') => {
                self.i += 1;
                let mut elems = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        elems.push(self.value(depth + 1)?);
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err((self.i, "expected ',' or ']'".into())),
                        }
                    }
                }
                Kind::Array(elems)
            }
            Some(b'"') => Kind::Str(self.string()?),
            Some(b't') => self.word("true", Kind::Bool(true))?,
            Some(b'f') => self.word("false", Kind::Bool(false))?,
            Some(b'n') => self.word("null", Kind::Null)?,
            Some(c) if c == b'-' || c.is_ascii_digit() => self.number()?,
            Some(_) => return Err((at, "expected a value".into())),
        };
        Ok(Value { at, kind })
    }

    fn word(&mut self, w: &str, k: Kind) -> Result<Kind, JsonError> {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(k)
        } else {
            Err((self.i, "expected a value".into()))
        }
    }

    fn number(&mut self) -> Result<Kind, JsonError> {
        let at = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let digits = |p: &mut Self| {
            let st = p.i;
            while p.peek().is_some_and(|c| c.is_ascii_digit()) {
                p.i += 1;
            }
            p.i - st
        };
        if digits(self) == 0 {
            return Err((self.i, "expected digits".into()));
        }
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.i += 1;
            float = true;
            if digits(self) == 0 {
                return Err((self.i, "expected digits after '.'".into()));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            float = true;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return Err((self.i, "expected digits in the exponent".into()));
            }
        }
        let text = &self.src[at..self.i];
        if !float {
            if let Ok(i) = text.parse::<i64>() {
                return Ok(Kind::Int(i));
            }
        }
        text.parse::<f64>()
            .map(Kind::Float)
            .map_err(|_| (at, format!("bad number {text}")))
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let h = self
            .src
            .get(self.i..self.i + 4)
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or((self.i, "expected four hex digits after \\u".to_string()))?;
        self.i += 4;
        u32::from_str_radix(h, 16).map_err(|_| (self.i, "bad \\u escape".into()))
    }

    fn string(&mut self) -> Result<String, JsonError> {
        let at = self.i;
        self.i += 1; // opening quote
        let mut out = String::new();
        loop {
            let run = self.i;
            while self
                .peek()
                .is_some_and(|c| c != b'"' && c != b'\\' && c >= 0x20)
            {
                self.i += 1;
            }
            // Only ASCII bytes stop the run, so it ends on a char boundary.
            out.push_str(&self.src[run..self.i]);
            match self.peek() {
                None => return Err((at, "unterminated string".into())),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let esc = self
                        .peek()
                        .ok_or((self.i, "unterminated string".to_string()))?;
                    self.i += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let eat = self.i - 2;
                            let mut cp = self.hex4()?;
                            if (0xD800..0xDC00).contains(&cp) {
                                if self.s[self.i..].starts_with(b"\\u") {
                                    self.i += 2;
                                    let lo = self.hex4()?;
                                    if !(0xDC00..0xE000).contains(&lo) {
                                        return Err((eat, "bad surrogate pair".into()));
                                    }
                                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                                } else {
                                    return Err((eat, "lone surrogate in \\u escape".into()));
                                }
                            }
                            out.push(
                                char::from_u32(cp).ok_or((eat, "bad \\u escape".to_string()))?,
                            );
                        }
                        _ => return Err((self.i - 2, "bad escape in string".into())),
                    }
                }
                Some(_) => return Err((self.i, "control character in string".into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_locates() {
        let v = parse(r#"{"a": [1, -2.5, "x\u00e9\n", true, null], "b": {}}"#).unwrap();
        let Kind::Object(e) = v.kind else { panic!() };
        assert_eq!(e[0].0, "a");
        assert_eq!(e[0].1, 1);
        assert_eq!(e[1].1, 42);
        assert!(parse("{\"a\": }").is_err());
        assert_eq!(parse("{\"a\": 1,}").unwrap_err().0, 8);
        assert!(parse("[1] x").is_err());
        assert!(parse("\"\\ud83d\\ude00\"").is_ok());
        assert!(parse(&"[".repeat(1000)).is_err());
    }
}
