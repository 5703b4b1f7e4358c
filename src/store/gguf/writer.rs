//! A test-only GGUF writer: builds byte buffers in the wire format [`super::read`] parses, for
//! the GGUF reader's tests and the store's. It must not be compiled outside tests.

/// Builds a GGUF byte buffer: `kvs` are (key, type, encoded value), `tensors` are
/// (name, dims, ggml type).
pub(crate) fn gguf(
    version: u32,
    kvs: &[(&str, u32, Vec<u8>)],
    tensors: &[(&str, &[u64], u32)],
) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(version.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (key, ty, value) in kvs {
        b.extend(string(key));
        b.extend(ty.to_le_bytes());
        b.extend(value);
    }
    for (i, (name, dims, ty)) in tensors.iter().enumerate() {
        b.extend(string(name));
        b.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(ty.to_le_bytes());
        b.extend((i as u64 * 32).to_le_bytes());
    }
    b
}

pub(crate) fn string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend(s.as_bytes());
    b
}

/// An array value: element type, count, then the already-encoded items.
pub(crate) fn array(elem_type: u32, len: u64, items: &[u8]) -> Vec<u8> {
    let mut b = elem_type.to_le_bytes().to_vec();
    b.extend(len.to_le_bytes());
    b.extend(items);
    b
}

/// A small but plausible llama model (general.file_type 15 = Q4_K_M).
pub(crate) fn tiny_model() -> Vec<u8> {
    let tokens: Vec<u8> = (0..100).flat_map(|i| string(&format!("t{i}"))).collect();
    gguf(
        3,
        &[
            ("general.architecture", 8, string("llama")),
            ("general.name", 8, string("Tiny")),
            ("general.file_type", 4, 15u32.to_le_bytes().to_vec()),
            ("llama.context_length", 4, 8192u32.to_le_bytes().to_vec()),
            ("llama.block_count", 10, 2u64.to_le_bytes().to_vec()),
            ("llama.attention.head_count", 4, 8u32.to_le_bytes().to_vec()),
            ("tokenizer.ggml.tokens", 9, array(8, 100, &tokens)),
        ],
        &[
            ("token_embd.weight", &[64, 100], 12),
            ("output.weight", &[64, 100], 14),
        ],
    )
}

/// A file holding the single key `key` of type `ty` with the encoded `value`.
pub(crate) fn one(key: &str, ty: u32, value: Vec<u8>) -> Vec<u8> {
    gguf(3, &[(key, ty, value)], &[])
}

/// A little-endian `u32` value.
pub(crate) fn le32(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}
