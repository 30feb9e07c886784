//! OTLP `AnyValue`s as text, exactly as `pipelines.spans.model.to_text` renders them:
//! strings as is, ints in decimal, bools `true`/`false`, doubles as Python prints them
//! (integral ones without `.0`), bytes base64, unset `""`, arrays and maps as compact JSON
//! (Python's `json.dumps(..., separators=(",", ":"), ensure_ascii=False)`; non-finite
//! doubles as the strings "inf"/"-inf"/"nan"; a repeated map key keeps its first position
//! and its last value, like a Python dict).

use crate::dict::Dict;
use crate::wire::{utf8, Reader, Result, FIXED64, LEN, VARINT};
use std::borrow::Cow;

/// One decoded `AnyValue` (its oneof's last member on the wire wins; message members
/// seen more than once merge, as protobuf parsers do).
pub enum Any<'a> {
    Unset,
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    /// `string_value_strindex` (a profiles-only index into a string table): Python reads
    /// it as no value it knows, `None`, whose text is `null`.
    StrIndex,
    /// The raw `ArrayValue` / `KeyValueList` messages, in wire order.
    Array(Vec<&'a [u8]>),
    KvList(Vec<&'a [u8]>),
}

pub fn parse_any(buf: &[u8]) -> Result<Any<'_>> {
    let mut r = Reader::new(buf);
    let mut out = Any::Unset;
    while let Some((field, wt)) = r.field()? {
        match (field, wt) {
            (1, LEN) => out = Any::Str(utf8(r.bytes()?)?),
            (2, VARINT) => out = Any::Bool(r.varint()? != 0),
            (3, VARINT) => out = Any::Int(r.varint()? as i64),
            (4, FIXED64) => out = Any::Double(f64::from_bits(r.fixed64()?)),
            (5, LEN) => {
                let raw = r.bytes()?;
                match &mut out {
                    Any::Array(parts) => parts.push(raw),
                    _ => out = Any::Array(vec![raw]),
                }
            }
            (6, LEN) => {
                let raw = r.bytes()?;
                match &mut out {
                    Any::KvList(parts) => parts.push(raw),
                    _ => out = Any::KvList(vec![raw]),
                }
            }
            (7, LEN) => out = Any::Bytes(r.bytes()?),
            (8, VARINT) => {
                r.varint()?;
                out = Any::StrIndex;
            }
            _ => r.skip(wt)?,
        }
    }
    Ok(out)
}

/// A `KeyValue`: its key and its value's raw `AnyValue` (empty when absent). A value given
/// twice, both non-empty, is refused: protobuf merges the two, which is not built here.
pub fn parse_kv(buf: &[u8]) -> Result<(&str, &[u8])> {
    let mut r = Reader::new(buf);
    let mut key = "";
    let mut value: &[u8] = &[];
    while let Some((field, wt)) = r.field()? {
        match (field, wt) {
            (1, LEN) => key = utf8(r.bytes()?)?,
            (2, LEN) => {
                let raw = r.bytes()?;
                if !raw.is_empty() {
                    if !value.is_empty() {
                        return Err("a KeyValue with its value repeated".into());
                    }
                    value = raw;
                }
            }
            _ => r.skip(wt)?,
        }
    }
    Ok((key, value))
}

/// The text of one value (see the module docstring).
pub fn to_text<'a>(value: &Any<'a>) -> Result<Cow<'a, str>> {
    Ok(match value {
        Any::Unset => Cow::Borrowed(""),
        Any::StrIndex => Cow::Borrowed("null"),
        Any::Str(s) => Cow::Borrowed(*s),
        Any::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Any::Int(i) => Cow::Owned(i.to_string()),
        Any::Double(f) => Cow::Owned(float_text(*f)),
        Any::Bytes(b) => Cow::Owned(base64(b)),
        Any::Array(_) | Any::KvList(_) => {
            let mut out = String::new();
            json(value, &mut out)?;
            Cow::Owned(out)
        }
    })
}

