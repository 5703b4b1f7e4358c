//! GGUF metadata reader: parses the header, key/value metadata and tensor infos of a GGUF file
//! (versions 2 and 3) through `std::io`, and derives the facts the store and the scheduler want
//! (architecture, context length, parameter count, quantisation, DMR's string metadata map).
//! It never reads tensor data, and it must not know about the store, tags or the server. Input is
//! hostile: every length and count is checked against the file length before anything is
//! allocated, so a malformed file yields a [`GgufError`], never a panic or a huge allocation.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use thiserror::Error;

mod reader;

#[cfg(test)]
pub(crate) mod writer;
use reader::{MAX_DEPTH, MAX_DIMS};

/// Arrays longer than this are left out of [`GgufInfo::metadata_strings`] (DMR's limit).
const STRING_ARRAY_LIMIT: u64 = 50;

/// Why a GGUF file could not be read.
#[derive(Debug, Error)]
pub enum GgufError {
    #[error("cannot open GGUF file {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("I/O error reading GGUF data at offset {offset}: {source}")]
    Io { offset: u64, source: io::Error },
    #[error("GGUF data truncated at offset {offset}: wanted {wanted} more bytes")]
    Truncated { offset: u64, wanted: u64 },
    // The bytes read are not shown: the file may be anything of the server's.
    #[error("not a GGUF file (it does not start with \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("unsupported GGUF version {0} (only 2 and 3 are supported)")]
    UnsupportedVersion(u32),
    #[error("GGUF string at offset {offset} claims {len} bytes (limit {limit})")]
    StringTooLong { offset: u64, len: u64, limit: u64 },
    #[error("GGUF string at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { offset: u64 },
    #[error(
        "GGUF {what} count {count} at offset {offset} is impossible in a {file_len}-byte file"
    )]
    CountTooLarge {
        what: &'static str,
        count: u64,
        offset: u64,
        file_len: u64,
    },
    #[error("GGUF arrays nested deeper than {MAX_DEPTH} at offset {offset}")]
    NestingTooDeep { offset: u64 },
    #[error("unknown GGUF value type {value_type} at offset {offset}")]
    UnknownType { value_type: u32, offset: u64 },
    #[error("GGUF tensor {name:?} has {n_dims} dimensions (at most {MAX_DIMS} allowed)")]
    TooManyDims { name: String, n_dims: u32 },
    #[error("GGUF tensor {name:?} has dimensions whose product overflows 64 bits")]
    DimsOverflow { name: String },
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    /// `items` holds the elements only when `len <= 64`; longer arrays are skipped.
    Array {
        elem_type: u32,
        len: u64,
        items: Vec<Value>,
    },
}

impl Value {
    /// The value as an unsigned integer, for any non-negative integer type.
    pub fn as_u64(&self) -> Option<u64> {
        u64::try_from(self.as_i128()?).ok()
    }

    /// Any integer type, widened losslessly.
    fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Rendered like DMR's config `gguf` map: `%d`, `%f`, `%t`, arrays joined by ", ".
    fn render(&self) -> String {
        match self {
            Value::F32(v) => format!("{v:.6}"),
            Value::F64(v) => format!("{v:.6}"),
            Value::Bool(v) => v.to_string(),
            Value::String(v) => v.clone(),
            Value::Array { items, .. } => {
                let flat = items.iter().filter(|v| !matches!(v, Value::Array { .. }));
                flat.map(Value::render).collect::<Vec<_>>().join(", ")
            }
            _ => self.as_i128().unwrap_or_default().to_string(), // only integers are left
        }
    }
}

/// One tensor's description (its data is never read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub offset: u64,
}

/// Everything read from a GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufInfo {
    pub version: u32,
    pub tensor_count: u64,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

