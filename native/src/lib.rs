//! sluice's native data-path parts, for Python (`import sluice_native`).
//!
//! `spans_columns(messages, promoted)`: the spans table's columns for chosen spans of OTLP
//! protobuf messages, as flat buffers (see `pipelines/spans/native.py`, which wraps them in
//! Arrow arrays); `zipkin_json(messages, refs)` and `otlp_proto(messages, refs)`: chosen
//! spans as a Zipkin v2 JSON list, or one OTLP request.
//! The GIL is released while the messages are walked.

mod columns;
mod dict;
mod otlp;
mod otlp_out;
mod rows;
mod text;
mod wire;
mod zipkin;

use columns::{Bytes, Map, Prim};
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use rows::{Columns, Promote, PromotedCol};
use std::mem::take;

#[cfg(target_endian = "big")]
compile_error!("the Arrow buffers handed to Python are little-endian");

type Py3<'py> = Bound<'py, PyTuple>;

/// A buffer Python reads in place (the buffer protocol, read-only), so pyarrow wraps it
/// without a copy and keeps it alive as long as an array uses it.
#[pyclass(frozen)]
struct Buf(Owned);

enum Owned {
    U8(Vec<u8>),
    I32(Vec<i32>),
    I64(Vec<i64>),
}

impl Owned {
    fn bytes(&self) -> &[u8] {
        let (ptr, len) = match self {
            Owned::U8(v) => (v.as_ptr(), v.len()),
            Owned::I32(v) => (v.as_ptr().cast::<u8>(), v.len() * 4),
            Owned::I64(v) => (v.as_ptr().cast::<u8>(), v.len() * 8),
        };
        // SAFETY: the vector's own memory, read as bytes (every bit pattern is a valid u8).
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

impl From<Vec<u8>> for Owned {
    fn from(v: Vec<u8>) -> Self {
        Owned::U8(v)
    }
}

impl From<Vec<i32>> for Owned {
    fn from(v: Vec<i32>) -> Self {
        Owned::I32(v)
    }
}

impl From<Vec<i64>> for Owned {
    fn from(v: Vec<i64>) -> Self {
        Owned::I64(v)
    }
}

#[pymethods]
impl Buf {
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::os::raw::c_int,
    ) -> PyResult<()> {
        if flags & pyo3::ffi::PyBUF_WRITABLE == pyo3::ffi::PyBUF_WRITABLE {
            // SAFETY: `view` is Python's to fill; on failure its `obj` must be NULL.
            unsafe { (*view).obj = std::ptr::null_mut() };
            return Err(PyBufferError::new_err("a read-only buffer"));
        }
        let bytes = slf.get().0.bytes();
        // SAFETY: `view` comes from Python; the buffer lives as long as `slf`, which the
        // view holds a reference to.
        let rc = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                bytes.as_ptr() as *mut std::os::raw::c_void,
                bytes.len() as pyo3::ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if rc == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {}
}

fn buf<'py, T: Into<Owned>>(py: Python<'py>, v: T) -> PyResult<Bound<'py, PyAny>> {
    Ok(Bound::new(py, Buf(v.into()))?.into_any())
}

fn bitmap<'py>(py: Python<'py>, bits: Option<Vec<u8>>) -> PyResult<Bound<'py, PyAny>> {
    match bits {
        Some(b) => buf(py, b),
        None => Ok(py.None().into_bound(py)),
    }
}

fn bytes_col<'py>(py: Python<'py>, c: &mut Bytes) -> PyResult<Py3<'py>> {
    PyTuple::new(
        py,
        [
            bitmap(py, c.validity.bitmap())?,
            buf(py, take(&mut c.offsets))?,
            buf(py, take(&mut c.data))?,
            c.validity.nulls().into_pyobject(py)?.into_any(),
        ],
    )
}

fn prim_col<'py, T>(py: Python<'py>, c: &mut Prim<T>) -> PyResult<Py3<'py>>
where
    Vec<T>: Into<Owned>,
{
    PyTuple::new(
        py,
        [
            bitmap(py, c.validity.bitmap())?,
            buf(py, take(&mut c.values))?,
            c.validity.nulls().into_pyobject(py)?.into_any(),
        ],
    )
}

