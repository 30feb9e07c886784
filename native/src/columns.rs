//! Flat Arrow buffers: validity bitmaps, i32 offsets, values. Python wraps them with
//! `pyarrow.Array.from_buffers` without copying.

#[derive(Default)]
pub struct Validity {
    bits: Vec<bool>,
    nulls: usize,
}

impl Validity {
    pub fn push(&mut self, valid: bool) {
        self.bits.push(valid);
        if !valid {
            self.nulls += 1;
        }
    }

    pub fn nulls(&self) -> usize {
        self.nulls
    }

    /// The LSB-first bitmap, or `None` when nothing is null.
    pub fn bitmap(&self) -> Option<Vec<u8>> {
        if self.nulls == 0 {
            return None;
        }
        let mut out = vec![0u8; self.bits.len().div_ceil(8)];
        for (i, valid) in self.bits.iter().enumerate() {
            if *valid {
                out[i / 8] |= 1 << (i % 8);
            }
        }
        Some(out)
    }
}

fn offset(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

/// A `string` or `binary` column.
pub struct Bytes {
    pub offsets: Vec<i32>,
    pub data: Vec<u8>,
    pub validity: Validity,
}

impl Default for Bytes {
    fn default() -> Self {
        Bytes {
            offsets: vec![0],
            data: Vec::new(),
            validity: Validity::default(),
        }
    }
}

impl Bytes {
    pub fn push(&mut self, value: &[u8]) {
        self.data.extend_from_slice(value);
        self.offsets.push(offset(self.data.len()));
        self.validity.push(true);
    }

    /// `value`, or null when it is empty.
    pub fn push_or_null(&mut self, value: &[u8]) {
        if value.is_empty() {
            self.push_null();
        } else {
            self.push(value);
        }
    }

    pub fn push_null(&mut self) {
        self.offsets.push(offset(self.data.len()));
        self.validity.push(false);
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Offsets are i32: a column over 2 GiB (or `limit`) cannot be built here (its offsets
    /// saturate; callers check this before handing the column out).
    pub fn fits(&self, limit: usize) -> bool {
        self.data.len() <= limit.min(i32::MAX as usize)
    }
}

/// A primitive column with optional nulls.
#[derive(Default)]
pub struct Prim<T> {
    pub values: Vec<T>,
    pub validity: Validity,
}

impl<T: Copy + Default> Prim<T> {
    pub fn push(&mut self, value: T) {
        self.values.push(value);
        self.validity.push(true);
    }

    pub fn push_opt(&mut self, value: Option<T>) {
        match value {
            Some(v) => self.push(v),
            None => {
                self.values.push(T::default());
                self.validity.push(false);
            }
        }
    }
}

/// A `map<string,string>` column (never null; entries may be empty).
pub struct Map {
    pub offsets: Vec<i32>,
    pub keys: Bytes,
    pub values: Bytes,
}

impl Default for Map {
    fn default() -> Self {
        Map {
            offsets: vec![0],
            keys: Bytes::default(),
            values: Bytes::default(),
        }
    }
}

impl Map {
    pub fn push_entries<K: AsRef<str>, V: AsRef<str>>(&mut self, entries: &[(K, V)]) {
        for (k, v) in entries {
            self.keys.push(k.as_ref().as_bytes());
            self.values.push(v.as_ref().as_bytes());
        }
        self.offsets.push(self.keys.len() as i32);
    }

    pub fn fits(&self, limit: usize) -> bool {
        self.keys.fits(limit) && self.values.fits(limit)
    }
}
