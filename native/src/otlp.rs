//! Walking OTLP trace messages: the spans of a request in flattened order, a span's
//! fields, and attribute lists as text with Python dict semantics.

use crate::dict::Dict;
use crate::text::{parse_any, parse_kv, to_text, Any};
use crate::wire::{utf8, Reader, Result, FIXED32, FIXED64, LEN, VARINT};
use std::borrow::Cow;

pub type Entries<'a> = Vec<(&'a str, Cow<'a, str>)>;

/// One span's fields, as on the wire (a repeated scalar: the last; `status` merged).
pub struct SpanFields<'a> {
    pub tid: &'a [u8],
    pub sid: &'a [u8],
    pub parent: &'a [u8],
    pub state: &'a str,
    pub name: &'a str,
    pub kind: i32,
    pub start: u64,
    pub end: u64,
    pub flags: u32,
    pub d_attrs: u32,
    pub d_events: u32,
    pub d_links: u32,
    pub code: i32,
    pub message: &'a str,
    pub attrs: Vec<&'a [u8]>,
    pub events: Vec<&'a [u8]>,
    pub links: Vec<&'a [u8]>,
}

pub fn parse_span(raw: &[u8]) -> Result<SpanFields<'_>> {
    let mut r = Reader::new(raw);
    let (mut tid, mut sid, mut parent): (&[u8], &[u8], &[u8]) = (&[], &[], &[]);
    let (mut state, mut name) = ("", "");
    let (mut kind, mut start, mut end, mut flags) = (0i32, 0u64, 0u64, 0u32);
    let (mut d_attrs, mut d_events, mut d_links) = (0u32, 0u32, 0u32);
    let (mut code, mut message) = (0i32, "");
    let mut attrs: Vec<&[u8]> = Vec::new();
    let mut events: Vec<&[u8]> = Vec::new();
    let mut links: Vec<&[u8]> = Vec::new();
    while let Some((field, wt)) = r.field()? {
        match (field, wt) {
            (1, LEN) => tid = r.bytes()?,
            (2, LEN) => sid = r.bytes()?,
            (3, LEN) => state = utf8(r.bytes()?)?,
            (4, LEN) => parent = r.bytes()?,
            (5, LEN) => name = utf8(r.bytes()?)?,
            (6, VARINT) => kind = r.varint()? as i32,
            (7, FIXED64) => start = r.fixed64()?,
            (8, FIXED64) => end = r.fixed64()?,
            (9, LEN) => attrs.push(r.bytes()?),
            (10, VARINT) => d_attrs = r.varint()? as u32,
            (11, LEN) => events.push(r.bytes()?),
            (12, VARINT) => d_events = r.varint()? as u32,
            (13, LEN) => links.push(r.bytes()?),
            (14, VARINT) => d_links = r.varint()? as u32,
            (15, LEN) => {
                // A repeated message field merges: later fields win one by one.
                let mut s = Reader::new(r.bytes()?);
                while let Some((f, w)) = s.field()? {
                    match (f, w) {
                        (2, LEN) => message = utf8(s.bytes()?)?,
                        (3, VARINT) => code = s.varint()? as i32,
                        _ => s.skip(w)?,
                    }
                }
            }
            (16, FIXED32) => flags = r.fixed32()?,
            _ => r.skip(wt)?,
        }
    }
    Ok(SpanFields {
        tid,
        sid,
        parent,
        state,
        name,
        kind,
        start,
        end,
        flags,
        d_attrs,
        d_events,
        d_links,
        code,
        message,
        attrs,
        events,
        links,
    })
}

/// `attributes_text`: key → text in input order, a repeated key keeping its first place
/// and last value. `each` sees every (key, raw value) in input order.
/// One span event's fields.
pub struct EventFields<'a> {
    pub time: u64,
    pub name: &'a str,
    pub attrs: Vec<&'a [u8]>,
    pub dropped: u32,
}

pub fn parse_event(raw: &[u8]) -> Result<EventFields<'_>> {
    let mut e = Reader::new(raw);
    let mut out = EventFields {
        time: 0,
        name: "",
        attrs: Vec::new(),
        dropped: 0,
    };
    while let Some((f, w)) = e.field()? {
        match (f, w) {
            (1, FIXED64) => out.time = e.fixed64()?,
            (2, LEN) => out.name = utf8(e.bytes()?)?,
            (3, LEN) => out.attrs.push(e.bytes()?),
            (4, VARINT) => out.dropped = e.varint()? as u32,
            _ => e.skip(w)?,
        }
    }
    Ok(out)
}