fn map_col<'py>(py: Python<'py>, c: &mut Map) -> PyResult<Py3<'py>> {
    PyTuple::new(
        py,
        [
            buf(py, take(&mut c.offsets))?,
            bytes_col(py, &mut c.keys)?.into_any(),
            bytes_col(py, &mut c.values)?.into_any(),
        ],
    )
}

/// `messages`: (OTLP protobuf bytes, flattened positions of the spans wanted) pairs;
/// `promoted`: (attribute key, column type name) pairs; `max_column_bytes`: a lower limit
/// than Arrow's 2 GiB per string column (for tests). Returns a dict of buffers; raises
/// `ValueError` for a message it cannot walk (the caller falls back to the Python path).
#[pyfunction]
#[pyo3(signature = (messages, promoted, max_column_bytes=None))]
fn spans_columns<'py>(
    py: Python<'py>,
    messages: Vec<(Bound<'py, PyBytes>, Vec<usize>)>,
    promoted: Vec<(String, String)>,
    max_column_bytes: Option<usize>,
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
    let mut cols = py
        .allow_threads(|| {
            let mut cols = Columns::new(kinds);
            if let Some(limit) = max_column_bytes {
                cols.max_column_bytes = cols.max_column_bytes.min(limit);
            }
            for (message, spans) in &raw {
                cols.add_message(message, spans)?;
            }
            Ok::<_, String>(cols)
        })
        .map_err(PyValueError::new_err)?;
    let out = PyDict::new(py);
    out.set_item("rows", cols.rows)?;
    for (name, c) in [
        ("trace_id", &mut cols.trace_id),
        ("span_id", &mut cols.span_id),
        ("parent_span_id", &mut cols.parent_span_id),
        ("trace_state", &mut cols.trace_state),
        ("name", &mut cols.name),
        ("status_message", &mut cols.status_message),
        ("service_name", &mut cols.service_name),
        ("scope_name", &mut cols.scope_name),
        ("scope_version", &mut cols.scope_version),
    ] {
        out.set_item(name, bytes_col(py, c)?)?;
    }
    for (name, c) in [
        ("flags", &mut cols.flags),
        ("start_time", &mut cols.start_us),
        ("end_time", &mut cols.end_us),
        ("duration_ns", &mut cols.duration_ns),
    ] {
        out.set_item(name, prim_col(py, c)?)?;
    }
    for (name, c) in [
        ("kind", &mut cols.kind),
        ("status_code", &mut cols.status_code),
        ("dropped_attributes_count", &mut cols.dropped_attributes),
        ("dropped_events_count", &mut cols.dropped_events),
        ("dropped_links_count", &mut cols.dropped_links),
    ] {
        out.set_item(name, prim_col(py, c)?)?;
    }
    out.set_item(
        "resource_attributes",
        map_col(py, &mut cols.resource_attributes)?,
    )?;
    out.set_item("span_attributes", map_col(py, &mut cols.span_attributes)?)?;
    let e = &mut cols.events;
    out.set_item(
        "events",
        (
            buf(py, take(&mut e.offsets))?,
            prim_col(py, &mut e.time)?,
            bytes_col(py, &mut e.name)?,
            map_col(py, &mut e.attrs)?,
            prim_col(py, &mut e.dropped)?,
        ),
    )?;
    let l = &mut cols.links;
    out.set_item(
        "links",
        (
            buf(py, take(&mut l.offsets))?,
            bytes_col(py, &mut l.trace_id)?,
            bytes_col(py, &mut l.span_id)?,
            bytes_col(py, &mut l.state)?,
            map_col(py, &mut l.attrs)?,
            prim_col(py, &mut l.dropped)?,
        ),
    )?;
    let promoted = pyo3::types::PyList::empty(py);
    for c in &mut cols.promoted {
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
    m.add(
        "PanicException",
        m.py().get_type::<pyo3::panic::PanicException>(),
    )?;
    Ok(())
}
