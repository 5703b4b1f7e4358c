//! Speculative decoding: a small draft model proposes tokens that the model being served checks in one pass.
//! What is configured is a [`Speculative`](crate::store::Speculative) (a draft by name, `num_tokens`,
//! `min_acceptance_rate`), from `[[models]] speculative` or `_configure`'s `speculative`; the ranges are checked
//! here, with the same words for both. `launch` resolves the draft in the store into a [`Draft`] (never a path
//! from the network), which the engine turns into its flags (`llamacpp::argv`, `vllm::argv`). Pure.

use std::path::PathBuf;

/// The most tokens a draft may propose at a time.
pub const MAX_NUM_TOKENS: i64 = 64;

/// A draft resolved in the store, for one runner.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// Its display name (first tag), for logs.
    pub name: String,
    /// Its store id: part of the runner's key, so another draft is another runner (as in DMR).
    pub model_id: String,
    /// What the engine loads: the GGUF blob, or the safetensors directory (bundle) for vLLM.
    pub path: PathBuf,
    pub num_tokens: Option<u32>,
    pub min_acceptance_rate: Option<f64>,
}

/// `num_tokens`: 1 to [`MAX_NUM_TOKENS`]. Messages leave the key to the caller (its path differs: config or API).
pub fn check_num_tokens(n: i64) -> Result<u32, String> {
    if (1..=MAX_NUM_TOKENS).contains(&n) {
        Ok(n as u32)
    } else {
        Err(format!("must be 1 to {MAX_NUM_TOKENS}, not {n}"))
    }
}

/// `min_acceptance_rate`: a probability, 0 to 1.
pub fn check_min_acceptance_rate(x: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&x) {
        Ok(x)
    } else {
        Err(format!("must be 0 to 1, not {x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_with_the_key_in_the_message() {
        assert_eq!(check_num_tokens(1), Ok(1));
        assert_eq!(check_num_tokens(64), Ok(64));
        for bad in [0, -3, 65] {
            let e = check_num_tokens(bad).unwrap_err();
            assert_eq!(e, format!("must be 1 to 64, not {bad}"));
        }
        assert_eq!(check_min_acceptance_rate(0.0), Ok(0.0));
        assert_eq!(check_min_acceptance_rate(1.0), Ok(1.0));
        for bad in [-0.1, 1.5, f64::NAN] {
            let e = check_min_acceptance_rate(bad).unwrap_err();
            assert!(e.starts_with("must be 0 to 1, not "), "{e}");
        }
    }
}