/// Reads the GGUF header of the file at `path`.
pub fn read_file(path: &Path) -> Result<GgufInfo, GgufError> {
    let file = File::open(path).and_then(|f| Ok((f.metadata()?.len(), f)));
    let (len, file) = file.map_err(|source| GgufError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    read(file, len)
}

/// Reads a GGUF header from `r`; `file_len` bounds every length and count.
pub fn read<R: Read>(r: R, file_len: u64) -> Result<GgufInfo, GgufError> {
    reader::read(r, file_len)
}

impl GgufInfo {
    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        match self.metadata.get("general.architecture") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// `<architecture>.<suffix>` as an unsigned integer, whatever its integer type.
    pub fn arch_u64(&self, suffix: &str) -> Option<u64> {
        let key = format!("{}.{suffix}", self.architecture()?);
        self.metadata.get(&key)?.as_u64()
    }

    pub fn context_length(&self) -> Option<u64> {
        self.arch_u64("context_length")
    }

    pub fn block_count(&self) -> Option<u64> {
        self.arch_u64("block_count")
    }

    pub fn head_count(&self) -> Option<u64> {
        self.arch_u64("attention.head_count")
    }

    /// `attention.head_count_kv`, defaulting to the head count.
    pub fn head_count_kv(&self) -> Option<u64> {
        self.arch_u64("attention.head_count_kv")
            .or_else(|| self.head_count())
    }

    pub fn embedding_length(&self) -> Option<u64> {
        self.arch_u64("embedding_length")
    }

    /// Sum over tensors of the product of their dimensions (saturating).
    pub fn parameter_count(&self) -> u64 {
        let product = |t: &TensorInfo| t.dims.iter().fold(1u64, |a, d| a.saturating_mul(*d));
        let sizes = self.tensors.iter().map(product);
        sizes.fold(0, u64::saturating_add)
    }

    /// `general.file_type`.
    pub fn file_type(&self) -> Option<u32> {
        let v = self.metadata.get("general.file_type")?.as_u64()?;
        u32::try_from(v).ok()
    }

    /// The quantisation name from `general.file_type`, else the most common tensor type.
    pub fn quantization(&self) -> String {
        if let Some(name) = self.file_type().and_then(file_type_name) {
            return name.to_string();
        }
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for t in &self.tensors {
            *counts.entry(t.ggml_type).or_default() += 1;
        }
        // Ties go to the lowest type id (max_by_key keeps the last maximum, so iterate reversed).
        let most = counts.iter().rev().max_by_key(|(_, n)| **n);
        let name = most.and_then(|(t, _)| ggml_type_name(*t));
        name.unwrap_or("unknown").to_string()
    }

    /// Every metadata value rendered as a string, like DMR's config `gguf` map (arrays longer
    /// than 50 are left out).
    pub fn metadata_strings(&self) -> BTreeMap<String, String> {
        self.metadata
            .iter()
            .filter(|(_, v)| !matches!(v, Value::Array { len, .. } if *len > STRING_ARRAY_LIMIT))
            .map(|(k, v)| (k.clone(), v.render()))
            .collect()
    }
}

/// llama.cpp's `llama_ftype` names, indexed by `general.file_type` ("" = unused id).
fn file_type_name(ft: u32) -> Option<&'static str> {
    const NAMES: [&str; 39] = [
        "F32", "F16", "Q4_0", "Q4_1", "", "", "", "Q8_0", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S",
        "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ2_XXS", "IQ2_XS",
        "Q2_K_S", "IQ3_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ3_M", "IQ2_S", "IQ2_M",
        "IQ4_XS", "IQ1_M", "BF16", "", "", "", "TQ1_0", "TQ2_0", "MXFP4",
    ];
    table_name(&NAMES, ft)
}

/// ggml's `ggml_type` names.
fn ggml_type_name(t: u32) -> Option<&'static str> {
    const NAMES: [&str; 40] = [
        "F32", "F16", "Q4_0", "Q4_1", "", "", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K",
        "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
        "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16", "", "", "", "TQ1_0",
        "TQ2_0", "", "", "", "MXFP4",
    ];
    table_name(&NAMES, t)
}

