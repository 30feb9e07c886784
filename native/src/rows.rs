//! OTLP `ExportTraceServiceRequest` bytes → the spans table's columns, for chosen spans.
//!
//! The rows equal what `pipelines.spans.table.to_arrow` builds from the decoded spans
//! (the Python tests compare both on the same messages). Spans are chosen by their
//! position in the message's flattened order (resource spans, scope spans, spans), which
//! is `SpanView.index` for OTLP protobuf input. The spans are not validated here: callers
//! pass only spans the Python decoder accepted.

use crate::columns::{Bytes, Map, Prim};
use crate::otlp::{parse_event, parse_span, resource_texts, texts, Entries, Index};
use crate::text::{parse_any, to_text, Any};
use crate::wire::{utf8, Reader, Result, LEN, VARINT};

/// The column type a promoted attribute converts to.
#[derive(Clone, Copy, PartialEq)]
pub enum Promote {
    Str,
    Int(u32),
}

impl Promote {
    pub fn parse(name: &str) -> Option<Promote> {
        Some(match name {
            "string" => Promote::Str,
            "int8" => Promote::Int(8),
            "int16" => Promote::Int(16),
            "int32" => Promote::Int(32),
            "int64" => Promote::Int(64),
            _ => return None,
        })
    }
}

pub enum PromotedCol {
    Str(Bytes),
    Int(Prim<i64>),
}

#[derive(Default)]
pub struct Events {
    pub offsets: Vec<i32>,
    pub time: Prim<i64>,
    pub name: Bytes,
    pub attrs: Map,
    pub dropped: Prim<i32>,
}

#[derive(Default)]
pub struct Links {
    pub offsets: Vec<i32>,
    pub trace_id: Bytes,
    pub span_id: Bytes,
    pub state: Bytes,
    pub attrs: Map,
    pub dropped: Prim<i32>,
}

/// Every column of the rows built so far.
pub struct Columns {
    pub rows: usize,
    pub trace_id: Bytes,
    pub span_id: Bytes,
    pub parent_span_id: Bytes,
    pub trace_state: Bytes,
    pub flags: Prim<i64>,
    pub name: Bytes,
    pub kind: Prim<i32>,
    pub start_us: Prim<i64>,
    pub end_us: Prim<i64>,
    pub duration_ns: Prim<i64>,
    pub status_code: Prim<i32>,
    pub status_message: Bytes,
    pub service_name: Bytes,
    pub scope_name: Bytes,
    pub scope_version: Bytes,
    pub resource_attributes: Map,
    pub span_attributes: Map,
    pub events: Events,
    pub links: Links,
    pub dropped_attributes: Prim<i32>,
    pub dropped_events: Prim<i32>,
    pub dropped_links: Prim<i32>,
    pub promoted_keys: Vec<(String, Promote)>,
    pub promoted: Vec<PromotedCol>,
    /// A string column may not grow past this (Arrow's i32 offsets: 2 GiB at most).
    pub max_column_bytes: usize,
}

impl Columns {
    pub fn new(promoted: Vec<(String, Promote)>) -> Self {
        let cols = promoted
            .iter()
            .map(|(_, t)| match t {
                Promote::Str => PromotedCol::Str(Bytes::default()),
                Promote::Int(_) => PromotedCol::Int(Prim::default()),
            })
            .collect();
        let mut events = Events::default();
        events.offsets.push(0);
        let mut links = Links::default();
        links.offsets.push(0);
        Columns {
            rows: 0,
            trace_id: Bytes::default(),
            span_id: Bytes::default(),
            parent_span_id: Bytes::default(),
            trace_state: Bytes::default(),
            flags: Prim::default(),
            name: Bytes::default(),
            kind: Prim::default(),
            start_us: Prim::default(),
            end_us: Prim::default(),
            duration_ns: Prim::default(),
            status_code: Prim::default(),
            status_message: Bytes::default(),
            service_name: Bytes::default(),
            scope_name: Bytes::default(),
            scope_version: Bytes::default(),
            resource_attributes: Map::default(),
            span_attributes: Map::default(),
            events,
            links,
            dropped_attributes: Prim::default(),
            dropped_events: Prim::default(),
            dropped_links: Prim::default(),
            promoted_keys: promoted,
            promoted: cols,
            max_column_bytes: i32::MAX as usize,
        }
    }

