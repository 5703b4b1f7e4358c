//! The GGUF wire-format parser behind [`super::read`]: little-endian header, key/value metadata and
//! tensor infos, read through a `BufReader`. It owns the hostile-input limits (string length,
//! counts against the file length, nesting depth, dimension count and overflow) and must not
//! know what any key means; interpreting metadata belongs to the parent module.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read};

use super::{GgufError, GgufInfo, TensorInfo, Value};

/// Longest string (key or value) accepted.
pub(super) const MAX_STRING: u64 = 16 << 20;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS` is 4; leave room).
pub(super) const MAX_DIMS: u32 = 8;
/// Deepest array nesting accepted.
pub(super) const MAX_DEPTH: u32 = 4;
/// Most metadata entries or tensors accepted, whatever the file length (real models have a
/// few dozen keys and a few thousand tensors).
const MAX_ENTRIES: u64 = 1 << 20;
/// Arrays longer than this are skipped, their items not kept.
const KEEP_ITEMS: u64 = 64;

const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;

pub(super) fn read<R: Read>(r: R, file_len: u64) -> Result<GgufInfo, GgufError> {
    let (r, pos) = (BufReader::new(r), 0);
    let mut p = Parser { r, pos, file_len };
    let magic: [u8; 4] = p.bytes()?;
    if &magic != b"GGUF" {
        return Err(GgufError::BadMagic(magic));
    }
    let version = p.u32()?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let tensor_count = p.u64()?;
    let kv_count = p.u64()?;
    // Smallest encodings: a KV is 8 + 4 + 1 bytes, a tensor info 8 + 4 + 4 + 8 (see tensor_info).
    p.check_count("metadata key/value", kv_count, 13, MAX_ENTRIES)?;
    p.check_count("tensor", tensor_count, 24, MAX_ENTRIES)?;
    let mut metadata = BTreeMap::new();
    for _ in 0..kv_count {
        let key = p.string()?;
        let value_type = p.u32()?;
        let value = p.value(value_type, 0)?;
        metadata.insert(key, value);
    }
    let mut tensors = Vec::new();
    for _ in 0..tensor_count {
        tensors.push(p.tensor_info()?);
    }
    Ok(GgufInfo {
        version,
        tensor_count,
        metadata,
        tensors,
    })
}

struct Parser<R: Read> {
    r: BufReader<R>,
    pos: u64,
    file_len: u64,
}

impl<R: Read> Parser<R> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), GgufError> {
        let (offset, wanted) = (self.pos, buf.len() as u64);
        if let Err(source) = self.r.read_exact(buf) {
            return Err(match source.kind() {
                io::ErrorKind::UnexpectedEof => GgufError::Truncated { offset, wanted },
                _ => GgufError::Io { offset, source },
            });
        }
        self.pos += wanted;
        Ok(())
    }

    /// Reads and discards `n` bytes (callers have bounded `n` by the file length).
    fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        let offset = self.pos;
        let copied = io::copy(&mut (&mut self.r).take(n), &mut io::sink())
            .map_err(|source| GgufError::Io { offset, source })?;
        self.pos += copied;
        if copied < n {
            let (offset, wanted) = (self.pos, n - copied);
            return Err(GgufError::Truncated { offset, wanted });
        }
        Ok(())
    }

    fn remaining(&self) -> u64 {
        self.file_len.saturating_sub(self.pos)
    }

    /// Fails unless `count` items of at least `min_size` bytes each fit in the rest of the file.
    fn check_count(
        &self,
        what: &'static str,
        count: u64,
        min_size: u64,
        max: u64,
    ) -> Result<(), GgufError> {
        match count.checked_mul(min_size) {
            Some(bytes) if bytes <= self.remaining() && count <= max => Ok(()),
            _ => Err(GgufError::CountTooLarge {
                what,
                count,
                offset: self.pos,
                file_len: self.file_len,
            }),
        }
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        self.fill(&mut buf)?;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        self.bytes().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        self.bytes().map(u64::from_le_bytes)
    }

    /// Reads a string's length and checks it against the limits.
    fn string_len(&mut self) -> Result<u64, GgufError> {
        let offset = self.pos;
        let len = self.u64()?;
        let limit = MAX_STRING.min(self.remaining());
        if len > limit {
            return Err(GgufError::StringTooLong { offset, len, limit });
        }
        Ok(len)
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let len = self.string_len()?;
        let offset = self.pos;
        // `string_len` bounded `len` by MAX_STRING (16 MiB), so the cast cannot truncate.
        let mut buf = vec![0u8; len as usize];
        self.fill(&mut buf)?;
        String::from_utf8(buf).map_err(|_| GgufError::InvalidUtf8 { offset })
    }

    fn value(&mut self, value_type: u32, depth: u32) -> Result<Value, GgufError> {
        Ok(match value_type {
            0 => Value::U8(u8::from_le_bytes(self.bytes()?)),
            1 => Value::I8(i8::from_le_bytes(self.bytes()?)),
            2 => Value::U16(u16::from_le_bytes(self.bytes()?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes()?)),
            4 => Value::U32(u32::from_le_bytes(self.bytes()?)),
            5 => Value::I32(i32::from_le_bytes(self.bytes()?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes()?)),
            7 => Value::Bool(self.bytes::<1>()?[0] != 0),
            T_STRING => Value::String(self.string()?),
            T_ARRAY => self.array(depth + 1)?,
            10 => Value::U64(u64::from_le_bytes(self.bytes()?)),
            11 => Value::I64(i64::from_le_bytes(self.bytes()?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes()?)),
            _ => {
                let offset = self.pos.saturating_sub(4);
                return Err(GgufError::UnknownType { value_type, offset });
            }
        })
    }

    fn array(&mut self, depth: u32) -> Result<Value, GgufError> {
        if depth > MAX_DEPTH {
            return Err(GgufError::NestingTooDeep { offset: self.pos });
        }
        let offset = self.pos;
        let elem_type = self.u32()?;
        let len = self.u64()?;
        let elem_min = match elem_type {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 | T_STRING => 8,
            T_ARRAY => 12,
            value_type => return Err(GgufError::UnknownType { value_type, offset }),
        };
        self.check_count("array element", len, elem_min, u64::MAX)?;
        let mut items = Vec::new();
        if len <= KEEP_ITEMS {
            for _ in 0..len {
                items.push(self.value(elem_type, depth)?);
            }
        } else if elem_type == T_STRING {
            for _ in 0..len {
                let n = self.string_len()?;
                self.skip(n)?;
            }
        } else if elem_type == T_ARRAY {
            for _ in 0..len {
                self.array(depth + 1)?;
            }
        } else {
            // check_count proved `len * elem_min` fits in the file, so it cannot overflow.
            self.skip(len * elem_min)?;
        }
        Ok(Value::Array {
            elem_type,
            len,
            items,
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo, GgufError> {
        let name = self.string()?;
        let n_dims = self.u32()?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims { name, n_dims });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64()?);
        }
        let elements = dims.iter().try_fold(1u64, |acc, d| acc.checked_mul(*d));
        if elements.is_none() {
            return Err(GgufError::DimsOverflow { name });
        }
        let ggml_type = self.u32()?;
        let offset = self.u64()?;
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::writer::{array, gguf, le32, string, tiny_model};
    use super::*;

    fn parse(bytes: &[u8]) -> Result<GgufInfo, GgufError> {
        read(bytes, bytes.len() as u64)
    }

    #[test]
    fn round_trips_every_value_type() {
        let inner = [array(4, 1, &le32(7)), array(8, 0, &[])].concat();
        let nested = array(9, 2, &inner);
        let bytes = gguf(
            2,
            &[
                ("u8", 0, vec![200]),
                ("i8", 1, vec![0xff]),
                ("u16", 2, 60000u16.to_le_bytes().to_vec()),
                ("i16", 3, (-2i16).to_le_bytes().to_vec()),
                ("u32", 4, le32(7)),
                ("i32", 5, (-7i32).to_le_bytes().to_vec()),
                ("f32", 6, 0.5f32.to_le_bytes().to_vec()),
                ("bool", 7, vec![1]),
                ("str", 8, string("héllo")),
                ("u64", 10, u64::MAX.to_le_bytes().to_vec()),
                ("i64", 11, i64::MIN.to_le_bytes().to_vec()),
                ("f64", 12, 1.25f64.to_le_bytes().to_vec()),
                ("nested", 9, nested),
                ("big", 9, array(5, 65, &[0u8; 65 * 4])),
            ],
            &[("t", &[3, 4, 5], 1)],
        );
        let info = parse(&bytes).expect("valid GGUF");
        assert_eq!(info.version, 2);
        let m = &info.metadata;
        assert_eq!(m["u8"], Value::U8(200));
        assert_eq!(m["i8"], Value::I8(-1));
        assert_eq!(m["u16"], Value::U16(60000));
        assert_eq!(m["i16"], Value::I16(-2));
        assert_eq!(m["i32"], Value::I32(-7));
        assert_eq!(m["f32"], Value::F32(0.5));
        assert_eq!(m["bool"], Value::Bool(true));
        assert_eq!(m["str"], Value::String("héllo".into()));
        assert_eq!(m["u64"], Value::U64(u64::MAX));
        assert_eq!(m["i64"], Value::I64(i64::MIN));
        assert_eq!(m["f64"], Value::F64(1.25));
        let inner = vec![arr(4, 1, vec![Value::U32(7)]), arr(8, 0, vec![])];
        assert_eq!(m["nested"], arr(9, 2, inner));
        assert_eq!(m["big"], arr(5, 65, vec![])); // items past 64 are not kept
        let t = &info.tensors[0];
        assert_eq!(
            (t.name.as_str(), t.ggml_type, info.tensor_count),
            ("t", 1, 1)
        );
        assert_eq!(t.dims, [3, 4, 5]);
    }

    #[test]
    fn skips_long_string_arrays() {
        let info = parse(&tiny_model()).expect("valid GGUF");
        let Value::Array { len, items, .. } = &info.metadata["tokenizer.ggml.tokens"] else {
            panic!("not an array");
        };
        assert_eq!((*len, items.len(), info.tensors.len()), (100, 0, 2));
    }

    fn header(version: u32, tensors: u64, kvs: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(version.to_le_bytes());
        b.extend(tensors.to_le_bytes());
        b.extend(kvs.to_le_bytes());
        b
    }

    fn one(ty: u32, value: Vec<u8>) -> Vec<u8> {
        super::super::writer::one("k", ty, value)
    }

    fn arr(elem_type: u32, len: u64, items: Vec<Value>) -> Value {
        Value::Array {
            elem_type,
            len,
            items,
        }
    }

    #[test]
    fn rejects_hostile_input() {
        let mut huge_string = header(3, 0, 1);
        huge_string.extend((1u64 << 40).to_le_bytes());
        huge_string.extend([0u8; 16]);
        let mut long_string = header(3, 0, 1);
        long_string.extend((17u64 << 20).to_le_bytes());
        long_string.resize(long_string.len() + (17 << 20), b'a');
        let mut deep = array(4, 0, &[]);
        for _ in 0..3 {
            deep = array(9, 1, &deep);
        }
        assert!(
            parse(&one(9, deep.clone())).is_ok(),
            "four levels of arrays are fine"
        );
        let too_deep = array(9, 1, &deep);
        let bad_utf8 = [2u64.to_le_bytes().as_slice(), &[0xff, 0xfe]].concat();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("bad magic", b"GGML\x03\0\0\0".to_vec(), "not a GGUF file"),
            ("version 1", header(1, 0, 0), "unsupported GGUF version 1"),
            ("empty", vec![], "truncated at offset 0"),
            (
                "2^60 tensors",
                header(3, 1 << 60, 0),
                "count 1152921504606846976 at offset 24 is impossible",
            ),
            ("u64::MAX kvs", header(3, 0, u64::MAX), "key/value count"),
            (
                "2^40-byte string",
                huge_string,
                "claims 1099511627776 bytes",
            ),
            ("17 MiB string", long_string, "(limit 16777216)"),
            ("truncated", tiny_model()[..200].to_vec(), "truncated"),
            (
                "unknown type",
                one(13, vec![0; 8]),
                "unknown GGUF value type 13",
            ),
            ("bad array type", one(9, array(77, 0, &[])), "type 77"),
            (
                "array 2^62",
                one(9, array(0, 1 << 62, &[])),
                "array element count",
            ),
            ("nested too deep", one(9, too_deep), "nested deeper than 4"),
            (
                "nine dims",
                gguf(3, &[], &[("t", &[1; 9], 0)]),
                "has 9 dimensions",
            ),
            (
                "dims overflow",
                gguf(3, &[], &[("t", &[1 << 32, 1 << 32], 0)]),
                "overflows",
            ),
            ("bad utf-8", one(8, bad_utf8), "UTF-8"),
        ];
        for (what, bytes, want) in cases {
            let msg = parse(&bytes).expect_err(what).to_string();
            assert!(msg.contains(want), "{what}: {msg:?} lacks {want:?}");
        }
    }

    #[test]
    fn every_truncation_fails_cleanly() {
        let full = tiny_model();
        for cut in 0..full.len() {
            assert!(parse(&full[..cut]).is_err(), "prefix of {cut} bytes parsed");
            // A reader that ends early although the caller claims the full length.
            assert!(read(&full[..cut], full.len() as u64).is_err());
        }
    }
}
