//! Spans of OTLP protobuf messages → one `ExportTraceServiceRequest`, as
//! `pipelines.spans.encode.to_otlp_proto` builds it: every span once, its bytes copied as
//! they came, under its own resource and scope; spans of equal resources (scopes) share one
//! `ResourceSpans` (`ScopeSpans`), even across messages; first-seen order throughout.
//! "Equal" is equal bytes here (Python compares re-serialized messages: the same for
//! canonically encoded input, as every OTLP SDK and the Collector write it).

use crate::otlp::Index;
use crate::wire::Result;
use std::collections::HashMap;

struct Scope {
    header: Vec<u8>,
    spans: Vec<u8>,
    schema_url: Vec<u8>,
}

struct Group {
    header: Vec<u8>,
    schema_url: Vec<u8>,
    scopes: Vec<Scope>,
    by_key: HashMap<Vec<u8>, usize>,
}

/// `refs`: (message, flattened span position) of each span, in order.
pub fn encode(messages: &[&[u8]], refs: &[(usize, usize)]) -> Result<Vec<u8>> {
    let mut indexes: Vec<Option<Index<'_>>> = messages.iter().map(|_| None).collect();
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of: HashMap<Vec<u8>, usize> = HashMap::new();
    // (message, scope) → (group, scope in group): one lookup per scope, not per span.
    let mut placed: HashMap<(usize, usize), (usize, usize)> = HashMap::new();
    for &(m, at) in refs {
        let message = *messages
            .get(m)
            .ok_or_else(|| format!("message {m} of {}", messages.len()))?;
        if indexes[m].is_none() {
            indexes[m] = Some(Index::build(message)?);
        }
        let index = indexes[m].as_ref().expect("built above");
        let span = index
            .spans
            .get(at)
            .ok_or_else(|| format!("span {at} asked for, the message has {}", index.spans.len()))?;
        let (g, s) = match placed.get(&(m, span.scope)) {
            Some(found) => *found,
            None => {
                let res = &index.resources[span.resource];
                let rkey = key(&res.raw, res.schema_url);
                let g = *group_of.entry(rkey).or_insert_with(|| {
                    groups.push(Group {
                        header: framed_concat(1, &res.raw),
                        schema_url: res.schema_url.to_vec(),
                        scopes: Vec::new(),
                        by_key: HashMap::new(),
                    });
                    groups.len() - 1
                });
                let scope = &index.scopes[span.scope];
                let group = &mut groups[g];
                let skey = key(&scope.raw, scope.schema_url);
                let s = *group.by_key.entry(skey).or_insert_with(|| {
                    group.scopes.push(Scope {
                        header: framed_concat(1, &scope.raw),
                        spans: Vec::new(),
                        schema_url: scope.schema_url.to_vec(),
                    });
                    group.scopes.len() - 1
                });
                placed.insert((m, span.scope), (g, s));
                (g, s)
            }
        };
        field(&mut groups[g].scopes[s].spans, 2, span.raw);
    }
    let mut out = Vec::new();
    for group in &groups {
        let mut body = group.header.clone();
        for scope in &group.scopes {
            let mut sbody = scope.header.clone();
            sbody.extend_from_slice(&scope.spans);
            if !scope.schema_url.is_empty() {
                field(&mut sbody, 3, &scope.schema_url);
            }
            field(&mut body, 2, &sbody);
        }
        if !group.schema_url.is_empty() {
            field(&mut body, 3, &group.schema_url);
        }
        field(&mut out, 1, &body);
    }
    Ok(out)
}

fn key(raw: &[&[u8]], schema_url: &[u8]) -> Vec<u8> {
    let mut k = Vec::new();
    for part in raw {
        k.extend_from_slice(&(part.len() as u64).to_le_bytes());
        k.extend_from_slice(part);
    }
    k.push(0xff);
    k.extend_from_slice(schema_url);
    k
}

/// Field `number` holding the merge of `parts` (their concatenation), or nothing.
fn framed_concat(number: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    if !parts.is_empty() {
        field(&mut out, number, &parts.concat());
    }
    out
}

fn field(out: &mut Vec<u8>, number: u8, payload: &[u8]) {
    out.push((number << 3) | 2);
    let mut n = payload.len() as u64;
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(payload);
}