/// Python's `json.dumps` of the value as `to_python` + `_jsonable` make it.
pub fn json(value: &Any<'_>, out: &mut String) -> Result<()> {
    match value {
        Any::Unset | Any::StrIndex => out.push_str("null"),
        Any::Str(s) => json_string(s, out),
        Any::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Any::Int(i) => out.push_str(&i.to_string()),
        Any::Double(f) => {
            if f.is_finite() {
                out.push_str(&py_repr(*f));
            } else {
                json_string(&py_repr(*f), out);
            }
        }
        Any::Bytes(b) => {
            out.push('"');
            out.push_str(&base64(b));
            out.push('"');
        }
        Any::Array(parts) => {
            out.push('[');
            let mut first = true;
            for part in parts {
                let mut r = Reader::new(part);
                while let Some((field, wt)) = r.field()? {
                    if (field, wt) == (1, LEN) {
                        if !first {
                            out.push(',');
                        }
                        first = false;
                        json(&parse_any(r.bytes()?)?, out)?;
                    } else {
                        r.skip(wt)?;
                    }
                }
            }
            out.push(']');
        }
        Any::KvList(parts) => {
            let mut entries: Dict<'_, &[u8]> = Dict::with_capacity(4);
            for part in parts {
                let mut r = Reader::new(part);
                while let Some((field, wt)) = r.field()? {
                    if (field, wt) == (1, LEN) {
                        let (key, raw) = parse_kv(r.bytes()?)?;
                        entries.insert(key, raw);
                    } else {
                        r.skip(wt)?;
                    }
                }
            }
            out.push('{');
            for (i, (key, raw)) in entries.entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(key, out);
                out.push(':');
                json(&parse_any(raw)?, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// A JSON string as Python's encoder writes it with `ensure_ascii=False`.
pub fn json_string(s: &str, out: &mut String) {
    out.push('"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `model._float_text`: integral finite values below 1e21 as integers, else `repr`.
pub fn float_text(f: f64) -> String {
    if f.is_finite() && f == f.trunc() && f.abs() < 1e21 {
        // Exact: every integral double below 1e21 fits an i128.
        return (f as i128).to_string();
    }
    py_repr(f)
}

/// Python's `repr(float)`: the shortest round-tripping digits, positional for decimal
/// exponents -4..16, else `d.ddde+XX`.
pub fn py_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    // Rust's `{:e}` gives the shortest round-trip digits ("d.ddde-X" or "de+X"); of the
    // several strings of that length that may round-trip, Python prints the one nearest
    // the value: the correctly rounded one, when it round-trips.
    let mut sci = format!("{:e}", f.abs());
    let len = sci
        .split_once('e')
        .map_or(0, |(m, _)| m.chars().filter(|c| *c != '.').count());
    let nearest = format!("{:.*e}", len.saturating_sub(1), f.abs());
    if nearest.parse::<f64>() == Ok(f.abs()) {
        sci = nearest;
    }
    let (mantissa, exp) = sci.split_once('e').expect("LowerExp has an exponent");
    let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if !(-5 < exp && exp < 16) {
        let (head, tail) = digits.split_at(1);
        let frac = if tail.is_empty() {
            String::new()
        } else {
            format!(".{tail}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{head}{frac}e{esign}{:02}", exp.abs());
    }
    if exp < 0 {
        let zeros = "0".repeat((-exp - 1) as usize);
        return format!("{sign}0.{zeros}{digits}");
    }
    let point = exp as usize + 1;
    if digits.len() <= point {
        let zeros = "0".repeat(point - digits.len());
        format!("{sign}{digits}{zeros}.0")
    } else {
        format!("{sign}{}.{}", &digits[..point], &digits[point..])
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(B64[(n >> 18) as usize & 63] as char);
        out.push(B64[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            B64[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            B64[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}
