//! The ESM-2 vocabulary (33 tokens) and tokenisation, exactly as fair-esm's `Alphabet`
//! for `ESM-1b`-style models: `<cls>` first, `<eos>` last, `<pad>` between sequences.

/// Number of tokens in the vocabulary.
pub const VOCAB_SIZE: usize = 33;
/// `<cls>`, prepended to every sequence (BOS).
pub const CLS: u32 = 0;
/// `<pad>`, fills padded batches.
pub const PAD: u32 = 1;
/// `<eos>`, appended to every sequence.
pub const EOS: u32 = 2;
/// `<unk>`.
pub const UNK: u32 = 3;
/// `X`, the unknown residue (target of the optional `--map-unknown-to-x`).
pub const X: u32 = 24;
/// `<mask>`, zeroed by token dropout.
pub const MASK: u32 = 32;
/// Most residues one sequence may carry: 1024 positions minus BOS and EOS.
pub const MAX_RESIDUES: usize = 1022;

/// Token strings in id order.
pub const TOKENS: [&str; VOCAB_SIZE] = [
    "<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K",
    "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>",
    "<mask>",
];

/// Single-character tokens (`L` .. `-`), ids 4..=30, in id order.
const RESIDUE_CHARS: &[u8; 27] = b"LAGVSERTIDPKQNFYMHWCXBUZO.-";

/// The token id of one (already upper-cased) residue character, if the alphabet has it.
pub fn residue_id(c: u8) -> Option<u32> {
    RESIDUE_CHARS
        .iter()
        .position(|&r| r == c)
        .map(|i| i as u32 + 4)
}

/// Whether `c` is one of the vocabulary's gap tokens (`-`, `.`), which are not residues.
pub fn is_gap(c: char) -> bool {
    c == '-' || c == '.'
}

/// The character of a residue token id (ids 4..=30), for printing sequences back.
pub fn residue_char(id: u32) -> Option<char> {
    let i = id.checked_sub(4)? as usize;
    RESIDUE_CHARS.get(i).map(|&c| c as char)
}

/// `[<cls>, r1..rn, <eos>]` for residue ids `r` (no truncation: see [`crate::input`]).
pub fn with_special_tokens(residues: &[u32]) -> Vec<u32> {
    let mut ids = Vec::with_capacity(residues.len() + 2);
    ids.push(CLS);
    ids.extend_from_slice(residues);
    ids.push(EOS);
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_the_fair_esm_table() {
        assert_eq!(TOKENS[4], "L");
        assert_eq!(TOKENS[23], "C");
        assert_eq!(TOKENS[24], "X");
        assert_eq!(TOKENS[30], "-");
        assert_eq!(TOKENS[32], "<mask>");
        for (i, &c) in RESIDUE_CHARS.iter().enumerate() {
            assert_eq!(TOKENS[i + 4].as_bytes(), [c]);
            assert_eq!(residue_id(c), Some(i as u32 + 4));
            assert_eq!(residue_char(i as u32 + 4), Some(c as char));
        }
        assert_eq!(residue_id(b'J'), None);
        assert_eq!(residue_id(b'a'), None, "callers upper-case first");
    }

    #[test]
    fn special_tokens_wrap_the_residues() {
        assert_eq!(with_special_tokens(&[5, 6]), vec![CLS, 5, 6, EOS]);
        assert_eq!(with_special_tokens(&[]), vec![CLS, EOS]);
    }
}
