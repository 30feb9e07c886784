//! OTLP protobuf spans → a Zipkin v2 JSON list, byte for byte what
//! `pipelines.spans.zipkin.to_zipkin_json` writes for the same spans (the Python tests
//! compare both). Mapping: see that module's docstring.

use crate::dict::Dict;
use crate::otlp::{parse_event, parse_span, resource_texts, texts, Entries, Index, ScopeInfo};
use crate::text::json_string;
use crate::wire::Result;
use std::borrow::Cow;
use std::collections::HashSet;

const PEER: &str = "peer.service";
/// Tags the encoder sets itself: a span or resource attribute of that name needs merging.
const RESERVED: [&str; 5] = [
    PEER,
    "otel.scope.name",
    "otel.scope.version",
    "error",
    "otel.status_code",
];

/// One resource, encoded once per call.
struct Res<'a> {
    endpoint: String,
    /// Its tags (every attribute but `service.name`) as `"k":"v",...`.
    frag: String,
    entries: Entries<'a>,
    keys: HashSet<&'a str>,
    reserved: bool,
}

/// `refs`: (message, flattened span position) of each span, in output order.
pub fn encode(messages: &[&[u8]], refs: &[(usize, usize)]) -> Result<Vec<u8>> {
    let mut indexes: Vec<Option<Index<'_>>> = messages.iter().map(|_| None).collect();
    let mut resources: Vec<Vec<Option<Res<'_>>>> = messages.iter().map(|_| Vec::new()).collect();
    let mut out = String::with_capacity(refs.len() * 1024);
    out.push('[');
    for (n, &(m, at)) in refs.iter().enumerate() {
        let message = *messages
            .get(m)
            .ok_or_else(|| format!("message {m} of {}", messages.len()))?;
        if indexes[m].is_none() {
            let index = Index::build(message)?;
            resources[m] = index.resources.iter().map(|_| None).collect();
            indexes[m] = Some(index);
        }
        let index = indexes[m].as_ref().expect("built above");
        let span = index
            .spans
            .get(at)
            .ok_or_else(|| format!("span {at} asked for, the message has {}", index.spans.len()))?;
        let slot = &mut resources[m][span.resource];
        if slot.is_none() {
            *slot = Some(resource(&index.resources[span.resource].attrs)?);
        }
        if n > 0 {
            out.push(',');
        }
        let res = slot.as_ref().expect("filled above");
        write_span(&mut out, span.raw, res, &index.scopes[span.scope])?;
    }
    out.push(']');
    Ok(out.into_bytes())
}

fn resource<'a>(raws: &[&'a [u8]]) -> Result<Res<'a>> {
    let (mut entries, service) = resource_texts(raws)?;
    entries.retain(|(k, _)| *k != "service.name");
    let mut endpoint = String::from("{\"serviceName\":");
    json_string(
        service
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown_service"),
        &mut endpoint,
    );
    endpoint.push('}');
    let mut frag = String::new();
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            frag.push(',');
        }
        json_string(k, &mut frag);
        frag.push(':');
        json_string(v, &mut frag);
    }
    let reserved = entries.iter().any(|(k, _)| RESERVED.contains(k));
    let keys = entries.iter().map(|(k, _)| *k).collect();
    Ok(Res {
        endpoint,
        frag,
        entries,
        keys,
        reserved,
    })
}

fn write_span(out: &mut String, raw: &[u8], res: &Res<'_>, scope: &ScopeInfo<'_>) -> Result<()> {
    let f = parse_span(raw)?;
    let span_tags = texts(&f.attrs, |_, _| Ok(()))?;
    out.push_str("{\"traceId\":\"");
    hex(f.tid, out);
    out.push_str("\",\"id\":\"");
    hex(f.sid, out);
    out.push('"');
    if f.parent.iter().any(|b| *b != 0) {
        out.push_str(",\"parentId\":\"");
        hex(f.parent, out);
        out.push('"');
    }
    out.push_str(",\"name\":");
    json_string(f.name, out);
    let kind = match f.kind {
        2 => Some("SERVER"),
        3 => Some("CLIENT"),
        4 => Some("PRODUCER"),
        5 => Some("CONSUMER"),
        _ => None,
    };
    if let Some(kind) = kind {
        out.push_str(",\"kind\":\"");
        out.push_str(kind);
        out.push('"');
    }
    let (start, end) = (f.start as i64, f.end as i64);
    out.push_str(",\"timestamp\":");
    out.push_str(&start.div_euclid(1000).to_string());
    let duration = end - start;
    if duration > 0 {
        out.push_str(",\"duration\":");
        out.push_str(&(duration / 1000).max(1).to_string());
    }
    out.push_str(",\"localEndpoint\":");
    out.push_str(&res.endpoint);

    let code = if (0..=2).contains(&f.code) { f.code } else { 0 };
    let mut status: Vec<(&str, &str)> = Vec::new();
    if !scope.name.is_empty() {
        status.push(("otel.scope.name", scope.name));
        if !scope.version.is_empty() {
            status.push(("otel.scope.version", scope.version));
        }
    }
    if code == 2 {
        status.push((
            "error",
            if f.message.is_empty() {
                "true"
            } else {
                f.message
            },
        ));
    } else if code == 1 {
        status.push(("otel.status_code", "OK"));
    }
    let merge = res.reserved
        || span_tags
            .iter()
            .any(|(k, _)| RESERVED.contains(k) || res.keys.contains(k));
    if !merge {
        write_annotations(out, &f.events)?;
        let mut first = res.frag.is_empty();
        if !(first && span_tags.is_empty() && status.is_empty()) {
            out.push_str(",\"tags\":{");
            out.push_str(&res.frag);
            for (k, v) in span_tags
                .iter()
                .map(|(k, v)| (*k, v.as_ref()))
                .chain(status)
            {
                if !first {
                    out.push(',');
                }
                first = false;
                json_string(k, out);
                out.push(':');
                json_string(v, out);
            }
            out.push('}');
        }
        out.push('}');
        return Ok(());
    }
    // A Python dict's update: a key already there keeps its place and takes the new value.
    let mut tags: Dict<'_, Cow<'_, str>> = Dict::from_unique(res.entries.clone());
    let statuses = status.into_iter().map(|(k, v)| (k, Cow::Borrowed(v)));
    for (k, v) in span_tags.into_iter().chain(statuses) {
        tags.insert(k, v);
    }
    let peer = tags.remove(PEER);
    let tags = tags.entries;
    if let Some(peer) = peer.filter(|p| !p.is_empty()) {
        out.push_str(",\"remoteEndpoint\":{\"serviceName\":");
        json_string(&peer, out);
        out.push('}');
    }
    write_annotations(out, &f.events)?;
    if !tags.is_empty() {
        out.push_str(",\"tags\":{");
        for (i, (k, v)) in tags.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_string(k, out);
            out.push(':');
            json_string(v, out);
        }
        out.push('}');
    }
    out.push('}');
    Ok(())
}

fn write_annotations(out: &mut String, events: &[&[u8]]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    out.push_str(",\"annotations\":[");
    for (i, raw) in events.iter().enumerate() {
        let e = parse_event(raw)?;
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"timestamp\":");
        out.push_str(&(e.time / 1000).to_string());
        out.push_str(",\"value\":");
        json_string(e.name, out);
        out.push('}');
    }
    out.push(']');
    Ok(())
}

fn hex(raw: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in raw {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
}
