//! sluice's native data-path parts, for Python (`import sluice_native`).
//!
//! `spans_columns(messages, promoted)`: the spans table's columns for chosen spans of OTLP
//! protobuf messages, as flat buffers (see `pipelines/spans/native.py`, which wraps them in
//! Arrow arrays); `zipkin_json(messages, refs)` and `otlp_proto(messages, refs)`: chosen
//! spans as a Zipkin v2 JSON list, or one OTLP request.
//! The GIL is released while the messages are walked.

mod columns;
mod otlp;
mod otlp_out;
mod rows;
mod text;
mod wire;
mod zipkin;

use columns::{le_bytes, Bytes, Map, Prim, ToLe};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use rows::{Columns, Promote, PromotedCol};

type Py3<'py> = Bound<'py, PyTuple>;

fn bytes_col<'py>(py: Python<'py>, c: &Bytes) -> PyResult<Py3<'py>> {
    let bitmap = c.validity.bitmap();
    PyTuple::new(
        py,
        [
            bitmap
                .map(|b| PyBytes::new(py, &b).into_any())
                .unwrap_or_else(|| py.None().into_bound(py)),
            PyBytes::new(py, &le_bytes(&c.offsets)).into_any(),
            PyBytes::new(py, &c.data).into_any(),
            c.validity.nulls().into_pyobject(py)?.into_any(),
        ],
    )
}

fn prim_col<'py, T: ToLe>(py: Python<'py>, c: &Prim<T>) -> PyResult<Py3<'py>> {
    let bitmap = c.validity.bitmap();
    PyTuple::new(
        py,
        [
            bitmap
                .map(|b| PyBytes::new(py, &b).into_any())
                .unwrap_or_else(|| py.None().into_bound(py)),
            PyBytes::new(py, &le_bytes(&c.values)).into_any(),
            c.validity.nulls().into_pyobject(py)?.into_any(),
        ],
    )
}

fn map_col<'py>(py: Python<'py>, c: &Map) -> PyResult<Py3<'py>> {
    PyTuple::new(
        py,
        [
            PyBytes::new(py, &le_bytes(&c.offsets)).into_any(),
            bytes_col(py, &c.keys)?.into_any(),
            bytes_col(py, &c.values)?.into_any(),
        ],
    )
}

