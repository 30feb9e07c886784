//! A minimal protobuf wire-format reader: just what walking OTLP trace messages needs.
//! Every read is bounds-checked; malformed input is an `Err`, never a panic.

pub type Result<T> = std::result::Result<T, String>;

pub const VARINT: u8 = 0;
pub const FIXED64: u8 = 1;
pub const LEN: u8 = 2;
pub const FIXED32: u8 = 5;

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn varint(&mut self) -> Result<u64> {
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            if shift < 64 {
                value |= u64::from(byte & 0x7f) << shift;
            }
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    /// The next field's number and wire type; `None` at the end of the buffer.
    pub fn field(&mut self) -> Result<Option<(u32, u8)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let number = u32::try_from(tag >> 3).map_err(|_| "field number out of range")?;
        if number == 0 {
            return Err("field number 0".into());
        }
        Ok(Some((number, (tag & 7) as u8)))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = usize::try_from(self.varint()?).map_err(|_| "length out of range")?;
        let end = self.pos.checked_add(len).ok_or("length out of range")?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or("truncated length-delimited field")?;
        self.pos = end;
        Ok(out)
    }

    pub fn fixed64(&mut self) -> Result<u64> {
        let raw = self
            .buf
            .get(self.pos..self.pos + 8)
            .ok_or("truncated fixed64")?;
        self.pos += 8;
        Ok(u64::from_le_bytes(raw.try_into().expect("8 bytes")))
    }

    pub fn fixed32(&mut self) -> Result<u32> {
        let raw = self
            .buf
            .get(self.pos..self.pos + 4)
            .ok_or("truncated fixed32")?;
        self.pos += 4;
        Ok(u32::from_le_bytes(raw.try_into().expect("4 bytes")))
    }

    /// Skip a field of wire type `wt` (groups are refused: OTLP has none).
    pub fn skip(&mut self, wt: u8) -> Result<()> {
        match wt {
            VARINT => self.varint().map(|_| ()),
            FIXED64 => self.fixed64().map(|_| ()),
            LEN => self.bytes().map(|_| ()),
            FIXED32 => self.fixed32().map(|_| ()),
            _ => Err(format!("unsupported wire type {wt}")),
        }
    }
}

pub fn utf8(raw: &[u8]) -> Result<&str> {
    std::str::from_utf8(raw).map_err(|_| "invalid UTF-8 in a string field".to_string())
}
