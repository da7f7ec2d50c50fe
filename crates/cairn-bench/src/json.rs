//! A small JSON reader (enough for fio's `--output-format=json`) and string escaping for the
//! benchmark's own `--json` output. The workspace has no JSON dependency and this needs little.

use anyhow::{Result, bail};

#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Self::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn index(&self, i: usize) -> Option<&Json> {
        match self {
            Self::Array(items) => items.get(i),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Number(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(text) => Some(text),
            _ => None,
        }
    }

    /// Follows a path of object keys.
    pub fn path(&self, keys: &[&str]) -> Option<&Json> {
        keys.iter().try_fold(self, |value, key| value.get(key))
    }
}

pub fn parse(text: &str) -> Result<Json> {
    let mut parser = Parser { bytes: text.as_bytes(), position: 0 };
    let value = parser.value(0)?;
    parser.skip_whitespace();
    if parser.position != parser.bytes.len() {
        bail!("trailing characters after JSON at byte {}", parser.position);
    }
    Ok(value)
}

/// Nesting limit: fio's output is about 5 levels deep.
const DEPTH_MAX: usize = 64;

struct Parser<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Parser<'_> {
    fn skip_whitespace(&mut self) {
        while self.position < self.bytes.len() && self.bytes[self.position].is_ascii_whitespace() {
            self.position += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes.get(self.position).copied()
    }

    fn expect(&mut self, byte: u8) -> Result<()> {
        if self.peek() != Some(byte) {
            bail!("expected '{}' at byte {}", byte as char, self.position);
        }
        self.position += 1;
        Ok(())
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json> {
        if self.bytes[self.position..].starts_with(word.as_bytes()) {
            self.position += word.len();
            Ok(value)
        } else {
            bail!("unexpected token at byte {}", self.position)
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json> {
        if depth > DEPTH_MAX {
            bail!("JSON nested too deeply");
        }
        match self.peek() {
            Some(b'{') => {
                self.position += 1;
                let mut members = Vec::new();
                if self.peek() == Some(b'}') {
                    self.position += 1;
                    return Ok(Json::Object(members));
                }
                loop {
                    let key = self.string()?;
                    self.expect(b':')?;
                    members.push((key, self.value(depth + 1)?));
                    match self.peek() {
                        Some(b',') => self.position += 1,
                        Some(b'}') => {
                            self.position += 1;
                            return Ok(Json::Object(members));
                        }
                        _ => bail!("expected ',' or '}}' at byte {}", self.position),
                    }
                }
            }
            Some(b'[') => {
                self.position += 1;
                let mut items = Vec::new();
                if self.peek() == Some(b']') {
                    self.position += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    match self.peek() {
                        Some(b',') => self.position += 1,
                        Some(b']') => {
                            self.position += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => bail!("expected ',' or ']' at byte {}", self.position),
                    }
                }
            }
            Some(b'"') => Ok(Json::String(self.string()?)),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(_) => self.number(),
            None => bail!("unexpected end of JSON"),
        }
    }

    fn number(&mut self) -> Result<Json> {
        let start = self.position;
        while self.position < self.bytes.len()
            && matches!(self.bytes[self.position], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        {
            self.position += 1;
        }
        let text = std::str::from_utf8(&self.bytes[start..self.position])?;
        match text.parse::<f64>() {
            Ok(n) => Ok(Json::Number(n)),
            Err(_) => bail!("bad number {text:?} at byte {start}"),
        }
    }

    fn string(&mut self) -> Result<String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let Some(&byte) = self.bytes.get(self.position) else {
                bail!("unterminated string");
            };
            self.position += 1;
            match byte {
                b'"' => return Ok(String::from_utf8(out)?),
                b'\\' => {
                    let Some(&escaped) = self.bytes.get(self.position) else {
                        bail!("unterminated escape");
                    };
                    self.position += 1;
                    match escaped {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let hex = self.bytes.get(self.position..self.position + 4);
                            let code = hex
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok());
                            let Some(code) = code else { bail!("bad \\u escape") };
                            self.position += 4;
                            let c = char::from_u32(code).unwrap_or('\u{fffd}');
                            out.extend_from_slice(c.to_string().as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                other => out.push(other),
            }
        }
    }
}

/// A JSON string literal.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number; `null` for values JSON cannot hold.
pub fn number(value: f64) -> String {
    if value.is_finite() { format!("{value:.3}") } else { "null".to_owned() }
}

/// A JSON array of numbers.
pub fn list(values: &[f64]) -> String {
    format!("[{}]", values.iter().map(|v| number(*v)).collect::<Vec<_>>().join(","))
}

/// A number, or `null`.
pub fn optional(value: Option<f64>) -> String {
    value.map_or_else(|| "null".to_owned(), number)
}

/// Opens a benchmark report object: `{`, then the date, the command and the parameters (an
/// already-encoded JSON object), each on its own line.
pub fn report_header(command: &str, parameters: &str) -> String {
    format!(
        "{{\n  \"date\": {},\n  \"command\": {},\n  \"parameters\": {parameters},\n",
        quote(&crate::report::now_utc()),
        quote(command)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fio_like_output() {
        let text = r#"{"fio version":"fio-3.33","jobs":[{"error":0,"write":{"io_bytes":1024,"iops":2.5e3,
            "x":[true,false,null],"s":"a\"b\u0041"}}]}"#;
        let json = parse(text).expect("valid JSON");
        let job = json.get("jobs").and_then(|j| j.index(0)).expect("one job");
        assert_eq!(job.path(&["write", "io_bytes"]).and_then(Json::as_f64), Some(1024.0));
        assert_eq!(job.path(&["write", "iops"]).and_then(Json::as_f64), Some(2500.0));
        assert_eq!(job.path(&["write", "s"]), Some(&Json::String("a\"bA".to_owned())));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("{\"a\":}").is_err());
        assert!(parse("[1,2").is_err());
        assert!(parse("{} x").is_err());
    }

    #[test]
    fn quotes_strings() {
        assert_eq!(quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }
}