/// `messages`: (OTLP protobuf bytes, flattened positions of the spans wanted) pairs;
/// `promoted`: (attribute key, column type name) pairs. Returns a dict of buffers; raises
/// `ValueError` for a message it cannot walk (the caller falls back to the Python path).
#[pyfunction]
fn spans_columns<'py>(
    py: Python<'py>,
    messages: Vec<(Bound<'py, PyBytes>, Vec<usize>)>,
    promoted: Vec<(String, String)>,
) -> PyResult<Bound<'py, PyDict>> {
    let mut kinds = Vec::with_capacity(promoted.len());
    for (key, type_name) in promoted {
        let kind = Promote::parse(&type_name).ok_or_else(|| {
            PyValueError::new_err(format!("promoted column type {type_name} is not supported"))
        })?;
        kinds.push((key, kind));
    }
    let raw: Vec<(&[u8], Vec<usize>)> = messages
        .iter()
        .map(|(m, s)| (m.as_bytes(), s.clone()))
        .collect();
    let cols = py
        .allow_threads(|| {
            let mut cols = Columns::new(kinds);
            for (message, spans) in &raw {
                cols.add_message(message, spans)?;
            }
            Ok::<_, String>(cols)
        })
        .map_err(PyValueError::new_err)?;
    let out = PyDict::new(py);
    out.set_item("rows", cols.rows)?;
    for (name, c) in [
        ("trace_id", &cols.trace_id),
        ("span_id", &cols.span_id),
        ("parent_span_id", &cols.parent_span_id),
        ("trace_state", &cols.trace_state),
        ("name", &cols.name),
        ("status_message", &cols.status_message),
        ("service_name", &cols.service_name),
        ("scope_name", &cols.scope_name),
        ("scope_version", &cols.scope_version),
    ] {
        out.set_item(name, bytes_col(py, c)?)?;
    }
    for (name, c) in [
        ("flags", &cols.flags),
        ("start_time", &cols.start_us),
        ("end_time", &cols.end_us),
        ("duration_ns", &cols.duration_ns),
    ] {
        out.set_item(name, prim_col(py, c)?)?;
    }
    for (name, c) in [
        ("kind", &cols.kind),
        ("status_code", &cols.status_code),
        ("dropped_attributes_count", &cols.dropped_attributes),
        ("dropped_events_count", &cols.dropped_events),
        ("dropped_links_count", &cols.dropped_links),
    ] {
        out.set_item(name, prim_col(py, c)?)?;
    }
    out.set_item(
        "resource_attributes",
        map_col(py, &cols.resource_attributes)?,
    )?;
    out.set_item("span_attributes", map_col(py, &cols.span_attributes)?)?;
    let e = &cols.events;
    out.set_item(
        "events",
        (
            PyBytes::new(py, &le_bytes(&e.offsets)),
            prim_col(py, &e.time)?,
            bytes_col(py, &e.name)?,
            map_col(py, &e.attrs)?,
            prim_col(py, &e.dropped)?,
        ),
    )?;
    let l = &cols.links;
    out.set_item(
        "links",
        (
            PyBytes::new(py, &le_bytes(&l.offsets)),
            bytes_col(py, &l.trace_id)?,
            bytes_col(py, &l.span_id)?,
            bytes_col(py, &l.state)?,
            map_col(py, &l.attrs)?,
            prim_col(py, &l.dropped)?,
        ),
    )?;
    let promoted = pyo3::types::PyList::empty(py);
    for c in &cols.promoted {
        match c {
            PromotedCol::Str(b) => promoted.append(bytes_col(py, b)?)?,
            PromotedCol::Int(p) => promoted.append(prim_col(py, p)?)?,
        }
    }
    out.set_item("promoted", promoted)?;
    Ok(out)
}

/// A Zipkin v2 JSON list of spans of OTLP protobuf `messages`: `refs` are (message,
/// flattened span position) pairs, in output order. Raises `ValueError` for a message it
/// cannot walk.
#[pyfunction]
fn zipkin_json<'py>(
    py: Python<'py>,
    messages: Vec<Bound<'py, PyBytes>>,
    refs: Vec<(usize, usize)>,
) -> PyResult<Bound<'py, PyBytes>> {
    encode_spans(py, &messages, &refs, zipkin::encode)
}

/// One OTLP `ExportTraceServiceRequest` holding the spans `refs` points at (as
/// `zipkin_json`), their bytes copied as they came.
#[pyfunction]
fn otlp_proto<'py>(
    py: Python<'py>,
    messages: Vec<Bound<'py, PyBytes>>,
    refs: Vec<(usize, usize)>,
) -> PyResult<Bound<'py, PyBytes>> {
    encode_spans(py, &messages, &refs, otlp_out::encode)
}

type Encoder = fn(&[&[u8]], &[(usize, usize)]) -> Result<Vec<u8>, String>;

fn encode_spans<'py>(
    py: Python<'py>,
    messages: &[Bound<'py, PyBytes>],
    refs: &[(usize, usize)],
    encode: Encoder,
) -> PyResult<Bound<'py, PyBytes>> {
    let raw: Vec<&[u8]> = messages.iter().map(|m| m.as_bytes()).collect();
    let body = py
        .allow_threads(|| encode(&raw, refs))
        .map_err(PyValueError::new_err)?;
    Ok(PyBytes::new(py, &body))
}

/// Python's `repr(float)` and the attribute text of a double, for the tests.
#[pyfunction]
fn float_texts(f: f64) -> (String, String) {
    (text::py_repr(f), text::float_text(f))
}

#[pymodule]
fn sluice_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(spans_columns, m)?)?;
    m.add_function(wrap_pyfunction!(float_texts, m)?)?;
    m.add_function(wrap_pyfunction!(zipkin_json, m)?)?;
    m.add_function(wrap_pyfunction!(otlp_proto, m)?)?;
    Ok(())
}