fn table_name(names: &[&'static str], id: u32) -> Option<&'static str> {
    let name = names.get(usize::try_from(id).ok()?)?;
    (!name.is_empty()).then_some(*name)
}

/// `361_820_000` → `"361.82M"`; below a thousand the plain number.
pub fn format_parameters(n: u64) -> String {
    const UNITS: [(f64, &str); 5] = [(1e15, "Q"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")];
    let x = n as f64;
    match UNITS.iter().find(|(scale, _)| x >= *scale) {
        Some((scale, unit)) => format!("{:.2}{unit}", x / scale),
        None => n.to_string(),
    }
}

/// `268_804_096` → `"256.35MiB"`; below 1 KiB the plain byte count (`"512B"`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut x = bytes as f64 / 1024.0;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    format!("{x:.2}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::writer::{array, gguf, le32, one, string, tiny_model};
    use super::*;

    fn info(bytes: &[u8]) -> GgufInfo {
        read(bytes, bytes.len() as u64).expect("valid GGUF")
    }

    #[test]
    fn derives_model_facts() {
        let i = info(&tiny_model());
        assert_eq!(i.architecture(), Some("llama"));
        assert_eq!(i.context_length(), Some(8192));
        // head_count_kv defaults to head_count
        let heads = (i.block_count(), i.head_count(), i.head_count_kv());
        assert_eq!(heads, (Some(2), Some(8), Some(8)));
        assert_eq!((i.embedding_length(), i.parameter_count()), (None, 12_800));
        assert_eq!(
            (i.file_type(), i.quantization().as_str()),
            (Some(15), "Q4_K_M")
        );
        let kv = info(&gguf(
            3,
            &[
                ("general.architecture", 8, string("qwen2")),
                ("qwen2.attention.head_count", 5, le32(14)),
                ("qwen2.attention.head_count_kv", 0, vec![2]),
                ("qwen2.context_length", 5, (-1i32).to_le_bytes().to_vec()),
            ],
            &[],
        ));
        assert_eq!((kv.head_count(), kv.head_count_kv()), (Some(14), Some(2)));
        assert_eq!(kv.context_length(), None); // negative is not a length
        assert_eq!(kv.parameter_count(), 0);
    }

    #[test]
    fn quantization_falls_back_to_tensor_types() {
        let t = |types: &[u32]| {
            let names: Vec<String> = (0..types.len()).map(|i| format!("t{i}")).collect();
            let tensors: Vec<(&str, &[u64], u32)> = names
                .iter()
                .zip(types)
                .map(|(n, ty)| (n.as_str(), &[2u64][..], *ty))
                .collect();
            info(&gguf(3, &[], &tensors)).quantization()
        };
        assert_eq!(t(&[0, 12, 12, 14]), "Q4_K");
        assert_eq!(t(&[8, 0, 0]), "F32");
        assert_eq!(t(&[30]), "BF16");
        assert_eq!(t(&[1, 8]), "F16"); // a tie goes to the lowest id
        assert_eq!(t(&[]), "unknown");
        assert_eq!(t(&[4]), "unknown"); // removed type id
        let ft = |v: u32| info(&one("general.file_type", 4, le32(v))).quantization();
        assert_eq!(
            (ft(99).as_str(), ft(32).as_str(), ft(7).as_str()),
            ("unknown", "BF16", "Q8_0")
        );
    }

    #[test]
    fn renders_metadata_like_dmr() {
        let strs = [string("a"), string("b")].concat();
        let arr50: Vec<u8> = (0..50u32).flat_map(|v| v.to_le_bytes()).collect();
        let nested = array(9, 2, &[array(0, 1, &[5]), array(0, 0, &[])].concat());
        let i = info(&gguf(
            3,
            &[
                ("f32", 6, 0.1f32.to_le_bytes().to_vec()),
                ("f64", 12, 1e-7f64.to_le_bytes().to_vec()),
                ("bool", 7, vec![0]),
                ("i8", 1, vec![0x80]),
                ("strs", 9, array(8, 2, &strs)),
                ("arr50", 9, array(4, 50, &arr50)),
                ("arr51", 9, array(0, 51, &[1; 51])),
                ("nested", 9, nested),
            ],
            &[],
        ));
        let m = i.metadata_strings();
        assert_eq!(m["f32"], "0.100000");
        assert_eq!(m["f64"], "0.000000");
        assert_eq!(m["bool"], "false");
        assert_eq!(m["i8"], "-128");
        assert_eq!(m["strs"], "a, b");
        assert!(m["arr50"].starts_with("0, 1, 2, ") && m["arr50"].ends_with(", 49"));
        assert!(!m.contains_key("arr51"));
        assert_eq!(m["nested"], ""); // DMR does not render nested arrays
        let full = info(&tiny_model()).metadata_strings();
        assert_eq!(full["general.architecture"], "llama");
        assert_eq!(full["llama.context_length"], "8192");
        assert!(!full.contains_key("tokenizer.ggml.tokens"));
    }

    #[test]
    fn formats_numbers() {
        assert_eq!(format_parameters(361_820_000), "361.82M");
        assert_eq!(format_parameters(1_500_000_000), "1.50B");
        assert_eq!(format_parameters(1234), "1.23K");
        assert_eq!(format_parameters(999), "999");
        assert_eq!(format_parameters(0), "0");
        assert_eq!(format_parameters(70_550_000_000_000), "70.55T");
        assert_eq!(format_size(268_804_096), "256.35MiB");
        assert_eq!(format_size(1_288_490_189), "1.20GiB");
        assert_eq!(format_size(524_288), "512.00KiB");
        assert_eq!(format_size(1023), "1023B");
        assert_eq!(format_size(u64::MAX), "16.00EiB");
    }

    #[test]
    fn read_file_reports_the_path() {
        let missing = Path::new("/nonexistent/model.gguf");
        let msg = read_file(missing).expect_err("missing file").to_string();
        assert!(msg.contains("/nonexistent/model.gguf"), "{msg}");
    }
}