    /// Append the rows of `spans` (flattened positions, in this order) of `message`.
    pub fn add_message(&mut self, message: &[u8], spans: &[usize]) -> Result<()> {
        if spans.is_empty() {
            return Ok(());
        }
        let index = Index::build(message)?;
        let mut resources: Vec<Option<(Entries<'_>, Option<&str>)>> =
            (0..index.resources.len()).map(|_| None).collect();
        for &at in spans {
            let span = index.spans.get(at).ok_or_else(|| {
                format!("span {at} asked for, the message has {}", index.spans.len())
            })?;
            let slot = &mut resources[span.resource];
            if slot.is_none() {
                *slot = Some(resource_texts(&index.resources[span.resource].attrs)?);
            }
            let (entries, service) = slot.as_ref().expect("filled above");
            self.resource_attributes.push_entries(entries);
            match service {
                Some(s) if !s.is_empty() => self.service_name.push(s.as_bytes()),
                _ => self.service_name.push_null(),
            }
            let scope = &index.scopes[span.scope];
            self.scope_name.push_or_null(scope.name.as_bytes());
            self.scope_version.push_or_null(scope.version.as_bytes());
            self.add_span(span.raw)?;
            if !self.fits() {
                return Err(format!(
                    "a column over {} bytes in one call",
                    self.max_column_bytes
                ));
            }
        }
        Ok(())
    }

    /// Every string/binary column under 2 GiB (Arrow's i32 offsets).
    fn fits(&self) -> bool {
        let maps = [
            &self.span_attributes,
            &self.resource_attributes,
            &self.events.attrs,
            &self.links.attrs,
        ];
        let columns = [
            &self.trace_id,
            &self.span_id,
            &self.parent_span_id,
            &self.trace_state,
            &self.name,
            &self.status_message,
            &self.service_name,
            &self.scope_name,
            &self.scope_version,
            &self.events.name,
            &self.links.trace_id,
            &self.links.span_id,
            &self.links.state,
        ];
        let promoted = self.promoted.iter().all(|c| match c {
            PromotedCol::Str(b) => b.fits(self.max_column_bytes),
            PromotedCol::Int(_) => true,
        });
        let limit = self.max_column_bytes;
        promoted && maps.iter().all(|m| m.fits(limit)) && columns.iter().all(|c| c.fits(limit))
    }

    fn add_span(&mut self, raw: &[u8]) -> Result<()> {
        let f = parse_span(raw)?;
        self.rows += 1;
        self.trace_id.push(f.tid);
        self.span_id.push(f.sid);
        if f.parent.iter().all(|b| *b == 0) {
            self.parent_span_id.push_null();
        } else {
            self.parent_span_id.push(f.parent);
        }
        self.trace_state.push_or_null(f.state.as_bytes());
        self.flags.push(i64::from(f.flags));
        self.name.push(f.name.as_bytes());
        self.kind
            .push(if (0..=5).contains(&f.kind) { f.kind } else { 0 });
        let (start, end) = (f.start as i64, f.end as i64);
        self.start_us.push(start.div_euclid(1000));
        self.end_us.push(end.div_euclid(1000));
        self.duration_ns.push(end - start);
        self.status_code
            .push(if (0..=2).contains(&f.code) { f.code } else { 0 });
        self.status_message.push_or_null(f.message.as_bytes());
        self.dropped_attributes.push(saturate(f.d_attrs));
        self.dropped_events.push(saturate(f.d_events));
        self.dropped_links.push(saturate(f.d_links));

        let mut hot: Vec<Option<Any<'_>>> = (0..self.promoted_keys.len()).map(|_| None).collect();
        let entries = {
            let keys = &self.promoted_keys;
            texts(&f.attrs, |key, value| {
                for (i, (k, _)) in keys.iter().enumerate() {
                    if k == key {
                        hot[i] = Some(parse_any(value)?);
                    }
                }
                Ok(())
            })?
        };
        self.span_attributes.push_entries(&entries);
        for (i, value) in hot.iter().enumerate() {
            let kind = self.promoted_keys[i].1;
            promote(&mut self.promoted[i], kind, value.as_ref())?;
        }

        for raw in &f.events {
            let e = parse_event(raw)?;
            self.events.time.push((e.time / 1000) as i64);
            self.events.name.push(e.name.as_bytes());
            self.events
                .attrs
                .push_entries(&texts(&e.attrs, |_, _| Ok(()))?);
            self.events.dropped.push(saturate(e.dropped));
        }
        self.events.offsets.push(self.events.name.len() as i32);

        for raw in &f.links {
            let mut l = Reader::new(raw);
            let (mut ltid, mut lsid, mut lstate, mut dropped) = (&[][..], &[][..], "", 0u32);
            let mut lattrs: Vec<&[u8]> = Vec::new();
            while let Some((f, w)) = l.field()? {
                match (f, w) {
                    (1, LEN) => ltid = l.bytes()?,
                    (2, LEN) => lsid = l.bytes()?,
                    (3, LEN) => lstate = utf8(l.bytes()?)?,
                    (4, LEN) => lattrs.push(l.bytes()?),
                    (5, VARINT) => dropped = l.varint()? as u32,
                    _ => l.skip(w)?,
                }
            }
            self.links.trace_id.push(ltid);
            self.links.span_id.push(lsid);
            self.links.state.push_or_null(lstate.as_bytes());
            self.links
                .attrs
                .push_entries(&texts(&lattrs, |_, _| Ok(()))?);
            self.links.dropped.push(saturate(dropped));
        }
        self.links.offsets.push(self.links.trace_id.len() as i32);
        Ok(())
    }
}

fn saturate(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn promote(col: &mut PromotedCol, kind: Promote, value: Option<&Any<'_>>) -> Result<()> {
    match col {
        PromotedCol::Str(c) => match value {
            None | Some(Any::Unset) | Some(Any::StrIndex) => c.push_null(),
            Some(v) => c.push(to_text(v)?.as_bytes()),
        },
        PromotedCol::Int(c) => {
            let bits = match kind {
                Promote::Int(b) => b,
                _ => 64,
            };
            let v: Option<i128> = match value {
                Some(Any::Int(i)) => Some(i128::from(*i)),
                Some(Any::Str(s)) => parse_int(s),
                _ => None,
            };
            let limit = 1i128 << (bits - 1);
            c.push_opt(v.filter(|v| -limit <= *v && *v < limit).map(|v| v as i64));
        }
    }
    Ok(())
}

/// `[+-]?[0-9]{1,19}` as an integer, like the Python path's conversion.
fn parse_int(s: &str) -> Option<i128> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: i128 = digits.parse().ok()?;
    Some(if s.starts_with('-') { -v } else { v })
}