pub fn texts<'a>(
    raws: &[&'a [u8]],
    mut each: impl FnMut(&str, &'a [u8]) -> Result<()>,
) -> Result<Entries<'a>> {
    let mut out = Dict::with_capacity(raws.len());
    for raw in raws {
        let (key, value) = parse_kv(raw)?;
        each(key, value)?;
        out.insert(key, to_text(&parse_any(value)?)?);
    }
    Ok(out.entries)
}

/// The resource's attribute texts and its `service.name` (the last one, when a string).
pub fn resource_texts<'a>(raws: &[&'a [u8]]) -> Result<(Entries<'a>, Option<&'a str>)> {
    let mut service: Option<&'a str> = None;
    let entries = texts(raws, |key, value| {
        if key == "service.name" {
            service = match parse_any(value)? {
                Any::Str(s) => Some(s),
                _ => None,
            };
        }
        Ok(())
    })?;
    Ok((entries, service))
}

pub struct ScopeInfo<'a> {
    pub name: &'a str,
    pub version: &'a str,
    /// Every occurrence of `ScopeSpans.scope` (several merge), and `schema_url`.
    pub raw: Vec<&'a [u8]>,
    pub schema_url: &'a [u8],
}

pub struct ResourceInfo<'a> {
    /// Its attributes' `KeyValue`s.
    pub attrs: Vec<&'a [u8]>,
    /// Every occurrence of `ResourceSpans.resource` (several merge), and `schema_url`.
    pub raw: Vec<&'a [u8]>,
    pub schema_url: &'a [u8],
}

pub struct SpanRef<'a> {
    pub resource: usize,
    pub scope: usize,
    pub raw: &'a [u8],
}

/// The message's resources, scopes and spans, in order.
pub struct Index<'a> {
    pub resources: Vec<ResourceInfo<'a>>,
    pub scopes: Vec<ScopeInfo<'a>>,
    pub spans: Vec<SpanRef<'a>>,
}

impl<'a> Index<'a> {
    pub fn build(message: &'a [u8]) -> Result<Self> {
        let mut index = Index {
            resources: Vec::new(),
            scopes: Vec::new(),
            spans: Vec::new(),
        };
        let mut r = Reader::new(message);
        while let Some((field, wt)) = r.field()? {
            if (field, wt) != (1, LEN) {
                r.skip(wt)?;
                continue;
            }
            let resource = index.resources.len();
            let mut info = ResourceInfo {
                attrs: Vec::new(),
                raw: Vec::new(),
                schema_url: &[],
            };
            let mut scope_spans: Vec<&'a [u8]> = Vec::new();
            let mut rs = Reader::new(r.bytes()?);
            while let Some((f, w)) = rs.field()? {
                match (f, w) {
                    (1, LEN) => {
                        let raw = rs.bytes()?;
                        info.raw.push(raw);
                        let mut res = Reader::new(raw);
                        while let Some((f2, w2)) = res.field()? {
                            if (f2, w2) == (1, LEN) {
                                info.attrs.push(res.bytes()?);
                            } else {
                                res.skip(w2)?;
                            }
                        }
                    }
                    (2, LEN) => scope_spans.push(rs.bytes()?),
                    (3, LEN) => info.schema_url = utf8(rs.bytes()?)?.as_bytes(),
                    _ => rs.skip(w)?,
                }
            }
            index.resources.push(info);
            for raw in scope_spans {
                let scope = index.scopes.len();
                let mut info = ScopeInfo {
                    name: "",
                    version: "",
                    raw: Vec::new(),
                    schema_url: &[],
                };
                let mut ss = Reader::new(raw);
                while let Some((f, w)) = ss.field()? {
                    match (f, w) {
                        (1, LEN) => {
                            let raw = ss.bytes()?;
                            info.raw.push(raw);
                            let mut sc = Reader::new(raw);
                            while let Some((f2, w2)) = sc.field()? {
                                match (f2, w2) {
                                    (1, LEN) => info.name = utf8(sc.bytes()?)?,
                                    (2, LEN) => info.version = utf8(sc.bytes()?)?,
                                    _ => sc.skip(w2)?,
                                }
                            }
                        }
                        (2, LEN) => index.spans.push(SpanRef {
                            resource,
                            scope,
                            raw: ss.bytes()?,
                        }),
                        (3, LEN) => info.schema_url = utf8(ss.bytes()?)?.as_bytes(),
                        _ => ss.skip(w)?,
                    }
                }
                index.scopes.push(info);
            }
        }
        Ok(index)
    }
}
